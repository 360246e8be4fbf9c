//! `cargo xtask build`: the bootable OS from Debian packages and the static `ros`.
//!
//! dist/vmlinuz      Debian's cloud kernel (pinned in kernel.rs) or the one given
//! dist/initrd       zstd newc cpio: /init -> /usr/bin/ros, the multi-call links, the module
//!                   subset with its own modules.dep, /etc/os-release, mke2fs; no images, so
//!                   the kernel unpacks a few MB and the machine boots in less memory
//! dist/paddock.iso  hybrid GRUB ISO (BIOS and UEFI), serial console; its initrd is dist/initrd
//!                   followed by a second archive with the system image store at
//!                   /usr/share/ros/images, so the ISO boots with nothing else attached
//! dist/images.img   ext4 labelled PADDOCK_IMAGES: an image store with the system images and
//!                   the user Docker's, copied once onto the state partition at boot (used in
//!                   place, linked from a store in RAM, without one)
//! dist/SHA256SUMS
//!
//! Every step is skipped when the hash of its inputs (package versions, the ros binary, image
//! definitions, kernel, module list) matches the stamp it left last time.

pub mod apt;
mod boottest;
pub mod cpio;
pub mod images;
pub mod kernel;
pub mod qemu;
mod smoke;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use testkit::layout::sha256;

use crate::{build_ros, cache_dir, sh, workspace_root};

/// Where the system image store lives in the ISO's second initrd archive and on the images
/// disk (a `ros` data root).
pub const STORE: &str = "/usr/share/ros/images";

/// The kernel command line of the ISO (and of `cargo xtask run`).
pub const CMDLINE: &str = "console=ttyS0 rancher.autologin=ttyS0 panic=10 quiet";

/// Names `ros` answers to, linked in /usr/bin and /sbin.
pub const MULTICALL: &[&str] = &[
    "system-docker",
    "system-dockerd",
    "reboot",
    "poweroff",
    "halt",
];

/// Bump when what goes into which image store (the ISO's archive, the images disk) changes in
/// a way no other input shows.
const IMAGES_FORMAT: &str = "images-v2-disk-has-all";

/// Bump when the initrd's layout changes in a way no other input shows.
const INITRD_FORMAT: &str = "initrd-v6-split";

/// The OS's config layer with the default system services (`/usr/share/ros/os-config.yml`).
const OS_CONFIG: &str = include_str!("../../../os/os-config.yml");

/// Host tools the build runs.
pub fn ensure_host_tools() -> Result<()> {
    apt::ensure_tools(&[
        ("kmod", "/usr/sbin/depmod"),
        ("xorriso", "/usr/bin/xorriso"),
        ("grub-pc-bin", "/usr/lib/grub/i386-pc/boot_hybrid.img"),
        ("grub-efi-amd64-bin", "/usr/lib/grub/x86_64-efi/linux.mod"),
        ("grub-common", "/usr/bin/grub-mkrescue"),
        ("mtools", "/usr/bin/mformat"),
        ("cpio", "/usr/bin/cpio"),
        ("zstd", "/usr/bin/zstd"),
    ])
}

#[derive(Debug, Default)]
struct Opts {
    kernel: Option<kernel::Source>,
    smoke: bool,
    boot_test: bool,
    uefi: bool,
    gzip: bool,
}

fn usage() -> anyhow::Error {
    anyhow::anyhow!(
        "usage: cargo xtask build [--kernel-deb FILE | --kernel DIR] [--no-compress] [--smoke [--uefi]]"
    )
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        gzip: true,
        ..Opts::default()
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--kernel-deb" => {
                let f = it.next().ok_or_else(usage)?;
                o.kernel = Some(kernel::Source::Deb(PathBuf::from(f)));
            }
            "--kernel" => {
                let d = it.next().ok_or_else(usage)?;
                o.kernel = Some(kernel::Source::Dir(PathBuf::from(d)));
            }
            "--smoke" => o.smoke = true,
            "--boot-test" => o.boot_test = true,
            "--uefi" => o.uefi = true,
            "--no-compress" | "--no-gzip" => o.gzip = false,
            _ => return Err(usage()),
        }
    }
    Ok(o)
}

/// What a build produced.
#[derive(Debug)]
#[allow(dead_code)] // dir and key: for the boot tests that come with `ros init`
pub struct Dist {
    pub dir: PathBuf,
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
    pub iso: PathBuf,
    /// The images disk (ext4 labelled PADDOCK_IMAGES): every image, the system's and the user
    /// Docker's.
    pub images: PathBuf,
    /// The second initrd archive the ISO carries: the system image store.
    pub images_cpio: PathBuf,
    /// Hash of the initrd's inputs.
    pub key: String,
}

pub fn main(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let t0 = Instant::now();
    let dist = build(o.kernel.clone().unwrap_or(kernel::Source::Pinned), o.gzip)?;
    println!(
        "\nbuilt in {:.1}s:\n  {}  {}\n  {}  {}\n  {}  {}",
        t0.elapsed().as_secs_f64(),
        images::human(size(&dist.vmlinuz)),
        dist.vmlinuz.display(),
        images::human(size(&dist.initrd)),
        dist.initrd.display(),
        images::human(size(&dist.iso)),
        dist.iso.display()
    );
    if o.smoke {
        smoke::run(&dist, o.uefi)?;
    }
    if o.boot_test {
        boottest::run(&dist)?;
    }
    Ok(())
}

fn size(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn stamp_ok(stamp: &Path, key: &str, outputs: &[&Path]) -> bool {
    fs::read_to_string(stamp).is_ok_and(|s| s == key) && outputs.iter().all(|p| p.exists())
}

fn write_stamp(stamp: &Path, key: &str) -> Result<()> {
    fs::write(stamp, key).with_context(|| format!("writing {}", stamp.display()))
}

/// Builds everything into dist/ (each step only when its inputs changed).
pub fn build(ksrc: kernel::Source, gzip: bool) -> Result<Dist> {
    ensure_host_tools()?;
    let root = workspace_root();
    let dist = root.join("dist");
    let work = cache_dir().join("os");
    fs::create_dir_all(&dist).with_context(|| format!("creating {}", dist.display()))?;
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let ros = build_ros()?;
    let ros_hash = sha256(&fs::read(&ros).with_context(|| format!("reading {}", ros.display()))?);

    let t = Instant::now();
    let k = kernel::prepare(&ksrc)?;
    eprintln!(
        "xtask: kernel {} ({:.1}s)",
        k.kver,
        t.elapsed().as_secs_f64()
    );

    // System images -> an image store tree (root for `ros --root`).
    let t = Instant::now();
    let plan = images::plan()?;
    let images_key = sha256(format!("{IMAGES_FORMAT}{}{ros_hash}", plan.key()).as_bytes());
    let store_root = work.join("store-root");
    let disk_root = work.join("disk-store-root");
    let images_stamp = work.join("images.stamp");
    if stamp_ok(&images_stamp, &images_key, &[&store_root, &disk_root]) {
        eprintln!(
            "xtask: system images unchanged ({:.1}s)",
            t.elapsed().as_secs_f64()
        );
    } else {
        let _ = fs::remove_file(&images_stamp);
        let _ = fs::remove_dir_all(&store_root);
        let _ = fs::remove_dir_all(&disk_root);
        fs::create_dir_all(&store_root)?;
        fs::create_dir_all(&disk_root)?;
        images::build(
            &plan,
            &ros,
            &work.join("images"),
            &store_root,
            STORE,
            &disk_root,
        )?;
        write_stamp(&images_stamp, &images_key)?;
        eprintln!(
            "xtask: system images built in {:.1}s",
            t.elapsed().as_secs_f64()
        );
    }

    // initrd
    let mkfs_pkgs = apt::candidates(
        &MKFS_PACKAGES
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>(),
    )?;
    let initrd = dist.join("initrd");
    let vmlinuz = dist.join("vmlinuz");
    let key = sha256(
        format!(
            "{INITRD_FORMAT}{OS_CONFIG}{images_key}{}{:?}{MULTICALL:?}{gzip}{mkfs_pkgs:?}",
            k.id,
            kernel::MODULES
        )
        .as_bytes(),
    );
    let initrd_stamp = work.join("initrd.stamp");
    let images_cpio = work.join("images.cpio.zst");
    if stamp_ok(&initrd_stamp, &key, &[&initrd, &vmlinuz, &images_cpio]) {
        eprintln!("xtask: initrd unchanged");
    } else {
        let _ = fs::remove_file(&initrd_stamp);
        let t = Instant::now();
        fs::copy(&k.vmlinuz, &vmlinuz)
            .with_context(|| format!("copying {}", k.vmlinuz.display()))?;
        let mkfs = mkfs_tools(&mkfs_pkgs, &work.join("mkfs"))?;
        let c = initrd_tree(&k, &ros, &work.join("modules"), &mkfs)?;
        write_cpio(&c, &initrd, gzip)?;
        let s = shipped_store_cpio(&store_root)?;
        write_cpio(&s, &images_cpio, gzip)?;
        write_stamp(&initrd_stamp, &key)?;
        eprintln!(
            "xtask: initrd: {} entries, {} in {:.1}s; the ISO's image archive: {} entries, {}",
            c.len(),
            images::human(size(&initrd)),
            t.elapsed().as_secs_f64(),
            s.len(),
            images::human(size(&images_cpio)),
        );
    }

    // ISO
    let iso = dist.join("paddock.iso");
    let iso_key =
        sha256(format!("{key}{}{GRUB_MODULES:?}{GRUB_FLAGS:?}", grub_cfg(CMDLINE)).as_bytes());
    let iso_stamp = work.join("iso.stamp");
    if stamp_ok(&iso_stamp, &iso_key, &[&iso]) {
        eprintln!("xtask: iso unchanged");
    } else {
        let _ = fs::remove_file(&iso_stamp);
        make_iso(
            &vmlinuz,
            &[&initrd, &images_cpio],
            CMDLINE,
            &iso,
            &work.join("iso"),
        )?;
        write_stamp(&iso_stamp, &iso_key)?;
    }

    // The images disk: the store of every image, as an ext4 image.
    let images_img = dist.join("images.img");
    let disk_stamp = work.join("images-disk.stamp");
    if stamp_ok(&disk_stamp, &images_key, &[&images_img]) {
        eprintln!("xtask: images disk unchanged");
    } else {
        let _ = fs::remove_file(&disk_stamp);
        let t = Instant::now();
        images_disk(&disk_root.join(STORE.trim_start_matches('/')), &images_img)?;
        write_stamp(&disk_stamp, &images_key)?;
        eprintln!(
            "xtask: images disk: {} in {:.1}s",
            images::human(size(&images_img)),
            t.elapsed().as_secs_f64()
        );
    }

    sha256sums(&dist, &["vmlinuz", "initrd", "paddock.iso", "images.img"])?;
    Ok(Dist {
        dir: dist,
        vmlinuz,
        initrd,
        iso,
        images: images_img,
        images_cpio,
        key,
    })
}

/// The initrd's contents.
fn initrd_tree(k: &kernel::Kernel, ros: &Path, mods: &Path, mkfs: &Path) -> Result<cpio::Cpio> {
    let mut c = cpio::Cpio::new();
    // Init checks for it: a kernel short of memory stops unpacking half-way, and says so only
    // in its log.
    c.last_file("usr/share/ros/initrd-complete", 0o644, "paddock initrd\n");
    for d in [
        "dev", "proc", "sys", "run", "mnt", "etc", "sbin", "usr/bin", "var",
    ] {
        c.dir(d, 0o755);
    }
    c.dir("tmp", 0o1777);
    c.dir("root", 0o700);
    // The kernel opens /dev/console for init before anything is mounted.
    c.char_dev("dev/console", 0o600, 5, 1);
    c.file_from("usr/bin/ros", 0o755, ros);
    c.symlink("init", "/usr/bin/ros");
    for n in MULTICALL {
        c.symlink(&format!("usr/bin/{n}"), "ros");
        c.symlink(&format!("sbin/{n}"), "/usr/bin/ros");
    }
    c.file(
        "etc/os-release",
        0o644,
        images::IMAGES
            .first()
            .and_then(|b| b.files.iter().find(|f| f.path == "etc/os-release"))
            .map(|f| f.content)
            .unwrap_or("NAME=Paddock\n"),
    );
    c.dir("usr/share/ros", 0o755);
    c.file("usr/share/ros/os-config.yml", 0o644, OS_CONFIG);
    let _ = fs::remove_dir_all(mods);
    let (n, notes) = kernel::stage_modules(k, mods)?;
    eprintln!(
        "xtask: {n} module files for {} requested{}",
        kernel::MODULES.len(),
        if notes.is_empty() {
            String::new()
        } else {
            format!(" (not staged: {})", notes.join(", "))
        }
    );
    c.tree("lib/modules", &mods.join("lib/modules"))?;
    c.tree(MKFS_DIR, mkfs)?;
    Ok(c)
}

/// The ISO's second initrd archive: the system image store at [`STORE`], ending with a marker
/// init checks like the initrd's own.
fn shipped_store_cpio(store_root: &Path) -> Result<cpio::Cpio> {
    let mut c = cpio::Cpio::new();
    c.last_file("usr/share/ros/images-complete", 0o644, "paddock images\n");
    let store = store_root.join(STORE.trim_start_matches('/'));
    if !store.is_dir() {
        bail!("{}: the image store was not built", store.display());
    }
    c.tree(STORE, &store)?;
    Ok(c)
}

/// Concatenates initrd archives into one file, as the kernel reads them: each compressed
/// archive starts on a 512-byte boundary (the kernel looks for the next one at a 4-byte
/// boundary after the end of a compressed stream; the padding is zeros, which it skips).
pub fn concat_initrds(parts: &[&Path], out: &Path) -> Result<()> {
    let mut bytes = vec![];
    for p in parts {
        bytes.resize(bytes.len().next_multiple_of(512), 0);
        bytes.extend(fs::read(p).with_context(|| format!("reading {}", p.display()))?);
    }
    fs::write(out, bytes).with_context(|| format!("writing {}", out.display()))
}

/// Where the initrd keeps mke2fs (with its libraries and loader), which `ros init` runs to
/// format a blank state disk listed in `rancher.state.autoformat`.
const MKFS_DIR: &str = "usr/lib/paddock/mkfs";
/// The Debian packages mke2fs comes from, and the files taken from them.
const MKFS_PACKAGES: &[&str] = &[
    "e2fsprogs",
    "libext2fs2",
    "libcom-err2",
    "libblkid1",
    "libuuid1",
    "libc6",
];
const MKFS_FILES: &[&str] = &[
    "sbin/mke2fs",
    "etc/mke2fs.conf",
    "libext2fs.so.2",
    "libcom_err.so.2",
    "libblkid.so.1",
    "libuuid.so.1",
    "libe2p.so.2",
    "libc.so.6",
    "ld-linux-x86-64.so.2",
];

/// Stages mke2fs, its config and its libraries (flat, links resolved) from Debian packages.
fn mkfs_tools(pkgs: &BTreeMap<String, String>, stage: &Path) -> Result<PathBuf> {
    let debs = apt::download(pkgs)?;
    let _ = fs::remove_dir_all(stage);
    fs::create_dir_all(stage)?;
    let mut roots = vec![];
    for (p, v) in pkgs {
        let deb = debs
            .get(p)
            .with_context(|| format!("package {p} was not downloaded"))?;
        roots.push(apt::unpack(p, v, deb)?);
    }
    for f in MKFS_FILES {
        let candidates: Vec<PathBuf> = if f.contains('/') {
            roots.iter().map(|r| r.join(f)).collect()
        } else {
            roots
                .iter()
                .flat_map(|r| {
                    ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64"]
                        .map(|d| r.join(d).join(f))
                })
                .collect()
        };
        let src = candidates
            .iter()
            .find(|c| c.exists())
            .with_context(|| format!("{f} is in none of {}", MKFS_PACKAGES.join(", ")))?;
        let name = Path::new(f).file_name().context("a file name")?;
        fs::copy(src, stage.join(name)).with_context(|| format!("copying {}", src.display()))?;
    }
    Ok(stage.to_path_buf())
}

/// `cargo xtask bench boot`.
pub fn bench_boot() -> Result<()> {
    let dist = build(kernel::Source::Pinned, true)?;
    boottest::bench(&dist)
}

/// Writes the cpio, compressed with zstd when `compress` (the kernel has RD_ZSTD): under TCG the
/// kernel unpacks it faster than gzip, and it is smaller, which matters because the compressed
/// and the unpacked archives are in RAM together at boot (LZ4 was faster still, but the
/// images archive the ISO carries, 48 MB in LZ4 back then, no longer booted with -m 256).
pub fn write_cpio(c: &cpio::Cpio, out: &Path, compress: bool) -> Result<()> {
    let tmp = out.with_extension("tmp");
    if compress {
        let mut child = Command::new("zstd")
            .args(["-q", "-10", "-f", "-", "-o"])
            .arg(&tmp)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .context("running zstd")?;
        let stdin = child.stdin.take().context("zstd's stdin")?;
        let mut w = std::io::BufWriter::new(stdin);
        c.write(&mut w)?;
        w.flush()?;
        drop(w);
        let st = child.wait()?;
        ensure!(st.success(), "zstd failed writing {}: {st}", tmp.display());
    } else {
        let f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = std::io::BufWriter::new(f);
        c.write(&mut w)?;
        w.flush()?;
    }
    fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))
}

pub fn grub_cfg(cmdline: &str) -> String {
    format!(
        "serial --unit=0 --speed=115200\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         set timeout=0\n\
         menuentry \"Paddock\" {{\n\
         \x20 linux /boot/vmlinuz {cmdline}\n\
         \x20 initrd /boot/initrd\n\
         }}\n"
    )
}

/// The GRUB modules the ISO carries: the menu entry's commands, the video modes Linux wants
/// under UEFI, and what finds the ISO's filesystem from a CD or a USB stick.
const GRUB_MODULES: &[&str] = &[
    "linux",
    "normal",
    "echo",
    "test",
    "serial",
    "terminal",
    "all_video",
    "iso9660",
    "search",
    "search_fs_uuid",
    "search_fs_file",
    "search_label",
    "part_msdos",
    "part_gpt",
    "part_acorn",
    "part_amiga",
    "part_apple",
    "part_bsd",
    "part_dfly",
    "part_dvh",
    "part_plan",
    "part_sun",
    "part_sunpc",
];

/// grub-mkrescue's other flags: no fonts, locales or themes, files xz-compressed.
const GRUB_FLAGS: &[&str] = &["--fonts=", "--locales=", "--themes=", "--compress=xz"];

/// A hybrid GRUB ISO (BIOS + UEFI) with the kernel and the initrd archives (concatenated).
pub fn make_iso(
    vmlinuz: &Path,
    initrds: &[&Path],
    cmdline: &str,
    out: &Path,
    dir: &Path,
) -> Result<()> {
    let t = Instant::now();
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir.join("boot/grub"))?;
    fs::copy(vmlinuz, dir.join("boot/vmlinuz"))?;
    concat_initrds(initrds, &dir.join("boot/initrd"))?;
    fs::write(dir.join("boot/grub/grub.cfg"), grub_cfg(cmdline))?;
    let tmp = out.with_extension("tmp.iso");
    // Only the GRUB modules the menu entry needs (grub-mkrescue adds what its own core image
    // needs), no fonts, locales or themes, and xz: GRUB takes 5 MB of the ISO instead of 21.
    let o = Command::new("grub-mkrescue")
        .arg("-o")
        .arg(&tmp)
        .arg(format!("--install-modules={}", GRUB_MODULES.join(" ")))
        .args(GRUB_FLAGS)
        .arg(dir)
        .output()
        .context("starting grub-mkrescue")?;
    if !o.status.success() {
        bail!(
            "grub-mkrescue -o {} failed: {}",
            tmp.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "xtask: {}: {} in {:.1}s",
        out.display(),
        images::human(size(out)),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// An ext4 image labelled PADDOCK_IMAGES holding `dir` (an image store's data root), made
/// without mounting anything (`mkfs.ext4 -d`), sized to the content plus room for metadata.
fn images_disk(dir: &Path, out: &Path) -> Result<()> {
    fn du(d: &Path) -> u64 {
        fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => 4096 + du(&e.path()),
                Ok(m) => m.len().div_ceil(4096) * 4096,
                Err(_) => 0,
            })
            .sum()
    }
    let bytes = du(dir);
    let mb = bytes / (1 << 20) * 12 / 10 + 32;
    let _ = fs::remove_file(out);
    sh(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "PADDOCK_IMAGES", "-O", "^has_journal"])
        .args(["-E", "root_owner=0:0", "-d"])
        .arg(dir)
        .arg(out)
        .arg(format!("{mb}M")))
    .with_context(|| format!("making the images disk {}", out.display()))
}

fn sha256sums(dist: &Path, names: &[&str]) -> Result<()> {
    sh(Command::new("sh").current_dir(dist).arg("-c").arg(format!(
        "sha256sum {} > SHA256SUMS.tmp && mv SHA256SUMS.tmp SHA256SUMS",
        names.join(" ")
    )))
}

/// `cargo xtask run [--iso [--uefi]]`: builds if needed and boots the OS in QEMU with the
/// serial console on this terminal, a NoCloud drive carrying your SSH key (one is generated
/// under target/ if you have none), a state disk, and 127.0.0.1:2222 (or a free port) -> 22.
/// This is what `cargo xtask run` becomes once `ros init` boots.
pub fn boot(args: &[String]) -> Result<()> {
    let (mut iso, mut uefi) = (false, false);
    for a in args {
        match a.as_str() {
            "--iso" => iso = true,
            "--uefi" => uefi = true,
            _ => bail!("usage: cargo xtask run [--iso [--uefi]]"),
        }
    }
    let dist = build(kernel::Source::Pinned, true)?;
    qemu::ensure_tools(uefi)?;
    let dir = cache_dir().join("os/boot");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_default());
    let (key, pubkey) = match ["id_ed25519", "id_rsa", "id_ecdsa"]
        .iter()
        .map(|k| home.join(".ssh").join(k))
        .find(|k| k.is_file() && k.with_extension("pub").is_file())
    {
        Some(k) => {
            let p = fs::read_to_string(k.with_extension("pub"))?;
            (k, p.trim().to_owned())
        }
        None => {
            let k = dir.join("id_ed25519");
            let p = if k.is_file() {
                fs::read_to_string(k.with_extension("pub"))?
                    .trim()
                    .to_owned()
            } else {
                qemu::ssh_keygen(&k)?
            };
            (k, p)
        }
    };
    let user_data =
        format!("#cloud-config\nhostname: paddock\nssh_authorized_keys:\n  - {pubkey}\n");
    let seed = dir.join("seed.iso");
    qemu::NoCloud::new(&user_data, "paddock-dev", "paddock").iso(&seed)?;
    let state = dir.join("state.img");
    if !state.exists() {
        qemu::blank_disk(&state, 4096)?;
    }
    let port = if std::net::TcpListener::bind("127.0.0.1:2222").is_ok() {
        2222
    } else {
        qemu::free_port()?
    };
    let b = if iso {
        qemu::Boot::Cdrom {
            iso: dist.iso.clone(),
            uefi,
        }
    } else {
        qemu::Boot::Kernel {
            kernel: dist.vmlinuz.clone(),
            initrd: dist.initrd.clone(),
            append: CMDLINE.to_owned(),
        }
    };
    let mut spec = qemu::Spec::new(b, &dir.join("console.log"));
    spec.ssh_port = Some(port);
    spec.disks = vec![state, seed];
    spec.readonly_disks = vec![dist.images.clone()];
    // The user Docker wants room (qemu.md: 1 GiB runs it at full speed under TCG).
    spec.memory_mb = 1024;
    spec.interactive = true;
    let ssh = qemu::Ssh::new(port, &key);
    let shown: Vec<String> = std::iter::once(ssh.command("").get_program())
        .chain(ssh.command("").get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .collect();
    eprintln!(
        "xtask: booting (serial console below; Ctrl-A X quits qemu)\nxtask: ssh: {}",
        shown.join(" ")
    );
    let mut vm = spec.start()?;
    let st = vm.wait_exit(std::time::Duration::from_secs(24 * 3600))?;
    eprintln!("xtask: qemu exited with {st}");
    Ok(())
}
