//! The filesystem prefix every `ros` command works below (`ros --root DIR ...`).
//!
//! Tests and the OS builder run `ros` against a directory tree instead of `/`. Every path the
//! program touches is built through [`Root::path`], never by hand.

use std::path::{Component, Path, PathBuf};

/// A filesystem prefix. `Root::new("/")` is the real system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root(PathBuf);

impl Root {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Root(dir.into())
    }

    /// The prefix itself.
    pub fn dir(&self) -> &Path {
        &self.0
    }

    /// `abs` (an absolute path as the running OS sees it) placed below the prefix.
    /// Leading `/` and `.` components are dropped; `..` components are dropped too, so a
    /// configured path can never climb out of the prefix.
    pub fn path(&self, abs: impl AsRef<Path>) -> PathBuf {
        let mut out = self.0.clone();
        for c in abs.as_ref().components() {
            if let Component::Normal(part) = c {
                out.push(part);
            }
        }
        out
    }
}

impl Default for Root {
    fn default() -> Self {
        Root::new("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_below_the_prefix() {
        let r = Root::new("/tmp/x");
        assert_eq!(r.path("/var/lib/a"), PathBuf::from("/tmp/x/var/lib/a"));
        assert_eq!(
            r.path("../../etc/passwd"),
            PathBuf::from("/tmp/x/etc/passwd")
        );
        assert_eq!(Root::default().path("/etc"), PathBuf::from("/etc"));
    }
}
