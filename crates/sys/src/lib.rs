//! The syscalls Paddock needs that no safe wrapper offers. This is the only crate of the
//! workspace that may use `unsafe`; each block carries a `// SAFETY:` comment, and each
//! function is safe to call from any thread at any time.

use std::io;

/// Restores the default disposition of SIGPIPE.
///
/// The Rust runtime ignores SIGPIPE, and an ignored disposition survives `execve`: without
/// this, every process a container starts would ignore SIGPIPE and `yes | head` would spin.
/// The shim and the exec helper call it before the runtime starts container processes.
pub fn default_sigpipe() -> io::Result<()> {
    // SAFETY: installing SIG_DFL registers no handler, so no Rust code can be run from
    // signal context; `signal` has no memory-safety preconditions beyond a valid signal
    // number, which SIGPIPE is.
    let prev = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    if prev == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the child `cmd` starts begin with no signal blocked.
///
/// A blocked mask survives `fork` and `execve`, and the standard library's spawn keeps it. The
/// processes that take signals synchronously (init, the network and docker services) block
/// SIGTERM and SIGCHLD; without this their children (udhcpc, dockerd) would inherit that and
/// never see the SIGTERM that should stop them.
pub fn unblock_signals_on_exec(cmd: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: it calls sigemptyset and pthread_sigmask, both
    // async-signal-safe, on a set that lives on its own stack, and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            if libc::sigemptyset(set.as_mut_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            let rc = libc::pthread_sigmask(libc::SIG_SETMASK, set.as_ptr(), std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            Ok(())
        })
    }
}

/// A detached copy of the mount at `path` (`open_tree(2)` with `OPEN_TREE_CLONE`; with
/// `recursive`, its submounts too). The copy outlives a change of mount namespace, so it can be
/// attached in another one with [`attach_mount`].
pub fn clone_mount(path: &std::path::Path, recursive: bool) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut flags = libc::OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call; open_tree only reads
    // it and returns a new descriptor or -1, touching no other memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: open_tree returned a fresh descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Attaches a mount made by [`clone_mount`] on `target` in the caller's mount namespace
/// (`move_mount(2)` with `MOVE_MOUNT_F_EMPTY_PATH`).
pub fn attach_mount(mount: &std::os::fd::OwnedFd, target: &std::path::Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    let c = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: the empty source path and `c` are valid NUL-terminated strings that outlive the
    // call, and `mount` is an open descriptor; move_mount reads them and changes no memory of
    // ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mount.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sigpipe_ignored() -> bool {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let ign = status
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .unwrap()
            .trim()
            .to_owned();
        u64::from_str_radix(&ign, 16).unwrap() & (1 << (libc::SIGPIPE - 1)) != 0
    }

    #[test]
    fn children_start_with_no_blocked_signal() {
        // Block SIGUSR1 in a fresh thread only (the mask is per thread), then spawn from it.
        let blocked_in_child = |clear: bool| {
            std::thread::spawn(move || {
                let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
                // SAFETY: test code: a set on this stack, initialised before use.
                let rc = unsafe {
                    libc::sigemptyset(set.as_mut_ptr());
                    libc::sigaddset(set.as_mut_ptr(), libc::SIGUSR1);
                    libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), std::ptr::null_mut())
                };
                assert_eq!(rc, 0);
                let mut cmd = std::process::Command::new("grep");
                cmd.args(["^SigBlk:", "/proc/self/status"]);
                if clear {
                    unblock_signals_on_exec(&mut cmd);
                }
                let out = cmd.output().unwrap();
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let mask =
                    u64::from_str_radix(text.trim_start_matches("SigBlk:").trim(), 16).unwrap();
                mask & (1 << (libc::SIGUSR1 - 1)) != 0
            })
            .join()
            .unwrap()
        };
        assert!(
            blocked_in_child(false),
            "the mask is inherited without the helper"
        );
        assert!(!blocked_in_child(true));
    }

    #[test]
    #[ignore = "needs root: run `cargo xtask test`"]
    fn a_cloned_mount_is_attached_elsewhere() {
        let base = std::env::temp_dir().join(format!("paddock-sys-mnt-{}", std::process::id()));
        let (src, dst) = (base.join("src"), base.join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&dst).unwrap();
        // A tmpfs to clone, with a file in it.
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "t"])
            .arg(&src)
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::write(src.join("marker"), b"here").unwrap();
        let m = clone_mount(&src, false).unwrap();
        let attached = attach_mount(&m, &dst);
        let seen = std::fs::read(dst.join("marker"));
        for d in [&dst, &src] {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(d)
                .status();
        }
        let _ = std::fs::remove_dir_all(&base);
        attached.unwrap();
        assert_eq!(seen.unwrap(), b"here");
        assert!(clone_mount(std::path::Path::new("/nonexistent-paddock"), false).is_err());
    }

    #[test]
    fn sigpipe_goes_back_to_default() {
        // The test harness is a Rust program: SIGPIPE starts ignored.
        assert!(sigpipe_ignored());
        default_sigpipe().unwrap();
        assert!(!sigpipe_ignored());
    }
}
