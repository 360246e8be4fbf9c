//! The system images, built from Debian packages without a Docker daemon: each image's
//! package closure (from apt) is unpacked with `dpkg -x`, pruned, given its files, written as a
//! deterministic tar layer into one OCI layout, and loaded into a `ros` image store with the
//! built `ros image load`.
//!
//! Every image is the shared `base` layer (busybox-static with its applet links, glibc, the
//! minimal /etc) plus one layer of its own, so the store (which keys layers by diff id) holds
//! the base once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::json;
use testkit::layout::{Layout, descriptor, sha256};

use super::apt;
use crate::sh;

/// The tag every image gets: `paddock/<name>:<VERSION>`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Packages never installed into an image (maintainer-script machinery, init systems, tools
/// the container has no use for). The closure does not enter them.
pub const EXCLUDE: &[&str] = &[
    "debconf",
    "cdebconf",
    "debconf-2.0",
    "perl-base",
    "perl",
    "dpkg",
    "systemd",
    "systemd-sysv",
    "systemd-standalone-sysusers",
    "init-system-helpers",
    "usrmerge",
    "usr-is-merged",
    "adduser",
    "passwd",
    "login",
    "ucf",
    "runit-helper",
    "lsb-base",
    "sysvinit-utils",
    "procps",
    "coreutils",
    "debianutils",
    "sensible-utils",
    "install-info",
    "base-files",
    "tzdata",
    "mount",
    "util-linux",
];

/// Directories removed from every layer.
pub const PRUNE: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bug",
    "usr/include",
    // glibc's iconv modules (8 MB): nothing in the images converts character sets.
    "usr/lib/x86_64-linux-gnu/gconv",
    // udev's hwdb sources (9 MB) are only useful compiled (`systemd-hwdb update`), and only
    // for desktop hardware (keymaps, sensors, ...).
    "lib/udev/hwdb.d",
];

#[derive(Debug)]
pub struct FileDef {
    pub path: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub content: &'static str,
}

const fn file(path: &'static str, mode: u32, content: &'static str) -> FileDef {
    FileDef {
        path,
        mode,
        uid: 0,
        gid: 0,
        content,
    }
}

/// A directory (content empty, mode includes only permission bits).
#[derive(Debug)]
pub struct DirDef {
    pub path: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug)]
pub struct ImageDef {
    pub name: &'static str,
    /// Debian packages of the image's own layer (with their closure, minus the base layer's).
    pub packages: &'static [&'static str],
    pub dirs: &'static [DirDef],
    pub files: &'static [FileDef],
    pub cmd: &'static [&'static str],
}

const OS_RELEASE: &str = "PRETTY_NAME=\"Paddock\"\nNAME=\"Paddock\"\nID=paddock\nID_LIKE=rancheros\nVERSION_ID=\"0.1.0\"\nHOME_URL=\"https://github.com/paddock-os/paddock\"\n";

const BASE_PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const BASE_GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";
const BASE_SHADOW: &str = "root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n";
const NSSWITCH: &str = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n";

const CONSOLE_PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
rancher:x:1100:1100:rancher:/home/rancher:/bin/sh\n\
docker:x:1101:1101:docker:/home/docker:/bin/sh\n\
sshd:x:100:65534:sshd privilege separation:/run/sshd:/bin/false\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const CONSOLE_GROUP: &str = "root:x:0:\n\
sudo:x:27:rancher\n\
rancher:x:1100:\n\
docker:x:1101:rancher,docker\n\
nogroup:x:65534:\n";
const CONSOLE_SHADOW: &str = "root:*:19000:0:99999:7:::\n\
rancher:*:19000:0:99999:7:::\n\
docker:*:19000:0:99999:7:::\n\
sshd:*:19000:0:99999:7:::\n\
nobody:*:19000:0:99999:7:::\n";
const SSHD_CONFIG: &str = "# Paddock console: key login for rancher (and docker), nothing else.\n\
Port 22\n\
HostKey /var/lib/rancher/ssh/ssh_host_ed25519_key\n\
HostKey /var/lib/rancher/ssh/ssh_host_rsa_key\n\
PermitRootLogin no\n\
AllowUsers rancher docker\n\
PubkeyAuthentication yes\n\
AuthorizedKeysFile .ssh/authorized_keys\n\
PasswordAuthentication no\n\
KbdInteractiveAuthentication no\n\
UsePAM no\n\
UseDNS no\n\
PrintMotd no\n\
ClientAliveInterval 180\n\
Subsystem sftp /usr/lib/openssh/sftp-server\n";
const SUDOERS_RANCHER: &str = "rancher ALL=(ALL) NOPASSWD: ALL\ndocker ALL=(ALL) NOPASSWD: ALL\n";
const PAM_AUTH: &str = "auth\t[success=1 default=ignore]\tpam_unix.so nullok\nauth\trequisite\tpam_deny.so\nauth\trequired\tpam_permit.so\n";
const PAM_ACCOUNT: &str = "account\t[success=1 new_authtok_reqd=done default=ignore]\tpam_unix.so\naccount\trequisite\tpam_deny.so\naccount\trequired\tpam_permit.so\n";
const PAM_SESSION: &str = "session\trequired\tpam_permit.so\nsession\toptional\tpam_unix.so\n";
const PAM_PASSWORD: &str = "password\t[success=1 default=ignore]\tpam_unix.so obscure yescrypt\npassword\trequisite\tpam_deny.so\npassword\trequired\tpam_permit.so\n";

/// The console's command: host keys made once, kept on the state partition
/// (/var/lib/rancher), then sshd; a serial getty when `rancher.autologin` names a port. sshd
/// starts with the ed25519 key; the RSA key (about 10 s under TCG) is made beside it on the
/// first boot and served from the next start on (a SIGHUP to load it at once would reset the
/// connections sshd is accepting at that moment).
const CONSOLE_START: &str = "set -e; mkdir -p /run/sshd /var/lib/rancher/ssh; \
k=/var/lib/rancher/ssh/ssh_host_ed25519_key; \
[ -s $k ] || { rm -f $k $k.pub; ssh-keygen -q -t ed25519 -N '' -f $k; }; \
k=/var/lib/rancher/ssh/ssh_host_rsa_key; \
[ -s $k ] || (rm -f $k $k.pub $k.new $k.new.pub; ssh-keygen -q -t rsa -N '' -f $k.new \
&& mv $k.new.pub $k.pub && mv $k.new $k) & \
for a in $(cat /proc/cmdline); do case $a in rancher.autologin=*) t=${a#*=}; \
[ -c /dev/$t ] && (while :; do setsid getty -n -l /usr/lib/paddock/autologin 115200 $t vt100; \
sleep 1; done) & ;; esac; done; \
exec /usr/sbin/sshd -D -e";
/// What the serial getty runs instead of asking for a name: a login shell for rancher.
const AUTOLOGIN: &str = "#!/bin/sh\nexec login -f rancher\n";

const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
# udhcpc event script (Paddock network image): addresses, default route, resolv.conf.
[ -n "$1" ] || { echo "usage: $0 deconfig|bound|renew|leasefail|nak"; exit 1; }
RESOLV_CONF=${RESOLV_CONF:-/etc/resolv.conf}
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set dev "$interface" up
    ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip -4 addr add "$ip/${mask:-24}" ${broadcast:+broadcast $broadcast} dev "$interface"
    if [ -n "$router" ]; then
      while ip -4 route del default dev "$interface" 2>/dev/null; do :; done
      # One default route per link, ordered by the link's index (eth0 first).
      metric=$(( $(cat /sys/class/net/$interface/ifindex 2>/dev/null || echo 1) * 10 ))
      for r in $router; do
        ip -4 route add default via "$r" dev "$interface" metric $metric
        metric=$((metric + 1))
      done
    fi
    if [ -n "$dns" ] && [ -z "$NO_RESOLV_CONF" ]; then
      tmp="$RESOLV_CONF.udhcpc"
      : > "$tmp"
      [ -n "$domain" ] && echo "search $domain" >> "$tmp"
      for d in $dns; do echo "nameserver $d" >> "$tmp"; done
      cat "$tmp" > "$RESOLV_CONF" && rm -f "$tmp"
    fi
    ;;
  leasefail|nak)
    echo "udhcpc: $1 on $interface" >&2
    ;;
esac
exit 0
"#;

const NTPD_CONF: &str = "servers pool.ntp.org\n";
const NTP_PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nntpd:x:101:101:openntpd:/var/lib/openntpd/chroot:/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const NTP_GROUP: &str = "root:x:0:\nntpd:x:101:\nnogroup:x:65534:\n";

const ACPID_CONF: &str = "PWRF poweroff.sh\n";
const ACPI_POWEROFF: &str = "#!/bin/sh\n# The power button: ask PID 1 to power off (busybox convention: SIGUSR2).\nexec poweroff\n";

const R: u32 = 0;

/// The images, in build order (`base` first: every other image is base + its own layer).
pub const IMAGES: &[ImageDef] = &[
    ImageDef {
        name: "base",
        packages: &["busybox-static", "libc6"],
        dirs: &[
            DirDef {
                path: "tmp",
                mode: 0o1777,
                uid: R,
                gid: R,
            },
            DirDef {
                path: "root",
                mode: 0o700,
                uid: R,
                gid: R,
            },
            DirDef {
                path: "run",
                mode: 0o755,
                uid: R,
                gid: R,
            },
            DirDef {
                path: "var/log",
                mode: 0o755,
                uid: R,
                gid: R,
            },
            DirDef {
                path: "proc",
                mode: 0o555,
                uid: R,
                gid: R,
            },
            DirDef {
                path: "sys",
                mode: 0o555,
                uid: R,
                gid: R,
            },
            DirDef {
                path: "dev",
                mode: 0o755,
                uid: R,
                gid: R,
            },
        ],
        files: &[
            file("etc/os-release", 0o644, OS_RELEASE),
            file("etc/passwd", 0o644, BASE_PASSWD),
            file("etc/group", 0o644, BASE_GROUP),
            file("etc/shadow", 0o600, BASE_SHADOW),
            file("etc/nsswitch.conf", 0o644, NSSWITCH),
            file("etc/hosts", 0o644, "127.0.0.1 localhost\n::1 localhost\n"),
        ],
        cmd: &["/bin/sh"],
    },
    ImageDef {
        name: "console",
        // libseccomp2: runc re-executes itself as `runc init` with a clean environment, so the
        // user Docker's runc (running in the console's mount namespace) needs it here.
        packages: &["openssh-server", "openssh-client", "sudo", "libseccomp2"],
        dirs: &[
            DirDef {
                path: "home/rancher",
                mode: 0o755,
                uid: 1100,
                gid: 1100,
            },
            DirDef {
                path: "home/rancher/.ssh",
                mode: 0o700,
                uid: 1100,
                gid: 1100,
            },
            DirDef {
                path: "home/docker",
                mode: 0o755,
                uid: 1101,
                gid: 1101,
            },
            DirDef {
                path: "run/sshd",
                mode: 0o755,
                uid: R,
                gid: R,
            },
        ],
        files: &[
            file("etc/passwd", 0o644, CONSOLE_PASSWD),
            file("etc/group", 0o644, CONSOLE_GROUP),
            file("etc/shadow", 0o600, CONSOLE_SHADOW),
            file("etc/ssh/sshd_config", 0o644, SSHD_CONFIG),
            file("etc/sudoers.d/paddock", 0o440, SUDOERS_RANCHER),
            file("etc/pam.d/common-auth", 0o644, PAM_AUTH),
            file("etc/pam.d/common-account", 0o644, PAM_ACCOUNT),
            file("etc/pam.d/common-session", 0o644, PAM_SESSION),
            file(
                "etc/pam.d/common-session-noninteractive",
                0o644,
                PAM_SESSION,
            ),
            file("etc/pam.d/common-password", 0o644, PAM_PASSWORD),
            file("usr/lib/paddock/autologin", 0o755, AUTOLOGIN),
        ],
        cmd: &["/bin/sh", "-c", CONSOLE_START],
    },
    ImageDef {
        name: "network",
        packages: &[],
        dirs: &[],
        files: &[file(
            "usr/share/udhcpc/default.script",
            0o755,
            UDHCPC_SCRIPT,
        )],
        cmd: &[
            "udhcpc",
            "-f",
            "-i",
            "eth0",
            "-s",
            "/usr/share/udhcpc/default.script",
        ],
    },
    ImageDef {
        // Debian's busybox builds have no ntpd applet: OpenNTPD (150 KB) instead.
        name: "ntp",
        packages: &["openntpd"],
        dirs: &[DirDef {
            path: "var/lib/openntpd/chroot",
            mode: 0o755,
            uid: R,
            gid: R,
        }],
        files: &[
            file("etc/openntpd/ntpd.conf", 0o644, NTPD_CONF),
            file("etc/passwd", 0o644, NTP_PASSWD),
            file("etc/group", 0o644, NTP_GROUP),
        ],
        cmd: &["/usr/sbin/ntpd", "-d", "-f", "/etc/openntpd/ntpd.conf"],
    },
    ImageDef {
        name: "syslog",
        packages: &[],
        dirs: &[],
        files: &[],
        cmd: &["syslogd", "-n", "-O", "/var/log/messages"],
    },
    ImageDef {
        name: "acpid",
        packages: &[],
        dirs: &[],
        files: &[
            file("etc/acpid.conf", 0o644, ACPID_CONF),
            file("etc/acpi/poweroff.sh", 0o755, ACPI_POWEROFF),
        ],
        cmd: &["acpid", "-f", "-c", "/etc/acpi", "-a", "/etc/acpid.conf"],
    },
    ImageDef {
        name: "udev",
        packages: &["udev"],
        dirs: &[DirDef {
            path: "run/udev",
            mode: 0o755,
            uid: R,
            gid: R,
        }],
        files: &[],
        cmd: &["/lib/systemd/systemd-udevd"],
    },
];

/// Images only on the images disk (`dist/images.img`), not in the ISO: base plus their own
/// layer, like the others.
pub const DISK_IMAGES: &[ImageDef] = &[ImageDef {
    // The user Docker (Debian's docker.io, containerd, runc, iptables); `ros docker-init` runs
    // its dockerd in the console's mount namespace.
    name: "docker",
    packages: &["docker.io", "iptables"],
    dirs: &[DirDef {
        path: "etc/docker",
        mode: 0o755,
        uid: R,
        gid: R,
    }],
    files: &[],
    cmd: &["/usr/sbin/dockerd"],
}];

/// Links made in an image after its packages are unpacked (`dpkg -x` runs no maintainer
/// scripts, so Debian's alternatives are missing). Relative, so they also resolve when the
/// image is reached through `/proc/<pid>/root` from another mount namespace.
fn image_links(name: &str) -> &'static [(&'static str, &'static str)] {
    match name {
        "docker" => &[
            ("usr/sbin/iptables", "xtables-nft-multi"),
            ("usr/sbin/iptables-save", "xtables-nft-multi"),
            ("usr/sbin/iptables-restore", "xtables-nft-multi"),
            ("usr/sbin/ip6tables", "xtables-nft-multi"),
            ("usr/sbin/ip6tables-save", "xtables-nft-multi"),
            ("usr/sbin/ip6tables-restore", "xtables-nft-multi"),
        ],
        _ => &[],
    }
}

/// Files removed from one image: tools its service never runs.
fn image_prune(name: &str) -> &'static [&'static str] {
    match name {
        // libnetwork's test tools, containerd's CLI and its v1 shims (dockerd 20.10 uses
        // io.containerd.runc.v2): 67 MB.
        "docker" => &[
            "usr/bin/dnet",
            "usr/sbin/ovrouter",
            "usr/bin/ctr",
            "usr/bin/containerd-shim",
            "usr/bin/containerd-shim-runc-v1",
            "usr/bin/containerd-stress",
        ],
        _ => &[],
    }
}

/// What the images will be built from: each image's packages at their exact versions.
#[derive(Debug)]
pub struct Plan {
    /// Image name -> (package -> version) of its own layer.
    pub layers: BTreeMap<String, BTreeMap<String, String>>,
}

impl Plan {
    /// A key that changes whenever a package version or an image definition does.
    pub fn key(&self) -> String {
        sha256(
            format!(
                "{:?}{IMAGES:?}{DISK_IMAGES:?}{EXCLUDE:?}{PRUNE:?}{:?}{:?}",
                self.layers,
                image_links("docker"),
                image_prune("docker")
            )
            .as_bytes(),
        )
    }
}

/// Resolves every image's closure and the candidate versions (apt metadata only).
pub fn plan() -> Result<Plan> {
    let mut base_set: BTreeSet<String> = BTreeSet::new();
    let mut names: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for def in IMAGES.iter().chain(DISK_IMAGES) {
        if def.packages.is_empty() {
            names.insert(def.name.to_owned(), vec![]);
            continue;
        }
        let mut c = apt::closure(def.packages, EXCLUDE)
            .with_context(|| format!("resolving the packages of image {}", def.name))?;
        if def.name == "base" {
            base_set = c.iter().cloned().collect();
        } else {
            c.retain(|p| !base_set.contains(p));
        }
        names.insert(def.name.to_owned(), c);
    }
    let all: Vec<String> = names
        .values()
        .flatten()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let versions = apt::candidates(&all)?;
    let layers = names
        .into_iter()
        .map(|(img, pkgs)| {
            let m = pkgs
                .into_iter()
                .map(|p| {
                    let v = versions.get(&p).cloned().unwrap_or_default();
                    (p, v)
                })
                .collect();
            (img, m)
        })
        .collect();
    Ok(Plan { layers })
}

/// Builds the system images of `plan` into an image store at `root` + `data_root` (through
/// `ros --root ROOT --data-root DATA_ROOT image load`), and every image, the [`DISK_IMAGES`]
/// included, into one at `disk_root` + `data_root`. `work` is scratch space.
pub fn build(
    plan: &Plan,
    ros: &Path,
    work: &Path,
    root: &Path,
    data_root: &str,
    disk_root: &Path,
) -> Result<()> {
    let all: BTreeMap<String, String> = plan
        .layers
        .values()
        .flat_map(|m| m.iter().map(|(p, v)| (p.clone(), v.clone())))
        .collect();
    let debs = apt::download(&all)?;
    let _ = fs::remove_dir_all(work);
    fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let mut layouts = [
        Layout::create(&work.join("layout"))?,
        Layout::create(&work.join("disk-layout"))?,
    ];
    let mut base_layer: Option<BuiltLayer> = None;
    let busybox_list = applets(&debs)?;
    for (def, on_disk) in IMAGES
        .iter()
        .map(|d| (d, false))
        .chain(DISK_IMAGES.iter().map(|d| (d, true)))
    {
        let layout = &mut layouts[usize::from(on_disk)];
        if on_disk && let Some(b) = &base_layer {
            // The disk's images share the base layer: its blob goes into that layout too.
            layout.blob(&b.gz)?;
        }
        let t0 = std::time::Instant::now();
        let pkgs = plan.layers.get(def.name).cloned().unwrap_or_default();
        eprintln!(
            "xtask: image {}: {} package(s){}",
            def.name,
            pkgs.len(),
            if pkgs.is_empty() {
                String::new()
            } else {
                format!(" ({})", pkgs.keys().cloned().collect::<Vec<_>>().join(" "))
            }
        );
        let stage = work.join("rootfs").join(def.name);
        fs::create_dir_all(&stage).with_context(|| format!("creating {}", stage.display()))?;
        for (p, v) in &pkgs {
            let deb = debs
                .get(p)
                .with_context(|| format!("no .deb downloaded for {p}"))?;
            let dir = apt::unpack(p, v, deb)?;
            sh(Command::new("cp")
                .arg("-a")
                .arg(format!("{}/.", dir.display()))
                .arg(&stage))
            .with_context(|| format!("copying package {p} into image {}", def.name))?;
        }
        let _ = fs::remove_file(stage.join(".extracted"));
        for p in PRUNE {
            let d = stage.join(p);
            if d.exists() {
                fs::remove_dir_all(&d).with_context(|| format!("pruning {}", d.display()))?;
            }
        }
        if def.name == "base" {
            // /var/run is /run, as on Debian (sockets under /run are found by either name).
            let var_run = stage.join("var/run");
            if fs::symlink_metadata(&var_run).is_err() {
                fs::create_dir_all(stage.join("var"))?;
                std::os::unix::fs::symlink("/run", &var_run)
                    .with_context(|| format!("linking {}", var_run.display()))?;
            }
            for a in &busybox_list {
                let link = stage.join(a);
                if fs::symlink_metadata(&link).is_ok() {
                    continue;
                }
                if let Some(parent) = link.parent() {
                    fs::create_dir_all(parent)?;
                }
                std::os::unix::fs::symlink("/bin/busybox", &link)
                    .with_context(|| format!("linking {}", link.display()))?;
            }
        }
        for p in image_prune(def.name) {
            let _ = fs::remove_file(stage.join(p));
        }
        for (link, target) in image_links(def.name) {
            let p = stage.join(link);
            let _ = fs::remove_file(&p);
            std::os::unix::fs::symlink(target, &p)
                .with_context(|| format!("linking {}", p.display()))?;
        }
        for d in def.dirs {
            let p = stage.join(d.path);
            fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
            set_meta(&p, d.mode, d.uid, d.gid)?;
        }
        for f in def.files {
            let p = stage.join(f.path);
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent)?;
            }
            let _ = fs::remove_file(&p);
            fs::write(&p, f.content).with_context(|| format!("writing {}", p.display()))?;
            set_meta(&p, f.mode, f.uid, f.gid)?;
        }
        let layer = BuiltLayer::from_dir(&stage, layout)
            .with_context(|| format!("writing the layer of image {}", def.name))?;
        let layers: Vec<&BuiltLayer> = match (&base_layer, def.name) {
            (_, "base") => vec![&layer],
            (Some(b), _) => vec![b, &layer],
            (None, _) => bail!("image {} is listed before base", def.name),
        };
        let desc = image(layout, def, &layers, &pkgs)?;
        let name = format!("paddock/{}:{VERSION}", def.name);
        layout.tag(desc, &name)?;
        let unpacked: u64 = layers.iter().map(|l| l.tar_size).sum();
        println!(
            "image {name:<24} {:>7} unpacked ({} own layer, {} gzip) in {:.1}s",
            human(unpacked),
            human(layer.tar_size),
            human(layer.gz_size),
            t0.elapsed().as_secs_f64()
        );
        if def.name == "base" {
            base_layer = Some(layer);
        }
    }
    // The images disk has every image: -kernel boots get the system images from it too.
    for (root, layout) in [
        (root, "layout"),
        (disk_root, "layout"),
        (disk_root, "disk-layout"),
    ] {
        eprintln!("xtask: ros image load into {}{data_root}", root.display());
        sh(Command::new(ros)
            .arg("--root")
            .arg(root)
            .arg("--data-root")
            .arg(data_root)
            .args(["image", "load", "-q", "-i"])
            .arg(work.join(layout)))?;
    }
    Ok(())
}

fn set_meta(p: &Path, mode: u32, uid: u32, gid: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", p.display()))?;
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", p.display()))
}

/// `busybox --list-full` of the base image's busybox-static.
fn applets(debs: &BTreeMap<String, PathBuf>) -> Result<Vec<String>> {
    let Some(deb) = debs.get("busybox-static") else {
        bail!("the base image has no busybox-static")
    };
    let dir = cache_dir_for(deb)?;
    let bb = dir.join("bin/busybox");
    let out = Command::new(&bb)
        .arg("--list-full")
        .output()
        .with_context(|| format!("running {}", bb.display()))?;
    if !out.status.success() {
        bail!("{} --list-full failed", bb.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty() && *l != "bin/busybox")
        .map(str::to_owned)
        .collect())
}

/// The unpacked directory of a downloaded .deb (its file name gives package and version).
fn cache_dir_for(deb: &Path) -> Result<PathBuf> {
    let name = deb
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut parts = name.split('_');
    let (Some(p), Some(v)) = (parts.next(), parts.next()) else {
        bail!("{}: not a Debian package file name", deb.display())
    };
    apt::unpack(p, &v.replace("%3a", ":"), deb)
}

struct BuiltLayer {
    /// The compressed layer (the blob), for a second layout that shares the layer.
    gz: Vec<u8>,
    diff_id: String,
    desc: serde_json::Value,
    tar_size: u64,
    gz_size: u64,
}

impl BuiltLayer {
    fn from_dir(dir: &Path, layout: &Layout) -> Result<BuiltLayer> {
        let tar = tar_dir(dir)?;
        let mut gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar)?;
        let gz = gz.finish()?;
        layout.blob(&gz)?;
        Ok(BuiltLayer {
            diff_id: sha256(&tar),
            desc: descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &gz),
            tar_size: tar.len() as u64,
            gz_size: gz.len() as u64,
            gz,
        })
    }
}

/// A deterministic tar of `dir`: sorted, fixed mtime, owners and modes as on disk, hardlinks
/// kept, GNU long names.
pub fn tar_dir(dir: &Path) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut seen: HashMap<(u64, u64), String> = HashMap::new();
    walk(&mut b, dir, "", &mut seen)?;
    Ok(b.into_inner()?)
}

fn walk(
    b: &mut tar::Builder<Vec<u8>>,
    dir: &Path,
    rel: &str,
    seen: &mut HashMap<(u64, u64), String>,
) -> Result<()> {
    let mut names: Vec<String> = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        let Ok(n) = e.file_name().into_string() else {
            bail!("{}: non-UTF-8 name in {}", rel, dir.display());
        };
        names.push(n);
    }
    names.sort();
    for n in names {
        let p = dir.join(&n);
        let r = if rel.is_empty() {
            n.clone()
        } else {
            format!("{rel}/{n}")
        };
        let md = fs::symlink_metadata(&p).with_context(|| format!("reading {}", p.display()))?;
        let mut h = tar::Header::new_gnu();
        h.set_mode(md.mode() & 0o7777);
        h.set_uid(u64::from(md.uid()));
        h.set_gid(u64::from(md.gid()));
        h.set_mtime(u64::from(super::cpio::MTIME));
        let ft = md.file_type();
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, format!("{r}/"), std::io::empty())?;
            walk(b, &p, &r, seen)?;
        } else if ft.is_symlink() {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            let t = fs::read_link(&p)?;
            b.append_link(&mut h, &r, t)?;
        } else if ft.is_file() {
            if md.nlink() > 1 {
                if let Some(first) = seen.get(&(md.dev(), md.ino())) {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    b.append_link(&mut h, &r, first)?;
                    continue;
                }
                seen.insert((md.dev(), md.ino()), r.clone());
            }
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(md.len());
            let f = fs::File::open(&p).with_context(|| format!("opening {}", p.display()))?;
            b.append_data(&mut h, &r, f)?;
        } else {
            bail!("{}: unsupported file type in an image layer", p.display());
        }
    }
    Ok(())
}

fn image(
    layout: &Layout,
    def: &ImageDef,
    layers: &[&BuiltLayer],
    pkgs: &BTreeMap<String, String>,
) -> Result<serde_json::Value> {
    let created = "2024-01-01T00:00:00Z";
    let packages: Vec<String> = pkgs.iter().map(|(p, v)| format!("{p}={v}")).collect();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {
            "Cmd": def.cmd,
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Labels": {
                "io.paddock.image": def.name,
                "io.paddock.version": VERSION,
            },
        },
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
        "history": layers.iter().enumerate().map(|(i, _)| json!({
            "created": created,
            "created_by": if i + 1 == layers.len() && def.name != "base" {
                format!("cargo xtask build: {} {}", def.name, packages.join(" "))
            } else {
                "cargo xtask build: base".to_owned()
            },
        })).collect::<Vec<_>>(),
    });
    let cb = serde_json::to_vec(&config)?;
    layout.blob(&cb)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &cb),
        "layers": layers.iter().map(|l| l.desc.clone()).collect::<Vec<_>>(),
    });
    let mb = serde_json::to_vec(&manifest)?;
    layout.blob(&mb)?;
    let mut d = descriptor("application/vnd.oci.image.manifest.v1+json", &mb);
    d["platform"] = json!({"architecture": "amd64", "os": "linux"});
    Ok(d)
}

pub fn human(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MB", n as f64 / f64::from(1u32 << 20))
    } else {
        format!("{:.0} KB", n as f64 / 1024.0)
    }
}
