//! Loading kernel modules by name, as `modprobe` does: `modules.dep` gives each module's file
//! and dependencies; dependencies load first; built-in and already loaded modules are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs::File;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("module {module}: {why}")]
pub struct ModuleError {
    pub module: String,
    pub why: String,
}

/// The parsed `modules.dep` of one kernel.
#[derive(Debug, Default)]
pub struct ModuleDb {
    dir: PathBuf,
    /// Normalised name (`-` as `_`) -> (relative path, dependency paths).
    by_name: BTreeMap<String, (String, Vec<String>)>,
    builtin: BTreeSet<String>,
}

/// Module names compare with `-` and `_` the same.
pub fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

fn name_of(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    normalise(stem)
}

impl ModuleDb {
    /// Reads `<dir>/modules.dep` (and `modules.builtin` when present).
    pub fn open(dir: &Path) -> Result<ModuleDb, ModuleError> {
        let dep = std::fs::read_to_string(dir.join("modules.dep")).map_err(|e| ModuleError {
            module: "*".into(),
            why: format!("{}/modules.dep: {e}", dir.display()),
        })?;
        let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
        Ok(ModuleDb::parse(dir, &dep, &builtin))
    }

    pub fn parse(dir: &Path, dep: &str, builtin: &str) -> ModuleDb {
        let mut by_name = BTreeMap::new();
        for line in dep.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let deps = deps.split_whitespace().map(str::to_owned).collect();
            by_name.insert(name_of(path), (path.to_owned(), deps));
        }
        ModuleDb {
            dir: dir.to_path_buf(),
            by_name,
            builtin: builtin.lines().map(name_of).collect(),
        }
    }

    /// The files to load for `name`, dependencies first; empty when built in.
    pub fn plan(&self, name: &str) -> Result<Vec<String>, ModuleError> {
        let n = normalise(name);
        if self.builtin.contains(&n) {
            return Ok(vec![]);
        }
        let (path, deps) = self.by_name.get(&n).ok_or_else(|| ModuleError {
            module: name.into(),
            why: "not found in modules.dep".into(),
        })?;
        // modules.dep lists dependencies with the deepest last: load them in reverse.
        let mut out: Vec<String> = deps.iter().rev().cloned().collect();
        out.push(path.clone());
        Ok(out)
    }

    /// Loads `name` (with `params`) and its dependencies. Already loaded is fine.
    pub fn load(&self, name: &str, params: &str) -> Result<(), ModuleError> {
        let loaded = loaded_modules();
        let files = self.plan(name)?;
        let last = files.len().saturating_sub(1);
        for (i, f) in files.iter().enumerate() {
            if loaded.contains(&name_of(f)) {
                continue;
            }
            let p = if i == last { params } else { "" };
            let err = |why: String| ModuleError {
                module: name.into(),
                why,
            };
            let file = File::open(self.dir.join(f))
                .map_err(|e| err(format!("{}: {e}", self.dir.join(f).display())))?;
            let params = CString::new(p).map_err(|_| err("parameters contain a NUL".into()))?;
            match nix::kmod::finit_module(&file, &params, nix::kmod::ModuleInitFlags::empty()) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(err(format!("loading {f}: {e}"))),
            }
        }
        Ok(())
    }
}

/// Names in /proc/modules.
fn loaded_modules() -> BTreeSet<String> {
    std::fs::read_to_string("/proc/modules")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(normalise)
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn dependencies_load_first_and_builtins_are_skipped() {
        let dep = "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n\
                   kernel/net/core/failover.ko:\n\
                   kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n";
        let db = ModuleDb::parse(Path::new("/m"), dep, "kernel/fs/ext4/ext4.ko\n");
        assert_eq!(
            db.plan("virtio-net").unwrap(),
            vec![
                "kernel/net/core/failover.ko",
                "kernel/drivers/net/net_failover.ko",
                "kernel/drivers/net/virtio_net.ko"
            ]
        );
        assert!(db.plan("ext4").unwrap().is_empty());
        assert!(
            db.plan("nosuch")
                .unwrap_err()
                .to_string()
                .contains("nosuch")
        );
    }
}
