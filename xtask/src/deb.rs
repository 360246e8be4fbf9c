//! Debian packages as build inputs: `apt-get download` + `dpkg -x`, cached in target/.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Once;

use anyhow::{Context, Result, bail};

use crate::{cache_dir, sh};

static UPDATED: Once = Once::new();

/// `apt-get update`, at most once per xtask run, and only when the package lists are empty
/// (a fresh container) or a download/install failed for want of them.
pub fn apt_update_once() -> Result<()> {
    let mut result = Ok(());
    UPDATED.call_once(|| {
        eprintln!("xtask: apt-get update");
        result = sh(Command::new("apt-get").args(["update", "-q"]));
    });
    result
}

/// Extracts Debian package `pkg` into the cache (once) and returns the directory.
pub fn extract(pkg: &str) -> Result<PathBuf> {
    let dir = cache_dir().join("debs").join(pkg);
    let done = dir.join(".extracted");
    if done.exists() {
        return Ok(dir);
    }
    let dl = cache_dir().join("downloads");
    std::fs::create_dir_all(&dl)?;
    let debs = |dl: &PathBuf| -> Vec<PathBuf> {
        std::fs::read_dir(dl)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{pkg}_")))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    if debs(&dl).is_empty() {
        eprintln!("xtask: apt-get download {pkg}");
        let ok = Command::new("apt-get")
            .arg("download")
            .arg(pkg)
            .current_dir(&dl)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            apt_update_once()?;
            sh(Command::new("apt-get")
                .arg("download")
                .arg(pkg)
                .current_dir(&dl))?;
        }
    }
    let Some(deb) = debs(&dl).into_iter().next() else {
        bail!("apt-get download {pkg} produced no .deb")
    };
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    sh(Command::new("dpkg").arg("-x").arg(&deb).arg(&dir))
        .with_context(|| format!("extracting {}", deb.display()))?;
    std::fs::write(&done, b"")?;
    Ok(dir)
}
