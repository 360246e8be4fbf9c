//! The kernel: Debian's cloud kernel at a pinned version (or one given on the command line),
//! its modules.dep generated with depmod, and the module subset the initrd carries.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::apt;
use crate::{cache_dir, sh};

/// `apt-cache depends linux-image-cloud-amd64` resolved on 2026-11-23 (Debian 12 point release
/// kernel 6.1.192-2). Bump both together; `cargo xtask build` says what the mirror has now.
pub const KERNEL_PACKAGE: &str = "linux-image-6.1.0-56-cloud-amd64";
pub const KERNEL_VERSION: &str = "6.1.192-2";

/// Modules the initrd carries (with their dependencies), loaded by name by `ros init`.
pub const MODULES: &[&str] = &[
    // virtio, overlayfs, bridge/veth, loop (qemu.md section 1)
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_console",
    "overlay",
    "veth",
    "llc",
    "stp",
    "bridge",
    "br_netfilter",
    "loop",
    // CD-ROM and ISO 9660 (booting from the ISO, config drives)
    "ata_piix",
    "libata",
    "scsi_mod",
    "scsi_common",
    "sr_mod",
    "cdrom",
    "isofs",
    // vfat NoCloud / config drives
    "vfat",
    "fat",
    "nls_cp437",
    "nls_iso8859-1",
    "nls_utf8",
    // the kernel's FAT_DEFAULT_IOCHARSET is "ascii": vfat mounts fail without it
    "nls_ascii",
    "squashfs",
    // the power button (acpid reads /dev/input/event*)
    "button",
    "evdev",
    // what dockerd autoloads (qemu.md section 7)
    "crc32c-intel",
    "libcrc32c",
    "nfnetlink",
    "nf_tables",
    "x_tables",
    "nft_compat",
    "nf_defrag_ipv4",
    "nf_defrag_ipv6",
    "nf_conntrack",
    "nf_nat",
    "nft_chain_nat",
    "xt_MASQUERADE",
    "xt_addrtype",
    "xt_conntrack",
    "xt_nat",
    "xt_tcpudp",
    "nf_conntrack_netlink",
    "xfrm_algo",
    "xfrm_user",
];

/// Where the kernel comes from.
#[derive(Debug, Clone)]
pub enum Source {
    Pinned,
    Deb(PathBuf),
    Dir(PathBuf),
}

/// An unpacked kernel: `root/lib/modules/<kver>` with modules.dep, and its image.
#[derive(Debug)]
pub struct Kernel {
    pub vmlinuz: PathBuf,
    pub root: PathBuf,
    pub kver: String,
    /// Identifies the kernel for cache stamps.
    pub id: String,
}

pub fn prepare(src: &Source) -> Result<Kernel> {
    match src {
        Source::Pinned => {
            let deb = pinned_deb()?;
            from_deb(&deb, &format!("{KERNEL_PACKAGE}={KERNEL_VERSION}"))
        }
        Source::Deb(deb) => {
            let bytes = std::fs::read(deb).with_context(|| format!("reading {}", deb.display()))?;
            from_deb(deb, &testkit::layout::sha256(&bytes))
        }
        Source::Dir(dir) => from_dir(dir),
    }
}

fn pinned_deb() -> Result<PathBuf> {
    let want = [(KERNEL_PACKAGE.to_owned(), KERNEL_VERSION.to_owned())]
        .into_iter()
        .collect();
    match apt::download(&want) {
        Ok(mut m) => m
            .remove(KERNEL_PACKAGE)
            .with_context(|| format!("downloading {KERNEL_PACKAGE}")),
        Err(e) => {
            let now = Command::new("apt-cache")
                .args(["depends", "linux-image-cloud-amd64"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().replace('\n', " "))
                .unwrap_or_default();
            bail!(
                "the pinned kernel {KERNEL_PACKAGE} {KERNEL_VERSION} is not on the mirror ({e:#}).\n\
                 The mirror now says: {now}.\n\
                 Update KERNEL_PACKAGE/KERNEL_VERSION in xtask/src/os/kernel.rs, or pass \
                 --kernel-deb FILE or --kernel DIR"
            )
        }
    }
}

fn from_deb(deb: &Path, id: &str) -> Result<Kernel> {
    let key = &testkit::layout::sha256(id.as_bytes())["sha256:".len()..][..16];
    let root = cache_dir().join("kernel").join(key);
    let done = root.join(".ready");
    if !done.exists() {
        eprintln!("xtask: unpacking kernel {}", deb.display());
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        sh(Command::new("dpkg").arg("-x").arg(deb).arg(&root))
            .with_context(|| format!("extracting {}", deb.display()))?;
    }
    let kver = single_kver(&root)?;
    let vmlinuz = root.join(format!("boot/vmlinuz-{kver}"));
    if !vmlinuz.is_file() {
        bail!("{}: no boot/vmlinuz-{kver} in the package", deb.display());
    }
    if !done.exists() {
        depmod(&root, &kver)?;
        std::fs::write(&done, id).with_context(|| format!("writing {}", done.display()))?;
    }
    Ok(Kernel {
        vmlinuz,
        root,
        kver,
        id: id.to_owned(),
    })
}

fn from_dir(dir: &Path) -> Result<Kernel> {
    let kver = single_kver(dir)?;
    let vmlinuz = [
        dir.join("vmlinuz"),
        dir.join(format!("boot/vmlinuz-{kver}")),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .with_context(|| format!("{}: no vmlinuz or boot/vmlinuz-{kver}", dir.display()))?;
    if !dir
        .join(format!("lib/modules/{kver}/modules.dep"))
        .is_file()
    {
        depmod(dir, &kver)?;
    }
    let md = std::fs::metadata(&vmlinuz)?;
    let id = format!(
        "dir:{}:{}:{:?}",
        dir.display(),
        md.len(),
        md.modified().ok()
    );
    Ok(Kernel {
        vmlinuz,
        root: dir.to_path_buf(),
        kver,
        id,
    })
}

fn single_kver(root: &Path) -> Result<String> {
    let mods = root.join("lib/modules");
    let vers: Vec<String> = std::fs::read_dir(&mods)
        .with_context(|| format!("listing {}", mods.display()))?
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match vers.as_slice() {
        [v] => Ok(v.clone()),
        [] => bail!("{}: no kernel version directory", mods.display()),
        _ => bail!("{}: several kernel versions {vers:?}", mods.display()),
    }
}

fn depmod(root: &Path, kver: &str) -> Result<()> {
    super::ensure_host_tools()?;
    eprintln!("xtask: depmod {kver}");
    sh(Command::new("depmod").arg("-b").arg(root).arg(kver))
}

/// Copies `MODULES` and their dependencies (as modprobe resolves them) into
/// `stage/lib/modules/<kver>/` with the same relative paths, and runs depmod on the subset.
/// Returns the module files staged and the names that are built in or missing.
pub fn stage_modules(k: &Kernel, stage: &Path) -> Result<(usize, Vec<String>)> {
    let mut files: BTreeSet<PathBuf> = BTreeSet::new();
    let mut notes = Vec::new();
    for m in MODULES {
        let out = Command::new("modprobe")
            .arg("-d")
            .arg(&k.root)
            .args(["-S", &k.kver, "--show-depends", m])
            .output()
            .with_context(|| format!("running modprobe --show-depends {m}"))?;
        if !out.status.success() {
            notes.push(format!("{m} (not in this kernel)"));
            continue;
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut w = line.split_whitespace();
            match (w.next(), w.next()) {
                (Some("insmod"), Some(p)) => {
                    files.insert(PathBuf::from(p));
                }
                (Some("builtin"), Some(name)) if name.replace('-', "_") == m.replace('-', "_") => {
                    notes.push(format!("{m} (built in)"));
                }
                _ => {}
            }
        }
    }
    let src_base = k.root.join("lib/modules").join(&k.kver);
    let dst_base = stage.join("lib/modules").join(&k.kver);
    std::fs::create_dir_all(&dst_base)
        .with_context(|| format!("creating {}", dst_base.display()))?;
    for f in &files {
        let rel = f
            .strip_prefix(&src_base)
            .with_context(|| format!("module {} outside {}", f.display(), src_base.display()))?;
        let dst = dst_base.join(rel);
        if let Some(p) = dst.parent() {
            std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
        }
        std::fs::copy(f, &dst).with_context(|| format!("copying {}", f.display()))?;
    }
    for extra in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        let s = src_base.join(extra);
        if s.is_file() {
            std::fs::copy(&s, dst_base.join(extra))
                .with_context(|| format!("copying {}", s.display()))?;
        }
    }
    sh(Command::new("depmod").arg("-b").arg(stage).arg(&k.kver))?;
    Ok((files.len(), notes))
}
