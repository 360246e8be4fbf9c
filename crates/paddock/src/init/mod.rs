//! `ros init`: PID 1. It brings the machine from a bare kernel to running system services,
//! then supervises and shuts down.
//!
//! The boot, in order (each step logs a timestamped `paddock:` line on the console):
//! 0. leave the initramfs for a tmpfs root ([`switchroot`]), re-executing `/init` there;
//! 1. mount /proc, /sys, /dev, /dev/pts, /dev/shm, /run, /tmp and the cgroup2 hierarchy;
//! 2. load the built-in module list by name (through `modules.dep`);
//! 3. mount the state device (`rancher.state.dev`, default `LABEL=RANCHER_STATE`; a blank
//!    device listed in `rancher.state.autoformat` is formatted first) at /state and bind its directories over /home, /var/lib/rancher, /var/lib/system-docker, /opt,
//!    /var/log; without one, say that nothing persists and run from RAM;
//! 4. cloud-init: a NoCloud (`cidata`) or config drive (`config-2`) is found by its label and
//!    mounted; the configured datasources are read and their user data saved;
//! 5. load the merged config (a broken file is reported and skipped, never fatal), load
//!    `rancher.modules`, set the hostname, /etc/hosts and /etc/resolv.conf, write
//!    `ssh_authorized_keys`, sysctls and `mounts`;
//! 6. install the system images into the engine's store on /var/lib/system-docker: from the
//!    images disk (`PADDOCK_IMAGES`, copied once onto the state partition, or used in place,
//!    linked, without one), or from the image archive the ISO appends to the
//!    initrd (moved onto the state partition, or used in place in RAM); then start the system
//!    engine (`system-dockerd`, restarted if it dies);
//! 7. remove last boot's system containers (createonly ones stay), bring up the system
//!    services (`ros service up`), then write_files and runcmd in their containers;
//! 8. wait for signals: SIGTERM/SIGINT reboot, SIGUSR2/SIGPWR power off, SIGUSR1 halts (the
//!    busybox convention, so `poweroff` from the console works). Shutdown stops services in
//!    reverse order with the console last, within `rancher.shutdown_timeout`, then syncs,
//!    unmounts and reboots or powers off.
//!
//! PID 1 must never panic or exit: every failure is logged and the boot goes on with less.

pub mod blkid;
pub mod kmod;
pub mod shipped;
pub mod switchroot;

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::signal::{SigSet, Signal};

use crate::config::CloudConfig;
use crate::config::sources::{self, LoadOptions};
use crate::engine::client::Client;
use crate::engine::reaper::Reaper;
use crate::root::Root;

/// Modules every boot loads before the state mount (virtio devices, overlay, loop and
/// squashfs for `mounts`, the drives cloud-init reads, the power button). What only the user
/// Docker needs (bridge, veth, netfilter) its service loads itself.
pub const BUILTIN_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "overlay",
    "loop",
    "squashfs",
    "ata_piix",
    "sr_mod",
    "isofs",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_iso8859-1",
    // the power button (acpid reads /dev/input/event*)
    "button",
    "evdev",
];

/// The engine's data root and socket.
pub const DATA_ROOT: &str = "/var/lib/system-docker";
pub const ENGINE_SOCKET: &str = "/run/system-docker.sock";
/// The initrd's last entry: present only if the kernel unpacked all of it.
pub const INITRD_COMPLETE: &str = "/usr/share/ros/initrd-complete";
/// The data root whose `image/` store the ISO's second initrd archive ships.
pub const SHIPPED_IMAGES: &str = "/usr/share/ros/images";
/// That archive's last entry.
pub const IMAGES_COMPLETE: &str = "/usr/share/ros/images-complete";
/// Directories of the state device bound over the root.
const PERSISTENT: &[&str] = &[
    "home",
    "opt",
    "var/lib/rancher",
    "var/lib/system-docker",
    "var/lib/docker",
    "var/log",
];

fn uptime() -> f64 {
    fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// A timestamped line on the console.
pub fn log(msg: impl AsRef<str>) {
    let line = format!("[{:>8.3}] paddock: {}\n", uptime(), msg.as_ref());
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Ok(mut f) = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open("/run/paddock-boot.log")
    {
        let _ = f.write_all(line.as_bytes());
    }
}

fn try_mount(src: &str, target: &str, fstype: &str, flags: MsFlags, data: Option<&str>) {
    let _ = fs::create_dir_all(target);
    if let Err(e) = mount(Some(src), target, Some(fstype), flags, data)
        && e != nix::errno::Errno::EBUSY
    {
        log(format!("mounting {fstype} on {target}: {e}"));
    }
}

fn bind(src: &Path, target: &Path) -> Result<(), String> {
    fs::create_dir_all(src).map_err(|e| format!("{}: {e}", src.display()))?;
    fs::create_dir_all(target).map_err(|e| format!("{}: {e}", target.display()))?;
    mount(
        Some(src),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| format!("binding {} on {}: {e}", src.display(), target.display()))
}

fn mount_basics() {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    try_mount("proc", "/proc", "proc", nosuid, None);
    try_mount("sysfs", "/sys", "sysfs", nosuid, None);
    try_mount(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    );
    try_mount(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0620,ptmxmode=0666,gid=5"),
    );
    try_mount("shm", "/dev/shm", "tmpfs", nosuid, Some("mode=1777"));
    // The links udev would make; containers given the host's /dev see them too.
    for (target, link) in [
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ] {
        let _ = std::os::unix::fs::symlink(target, link);
    }
    try_mount(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    );
    try_mount(
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    );
    try_mount("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid, None);
    let _ = fs::create_dir_all("/var/lib");
    if !Path::new("/var/run").exists() {
        let _ = std::os::unix::fs::symlink("/run", "/var/run");
    }
    // Bind mounts with :shared/:rshared need a shared root.
    let _ = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SHARED,
        None::<&str>,
    );
}

/// Kernel defaults for a small container host, each unless the command line sets it.
fn tune_kernel(cmdline: &str) {
    // Transparent huge pages only where a program asks (madvise): with Debian's `always`,
    // the Go daemons (dockerd, containerd) hold about 10 MB more in 2 MB pages they barely use.
    if !thp_on_cmdline(cmdline) {
        let _ = fs::write("/sys/kernel/mm/transparent_hugepage/enabled", "madvise");
    }
}

fn thp_on_cmdline(cmdline: &str) -> bool {
    cmdline
        .split_whitespace()
        .any(|a| a.starts_with("transparent_hugepage="))
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub(crate) fn load_modules<'a>(names: impl IntoIterator<Item = &'a str>) {
    let dir = Path::new("/lib/modules").join(kernel_release());
    let db = match kmod::ModuleDb::open(&dir) {
        Ok(db) => db,
        Err(e) => {
            log(format!("modules: {e}"));
            return;
        }
    };
    for spec in names {
        let (name, params) = spec.split_once(' ').unwrap_or((spec, ""));
        if let Err(e) = db.load(name, params.trim()) {
            log(e.to_string());
        }
    }
}

/// Mounts the drive labelled `label` read-only at `target`; true if it did.
fn mount_labelled(labels: &[&str], target: &str) -> bool {
    for l in labels {
        if let Some((dev, p)) = blkid::find(l) {
            let _ = fs::create_dir_all(target);
            match mount(
                Some(&dev),
                target,
                Some(p.fstype),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                None::<&str>,
            ) {
                Ok(()) => {
                    log(format!(
                        "{} ({}) mounted on {target}",
                        dev.display(),
                        p.fstype
                    ));
                    return true;
                }
                Err(e) => log(format!("mounting {} on {target}: {e}", dev.display())),
            }
        }
    }
    false
}

/// Step 3: the state device. Returns whether one is mounted.
fn mount_state(cfg: &CloudConfig) -> bool {
    let spec = cfg
        .rancher
        .state
        .dev
        .as_ref()
        .map(|l| l.to_string())
        .unwrap_or_else(|| "LABEL=RANCHER_STATE".into());
    let found = blkid::find(&spec).or_else(|| {
        let blank = cfg
            .rancher
            .state
            .autoformat
            .iter()
            .map(|d| Path::new(d.as_str()).to_path_buf())
            .find(|d| d.exists() && blkid::is_blank(d))?;
        let label = spec.strip_prefix("LABEL=").unwrap_or("RANCHER_STATE");
        autoformat(&blank, label);
        blkid::find(&spec).or_else(|| blkid::find(&format!("LABEL={label}")))
    });
    let Some((dev, probe)) = found else {
        log(format!(
            "no state device ({spec}): running from RAM, nothing will persist across reboots"
        ));
        return false;
    };
    let _ = fs::create_dir_all("/state");
    if let Err(e) = mount(
        Some(&dev),
        "/state",
        Some(probe.fstype),
        MsFlags::empty(),
        None::<&str>,
    ) {
        log(format!(
            "mounting the state device {}: {e}; running from RAM",
            dev.display()
        ));
        return false;
    }
    for d in PERSISTENT {
        if let Err(e) = bind(&Path::new("/state").join(d), &Path::new("/").join(d)) {
            log(e);
        }
    }
    log(format!("state device {} mounted", dev.display()));
    true
}

/// The label of the images disk: a filesystem holding an image store (`image/`) with the
/// system images and the user Docker's.
pub const IMAGES_LABEL: &str = "PADDOCK_IMAGES";
/// Where init mounts it.
const IMAGES_MOUNT: &str = "/media/images";

/// Adds what the images disk has and `store` lacks. With `copy` (a store on the state
/// partition) it is copied once (later boots find every layer there already) and the disk
/// unmounted; without, the disk stays mounted and is used in place (symlinks from the store in
/// RAM, [`shipped::link_from`]). Returns whether there was an images disk.
fn use_images_disk(store: &Path, copy: bool) -> bool {
    if !mount_labelled(&[IMAGES_LABEL], IMAGES_MOUNT) {
        return false;
    }
    let disk = Path::new(IMAGES_MOUNT).join("image");
    if copy {
        match shipped::add_from(&disk, store) {
            Ok(done) => log(format!(
                "images disk: {} images; {} layers and blobs copied, {} there already",
                done.images, done.moved, done.reused
            )),
            Err(e) => log(format!(
                "images disk: copying its images onto the state partition failed, services \
                 whose images are not there will not start: {e}"
            )),
        }
        let _ = umount2(IMAGES_MOUNT, MntFlags::MNT_DETACH);
    } else {
        match shipped::link_from(&disk, store) {
            Ok(done) => log(format!(
                "no state partition: the images disk's store is used in place ({} images; {} layers and blobs linked)",
                done.images, done.moved
            )),
            Err(e) => log(format!("images disk: using it in place failed: {e}")),
        }
    }
    true
}

/// Where the initrd keeps mke2fs, its libraries and its loader.
const MKFS_DIR: &str = "/usr/lib/paddock/mkfs";

/// Formats a blank device as the ext4 state partition labelled `label`.
fn autoformat(dev: &Path, label: &str) {
    log(format!(
        "{} is blank and listed in rancher.state.autoformat: formatting it as the state partition",
        dev.display()
    ));
    let dir = Path::new(MKFS_DIR);
    let status =
        paddock_sys::unblock_signals_on_exec(&mut Command::new(dir.join("ld-linux-x86-64.so.2")))
            .arg("--library-path")
            .arg(dir)
            .arg(dir.join("mke2fs"))
            .args(["-q", "-F", "-t", "ext4", "-L", label])
            .arg(dev)
            .env("MKE2FS_CONFIG", dir.join("mke2fs.conf"))
            .stdin(Stdio::null())
            .status();
    match status {
        Ok(st) if st.success() => log(format!("{} formatted", dev.display())),
        Ok(st) => log(format!("formatting {}: mke2fs {st}", dev.display())),
        Err(e) => log(format!("formatting {}: running mke2fs: {e}", dev.display())),
    }
}

/// Step 4: cloud-init from the datasources.
fn cloud_init(cfg: &CloudConfig) {
    use crate::config::datasource;
    let root = Root::new("/");
    let mut specs: Vec<String> = cfg
        .rancher
        .cloud_init
        .datasources
        .iter()
        .map(|l| l.to_string())
        .collect();
    if mount_labelled(&["cidata", "CIDATA"], "/media/cidata") {
        specs.insert(0, "nocloud:/media/cidata".into());
    }
    if mount_labelled(&["config-2", "CONFIG-2"], "/media/config-2")
        && !specs.iter().any(|s| s.starts_with("configdrive"))
    {
        specs.push("configdrive:/media/config-2".into());
    }
    let mut sources = vec![];
    for s in &specs {
        match datasource::from_spec(s, &root, &datasource::Endpoints::default()) {
            Ok(mut v) => sources.append(&mut v),
            Err(e) => log(format!("datasource {s}: {e}")),
        }
    }
    if sources.is_empty() {
        return;
    }
    let (found, errors) = datasource::fetch_first(&sources, Duration::from_secs(2));
    for e in errors {
        log(format!("cloud-init: {e}"));
    }
    match found {
        Some((name, fetched)) => match datasource::save(&root, &fetched) {
            Ok(warnings) => {
                log(format!("cloud-init: user data from {name} saved"));
                for w in warnings {
                    log(format!("cloud-init: {w}"));
                }
            }
            Err(e) => log(format!("cloud-init: saving what {name} returned: {e}")),
        },
        None => log("cloud-init: no datasource had data"),
    }
}

fn load_config() -> CloudConfig {
    let loaded = sources::load(&Root::new("/"), LoadOptions::FULL);
    for p in &loaded.problems {
        log(format!("config problem (skipped, the boot goes on): {p}"));
    }
    loaded.config()
}

/// Step 5: hostname, keys, sysctls.
fn apply_config(cfg: &CloudConfig) {
    let md = sources::read_metadata(&Root::new("/"));
    let hostname = cfg
        .hostname
        .as_ref()
        .map(|h| h.as_str().to_owned())
        .or_else(|| md.as_ref().and_then(|m| m.hostname.clone()))
        .or_else(|| {
            cfg.rancher
                .defaults
                .hostname
                .as_ref()
                .map(|h| h.as_str().to_owned())
        })
        .unwrap_or_else(|| "paddock".into());
    if let Err(e) = nix::unistd::sethostname(&hostname) {
        log(format!("hostname {hostname}: {e}"));
    }
    let _ = fs::create_dir_all("/etc");
    let _ = fs::write("/etc/hostname", format!("{hostname}\n"));
    // From the config, or filled in place by the network service's DHCP client (the
    // console binds the same file).
    let dns = &cfg.rancher.network.dns;
    let mut resolv = String::new();
    for s in &dns.search {
        resolv.push_str(&format!("search {s}\n"));
    }
    for n in &dns.nameservers {
        resolv.push_str(&format!("nameserver {n}\n"));
    }
    if !resolv.is_empty() || !Path::new("/etc/resolv.conf").exists() {
        let _ = fs::write("/etc/resolv.conf", resolv);
    }
    let _ = fs::write(
        "/etc/hosts",
        format!("127.0.0.1 localhost\n127.0.1.1 {hostname}\n::1 localhost ip6-localhost\n"),
    );
    let mut keys: Vec<String> = cfg
        .ssh_authorized_keys
        .iter()
        .map(|k| k.to_string())
        .collect();
    if let Some(m) = &md {
        keys.extend(m.ssh_public_keys.iter().cloned());
    }
    keys.dedup();
    if let Err(e) = write_keys(&keys) {
        log(format!("ssh_authorized_keys: {e}"));
    }
    for (k, v) in &cfg.rancher.sysctl {
        let p = Path::new("/proc/sys").join(k.replace('.', "/"));
        if let Err(e) = fs::write(&p, v.to_string()) {
            log(format!("sysctl {k}: {e}"));
        }
    }
}

/// Mount flags for the option words `mount(8)` takes; the others go to the filesystem.
fn mount_options(options: &str) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = vec![];
    for o in options.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        match o {
            "defaults" | "rw" | "auto" | "nofail" | "exec" | "suid" | "dev" | "async"
            | "_netdev" => {}
            o if o.starts_with("x-") => {}
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "ro" => flags |= MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// The cloud-config's `mounts`: `[device, mountpoint, fstype, options]`, the device a path or
/// `LABEL=`; fstype `auto` (or none) is probed.
fn apply_mounts(cfg: &CloudConfig) {
    for m in &cfg.mounts {
        let target = m.mountpoint.as_str();
        let found = blkid::find(m.device.as_str());
        let fstype = match m.fstype.as_ref().map(|f| f.as_str()) {
            Some(f) if f != "auto" => f.to_owned(),
            _ => match &found {
                Some((_, p)) => p.fstype.to_owned(),
                None => {
                    log(format!("mounts: {}: no such device", m.device));
                    continue;
                }
            },
        };
        let source = found
            .map(|(d, _)| d.display().to_string())
            .unwrap_or_else(|| m.device.to_string());
        let options = m.options.as_ref().map_or("", |o| o.as_str());
        if options.split(',').any(|o| o.trim() == "noauto") {
            continue;
        }
        let (flags, data) = mount_options(options);
        let _ = fs::create_dir_all(target);
        match mount(
            Some(source.as_str()),
            target,
            Some(fstype.as_str()),
            flags,
            (!data.is_empty()).then_some(data.as_str()),
        ) {
            Ok(()) => log(format!("mounts: {source} ({fstype}) on {target}")),
            Err(e) => log(format!("mounts: {source} on {target}: {e}")),
        }
    }
}

/// The console's `rancher` user (uid/gid 1100) logs in with these keys.
fn write_keys(keys: &[String]) -> std::io::Result<()> {
    let ssh = Path::new("/home/rancher/.ssh");
    fs::create_dir_all(ssh)?;
    chown("/home/rancher", Some(1100), Some(1100))?;
    chown(ssh, Some(1100), Some(1100))?;
    fs::set_permissions(ssh, fs::Permissions::from_mode(0o700))?;
    let file = ssh.join("authorized_keys");
    let mut text = keys.join("\n");
    text.push('\n');
    crate::fsutil::write_atomic(&file, text.as_bytes(), 0o600)?;
    chown(&file, Some(1100), Some(1100))
}

/// The system engine, restarted when it dies.
struct EngineProc {
    reaper: Reaper,
}

impl EngineProc {
    fn spawn(&self) -> Option<(i32, std::sync::mpsc::Receiver<i32>)> {
        let _ = fs::create_dir_all(DATA_ROOT);
        let log_file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open("/var/log/system-docker.log")
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null());
        match paddock_sys::unblock_signals_on_exec(&mut Command::new("/usr/bin/system-dockerd"))
            .args(["--data-root", DATA_ROOT, "-H"])
            .arg(format!("unix://{ENGINE_SOCKET}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
        {
            Ok(c) => Some((c.id() as i32, self.reaper.watch(c.id() as i32))),
            Err(e) => {
                log(format!("starting the system engine: {e}"));
                None
            }
        }
    }
}

fn wait_socket(path: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Runs `ros ARGS` and waits for it through the reaper; returns its exit code.
fn ros(reaper: &Reaper, args: &[&str]) -> i32 {
    match paddock_sys::unblock_signals_on_exec(&mut Command::new("/usr/bin/ros"))
        .args(args)
        .env("SYSTEM_DOCKER_HOST", format!("unix://{ENGINE_SOCKET}"))
        .stdin(Stdio::null())
        .spawn()
    {
        Ok(c) => reaper.watch(c.id() as i32).recv().unwrap_or(255),
        Err(e) => {
            log(format!("running ros {args:?}: {e}"));
            255
        }
    }
}

/// The engine's client and the system services' containers (compose project `os`); `all`
/// includes stopped ones. None when the engine does not answer.
fn os_containers(all: bool) -> Option<(Client, Vec<crate::engine::api::types::ContainerSummary>)> {
    let client = Client::new(&format!("unix://{ENGINE_SOCKET}")).ok()?;
    let filter = [(
        "label".to_owned(),
        "com.docker.compose.project=os".to_owned(),
    )];
    let list = client.containers(all, &filter).ok()?;
    Some((client, list))
}

/// System containers live for one boot: what a service changed outside its bind mounts and
/// named volumes is gone after a reboot, anonymous volumes included (volume containers,
/// `io.rancher.os.createonly`, are kept with their data).
fn fresh_system_containers() {
    let Some((client, list)) = os_containers(true) else {
        return;
    };
    let mut removed = 0;
    for c in list {
        let keep =
            crate::service::labels::is_true(c.labels.get(crate::service::labels::CREATE_ONLY));
        if keep {
            continue;
        }
        match client.remove(&c.id, true) {
            Ok(()) => removed += 1,
            Err(e) => log(format!("removing last boot's container {}: {e}", c.id)),
        }
    }
    if removed > 0 {
        log(format!(
            "removed {removed} system containers of the last boot"
        ));
    }
}

/// write_files (into the named container, `console` by default) and runcmd (in the console).
fn cloud_init_execute(cfg: &CloudConfig) {
    let Ok(client) = Client::new(&format!("unix://{ENGINE_SOCKET}")) else {
        return;
    };
    for wf in &cfg.write_files {
        let container = wf
            .container
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_else(|| "console".into());
        let content = match crate::config::decode_content(&wf.content, wf.encoding) {
            Ok(c) => c,
            Err(e) => {
                log(format!("write_files {}: {e}", wf.path.as_str()));
                continue;
            }
        };
        let mode = wf.permissions.map(|m| m.0).unwrap_or(0o644);
        let owner = wf
            .owner
            .as_ref()
            .map(|o| o.to_string())
            .unwrap_or_else(|| "root".into());
        let script = r#"set -e; mkdir -p "$(dirname "$1")"; cat > "$1.paddock-new"; chmod "$2" "$1.paddock-new"; chown "$3" "$1.paddock-new"; mv "$1.paddock-new" "$1""#;
        let argv = [
            "sh".to_owned(),
            "-c".to_owned(),
            script.to_owned(),
            "write_files".to_owned(),
            wf.path.as_str().to_owned(),
            format!("{mode:o}"),
            owner,
        ];
        match exec_with_input(&client, &container, &argv, &content) {
            Ok((0, _)) => log(format!("write_files: {} in {container}", wf.path.as_str())),
            Ok((code, out)) => log(format!(
                "write_files {} in {container}: exit {code}: {}",
                wf.path.as_str(),
                String::from_utf8_lossy(&out).trim()
            )),
            Err(e) => log(format!(
                "write_files {} in {container}: {e}",
                wf.path.as_str()
            )),
        }
    }
    for cmd in &cfg.runcmd {
        let argv: Vec<String> = match cmd {
            crate::config::model::Command::Shell(s) => vec!["sh".into(), "-c".into(), s.clone()],
            crate::config::model::Command::Argv(v) => v.clone(),
        };
        match exec_with_input(&client, "console", &argv, &[]) {
            Ok((code, _)) => log(format!("runcmd {argv:?}: exit {code}")),
            Err(e) => log(format!("runcmd {argv:?}: {e}")),
        }
    }
}

/// Runs `argv` in `container` with `input` on stdin; returns the exit code and the output.
pub fn exec_with_input(
    client: &Client,
    container: &str,
    argv: &[String],
    input: &[u8],
) -> Result<(i64, Vec<u8>), String> {
    use crate::engine::api::types::{ExecCreateBody, ExecStartBody};
    let id = client
        .exec_create(
            container,
            &ExecCreateBody {
                attach_stdin: true,
                attach_stdout: true,
                attach_stderr: true,
                cmd: argv.to_vec(),
                ..ExecCreateBody::default()
            },
        )
        .map_err(|e| e.to_string())?;
    let (raw, mut up) = client
        .upgrade(&format!("/exec/{id}/start"), &ExecStartBody::default())
        .map_err(|e| e.to_string())?;
    up.writer.write_all(input).map_err(|e| e.to_string())?;
    let _ = up.writer.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = crate::engine::client::demux(up.reader, raw, &mut |_, b| {
        out.extend_from_slice(b);
        Ok(())
    });
    let st = client.exec_inspect(&id).map_err(|e| e.to_string())?;
    Ok((st.exit_code.unwrap_or(-1), out))
}

/// What a shutdown ends in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    Reboot,
    PowerOff,
    Halt,
}

impl PowerAction {
    /// The signal PID 1 takes for it (busybox's convention).
    pub fn signal(self) -> Signal {
        match self {
            PowerAction::Reboot => Signal::SIGTERM,
            PowerAction::PowerOff => Signal::SIGUSR2,
            PowerAction::Halt => Signal::SIGUSR1,
        }
    }
}

/// Stops the services (console last), the engine and everything else; syncs, unmounts.
fn shutdown(action: PowerAction, cfg: &CloudConfig, engine_pid: Option<i32>) {
    log(format!("{action:?}: stopping system services"));
    let timeout = cfg.rancher.shutdown_timeout.map(|s| s.0).unwrap_or(60);
    if let Some((client, list)) = os_containers(false) {
        let name = |c: &crate::engine::api::types::ContainerSummary| {
            c.names
                .first()
                .map(|n| n.trim_start_matches('/').to_owned())
                .unwrap_or_default()
        };
        let per = (timeout / 2).max(1);
        let (console, rest): (Vec<_>, Vec<_>) = list
            .into_iter()
            .partition(|c| c.labels.contains_key("io.rancher.os.console") || name(c) == "console");
        for group in [rest, console] {
            std::thread::scope(|s| {
                for c in &group {
                    let client = client.clone();
                    s.spawn(move || {
                        let n = name(c);
                        match client.verb(&c.id, "stop", &format!("t={per}")) {
                            Ok(()) => log(format!("stopped {n}")),
                            Err(e) => log(format!("stopping {n}: {e}")),
                        }
                    });
                }
            });
        }
    }
    if let Some(pid) = engine_pid {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM);
    }
    // Everything left (shims, stragglers).
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), Signal::SIGKILL);
    nix::unistd::sync();
    if let Ok(m) = fs::read_to_string("/proc/self/mounts") {
        let mut points: Vec<&str> = m
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect();
        points.reverse();
        for p in points {
            if p.starts_with("/state")
                || p.starts_with("/media")
                || cfg.mounts.iter().any(|m| m.mountpoint.as_str() == p)
                || PERSISTENT.iter().any(|d| p == format!("/{d}"))
            {
                let _ = umount2(p, MntFlags::MNT_DETACH);
            }
        }
    }
    nix::unistd::sync();
    log(format!("{action:?}"));
    let mode = match action {
        PowerAction::Reboot => nix::sys::reboot::RebootMode::RB_AUTOBOOT,
        PowerAction::PowerOff => nix::sys::reboot::RebootMode::RB_POWER_OFF,
        PowerAction::Halt => nix::sys::reboot::RebootMode::RB_HALT_SYSTEM,
    };
    let _ = nix::sys::reboot::reboot(mode);
}

/// PID 1. Returns only when not PID 1 (a mistaken invocation).
pub fn main() -> i32 {
    if std::process::id() != 1 {
        eprintln!("ros init: not process 1; refusing to take over this system");
        return 1;
    }
    // pivot_root(2) cannot leave the initramfs: move into a tmpfs first (this re-executes
    // /init, so the code below runs in the tmpfs root).
    if switchroot::in_initramfs() {
        let why = switchroot::to_tmpfs();
        log(format!(
            "{why}; staying in the initramfs (containers without pivot_root)"
        ));
    }
    // Signals are taken synchronously; block them before any thread exists.
    let mut signals = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGPWR,
    ] {
        signals.add(s);
    }
    let _ = signals.thread_block();
    mount_basics();
    tune_kernel(&fs::read_to_string(crate::config::CMDLINE_FILE).unwrap_or_default());
    log(format!(
        "init started (ros {}), root on {}",
        env!("CARGO_PKG_VERSION"),
        if crate::engine::runtime::root_is_ramfs() {
            "the initramfs"
        } else {
            "a tmpfs"
        }
    ));
    // The ISO's image archive comes second: a store without its marker was cut short.
    let images_cut = Path::new(SHIPPED_IMAGES).exists() && !Path::new(IMAGES_COMPLETE).exists();
    if images_cut {
        // A half-unpacked layer must never be installed: its name says it is complete. The
        // images disk, if attached, stands in for it.
        let _ = fs::remove_dir_all(SHIPPED_IMAGES);
    }
    for (marker, missing) in [
        (INITRD_COMPLETE, !Path::new(INITRD_COMPLETE).exists()),
        (IMAGES_COMPLETE, images_cut),
    ] {
        if missing {
            log(format!(
                "the initramfs is incomplete ({marker} is missing): the kernel could not \
                 unpack all of it, usually for want of memory (see \"Initramfs unpacking \
                 failed\" above); give the machine more memory, or boot the kernel and initrd \
                 with the images disk instead of the ISO. Booting on with what is there"
            ));
        }
    }
    load_modules(BUILTIN_MODULES.iter().copied());
    log("modules loaded");
    // The kernel command line and built-in defaults say where the state is.
    let early = load_config();
    let on_state = mount_state(&early);
    // mke2fs is needed only for autoformat, just done: its 3 MB of tmpfs are RAM.
    if let Err(e) = fs::remove_dir_all(MKFS_DIR) {
        log(format!("removing {MKFS_DIR}: {e}"));
    }
    cloud_init(&early);
    let cfg = load_config();
    let extra: Vec<String> = cfg.rancher.modules.iter().map(|m| m.to_string()).collect();
    load_modules(extra.iter().map(String::as_str));
    apply_config(&cfg);
    apply_mounts(&cfg);
    log("config applied");

    let reaper = Reaper::start();
    // The images the ISO's initrd ships: moved onto the state partition (only what it lacks),
    // which frees their RAM; without one they are used in place. Booted from a kernel and a
    // plain initrd, the images come from the images disk.
    let store = Path::new(DATA_ROOT).join("image");
    let shipped = Path::new(SHIPPED_IMAGES).join("image");
    if !shipped.is_dir() {
        let found = use_images_disk(&store, on_state);
        if !found && store.join("images.json").is_file() {
            log(format!(
                "no images disk (label {IMAGES_LABEL}): using the images on the state partition"
            ));
        } else if !found {
            log(format!(
                "no system images: the initrd ships none and no images disk (label \
                 {IMAGES_LABEL}) was found; attach dist/images.img or boot the ISO"
            ));
        }
    } else {
        let installed = if on_state {
            match shipped::install(&shipped, &store) {
                Ok(done) => {
                    log(format!(
                        "shipped images on the state partition ({} images; {} layers and blobs copied, {} there already); their RAM is freed",
                        done.images, done.moved, done.reused
                    ));
                    true
                }
                Err(e) => {
                    log(format!("keeping the shipped images in RAM: {e}"));
                    false
                }
            }
        } else {
            false
        };
        if !installed && let Err(e) = bind(&shipped, &store) {
            log(e);
        }
        // The images disk adds what the ISO does not ship (the user Docker's image).
        use_images_disk(&store, installed);
    }
    let engine = EngineProc {
        reaper: reaper.clone(),
    };
    let mut engine_proc = engine.spawn();
    if wait_socket(ENGINE_SOCKET, Duration::from_secs(20)) {
        log("system engine ready");
    } else {
        log("the system engine did not come up; see /var/log/system-docker.log");
    }
    fresh_system_containers();
    let code = ros(&reaper, &["service", "up", "--progress"]);
    log(format!("system services up (ros service up exit {code})"));
    cloud_init_execute(&cfg);
    log("boot finished");

    // One thread takes the blocked signals; the main loop also watches the engine.
    let (sig_tx, sig_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        loop {
            match signals.wait() {
                Ok(sig) => {
                    if sig_tx.send(sig).is_err() {
                        break;
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    });
    loop {
        // The engine dies: start it again (its containers keep running under their shims).
        if let Some((_, rx)) = &engine_proc
            && let Ok(code) = rx.try_recv()
        {
            log(format!("the system engine exited ({code}); restarting it"));
            engine_proc = engine.spawn();
            if wait_socket(ENGINE_SOCKET, Duration::from_secs(20)) {
                ros(&reaper, &["service", "up"]);
            }
        }
        let action = match sig_rx.recv_timeout(Duration::from_millis(500)) {
            Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => PowerAction::Reboot,
            Ok(Signal::SIGUSR2) | Ok(Signal::SIGPWR) => PowerAction::PowerOff,
            Ok(Signal::SIGUSR1) => PowerAction::Halt,
            _ => continue,
        };
        shutdown(action, &cfg, engine_proc.as_ref().map(|(pid, _)| *pid));
    }
}

/// `reboot`, `poweroff`, `halt` (multi-call names): ask PID 1.
pub fn request(action: PowerAction) -> i32 {
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(1), action.signal()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{action:?}: signalling process 1: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_keeps_its_huge_page_setting() {
        assert!(thp_on_cmdline(
            "console=ttyS0 transparent_hugepage=always quiet"
        ));
        assert!(!thp_on_cmdline(
            "console=ttyS0 rancher.transparent_hugepage quiet"
        ));
        assert!(!thp_on_cmdline(""));
    }

    #[test]
    fn mount_options_split_into_flags_and_data() {
        let (flags, data) =
            mount_options("defaults,ro,noatime,size=10m,x-systemd.automount,mode=0755");
        assert_eq!(flags, MsFlags::MS_RDONLY | MsFlags::MS_NOATIME);
        assert_eq!(data, "size=10m,mode=0755");
        let (flags, data) = mount_options("");
        assert!(flags.is_empty() && data.is_empty());
    }
}
