//! Finding block devices by filesystem label (`LABEL=RANCHER_STATE`, `cidata`), reading the
//! superblocks of the filesystems Paddock boots from: ext2/3/4, ISO 9660 and FAT.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// A recognised filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The kernel's name for it: ext4, iso9660, vfat.
    pub fstype: &'static str,
    pub label: String,
}

fn read_at(f: &mut File, off: u64, buf: &mut [u8]) -> bool {
    f.seek(SeekFrom::Start(off)).is_ok() && f.read_exact(buf).is_ok()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_end_matches(['\0', ' '])
        .to_owned()
}

/// Reads the superblock of `dev`; None when it is no filesystem we know (or blank).
pub fn probe(dev: &Path) -> Option<Probe> {
    let mut f = File::open(dev).ok()?;
    probe_file(&mut f)
}

pub fn probe_file(f: &mut File) -> Option<Probe> {
    // ext2/3/4: magic 0xEF53 at 1024+56, label at 1024+120 (16 bytes).
    let mut sb = [0u8; 136];
    if read_at(f, 1024, &mut sb) && sb[56] == 0x53 && sb[57] == 0xEF {
        return Some(Probe {
            fstype: "ext4",
            label: text(&sb[120..136]),
        });
    }
    // ISO 9660: "CD001" at 32769, volume id at 32808 (32 bytes).
    let mut pvd = [0u8; 72];
    if read_at(f, 32768, &mut pvd) && &pvd[1..6] == b"CD001" {
        return Some(Probe {
            fstype: "iso9660",
            label: text(&pvd[40..72]),
        });
    }
    // FAT: boot signature 0x55AA; the label is at 0x47 (FAT32) or 0x2B (FAT12/16).
    let mut bs = [0u8; 512];
    if read_at(f, 0, &mut bs) && bs[510] == 0x55 && bs[511] == 0xAA {
        if &bs[0x52..0x57] == b"FAT32" {
            return Some(Probe {
                fstype: "vfat",
                label: text(&bs[0x47..0x52]),
            });
        }
        if &bs[0x36..0x39] == b"FAT" {
            return Some(Probe {
                fstype: "vfat",
                label: text(&bs[0x2B..0x36]),
            });
        }
    }
    None
}

/// Every block device the kernel shows, as `/dev/<name>`.
pub fn devices() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir("/sys/class/block")
        .map(|d| {
            d.flatten()
                .map(|e| PathBuf::from("/dev").join(e.file_name()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The device a `LABEL=X`, `/dev/X` or plain label spec names.
pub fn find(spec: &str) -> Option<(PathBuf, Probe)> {
    if spec.starts_with("/dev/") {
        let p = PathBuf::from(spec);
        let probe = probe(&p)?;
        return Some((p, probe));
    }
    let label = spec.strip_prefix("LABEL=").unwrap_or(spec);
    devices().into_iter().find_map(|d| {
        let p = probe(&d)?;
        (p.label.eq_ignore_ascii_case(label)).then_some((d, p))
    })
}

/// True when the first MiB of `dev` is zero (RancherOS's test before autoformatting).
pub fn is_blank(dev: &Path) -> bool {
    let Ok(mut f) = File::open(dev) else {
        return false;
    };
    let mut buf = vec![0u8; 1 << 20];
    f.read_exact(&mut buf).is_ok() && buf.iter().all(|b| *b == 0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::process::Command;

    #[test]
    fn labels_of_real_filesystems() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("ext.img");
        std::fs::write(&img, vec![0u8; 4 << 20]).unwrap();
        assert!(is_blank(&img));
        assert_eq!(probe(&img), None);
        if Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "RANCHER_STATE"])
            .arg(&img)
            .status()
            .is_ok_and(|s| s.success())
        {
            assert_eq!(
                probe(&img),
                Some(Probe {
                    fstype: "ext4",
                    label: "RANCHER_STATE".into()
                })
            );
            assert!(!is_blank(&img));
        }
        // A FAT boot sector written by hand.
        let fat = d.path().join("fat.img");
        let mut bs = vec![0u8; 4096];
        bs[0x36..0x3e].copy_from_slice(b"FAT16   ");
        bs[0x2B..0x36].copy_from_slice(b"CIDATA     ");
        bs[510] = 0x55;
        bs[511] = 0xAA;
        std::fs::write(&fat, &bs).unwrap();
        assert_eq!(
            probe(&fat),
            Some(Probe {
                fstype: "vfat",
                label: "CIDATA".into()
            })
        );
    }
}
