//! Leaving the initramfs: the kernel's `rootfs` has no parent mount, so `pivot_root(2)` fails
//! there (EINVAL) and every container would need the weaker no-pivot mode. Before anything
//! else, PID 1 moves the initramfs into a tmpfs, file by file (each file is freed from the
//! initramfs as soon as its copy exists, so memory never holds two copies), moves that tmpfs
//! onto `/`, chroots into it and executes itself again.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// Where the tmpfs is assembled.
const NEW_ROOT: &str = "/newroot";

/// True when `/` is the kernel's initramfs (`rootfs`).
pub fn in_initramfs() -> bool {
    let _ = fs::create_dir_all("/proc");
    let mounted = mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::empty(),
        None::<&str>,
    )
    .is_ok();
    let answer = fs::read_to_string("/proc/self/mountinfo")
        .map(|m| crate::engine::runtime::ramfs_root_in(&m))
        .unwrap_or(false);
    if mounted {
        let _ = umount2("/proc", MntFlags::MNT_DETACH);
    }
    answer
}

/// Moves the initramfs into a tmpfs and re-executes `/init` there. Returns only on failure,
/// with what went wrong; the caller then boots on in the initramfs (no-pivot containers).
pub fn to_tmpfs() -> String {
    let new_root = Path::new(NEW_ROOT);
    if let Err(e) = fs::create_dir_all(new_root) {
        return format!("creating {NEW_ROOT}: {e}");
    }
    if let Err(e) = mount(
        Some("paddock-root"),
        new_root,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755,size=90%"),
    ) {
        return format!("mounting a tmpfs on {NEW_ROOT}: {e}");
    }
    let mut links = HashMap::new();
    let mut problems = Vec::new();
    // Only the initramfs moves: anything mounted on it (a /proc, a /dev) stays where it is.
    match fs::symlink_metadata("/") {
        Ok(md) => move_dir(
            Path::new("/"),
            new_root,
            md.dev(),
            &mut links,
            &mut problems,
        ),
        Err(e) => return format!("reading /: {e}"),
    }
    for p in problems.iter().take(5) {
        super::log(format!("moving the initramfs: {p}"));
    }
    if let Err(e) = nix::unistd::chdir(new_root) {
        return format!("entering {NEW_ROOT}: {e}");
    }
    let moved = mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>);
    if let Err(e) = &moved {
        super::log(format!("moving {NEW_ROOT} onto /: {e}; chrooting instead"));
    }
    if let Err(e) = nix::unistd::chroot(".") {
        return format!("chroot into {NEW_ROOT}: {e}");
    }
    let _ = nix::unistd::chdir("/");
    let args: Vec<std::ffi::CString> = std::env::args_os()
        .filter_map(|a| std::ffi::CString::new(a.into_encoded_bytes()).ok())
        .collect();
    let init = c"/init";
    match nix::unistd::execv(init, &args) {
        Err(e) => format!("executing /init in the tmpfs root: {e}"),
    }
}

/// Moves the entries of `src` into `dst`, which exists; `links` maps (dev, inode) of files
/// already moved to their new path, so hard links stay hard links.
pub(super) fn move_dir(
    src: &Path,
    dst: &Path,
    dev: u64,
    links: &mut HashMap<(u64, u64), PathBuf>,
    problems: &mut Vec<String>,
) {
    copy_dir(src, dst, dev, links, problems, false)
}

/// Like [`move_dir`]; with `keep` the source is left as it was (a read-only source).
pub(super) fn copy_dir(
    src: &Path,
    dst: &Path,
    dev: u64,
    links: &mut HashMap<(u64, u64), PathBuf>,
    problems: &mut Vec<String>,
    keep: bool,
) {
    let entries = match fs::read_dir(src) {
        Ok(e) => e,
        Err(e) => {
            problems.push(format!("{}: {e}", src.display()));
            return;
        }
    };
    for entry in entries.flatten() {
        let from = entry.path();
        if from == Path::new(NEW_ROOT) {
            continue;
        }
        let to = dst.join(entry.file_name());
        if let Err(e) = copy_entry(&from, &to, dev, links, problems, keep) {
            problems.push(format!("{}: {e}", from.display()));
        }
    }
}

/// Moves one entry (with `keep`, copies it: the source is left as it was).
pub(super) fn copy_entry(
    from: &Path,
    to: &Path,
    dev: u64,
    links: &mut HashMap<(u64, u64), PathBuf>,
    problems: &mut Vec<String>,
    keep: bool,
) -> std::io::Result<()> {
    let md = fs::symlink_metadata(from)?;
    let ft = md.file_type();
    if md.dev() != dev {
        // A mount point: recreate the directory, leave its contents alone.
        if ft.is_dir() {
            fs::create_dir(to)?;
        }
        return Ok(());
    }
    if ft.is_dir() {
        fs::create_dir(to)?;
        copy_dir(from, to, dev, links, problems, keep);
        // Owner before mode: chown clears the set-id bits.
        lchown(to, Some(md.uid()), Some(md.gid()))?;
        fs::set_permissions(to, fs::Permissions::from_mode(md.mode() & 0o7777))?;
        // Non-empty only if something inside could not be moved.
        if !keep {
            let _ = fs::remove_dir(from);
        }
        return Ok(());
    }
    if ft.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(from)?, to)?;
    } else if ft.is_file() {
        let key = (md.dev(), md.ino());
        match links.get(&key) {
            // Moving the first link lowered the count, so any key seen before is a link.
            Some(first) => fs::hard_link(first, to)?,
            _ => {
                fs::copy(from, to)?;
                if md.nlink() > 1 {
                    links.insert(key, to.to_path_buf());
                }
            }
        }
        // Owner before mode: chown clears the set-id bits (sudo is set-uid).
        lchown(to, Some(md.uid()), Some(md.gid()))?;
        fs::set_permissions(to, fs::Permissions::from_mode(md.mode() & 0o7777))?;
        return if keep { Ok(()) } else { fs::remove_file(from) };
    } else {
        // Device nodes, fifos, sockets.
        use nix::sys::stat::{Mode, SFlag, mknod};
        let kind = SFlag::from_bits_truncate(md.mode() & SFlag::S_IFMT.bits());
        mknod(
            to,
            kind,
            Mode::from_bits_truncate(md.mode() & 0o7777),
            md.rdev(),
        )
        .map_err(std::io::Error::from)?;
    }
    lchown(to, Some(md.uid()), Some(md.gid()))?;
    if keep { Ok(()) } else { fs::remove_file(from) }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_tree_moves_with_modes_links_and_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        let dst = d.path().join("dst");
        fs::create_dir_all(src.join("usr/bin")).unwrap();
        fs::create_dir(&dst).unwrap();
        fs::write(src.join("usr/bin/ros"), b"elf").unwrap();
        fs::set_permissions(src.join("usr/bin/ros"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::hard_link(src.join("usr/bin/ros"), src.join("usr/bin/init")).unwrap();
        std::os::unix::fs::symlink("/usr/bin/ros", src.join("init")).unwrap();
        fs::set_permissions(src.join("usr"), fs::Permissions::from_mode(0o750)).unwrap();
        let mut links = HashMap::new();
        let mut problems = vec![];
        let dev = fs::metadata(&src).unwrap().dev();
        move_dir(&src, &dst, dev, &mut links, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(fs::read(dst.join("usr/bin/ros")).unwrap(), b"elf");
        let a = fs::metadata(dst.join("usr/bin/ros")).unwrap();
        let b = fs::metadata(dst.join("usr/bin/init")).unwrap();
        assert_eq!(a.ino(), b.ino(), "hard links stay linked");
        assert_eq!(a.mode() & 0o7777, 0o4755, "set-uid survives");
        assert_eq!(
            fs::metadata(dst.join("usr")).unwrap().mode() & 0o7777,
            0o750
        );
        assert_eq!(
            fs::read_link(dst.join("init")).unwrap(),
            Path::new("/usr/bin/ros")
        );
        assert_eq!(
            fs::read_dir(&src).unwrap().count(),
            0,
            "the source is emptied as it goes"
        );
    }
}
