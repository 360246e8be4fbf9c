//! The labels RancherOS reads (`io.rancher.os.*`, `io.docker.compose.rebuild`) typed, and the
//! compose labels Paddock stamps on the containers it creates.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// `io.rancher.os.scope`.
pub const SCOPE: &str = "io.rancher.os.scope";
/// `io.rancher.os.after`: comma list.
pub const AFTER: &str = "io.rancher.os.after";
/// `io.rancher.os.before`: comma list.
pub const BEFORE: &str = "io.rancher.os.before";
/// `io.rancher.os.detach`: `"false"` makes a one-shot.
pub const DETACH: &str = "io.rancher.os.detach";
/// `io.rancher.os.createonly`.
pub const CREATE_ONLY: &str = "io.rancher.os.createonly";
/// `io.rancher.os.reloadconfig`.
pub const RELOAD_CONFIG: &str = "io.rancher.os.reloadconfig";
/// `io.rancher.os.console`.
pub const CONSOLE: &str = "io.rancher.os.console";
/// `io.docker.compose.rebuild`.
pub const REBUILD: &str = "io.docker.compose.rebuild";
/// Stamped: the compose project (`os` for system services).
pub const PROJECT: &str = "com.docker.compose.project";
/// Stamped: the service name.
pub const SERVICE: &str = "com.docker.compose.service";
/// Stamped: the config hash ([`super::hash`]).
pub const CONFIG_HASH: &str = "com.docker.compose.config-hash";
/// Read only: the hash label of old libcompose versions.
pub const LEGACY_CONFIG_HASH: &str = "io.docker.compose.config-hash";
/// The project of RancherOS's core and user-enabled system services.
pub const OS_PROJECT: &str = "os";

/// The labels Paddock stamps itself; they never take part in the config hash.
pub const STAMPED: &[&str] = &[PROJECT, SERVICE, CONFIG_HASH, LEGACY_CONFIG_HASH];

/// Which engine a service runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The system engine (`io.rancher.os.scope: system`).
    System,
    /// The user Docker: any other value, or no label (RancherOS's `client_factory.go`).
    User,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::System => "system",
            Scope::User => "user",
        })
    }
}

/// `io.docker.compose.rebuild`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rebuild {
    /// `always`: recreate on every up.
    Always,
    /// `"false"`: never recreate automatically; warn when out of date.
    Never,
    /// Absent or any other value: recreate when out of date.
    OnChange,
}

/// The RancherOS labels of one service, typed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosLabels {
    pub scope: Scope,
    /// Services this one starts after (`cloud-init` is read as `cloud-init-execute`).
    pub after: Vec<String>,
    /// Services that start after this one.
    pub before: Vec<String>,
    /// False for one-shots (`detach: "false"`): dependents wait for a zero exit.
    pub detach: bool,
    /// Create the container, never start it.
    pub create_only: bool,
    /// After this service is up, the config and service set should be reloaded.
    pub reload_config: bool,
    /// Console identity (`default`, `debian`, ...).
    pub console: Option<String>,
    pub rebuild: Rebuild,
    /// The rebuild label's raw value (`None` if absent), for change detection.
    pub rebuild_raw: Option<String>,
}

pub(crate) fn is_true(v: Option<&String>) -> bool {
    v.is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

fn is_false(v: Option<&String>) -> bool {
    v.is_some_and(|v| v.trim().eq_ignore_ascii_case("false"))
}

/// Splits a comma list, trims, drops empties, maps `cloud-init` to `cloud-init-execute`.
pub fn split_services(v: Option<&String>) -> Vec<String> {
    v.map(|v| {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                if s == "cloud-init" {
                    "cloud-init-execute".to_string()
                } else {
                    s.to_string()
                }
            })
            .collect()
    })
    .unwrap_or_default()
}

impl RosLabels {
    /// Reads the labels of a service (or of a container).
    pub fn from_labels(labels: &BTreeMap<String, String>) -> RosLabels {
        let rebuild_raw = labels.get(REBUILD).cloned();
        let rebuild = match rebuild_raw.as_deref().map(str::trim) {
            Some(v) if v.eq_ignore_ascii_case("always") => Rebuild::Always,
            Some(v) if v.eq_ignore_ascii_case("false") => Rebuild::Never,
            _ => Rebuild::OnChange,
        };
        RosLabels {
            scope: match labels.get(SCOPE).map(|s| s.trim()) {
                Some("system") => Scope::System,
                _ => Scope::User,
            },
            after: split_services(labels.get(AFTER)),
            before: split_services(labels.get(BEFORE)),
            detach: !is_false(labels.get(DETACH)),
            create_only: is_true(labels.get(CREATE_ONLY)),
            reload_config: is_true(labels.get(RELOAD_CONFIG)),
            console: labels
                .get(CONSOLE)
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
            rebuild,
            rebuild_raw,
        }
    }
}

/// The labels stamped on a service's container: project, service, config hash.
pub fn stamp(labels: &mut BTreeMap<String, String>, project: &str, service: &str, hash: &str) {
    labels.insert(PROJECT.to_string(), project.to_string());
    labels.insert(SERVICE.to_string(), service.to_string());
    labels.insert(CONFIG_HASH.to_string(), hash.to_string());
}

/// The config hash a container carries (the legacy label as a fallback).
pub fn container_hash(labels: &BTreeMap<String, String>) -> Option<&str> {
    labels
        .get(CONFIG_HASH)
        .or_else(|| labels.get(LEGACY_CONFIG_HASH))
        .map(String::as_str)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults() {
        let l = RosLabels::from_labels(&BTreeMap::new());
        assert_eq!(l.scope, Scope::User);
        assert!(l.detach);
        assert!(!l.create_only && !l.reload_config);
        assert_eq!(l.rebuild, Rebuild::OnChange);
        assert!(l.after.is_empty() && l.console.is_none());
    }

    #[test]
    fn typed() {
        let l = RosLabels::from_labels(&labels(&[
            (SCOPE, "system"),
            (AFTER, "network, cloud-init,,udev"),
            (BEFORE, "docker"),
            (DETACH, "false"),
            (CREATE_ONLY, "true"),
            (RELOAD_CONFIG, "TRUE"),
            (CONSOLE, "debian"),
            (REBUILD, "false"),
        ]));
        assert_eq!(l.scope, Scope::System);
        assert_eq!(l.after, ["network", "cloud-init-execute", "udev"]);
        assert_eq!(l.before, ["docker"]);
        assert!(!l.detach && l.create_only && l.reload_config);
        assert_eq!(l.console.as_deref(), Some("debian"));
        assert_eq!(l.rebuild, Rebuild::Never);
        let l = RosLabels::from_labels(&labels(&[(REBUILD, "always"), (SCOPE, "user")]));
        assert_eq!(l.rebuild, Rebuild::Always);
        assert_eq!(l.scope, Scope::User);
        let l = RosLabels::from_labels(&labels(&[(REBUILD, "true")]));
        assert_eq!(l.rebuild, Rebuild::OnChange);
        assert_eq!(l.rebuild_raw.as_deref(), Some("true"));
    }

    #[test]
    fn stamping_and_hash() {
        let mut l = BTreeMap::new();
        stamp(&mut l, "os", "ntp", "abc");
        assert_eq!(l[PROJECT], "os");
        assert_eq!(l[SERVICE], "ntp");
        assert_eq!(container_hash(&l), Some("abc"));
        let legacy = labels(&[(LEGACY_CONFIG_HASH, "old")]);
        assert_eq!(container_hash(&legacy), Some("old"));
    }
}
