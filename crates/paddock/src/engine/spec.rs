//! What a system container is made of, as the engine stores it: the image's config merged with
//! what the creator asked for. Docker API requests and compose services are both turned into a
//! [`ContainerSpec`]; the bundle writer turns it into an OCI runtime spec.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A restart policy, as docker spells them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    No,
    Always,
    UnlessStopped,
    /// Restart after a non-zero exit, at most `max` times (0 = no limit).
    OnFailure {
        max: u32,
    },
}

impl RestartPolicy {
    /// Parses `no`, `always`, `unless-stopped`, `on-failure[:N]`.
    pub fn parse(s: &str) -> Result<RestartPolicy, String> {
        match s.split_once(':') {
            None if s.is_empty() || s == "no" => Ok(RestartPolicy::No),
            None if s == "always" => Ok(RestartPolicy::Always),
            None if s == "unless-stopped" => Ok(RestartPolicy::UnlessStopped),
            None if s == "on-failure" => Ok(RestartPolicy::OnFailure { max: 0 }),
            Some(("on-failure", n)) => n
                .parse()
                .map(|max| RestartPolicy::OnFailure { max })
                .map_err(|_| format!("restart policy {s:?}: on-failure takes a number of retries")),
            _ => Err(format!(
                "restart policy {s:?}: expected no, always, unless-stopped or on-failure[:N]"
            )),
        }
    }

    /// Docker's `Name` field.
    pub fn name(&self) -> &'static str {
        match self {
            RestartPolicy::No => "no",
            RestartPolicy::Always => "always",
            RestartPolicy::UnlessStopped => "unless-stopped",
            RestartPolicy::OnFailure { .. } => "on-failure",
        }
    }
}

/// A namespace choice for pid/ipc/uts/network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NsMode {
    /// A namespace of the container's own.
    #[default]
    Private,
    /// The host's.
    Host,
    /// Network only: a namespace with nothing but `lo`.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub host: String,
    pub container: String,
    /// cgroup permissions, `rwm` by default.
    pub permissions: String,
}

/// One mount in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// `bind`, `volume` (a named or anonymous volume) or `tmpfs`.
    pub kind: String,
    /// Host path (bind), volume name (volume), empty (tmpfs).
    pub source: String,
    pub destination: String,
    pub read_only: bool,
    /// `private`, `rprivate`, `shared`, `rshared`, `slave`, `rslave`, or empty (rprivate).
    pub propagation: String,
    /// tmpfs options (`size=64m,mode=1777`).
    pub options: String,
}

/// Everything needed to (re)create a system container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// The image as the user named it.
    pub image: String,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    pub tty: bool,
    pub open_stdin: bool,
    pub mounts: Vec<MountSpec>,
    pub volumes_from: Vec<String>,
    pub privileged: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub devices: Vec<Device>,
    pub network: NsMode,
    pub pid: NsMode,
    pub ipc: NsMode,
    pub uts: NsMode,
    pub read_only: bool,
    pub ulimits: Vec<Ulimit>,
    /// Bytes; 0 = no limit.
    pub memory: i64,
    /// CPUs in units of 1e-9; 0 = no limit.
    pub nano_cpus: i64,
    pub cpu_shares: i64,
    /// 0 = no limit.
    pub pids_limit: i64,
    pub oom_score_adj: i32,
    pub stop_signal: String,
    /// Seconds to wait after the stop signal before SIGKILL.
    pub stop_timeout: Option<u32>,
    pub restart: RestartPolicy,
    pub auto_remove: bool,
}

/// Parses a bind as docker's `-v SRC:DST[:OPTS]` spells it. A SRC that is not an absolute path
/// names a volume; a lone DST is an anonymous volume.
pub fn parse_bind(s: &str) -> Result<MountSpec, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (source, destination, opts) = match parts.as_slice() {
        [dst] => ("", *dst, ""),
        [src, dst] => (*src, *dst, ""),
        [src, dst, opts] => (*src, *dst, *opts),
        _ => return Err(format!("volume {s:?}: expected SRC:DST[:OPTIONS]")),
    };
    if !destination.starts_with('/') {
        return Err(format!("volume {s:?}: the container path must be absolute"));
    }
    let mut m = MountSpec {
        kind: if source.starts_with('/') {
            "bind".into()
        } else {
            "volume".into()
        },
        source: source.into(),
        destination: destination.into(),
        read_only: false,
        propagation: String::new(),
        options: String::new(),
    };
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => m.read_only = true,
            "rw" => m.read_only = false,
            "z" | "Z" | "nocopy" | "consistent" | "cached" | "delegated" => {}
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" => {
                m.propagation = o.into()
            }
            other => return Err(format!("volume {s:?}: unknown option {other:?}")),
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn restart_policies_parse() {
        assert_eq!(
            RestartPolicy::parse("on-failure:3").unwrap(),
            RestartPolicy::OnFailure { max: 3 }
        );
        assert_eq!(
            RestartPolicy::parse("always").unwrap(),
            RestartPolicy::Always
        );
        assert_eq!(RestartPolicy::parse("").unwrap(), RestartPolicy::No);
        assert!(RestartPolicy::parse("sometimes").is_err());
        assert!(RestartPolicy::parse("on-failure:x").is_err());
    }

    #[test]
    fn binds_parse() {
        let m = parse_bind("/var/run:/var/run:rshared,ro").unwrap();
        assert_eq!(
            (m.kind.as_str(), m.read_only, m.propagation.as_str()),
            ("bind", true, "rshared")
        );
        assert_eq!(parse_bind("data:/data").unwrap().kind, "volume");
        assert_eq!(parse_bind("/anon").unwrap().source, "");
        assert!(parse_bind("/a:relative").is_err());
        assert!(parse_bind("/a:/b:bogus").is_err());
    }
}
