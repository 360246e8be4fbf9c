//! `cargo xtask build --smoke`: boots the built kernel and initrd under QEMU with a TEST-ONLY
//! /init (a busybox script appended as a second cpio, which replaces the /init symlink), and
//! checks on the serial console that the staged modules load by name through modules.dep,
//! that the NoCloud drive is found by label and read, that the image store is in place and
//! that the static ros runs. Then once more through GRUB from an ISO (BIOS, or UEFI too with
//! `--uefi`).

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::qemu::{Boot, NoCloud, Spec, ensure_tools};
use super::{Dist, cpio, images, make_iso, write_cpio};
use crate::{cache_dir, fixtures};

/// Modules the test init loads by name (their dependencies come from modules.dep).
const LOAD: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "isofs",
    "vfat",
    "nls_cp437",
    "nls_iso8859-1",
    "nls_ascii",
    "overlay",
    "br_netfilter",
    "veth",
    "squashfs",
    "sr_mod",
    "ata_piix",
    "xt_MASQUERADE",
    "nft_compat",
    "loop",
];

const USER_DATA: &str = "#cloud-config\nhostname: smoke-test\nrancher:\n  smoke: yes\n";

fn init_script() -> String {
    format!(
        r#"#!/tbin/sh
export PATH=/tbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "SMOKE: init started"
for m in {mods}; do
  if modprobe "$m"; then echo "SMOKE: modprobe $m ok"; else echo "SMOKE: modprobe $m FAILED"; fi
done
echo "SMOKE: $(wc -l < /proc/modules) modules loaded"
dev=""
i=0
while [ $i -lt 100 ]; do
  dev=$(findfs LABEL=cidata 2>/dev/null) && break
  i=$((i + 1)); sleep 0.1
done
if [ -n "$dev" ] && mount -o ro "$dev" /mnt; then
  echo "SMOKE: cidata on $dev ($(grep " /mnt " /proc/mounts | cut -d' ' -f3))"
  echo "SMOKE: user-data begin"
  cat /mnt/user-data
  echo "SMOKE: user-data end"
else
  echo "SMOKE: cidata FAILED"
fi
if [ -f {store}/image/images.json ]; then
  echo "SMOKE: image store ok, $(ls {store}/image/layers | wc -l) layers"
else
  echo "SMOKE: image store FAILED"
fi
if /usr/bin/ros --version; then echo "SMOKE: ros runs"; else echo "SMOKE: ros FAILED"; fi
/usr/bin/ros --data-root {store} image ls
echo "SMOKE: done"
poweroff -f
"#,
        mods = LOAD.join(" "),
        store = super::STORE
    )
}

/// The test initrd: the real one, the ISO's image archive, and a cpio with busybox in /tbin and
/// the /init script (later archives override earlier ones in the kernel's unpacker).
fn test_initrd(dist: &Dist, dir: &Path) -> Result<std::path::PathBuf> {
    let bb = fixtures()?.busybox;
    let mut c = cpio::Cpio::new();
    c.file_from("tbin/busybox", 0o755, &bb);
    let list = Command::new(&bb)
        .arg("--list")
        .output()
        .with_context(|| format!("running {} --list", bb.display()))?;
    for a in String::from_utf8_lossy(&list.stdout).lines() {
        if !a.is_empty() && a != "busybox" {
            c.symlink(&format!("tbin/{a}"), "busybox");
        }
    }
    c.file("init", 0o755, init_script());
    let overlay = dir.join("overlay.cpio");
    write_cpio(&c, &overlay, false)?;
    let out = dir.join("initrd-test");
    super::concat_initrds(&[&dist.initrd, &dist.images_cpio, &overlay], &out)?;
    Ok(out)
}

/// Boots `spec` and checks every marker; returns (seconds to "init started", to exit).
fn check(name: &str, spec: &Spec, fstype: &str) -> Result<(f64, f64)> {
    eprintln!("xtask: smoke: {name} (console log {})", spec.log.display());
    let t0 = Instant::now();
    let mut vm = spec.start()?;
    let boot = Duration::from_secs(120);
    let (t_init, _) = vm.wait_for("SMOKE: init started", boot)?;
    vm.wait_for("SMOKE: done", Duration::from_secs(60))?;
    let st = vm.wait_exit(Duration::from_secs(30))?;
    let lines: Vec<String> = vm.lines().into_iter().map(|(_, l)| l).collect();
    let mut problems = vec![];
    for m in LOAD {
        if !lines
            .iter()
            .any(|l| l == &format!("SMOKE: modprobe {m} ok"))
        {
            problems.push(format!("modprobe {m}"));
        }
    }
    if !lines
        .iter()
        .any(|l| l.starts_with("SMOKE: cidata on ") && l.contains(fstype))
    {
        problems.push(format!("cidata drive ({fstype}) not mounted"));
    }
    let ud: Vec<&str> = lines
        .iter()
        .skip_while(|l| *l != "SMOKE: user-data begin")
        .skip(1)
        .take_while(|l| *l != "SMOKE: user-data end")
        .map(String::as_str)
        .collect();
    if ud.join("\n") != USER_DATA.trim_end() {
        problems.push(format!("user-data read back as {ud:?}"));
    }
    if !lines.iter().any(|l| l.starts_with("SMOKE: image store ok")) {
        problems.push("image store missing".into());
    }
    if !lines.iter().any(|l| l == "SMOKE: ros runs") {
        problems.push("ros does not run".into());
    }
    for img in images::IMAGES {
        let want = format!("paddock/{}", img.name);
        if !lines.iter().any(|l| l.contains(&want)) {
            problems.push(format!("ros image ls lacks {want}"));
        }
    }
    if !st.success() {
        problems.push(format!("qemu exited with {st}"));
    }
    if !problems.is_empty() {
        bail!(
            "smoke {name} failed: {} (log {})",
            problems.join("; "),
            spec.log.display()
        );
    }
    let total = t0.elapsed().as_secs_f64();
    println!("smoke {name}: ok: /init at {t_init:.2}s, powered off at {total:.2}s");
    Ok((t_init, total))
}

pub fn run(dist: &Dist, uefi: bool) -> Result<()> {
    ensure_tools(uefi)?;
    let dir = cache_dir().join("os/smoke");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let initrd = test_initrd(dist, &dir)?;
    let seed = NoCloud::new(USER_DATA, "smoke-1", "smoke-test");
    let seed_iso = dir.join("seed.iso");
    let seed_vfat = dir.join("seed.vfat");
    seed.iso(&seed_iso)?;
    seed.vfat(&seed_vfat)?;

    // 1. Direct kernel boot, NoCloud as an ISO 9660 virtio disk.
    let mut spec = Spec::new(
        Boot::Kernel {
            kernel: dist.vmlinuz.clone(),
            initrd: initrd.clone(),
            append: format!("{} panic=-1", super::CMDLINE),
        },
        &dir.join("kernel.log"),
    );
    spec.disks.push(seed_iso);
    check("kernel", &spec, "iso9660")?;

    // 2. The ISO through GRUB (BIOS), NoCloud as a vfat virtio disk.
    let iso = dir.join("paddock-test.iso");
    make_iso(
        &dist.vmlinuz,
        &[&initrd],
        &format!("{} panic=-1", super::CMDLINE),
        &iso,
        &dir.join("iso"),
    )?;
    let mut spec = Spec::new(
        Boot::Cdrom {
            iso: iso.clone(),
            uefi: false,
        },
        &dir.join("iso-bios.log"),
    );
    spec.disks.push(seed_vfat.clone());
    check("iso-bios", &spec, "vfat")?;

    if uefi {
        let mut spec = Spec::new(Boot::Cdrom { iso, uefi: true }, &dir.join("iso-uefi.log"));
        spec.disks.push(seed_vfat);
        check("iso-uefi", &spec, "vfat")?;
    }
    Ok(())
}
