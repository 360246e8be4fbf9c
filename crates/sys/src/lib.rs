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
    fn sigpipe_goes_back_to_default() {
        // The test harness is a Rust program: SIGPIPE starts ignored.
        assert!(sigpipe_ignored());
        default_sigpipe().unwrap();
        assert!(!sigpipe_ignored());
    }
}
