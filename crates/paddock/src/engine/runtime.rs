//! The OCI runtime behind a small trait, so youki's libcontainer can be replaced.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;

#[derive(Debug, thiserror::Error)]
#[error("runtime: container {id}: {why}")]
pub struct RuntimeError {
    pub id: String,
    pub why: String,
}

/// What the engine needs from an OCI runtime.
pub trait Runtime {
    /// Creates and starts the container described by `bundle/config.json`; returns the pid of
    /// its init. The calling process must be able to reap that pid.
    fn start(&self, id: &str, bundle: &Path, stdio: Stdio) -> Result<i32, RuntimeError>;
    /// Runs another process in the running container `id`, described by an OCI `process`
    /// JSON file; returns its pid, which the calling process must reap.
    fn exec(&self, id: &str, process: &Path, stdio: Stdio) -> Result<i32, RuntimeError>;
    /// Forgets a stopped container (cgroups, runtime state).
    fn delete(&self, id: &str) -> Result<(), RuntimeError>;
}

/// Where a container process's stdio goes.
pub enum Stdio {
    /// These descriptors (stdin, stdout, stderr).
    Fds(OwnedFd, OwnedFd, OwnedFd),
    /// A pty the runtime allocates in the container; its master is sent to this socket.
    Console(PathBuf),
    /// Whatever the calling process has.
    Inherit,
}

/// youki's libcontainer, with its state under `root`.
pub struct Libcontainer {
    root: PathBuf,
}

impl Libcontainer {
    pub fn new(root: &Path) -> Self {
        Libcontainer {
            root: root.to_path_buf(),
        }
    }
}

impl Runtime for Libcontainer {
    fn start(&self, id: &str, bundle: &Path, stdio: Stdio) -> Result<i32, RuntimeError> {
        let err = |why: String| RuntimeError { id: id.into(), why };
        std::fs::create_dir_all(&self.root)
            .map_err(|e| err(format!("creating {}: {e}", self.root.display())))?;
        // A leftover from an earlier run of the same container (daemon restart, crash).
        let _ = self.delete(id);
        let builder = ContainerBuilder::new(id.to_owned(), SyscallType::Linux)
            .with_root_path(&self.root)
            .map_err(|e| err(e.to_string()))?;
        let mut container = with_stdio(builder, stdio)
            .as_init(bundle)
            // pivot_root cannot leave an initramfs (it has no parent mount): there the
            // rootfs is entered by moving it over / instead, as docker's DOCKER_RAMDISK does.
            .with_no_pivot(root_is_ramfs())
            .with_systemd(false)
            .with_detach(true)
            .build()
            .map_err(|e| err(format!("create: {e}")))?;
        container.start().map_err(|e| err(format!("start: {e}")))?;
        container
            .pid()
            .map(|p| p.as_raw())
            .ok_or_else(|| err("started without a pid".into()))
    }

    fn exec(&self, id: &str, process: &Path, stdio: Stdio) -> Result<i32, RuntimeError> {
        let err = |why: String| RuntimeError { id: id.into(), why };
        let builder = ContainerBuilder::new(id.to_owned(), SyscallType::Linux)
            .with_root_path(&self.root)
            .map_err(|e| err(e.to_string()))?;
        with_stdio(builder, stdio)
            .as_tenant()
            // Detached: we reap the process ourselves (and a console needs it).
            .with_detach(true)
            .with_process(Some(process))
            .build()
            .map(|p| p.as_raw())
            .map_err(|e| err(format!("exec: {e}")))
    }

    fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        let dir = self.root.join(id);
        if !dir.exists() {
            return Ok(());
        }
        let err = |why: String| RuntimeError { id: id.into(), why };
        let mut c = libcontainer::container::Container::load(dir.clone())
            .map_err(|e| err(format!("load: {e}")))?;
        c.delete(true).map_err(|e| err(format!("delete: {e}")))?;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}

fn with_stdio(b: ContainerBuilder, stdio: Stdio) -> ContainerBuilder {
    match stdio {
        Stdio::Fds(i, o, e) => b.with_stdin(i).with_stdout(o).with_stderr(e),
        Stdio::Console(p) => b.with_console_socket(Some(p)),
        Stdio::Inherit => b,
    }
}

/// True when `/` is the initramfs (rootfs, a ramfs or tmpfs with no parent mount), or when
/// `PADDOCK_NO_PIVOT` is set (to exercise that path on a normal host).
pub fn root_is_ramfs() -> bool {
    if std::env::var_os("PADDOCK_NO_PIVOT").is_some() {
        return true;
    }
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| ramfs_root_in(&m))
        .unwrap_or(false)
}

pub(crate) fn ramfs_root_in(mountinfo: &str) -> bool {
    // The last mount on "/" is the one in effect.
    let root = mountinfo
        .lines()
        .rfind(|l| l.split_whitespace().nth(4) == Some("/"));
    root.and_then(|l| l.split(" - ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .is_some_and(|fs| fs == "rootfs" || fs == "ramfs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initramfs_roots_are_recognised() {
        assert!(ramfs_root_in("1 1 0:2 / / rw - rootfs rootfs rw\n"));
        assert!(!ramfs_root_in(
            "1 1 0:2 / / rw - rootfs rootfs rw\n25 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        ));
        assert!(!ramfs_root_in(
            "25 1 8:1 / / rw shared:1 - overlay overlay rw\n"
        ));
    }
}
