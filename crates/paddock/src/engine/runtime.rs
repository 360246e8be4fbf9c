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
    /// Creates and starts the container described by `bundle/config.json` with the given stdio;
    /// returns the pid of its init. The calling process must be able to reap that pid.
    fn start(
        &self,
        id: &str,
        bundle: &Path,
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> Result<i32, RuntimeError>;
    /// Forgets a stopped container (cgroups, runtime state).
    fn delete(&self, id: &str) -> Result<(), RuntimeError>;
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
    fn start(
        &self,
        id: &str,
        bundle: &Path,
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> Result<i32, RuntimeError> {
        let err = |why: String| RuntimeError { id: id.into(), why };
        std::fs::create_dir_all(&self.root)
            .map_err(|e| err(format!("creating {}: {e}", self.root.display())))?;
        // A leftover from an earlier run of the same container (daemon restart, crash).
        let _ = self.delete(id);
        let mut container = ContainerBuilder::new(id.to_owned(), SyscallType::Linux)
            .with_root_path(&self.root)
            .map_err(|e| err(e.to_string()))?
            .with_stdin(stdin)
            .with_stdout(stdout)
            .with_stderr(stderr)
            .as_init(bundle)
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
