//! A deterministic newc ("070701") cpio writer for the initrd.
//!
//! Entries are kept in a map and written sorted by path component (parents before children),
//! with a fixed mtime and inode numbers assigned in that order, so the same inputs always give
//! the same bytes. Entries added by hand are owned by 0:0; trees copied from disk keep their
//! owners (the image store holds files owned by other users, e.g. /home/rancher), their modes,
//! device numbers and hardlinks (one inode, data on the last link, as GNU cpio writes them).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The mtime of every entry (2024-01-01T00:00:00Z).
pub const MTIME: u32 = 1_704_067_200;

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

#[derive(Debug, Clone)]
enum Data {
    Bytes(Vec<u8>),
    File(PathBuf),
}

#[derive(Debug, Clone)]
struct Node {
    /// Full st_mode (type and permission bits).
    mode: u32,
    uid: u32,
    gid: u32,
    /// Regular file contents or symlink target.
    data: Option<Data>,
    rdev: (u32, u32),
    /// Files sharing a link group are hardlinks of each other.
    link_group: Option<u64>,
}

/// An archive being assembled.
#[derive(Debug, Default)]
pub struct Cpio {
    nodes: BTreeMap<String, Node>,
    next_group: u64,
    /// A file written after every other entry (its parent must exist).
    last: Option<(String, u32, Vec<u8>)>,
}

/// `a/b/c` -> `a/b/c`; leading `/` and `./` and trailing `/` dropped.
fn norm(path: &str) -> String {
    let p = path.trim_start_matches("./").trim_start_matches('/');
    p.trim_end_matches('/').to_owned()
}

impl Cpio {
    pub fn new() -> Cpio {
        Cpio::default()
    }

    /// A root-owned node.
    fn root_owned(mode: u32, data: Option<Data>, rdev: (u32, u32)) -> Node {
        Node {
            mode,
            uid: 0,
            gid: 0,
            data,
            rdev,
            link_group: None,
        }
    }

    fn insert(&mut self, path: &str, node: Node) {
        let path = norm(path);
        if path.is_empty() {
            return;
        }
        // Implicit parents (0755 root-owned) unless already present.
        let mut parent = Path::new(&path).parent();
        while let Some(p) = parent {
            let s = p.to_string_lossy().into_owned();
            if s.is_empty() {
                break;
            }
            self.nodes
                .entry(s)
                .or_insert(Self::root_owned(S_IFDIR | 0o755, None, (0, 0)));
            parent = p.parent();
        }
        self.nodes.insert(path, node);
    }

    pub fn dir(&mut self, path: &str, perm: u32) {
        self.insert(
            path,
            Self::root_owned(S_IFDIR | (perm & 0o7777), None, (0, 0)),
        );
    }

    pub fn file(&mut self, path: &str, perm: u32, data: impl Into<Vec<u8>>) {
        self.insert(
            path,
            Self::root_owned(
                S_IFREG | (perm & 0o7777),
                Some(Data::Bytes(data.into())),
                (0, 0),
            ),
        );
    }

    /// A root-owned file written after every other entry: if it was unpacked, so was
    /// everything before it (the kernel stops at the first error, e.g. out of memory).
    pub fn last_file(&mut self, path: &str, perm: u32, data: impl Into<Vec<u8>>) {
        self.last = Some((norm(path), S_IFREG | (perm & 0o7777), data.into()));
    }

    /// A regular file whose contents are read from `src` when the archive is written.
    pub fn file_from(&mut self, path: &str, perm: u32, src: &Path) {
        self.insert(
            path,
            Self::root_owned(
                S_IFREG | (perm & 0o7777),
                Some(Data::File(src.to_path_buf())),
                (0, 0),
            ),
        );
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.insert(
            path,
            Self::root_owned(
                S_IFLNK | 0o777,
                Some(Data::Bytes(target.as_bytes().to_vec())),
                (0, 0),
            ),
        );
    }

    /// Character device (for /dev/console, which the kernel wants before /init runs).
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        self.insert(
            path,
            Self::root_owned(0o020000 | (perm & 0o7777), None, (major, minor)),
        );
    }

    /// Copies the tree at `src` to `dest` in the archive, keeping modes, owners, device
    /// numbers, symlinks and hardlinks (file contents are read when the archive is written).
    pub fn tree(&mut self, dest: &str, src: &Path) -> Result<()> {
        let mut links: HashMap<(u64, u64), u64> = HashMap::new();
        self.tree_inner(&norm(dest), src, &mut links)
    }

    fn tree_inner(
        &mut self,
        dest: &str,
        src: &Path,
        links: &mut HashMap<(u64, u64), u64>,
    ) -> Result<()> {
        let md = fs::symlink_metadata(src).with_context(|| format!("reading {}", src.display()))?;
        let kind = md.mode() & S_IFMT;
        let mut node = Node {
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            data: None,
            rdev: (dev_major(md.rdev()), dev_minor(md.rdev())),
            link_group: None,
        };
        match kind {
            S_IFDIR => {
                if !dest.is_empty() {
                    self.insert(dest, node);
                }
                let mut names: Vec<_> = fs::read_dir(src)
                    .with_context(|| format!("listing {}", src.display()))?
                    .map(|e| e.map(|e| e.file_name()))
                    .collect::<std::io::Result<_>>()
                    .with_context(|| format!("listing {}", src.display()))?;
                names.sort();
                for n in names {
                    let Some(name) = n.to_str() else {
                        bail!("{}: non-UTF-8 file name", src.join(&n).display());
                    };
                    let child = if dest.is_empty() {
                        name.to_owned()
                    } else {
                        format!("{dest}/{name}")
                    };
                    self.tree_inner(&child, &src.join(&n), links)?;
                }
                return Ok(());
            }
            S_IFREG => {
                node.data = Some(Data::File(src.to_path_buf()));
                if md.nlink() > 1 {
                    let next = &mut self.next_group;
                    let g = *links.entry((md.dev(), md.ino())).or_insert_with(|| {
                        *next += 1;
                        *next
                    });
                    node.link_group = Some(g);
                }
            }
            S_IFLNK => {
                let t = fs::read_link(src).with_context(|| format!("reading {}", src.display()))?;
                node.data = Some(Data::Bytes(t.as_os_str().as_encoded_bytes().to_vec()));
            }
            _ => {} // devices, fifos, sockets: metadata only
        }
        if dest.is_empty() {
            bail!("{}: the root of a tree must be a directory", src.display());
        }
        self.insert(dest, node);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Writes the archive (sorted, deterministic) and its trailer.
    pub fn write(&self, out: &mut dyn Write) -> Result<u64> {
        let mut sorted: Vec<(&String, &Node)> = self.nodes.iter().collect();
        sorted.sort_by(|a, b| a.0.split('/').cmp(b.0.split('/')));
        // Hardlink groups: members present, and which one (the last) carries the data.
        let mut members: HashMap<u64, usize> = HashMap::new();
        let mut last: HashMap<u64, usize> = HashMap::new();
        for (i, (_, n)) in sorted.iter().enumerate() {
            if let Some(g) = n.link_group {
                *members.entry(g).or_default() += 1;
                last.insert(g, i);
            }
        }
        let mut group_ino: HashMap<u64, u32> = HashMap::new();
        let mut w = Counter { inner: out, n: 0 };
        let mut next_ino: u32 = 1;
        for (i, (path, n)) in sorted.iter().enumerate() {
            let (ino, nlink, carries) = match n.link_group {
                Some(g) if members.get(&g).copied().unwrap_or(1) > 1 => {
                    let ino = *group_ino.entry(g).or_insert_with(|| {
                        next_ino += 1;
                        next_ino - 1
                    });
                    let count = members.get(&g).copied().unwrap_or(1);
                    (ino, count as u32, last.get(&g) == Some(&i))
                }
                _ => {
                    next_ino += 1;
                    let nlink = if n.mode & S_IFMT == S_IFDIR { 2 } else { 1 };
                    (next_ino - 1, nlink, true)
                }
            };
            let data = match (&n.data, carries) {
                (Some(Data::Bytes(b)), true) => b.clone(),
                (Some(Data::File(p)), true) => {
                    fs::read(p).with_context(|| format!("reading {}", p.display()))?
                }
                _ => Vec::new(),
            };
            header(
                &mut w,
                &Hdr {
                    ino,
                    mode: n.mode,
                    uid: n.uid,
                    gid: n.gid,
                    nlink,
                    size: data.len(),
                    rdev: n.rdev,
                },
                path,
            )?;
            w.write_all(&data)?;
            pad4(&mut w)?;
        }
        if let Some((path, mode, data)) = &self.last {
            next_ino += 1;
            header(
                &mut w,
                &Hdr {
                    ino: next_ino - 1,
                    mode: *mode,
                    uid: 0,
                    gid: 0,
                    nlink: 1,
                    size: data.len(),
                    rdev: (0, 0),
                },
                path,
            )?;
            w.write_all(data)?;
            pad4(&mut w)?;
        }
        header(
            &mut w,
            &Hdr {
                ino: 0,
                mode: 0,
                uid: 0,
                gid: 0,
                nlink: 1,
                size: 0,
                rdev: (0, 0),
            },
            "TRAILER!!!",
        )?;
        // Pad to 512 like cpio(1), which some readers expect.
        while !w.n.is_multiple_of(512) {
            w.write_all(&[0])?;
        }
        Ok(w.n)
    }
}

struct Hdr {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    size: usize,
    rdev: (u32, u32),
}

fn header(w: &mut Counter<'_>, h: &Hdr, name: &str) -> Result<()> {
    let Ok(size) = u32::try_from(h.size) else {
        bail!("{name}: {} bytes is too large for a newc cpio", h.size);
    };
    let namesize = name.len() + 1;
    let s = format!(
        "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        h.ino, h.mode, h.uid, h.gid, h.nlink, MTIME, size, 0, 0, h.rdev.0, h.rdev.1, namesize, 0
    );
    w.write_all(s.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad4(w)
}

fn pad4(w: &mut Counter<'_>) -> Result<()> {
    while !w.n.is_multiple_of(4) {
        w.write_all(&[0])?;
    }
    Ok(())
}

struct Counter<'a> {
    inner: &'a mut dyn Write,
    n: u64,
}

impl Counter<'_> {
    fn write_all(&mut self, b: &[u8]) -> Result<()> {
        self.inner.write_all(b)?;
        self.n += b.len() as u64;
        Ok(())
    }
}

fn dev_major(rdev: u64) -> u32 {
    (((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff)) as u32
}

fn dev_minor(rdev: u64) -> u32 {
    ((rdev & 0xff) | ((rdev >> 12) & !0xff)) as u32
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::process::Command;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("paddock-cpio-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_last_file_comes_after_everything() {
        let mut c = Cpio::new();
        c.dir("usr/share/ros", 0o755);
        c.file("zzz/late", 0o644, "x");
        c.file("a/early", 0o644, "y");
        c.last_file("usr/share/ros/complete", 0o644, "ok\n");
        let mut out = vec![];
        c.write(&mut out).unwrap();
        let find = |needle: &str| {
            out.windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap()
        };
        let last = find("usr/share/ros/complete");
        for other in ["zzz/late", "a/early", "usr/share/ros\0"] {
            assert!(find(other) < last, "{other}");
        }
        assert!(last < find("TRAILER!!!"));
    }

    fn sample(src: &Path) -> Cpio {
        fs::create_dir_all(src.join("sub/deeper")).unwrap();
        fs::write(src.join("sub/deeper/f.txt"), b"deep\n").unwrap();
        fs::write(src.join("a"), b"hello").unwrap();
        fs::hard_link(src.join("a"), src.join("sub/a-link")).unwrap();
        std::os::unix::fs::symlink("../a", src.join("sub/sym")).unwrap();
        let mut c = Cpio::new();
        c.file("etc/os-release", 0o644, b"NAME=Paddock\n".to_vec());
        c.symlink("/init", "/usr/bin/ros");
        c.file("usr/bin/ros", 0o755, b"#!/bin/sh\n".to_vec());
        c.dir("tmp", 0o1777);
        c.char_dev("dev/console", 0o600, 5, 1);
        c.tree("/store", src).unwrap();
        c
    }

    #[test]
    fn reads_back_with_cpio_and_is_deterministic() {
        let d = tmp("rb");
        let src = d.join("src");
        let c = sample(&src);
        let mut a = Vec::new();
        let n = c.write(&mut a).unwrap();
        assert_eq!(n as usize, a.len());
        assert_eq!(a.len() % 512, 0);
        let mut b = Vec::new();
        sample_again(&d).write(&mut b).unwrap();
        assert_eq!(a, b, "same input, same bytes");

        let archive = d.join("out.cpio");
        fs::write(&archive, &a).unwrap();
        let list = Command::new("cpio")
            .args(["-t", "--quiet", "-F"])
            .arg(&archive)
            .output()
            .unwrap();
        assert!(list.status.success(), "{list:?}");
        let names: Vec<String> = String::from_utf8(list.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        // Parents before children, component order ("sub" before "sub/a-link").
        let expected = [
            "dev",
            "dev/console",
            "etc",
            "etc/os-release",
            "init",
            "store",
            "store/a",
            "store/sub",
            "store/sub/a-link",
            "store/sub/deeper",
            "store/sub/deeper/f.txt",
            "store/sub/sym",
            "tmp",
            "usr",
            "usr/bin",
            "usr/bin/ros",
        ];
        assert_eq!(names, expected);

        // Extract (as any user: no device nodes in this part) and compare contents.
        let out = d.join("x");
        fs::create_dir_all(&out).unwrap();
        let st = Command::new("cpio")
            .args(["-i", "-d", "--quiet", "--no-absolute-filenames", "-F"])
            .arg(&archive)
            .arg("store/*")
            .arg("init")
            .arg("etc/*")
            .current_dir(&out)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(fs::read(out.join("store/a")).unwrap(), b"hello");
        assert_eq!(fs::read(out.join("store/sub/a-link")).unwrap(), b"hello");
        let a_md = fs::metadata(out.join("store/a")).unwrap();
        let l_md = fs::metadata(out.join("store/sub/a-link")).unwrap();
        assert_eq!(a_md.ino(), l_md.ino(), "hardlink kept");
        assert_eq!(
            fs::read_link(out.join("store/sub/sym")).unwrap(),
            Path::new("../a")
        );
        assert_eq!(
            fs::read_link(out.join("init")).unwrap(),
            Path::new("/usr/bin/ros")
        );
        assert_eq!(
            fs::read(out.join("store/sub/deeper/f.txt")).unwrap(),
            b"deep\n"
        );
        assert_eq!(
            fs::read(out.join("etc/os-release")).unwrap(),
            b"NAME=Paddock\n"
        );

        // Verbose listing: the device node, the sticky bit and the mtime.
        let v = Command::new("cpio")
            .args(["-t", "-v", "--quiet", "-F"])
            .arg(&archive)
            .output()
            .unwrap();
        let v = String::from_utf8(v.stdout).unwrap();
        assert!(
            v.lines()
                .any(|l| l.starts_with("crw-------") && l.ends_with("dev/console")),
            "{v}"
        );
        assert!(
            v.lines()
                .any(|l| l.starts_with("drwxrwxrwt") && l.ends_with("tmp")),
            "{v}"
        );
        let _ = fs::remove_dir_all(&d);
    }

    fn sample_again(d: &Path) -> Cpio {
        let src2 = d.join("src2");
        sample(&src2)
    }

    #[test]
    fn later_entries_replace_earlier_and_parents_are_implicit() {
        let mut c = Cpio::new();
        c.file("a/b/c", 0o644, b"1".to_vec());
        c.file("a/b/c", 0o600, b"22".to_vec());
        assert_eq!(c.len(), 3);
        let mut out = Vec::new();
        c.write(&mut out).unwrap();
        let s = String::from_utf8_lossy(&out);
        assert!(s.contains("a/b/c\0"));
        assert!(s.contains("00008180"), "mode 0100600 of the replacement");
        assert!(s.contains("\u{0}22\u{0}") || s.contains("\u{0}22"), "{s:?}");
    }
}
