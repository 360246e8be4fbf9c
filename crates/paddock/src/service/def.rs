//! A compose (v1, as libcompose read it, plus the common v2/v3 keys) service map typed into a
//! [`ServiceDef`].
//!
//! Values are taken leniently, as RancherOS's YAML users wrote them: a boolean may be a quoted
//! string (`privileged: "true"`), a number may stand where a string is expected
//! (`DOCKER_API_VERSION: 1.24`), a list may be a single string. An unknown key warns with its
//! path and is ignored; a known key whose value cannot be used makes the service an error.
//! Defaults are normalised while typing (`restart: no` is no policy, an empty string is
//! absent), so two spellings of one service give equal `ServiceDef`s.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{ServiceError, Warning, kind};

/// One compose service, typed. Empty collections and `None` mean "not set" (the engine's
/// default).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceDef {
    /// The service's name (the key in the service map).
    pub name: String,
    pub image: String,
    /// `command`; a string is split into words as compose does (shell quoting, no expansion).
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    /// Resolved environment (bare keys and wildcards are resolved by interpolation).
    pub environment: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub volumes: Vec<Volume>,
    /// `service_or_container[:ro|rw]`, as written.
    pub volumes_from: Vec<String>,
    /// `net` (v1) or `network_mode`: `host`, `none`, `bridge`, `default`, `container:X`,
    /// `service:X`, kept as given.
    pub network_mode: Option<String>,
    pub pid: Option<String>,
    pub ipc: Option<String>,
    pub uts: Option<String>,
    pub privileged: bool,
    pub restart: Option<Restart>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub devices: Vec<Device>,
    pub read_only: bool,
    pub tty: bool,
    pub stdin_open: bool,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// By name (`nofile`).
    pub ulimits: BTreeMap<String, Ulimit>,
    pub log_driver: Option<String>,
    pub log_opt: BTreeMap<String, String>,
    pub container_name: Option<String>,
    pub oom_score_adj: Option<i64>,
    /// Mount point -> options (`size=1m`), empty when none.
    pub tmpfs: BTreeMap<String, String>,
    /// Start ordering only.
    pub depends_on: Vec<String>,
    /// Start ordering only (there is no bridge network to link on).
    pub links: Vec<Link>,
    pub healthcheck: Option<Healthcheck>,
    /// Bytes (`mem_limit` or `memory`).
    pub mem_limit: Option<i64>,
    pub memswap_limit: Option<i64>,
    pub mem_reservation: Option<i64>,
    pub shm_size: Option<i64>,
    pub cpu_shares: Option<i64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<i64>,
    /// `cpuset` (compose v1) / `cpuset_cpus`.
    pub cpuset: Option<String>,
    pub pids_limit: Option<i64>,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    pub dns: Vec<String>,
    pub extra_hosts: Vec<String>,
    pub ports: Vec<Port>,
    pub expose: Vec<String>,
    pub security_opt: Vec<String>,
    pub group_add: Vec<String>,
    pub sysctls: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
    pub stop_grace_period: Option<Duration>,
    pub init: Option<bool>,
}

/// A `volumes` entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Volume {
    /// `/host:/ctr[:opts]`.
    Bind {
        source: String,
        target: String,
        options: Vec<String>,
    },
    /// `name:/ctr[:opts]`: a named volume.
    Named {
        name: String,
        target: String,
        options: Vec<String>,
    },
    /// `/ctr`: an anonymous volume.
    Anonymous { target: String },
}

impl Volume {
    /// The `HostConfig.Binds` form (`src:dst[:opts]`), `None` for an anonymous volume.
    pub fn bind_string(&self) -> Option<String> {
        let (src, dst, opts) = match self {
            Volume::Bind {
                source,
                target,
                options,
            } => (source, target, options),
            Volume::Named {
                name,
                target,
                options,
            } => (name, target, options),
            Volume::Anonymous { .. } => return None,
        };
        Some(if opts.is_empty() {
            format!("{src}:{dst}")
        } else {
            format!("{src}:{dst}:{}", opts.join(","))
        })
    }
}

/// `restart`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restart {
    /// `always`, `unless-stopped` or `on-failure` (`no` is `None` in [`ServiceDef`]).
    pub name: String,
    /// For `on-failure:N`; 0 otherwise.
    pub max_retries: i64,
}

/// A `devices` entry: `/dev/host[:/dev/ctr[:rwm]]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Device {
    pub host: String,
    pub container: String,
    pub permissions: String,
}

/// An `ulimits` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    pub soft: i64,
    pub hard: i64,
}

/// A `links` entry: `service[:alias]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Link {
    pub service: String,
    pub alias: Option<String>,
}

/// A `ports` entry: `[ip:][host:]container[/proto]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Port {
    pub host_ip: Option<String>,
    pub host_port: Option<String>,
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
}

/// `healthcheck`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// `["CMD", arg...]`, `["CMD-SHELL", script]` or `["NONE"]` (disabled).
    pub test: Vec<String>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub retries: Option<u32>,
    pub start_period: Option<Duration>,
}

impl Healthcheck {
    /// False for `NONE` / `disable: true`.
    pub fn enabled(&self) -> bool {
        !matches!(self.test.first().map(String::as_str), Some("NONE") | None)
    }

    /// The argv to probe with (`CMD-SHELL x` -> `/bin/sh -c x`), `None` when disabled.
    pub fn probe_argv(&self) -> Option<Vec<String>> {
        match self.test.split_first() {
            Some((first, rest)) if first == "CMD" && !rest.is_empty() => Some(rest.to_vec()),
            Some((first, rest)) if first == "CMD-SHELL" && !rest.is_empty() => {
                Some(vec!["/bin/sh".into(), "-c".into(), rest.join(" ")])
            }
            _ => None,
        }
    }
}

/// Compose keys Paddock knows but does not implement: they warn "not supported".
const UNSUPPORTED: &[&str] = &[
    "build",
    "dockerfile",
    "env_file",
    "extends",
    "external_links",
    "volume_driver",
    "mac_address",
    "cgroup_parent",
    "dns_search",
    "dns_opt",
    "networks",
    "cpus",
    "mem_swappiness",
    "isolation",
    "userns_mode",
    "deploy",
    "configs",
    "secrets",
    "platform",
    "profiles",
    "pull_policy",
    "runtime",
    "scale",
    "storage_opt",
    "device_cgroup_rules",
    "blkio_config",
];

struct P<'a> {
    name: &'a str,
    path: &'a str,
    warnings: Vec<Warning>,
}

impl P<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> ServiceError {
        ServiceError {
            service: self.name.to_string(),
            path: format!("{}.{key}", self.path),
            message: message.into(),
        }
    }

    fn warn(&mut self, key: &str, message: impl Into<String>) {
        self.warnings
            .push(Warning::new(format!("{}.{key}", self.path), message));
    }

    fn string(&self, key: &str, v: &Value) -> Result<String, ServiceError> {
        scalar_string(v)
            .ok_or_else(|| self.err(key, format!("expected a string, found {}", kind(v))))
    }

    fn opt_string(&self, key: &str, v: &Value) -> Result<Option<String>, ServiceError> {
        if v.is_null() {
            return Ok(None);
        }
        let s = self.string(key, v)?;
        Ok((!s.is_empty()).then_some(s))
    }

    fn bool(&self, key: &str, v: &Value) -> Result<bool, ServiceError> {
        match v {
            Value::Null => Ok(false),
            Value::Bool(b) => Ok(*b),
            Value::Number(n) if n.as_i64() == Some(0) => Ok(false),
            Value::Number(n) if n.as_i64() == Some(1) => Ok(true),
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" | "y" => Ok(true),
                "false" | "no" | "off" | "0" | "n" | "" => Ok(false),
                _ => Err(self.err(key, format!("expected true or false, found {s:?}"))),
            },
            other => Err(self.err(
                key,
                format!("expected true or false, found {}", kind(other)),
            )),
        }
    }

    fn int(&self, key: &str, v: &Value) -> Result<Option<i64>, ServiceError> {
        match v {
            Value::Null => Ok(None),
            Value::Number(n) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected a whole number, found {n}"))),
            Value::String(s) if s.trim().is_empty() => Ok(None),
            Value::String(s) => s
                .trim()
                .parse::<i64>()
                .map(Some)
                .map_err(|_| self.err(key, format!("expected a whole number, found {s:?}"))),
            other => Err(self.err(
                key,
                format!("expected a whole number, found {}", kind(other)),
            )),
        }
    }

    fn bytes(&self, key: &str, v: &Value) -> Result<Option<i64>, ServiceError> {
        match v {
            Value::Null => Ok(None),
            Value::Number(_) => self.int(key, v),
            Value::String(s) if s.trim().is_empty() => Ok(None),
            Value::String(s) => parse_bytes(s).map(Some).map_err(|m| self.err(key, m)),
            other => Err(self.err(key, format!("expected a size, found {}", kind(other)))),
        }
    }

    fn duration(&self, key: &str, v: &Value) -> Result<Option<Duration>, ServiceError> {
        match v {
            Value::Null => Ok(None),
            // A bare number is seconds.
            Value::Number(n) => n
                .as_f64()
                .filter(|f| *f >= 0.0 && f.is_finite())
                .map(|f| Some(Duration::from_secs_f64(f)))
                .ok_or_else(|| self.err(key, format!("expected a duration, found {n}"))),
            Value::String(s) => parse_duration(s).map(Some).map_err(|m| self.err(key, m)),
            other => Err(self.err(key, format!("expected a duration, found {}", kind(other)))),
        }
    }

    /// A string or a list of scalars.
    fn list(&self, key: &str, v: &Value) -> Result<Vec<String>, ServiceError> {
        match v {
            Value::Null => Ok(Vec::new()),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .filter(|(_, i)| !i.is_null())
                .map(|(n, i)| self.string(&format!("{key}[{n}]"), i))
                .collect(),
            other => Ok(vec![self.string(key, other)?]),
        }
    }

    /// A list of `K<sep>V` / `K`, or a map; a missing value is `None`.
    fn pairs(
        &self,
        key: &str,
        v: &Value,
        sep: char,
    ) -> Result<Vec<(String, Option<String>)>, ServiceError> {
        match v {
            Value::Null => Ok(Vec::new()),
            Value::Object(m) => m
                .iter()
                .map(|(k, v)| {
                    if v.is_null() {
                        Ok((k.clone(), None))
                    } else {
                        Ok((k.clone(), Some(self.string(&format!("{key}.{k}"), v)?)))
                    }
                })
                .collect(),
            Value::Array(_) | Value::String(_) => Ok(self
                .list(key, v)?
                .into_iter()
                .map(|s| match s.split_once(sep) {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (s, None),
                })
                .collect()),
            other => Err(self.err(
                key,
                format!("expected a list or a map, found {}", kind(other)),
            )),
        }
    }

    fn words(&self, key: &str, v: &Value) -> Result<Option<Vec<String>>, ServiceError> {
        match v {
            Value::Null => Ok(None),
            Value::Array(_) => Ok(Some(self.list(key, v)?)),
            other => {
                let s = self.string(key, other)?;
                split_shell(&s).map(Some).map_err(|m| self.err(key, m))
            }
        }
    }
}

/// A scalar as a string (`1.24` -> "1.24", `true` -> "true"); `None` for lists, maps and null.
pub(crate) fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl ServiceDef {
    /// Types one service map. `path` is the service's dotted key (`rancher.services.ntp`) used
    /// in messages. Interpolation ([`super::interp`]) must already have run.
    pub fn from_map(
        name: &str,
        path: &str,
        map: &Map<String, Value>,
    ) -> Result<(ServiceDef, Vec<Warning>), ServiceError> {
        let mut p = P {
            name,
            path,
            warnings: Vec::new(),
        };
        let mut d = ServiceDef {
            name: name.to_string(),
            ..ServiceDef::default()
        };
        let mut image = None;
        let mut net: Option<String> = None;
        for (key, v) in map {
            let k = key.as_str();
            match k {
                "image" => image = p.opt_string(k, v)?,
                "command" => d.command = p.words(k, v)?,
                "entrypoint" => d.entrypoint = p.words(k, v)?,
                "environment" => {
                    for (ek, ev) in p.pairs(k, v, '=')? {
                        match ev {
                            Some(ev) => {
                                d.environment.insert(ek, ev);
                            }
                            None => p.warn(
                                &format!("{k}.{ek}"),
                                "no value and not resolved from rancher.environment, ignored",
                            ),
                        }
                    }
                }
                "labels" => {
                    for (lk, lv) in p.pairs(k, v, '=')? {
                        d.labels.insert(lk, lv.unwrap_or_default());
                    }
                }
                "volumes" => {
                    for (i, s) in p.list(k, v)?.iter().enumerate() {
                        let vol = parse_volume(s).map_err(|m| p.err(&format!("{k}[{i}]"), m))?;
                        d.volumes.push(vol);
                    }
                }
                "volumes_from" => d.volumes_from = p.list(k, v)?,
                "net" | "network_mode" => {
                    let val = p.opt_string(k, v)?;
                    if let (Some(old), Some(new)) = (&net, &val)
                        && old != new
                    {
                        p.warn(
                            k,
                            format!("both net and network_mode are set, using {new:?}"),
                        );
                    }
                    if val.is_some() {
                        net = val;
                    }
                }
                "pid" => d.pid = p.opt_string(k, v)?,
                "ipc" => d.ipc = p.opt_string(k, v)?,
                "uts" => d.uts = p.opt_string(k, v)?,
                "privileged" => d.privileged = p.bool(k, v)?,
                "restart" => d.restart = parse_restart(v).map_err(|m| p.err(k, m))?,
                "cap_add" => d.cap_add = p.list(k, v)?,
                "cap_drop" => d.cap_drop = p.list(k, v)?,
                "devices" => {
                    for (i, s) in p.list(k, v)?.iter().enumerate() {
                        d.devices
                            .push(parse_device(s).map_err(|m| p.err(&format!("{k}[{i}]"), m))?);
                    }
                }
                "read_only" => d.read_only = p.bool(k, v)?,
                "tty" => d.tty = p.bool(k, v)?,
                "stdin_open" => d.stdin_open = p.bool(k, v)?,
                "working_dir" => d.working_dir = p.opt_string(k, v)?,
                "user" => d.user = p.opt_string(k, v)?,
                "ulimits" => d.ulimits = parse_ulimits(&p, k, v)?,
                "log_driver" => d.log_driver = p.opt_string(k, v)?,
                "log_opt" => {
                    for (ok, ov) in p.pairs(k, v, '=')? {
                        d.log_opt.insert(ok, ov.unwrap_or_default());
                    }
                }
                "logging" => match v {
                    Value::Object(m) => {
                        if let Some(dr) = m.get("driver") {
                            d.log_driver = p.opt_string("logging.driver", dr)?;
                        }
                        if let Some(o) = m.get("options") {
                            for (ok, ov) in p.pairs("logging.options", o, '=')? {
                                d.log_opt.insert(ok, ov.unwrap_or_default());
                            }
                        }
                    }
                    Value::Null => {}
                    other => {
                        return Err(p.err(k, format!("expected a map, found {}", kind(other))));
                    }
                },
                "container_name" => d.container_name = p.opt_string(k, v)?,
                "oom_score_adj" => d.oom_score_adj = p.int(k, v)?,
                "tmpfs" => {
                    for s in p.list(k, v)? {
                        let (mp, opts) = s.split_once(':').unwrap_or((s.as_str(), ""));
                        if !mp.starts_with('/') {
                            return Err(p.err(k, format!("{mp:?} is not an absolute path")));
                        }
                        d.tmpfs.insert(mp.to_string(), opts.to_string());
                    }
                }
                "depends_on" => {
                    d.depends_on = match v {
                        Value::Object(m) => m.keys().cloned().collect(),
                        other => p.list(k, other)?,
                    }
                }
                "links" => {
                    d.links = p
                        .list(k, v)?
                        .into_iter()
                        .map(|s| match s.split_once(':') {
                            Some((svc, alias)) => Link {
                                service: svc.to_string(),
                                alias: Some(alias.to_string()),
                            },
                            None => Link {
                                service: s,
                                alias: None,
                            },
                        })
                        .collect()
                }
                "healthcheck" => d.healthcheck = parse_healthcheck(&p, k, v)?,
                "mem_limit" | "memory" => d.mem_limit = p.bytes(k, v)?,
                "memswap_limit" => d.memswap_limit = p.bytes(k, v)?,
                "mem_reservation" => d.mem_reservation = p.bytes(k, v)?,
                "shm_size" => d.shm_size = p.bytes(k, v)?,
                "cpu_shares" => d.cpu_shares = p.int(k, v)?,
                "cpu_quota" => d.cpu_quota = p.int(k, v)?,
                "cpu_period" => d.cpu_period = p.int(k, v)?,
                "cpuset" | "cpuset_cpus" => d.cpuset = p.opt_string(k, v)?,
                "pids_limit" => d.pids_limit = p.int(k, v)?,
                "hostname" => d.hostname = p.opt_string(k, v)?,
                "domainname" => d.domainname = p.opt_string(k, v)?,
                "dns" => d.dns = p.list(k, v)?,
                "extra_hosts" => {
                    d.extra_hosts = p
                        .pairs(k, v, ':')?
                        .into_iter()
                        .map(|(h, ip)| match ip {
                            Some(ip) => format!("{h}:{ip}"),
                            None => h,
                        })
                        .collect()
                }
                "ports" => {
                    for (i, s) in p.list(k, v)?.iter().enumerate() {
                        d.ports
                            .push(parse_port(s).map_err(|m| p.err(&format!("{k}[{i}]"), m))?);
                    }
                }
                "expose" => d.expose = p.list(k, v)?,
                "security_opt" => d.security_opt = p.list(k, v)?,
                "group_add" => d.group_add = p.list(k, v)?,
                "sysctls" => {
                    for (sk, sv) in p.pairs(k, v, '=')? {
                        d.sysctls.insert(sk, sv.unwrap_or_default());
                    }
                }
                "stop_signal" => d.stop_signal = p.opt_string(k, v)?,
                "stop_grace_period" => d.stop_grace_period = p.duration(k, v)?,
                "init" => {
                    d.init = if v.is_null() {
                        None
                    } else {
                        Some(p.bool(k, v)?)
                    }
                }
                k if UNSUPPORTED.contains(&k) => p.warn(k, "not supported, ignored"),
                k => p.warn(k, "unknown field, ignored"),
            }
        }
        d.network_mode = net;
        d.image = image.ok_or_else(|| ServiceError {
            service: name.to_string(),
            path: format!("{path}.image"),
            message: "missing: every service needs an image".to_string(),
        })?;
        if d.image.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(p.err("image", format!("{:?} is not an image reference", d.image)));
        }
        Ok((d, p.warnings))
    }

    /// The container's name: `container_name`, else the service name (RancherOS names system
    /// containers by service).
    pub fn container_name(&self) -> &str {
        self.container_name.as_deref().unwrap_or(&self.name)
    }
}

/// Splits a command string into words as compose (go-shlex) does: whitespace separates, single
/// quotes are literal, double quotes allow `\"`, `\\`, `\$` and `` \` ``, a backslash outside
/// quotes escapes the next character. No expansion.
pub fn split_shell(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(format!("unterminated single quote in {s:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err(format!("unterminated double quote in {s:?}")),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(format!("unterminated double quote in {s:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(c) => cur.push(c),
                    None => return Err(format!("trailing backslash in {s:?}")),
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

const VOLUME_OPTIONS: &[&str] = &[
    "ro",
    "rw",
    "z",
    "Z",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "private",
    "rprivate",
    "nocopy",
    "cached",
    "delegated",
    "consistent",
];

/// Parses a `volumes` entry.
pub fn parse_volume(s: &str) -> Result<Volume, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (src, dst, opts) = match parts.as_slice() {
        [dst] => {
            if !dst.starts_with('/') {
                return Err(format!("{s:?}: the container path must be absolute"));
            }
            return Ok(Volume::Anonymous {
                target: (*dst).to_string(),
            });
        }
        [src, dst] => (*src, *dst, ""),
        [src, dst, opts] => (*src, *dst, *opts),
        _ => return Err(format!("{s:?}: expected host:container[:options]")),
    };
    if !dst.starts_with('/') {
        return Err(format!("{s:?}: the container path must be absolute"));
    }
    let options: Vec<String> = opts
        .split(',')
        .filter(|o| !o.is_empty())
        .map(str::to_string)
        .collect();
    if let Some(bad) = options
        .iter()
        .find(|o| !VOLUME_OPTIONS.contains(&o.as_str()))
    {
        return Err(format!("{s:?}: unknown volume option {bad:?}"));
    }
    if src.is_empty() {
        return Err(format!("{s:?}: empty host path"));
    }
    if src.starts_with('/') {
        Ok(Volume::Bind {
            source: src.to_string(),
            target: dst.to_string(),
            options,
        })
    } else if src.starts_with('.') || src.starts_with('~') {
        Err(format!(
            "{s:?}: relative host paths are not supported for system services"
        ))
    } else if src
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        Ok(Volume::Named {
            name: src.to_string(),
            target: dst.to_string(),
            options,
        })
    } else {
        Err(format!(
            "{s:?}: {src:?} is neither a path nor a volume name"
        ))
    }
}

fn parse_restart(v: &Value) -> Result<Option<Restart>, String> {
    let s = match v {
        Value::Null => return Ok(None),
        // YAML 1.1 reads `restart: no` as false.
        Value::Bool(false) => return Ok(None),
        Value::String(s) => s.trim().to_string(),
        other => return Err(format!("expected a restart policy, found {}", kind(other))),
    };
    let (name, count) = s.split_once(':').unwrap_or((&s, ""));
    match name {
        "" | "no" | "false" => Ok(None),
        "always" | "unless-stopped" if count.is_empty() => Ok(Some(Restart {
            name: name.to_string(),
            max_retries: 0,
        })),
        "on-failure" => {
            let max_retries = if count.is_empty() {
                0
            } else {
                count
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| format!("{s:?}: bad retry count"))?
            };
            Ok(Some(Restart {
                name: name.to_string(),
                max_retries,
            }))
        }
        _ => Err(format!(
            "{s:?}: expected no, always, unless-stopped or on-failure[:N]"
        )),
    }
}

fn parse_device(s: &str) -> Result<Device, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (host, ctr, perms) = match parts.as_slice() {
        [h] => (*h, *h, "rwm"),
        [h, c] if c.starts_with('/') => (*h, *c, "rwm"),
        [h, p] => (*h, *h, *p),
        [h, c, p] => (*h, *c, *p),
        _ => return Err(format!("{s:?}: expected /dev/host[:/dev/container[:rwm]]")),
    };
    if !host.starts_with('/') || !ctr.starts_with('/') {
        return Err(format!("{s:?}: device paths must be absolute"));
    }
    if perms.is_empty() || !perms.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        return Err(format!("{s:?}: permissions must be made of r, w and m"));
    }
    Ok(Device {
        host: host.to_string(),
        container: ctr.to_string(),
        permissions: perms.to_string(),
    })
}

fn parse_ulimits(p: &P, key: &str, v: &Value) -> Result<BTreeMap<String, Ulimit>, ServiceError> {
    let mut out = BTreeMap::new();
    let Value::Object(m) = v else {
        if v.is_null() {
            return Ok(out);
        }
        return Err(p.err(key, format!("expected a map, found {}", kind(v))));
    };
    for (name, val) in m {
        let k = format!("{key}.{name}");
        let u = match val {
            Value::Object(lim) => {
                let soft = lim.get("soft").map(|s| p.int(&format!("{k}.soft"), s));
                let hard = lim.get("hard").map(|h| p.int(&format!("{k}.hard"), h));
                match (soft.transpose()?.flatten(), hard.transpose()?.flatten()) {
                    (Some(soft), Some(hard)) => Ulimit { soft, hard },
                    _ => return Err(p.err(&k, "needs both soft and hard")),
                }
            }
            other => match p.int(&k, other)? {
                Some(n) => Ulimit { soft: n, hard: n },
                None => return Err(p.err(&k, "expected a number or {soft, hard}")),
            },
        };
        if u.soft > u.hard && u.hard >= 0 {
            return Err(p.err(&k, "soft limit is above the hard limit"));
        }
        out.insert(name.clone(), u);
    }
    Ok(out)
}

fn parse_healthcheck(p: &P, key: &str, v: &Value) -> Result<Option<Healthcheck>, ServiceError> {
    let m = match v {
        Value::Null => return Ok(None),
        Value::Object(m) => m,
        other => return Err(p.err(key, format!("expected a map, found {}", kind(other)))),
    };
    let mut h = Healthcheck {
        test: Vec::new(),
        interval: None,
        timeout: None,
        retries: None,
        start_period: None,
    };
    let mut disabled = false;
    for (k, val) in m {
        let kk = format!("{key}.{k}");
        match k.as_str() {
            "test" => {
                h.test = match val {
                    Value::Array(_) => {
                        let items = p.list(&kk, val)?;
                        match items.first().map(String::as_str) {
                            Some("CMD" | "CMD-SHELL" | "NONE") => items,
                            _ => {
                                return Err(
                                    p.err(&kk, "a list must start with CMD, CMD-SHELL or NONE")
                                );
                            }
                        }
                    }
                    other => {
                        let s = p.string(&kk, other)?;
                        if s.is_empty() {
                            return Err(p.err(&kk, "empty test"));
                        }
                        vec!["CMD-SHELL".to_string(), s]
                    }
                }
            }
            "interval" => h.interval = p.duration(&kk, val)?,
            "timeout" => h.timeout = p.duration(&kk, val)?,
            "start_period" => h.start_period = p.duration(&kk, val)?,
            "retries" => {
                h.retries = match p.int(&kk, val)? {
                    None => None,
                    Some(n) => Some(u32::try_from(n).map_err(|_| p.err(&kk, "must be 0 or more"))?),
                }
            }
            "disable" => disabled = p.bool(&kk, val)?,
            _ => return Err(p.err(&kk, "unknown healthcheck field")),
        }
    }
    if disabled {
        h.test = vec!["NONE".to_string()];
    }
    if h.test.is_empty() {
        return Err(p.err(key, "needs a test"));
    }
    Ok(Some(h))
}

fn parse_port(s: &str) -> Result<Port, String> {
    let (rest, protocol) = match s.rsplit_once('/') {
        Some((r, p)) if matches!(p, "tcp" | "udp" | "sctp") => (r, p),
        Some(_) => return Err(format!("{s:?}: protocol must be tcp, udp or sctp")),
        None => (s, "tcp"),
    };
    let parts: Vec<&str> = rest.rsplitn(3, ':').collect();
    let (ip, host, ctr) = match parts.as_slice() {
        [c] => (None, None, *c),
        [c, h] => (None, Some(*h), *c),
        [c, h, ip] => (Some(*ip), Some(*h), *c),
        _ => return Err(format!("{s:?}: expected [ip:][host:]container[/protocol]")),
    };
    if ctr.contains('-') || host.is_some_and(|h| h.contains('-')) {
        return Err(format!("{s:?}: port ranges are not supported"));
    }
    let container_port = ctr
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{s:?}: {ctr:?} is not a port"))?;
    if let Some(h) = host
        && !h.is_empty()
        && h.parse::<u16>().is_err()
    {
        return Err(format!("{s:?}: {h:?} is not a port"));
    }
    Ok(Port {
        host_ip: ip
            .map(|i| i.trim_start_matches('[').trim_end_matches(']').to_string())
            .filter(|i| !i.is_empty()),
        host_port: host.filter(|h| !h.is_empty()).map(str::to_string),
        container_port,
        protocol: protocol.to_string(),
    })
}

/// Parses a size as docker does (`512m`, `1g`, `100k`, `1024`, `1.5GB`; binary multiples).
pub fn parse_bytes(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 512m, 1g)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024f64.powi(4),
        _ => return Err(format!("{s:?} is not a size (e.g. 512m, 1g)")),
    };
    let b = n * mult;
    if !b.is_finite() || b > i64::MAX as f64 {
        return Err(format!("{s:?} is too large"));
    }
    Ok(b as i64)
}

/// Parses a Go-style duration (`5s`, `1m30s`, `100ms`, `1.5h`); a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad = || format!("{s:?} is not a duration (e.g. 5s, 1m30s)");
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = t.parse::<f64>() {
        return (secs >= 0.0 && secs.is_finite())
            .then(|| Duration::from_secs_f64(secs))
            .ok_or_else(bad);
    }
    let mut total = 0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, r) = rest.split_at(n_end);
        let n: f64 = num.parse().map_err(|_| bad())?;
        let u_end = r
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(r.len());
        let (unit, r) = r.split_at(u_end);
        let mult = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * mult;
        rest = r;
    }
    if !total.is_finite() || total > 1e12 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<(ServiceDef, Vec<Warning>), ServiceError> {
        let Value::Object(m) = v else { panic!() };
        ServiceDef::from_map("svc", "rancher.services.svc", &m)
    }

    #[test]
    fn full_service() {
        let (d, w) = parse(json!({
            "image": "busybox",
            "command": "sh -c 'echo \"hi there\"' x\\ y",
            "entrypoint": ["/init", "--"],
            "environment": ["A=1", "B=x=y"],
            "labels": {"io.rancher.os.scope": "system", "n": 1},
            "volumes": ["/a:/b", "/c:/d:ro,rshared", "data:/e", "/f"],
            "volumes_from": ["all-volumes"],
            "net": "host", "pid": "host", "ipc": "host", "uts": "host",
            "privileged": "true",
            "restart": "on-failure:3",
            "cap_add": ["NET_ADMIN"], "cap_drop": "ALL",
            "devices": ["/dev/fuse", "/dev/a:/dev/b:r"],
            "read_only": true, "tty": "yes", "stdin_open": 1,
            "working_dir": "/w", "user": "1000:1000",
            "ulimits": {"nofile": {"soft": 10, "hard": 20}, "nproc": 5},
            "log_driver": "json-file", "log_opt": {"max-size": "1m"},
            "container_name": "c", "oom_score_adj": -500,
            "tmpfs": ["/run:size=1m", "/tmp"],
            "depends_on": ["a"], "links": ["b:bee", "c"],
            "healthcheck": {"test": "true", "interval": "1m30s", "retries": 3, "start_period": "500ms"},
            "mem_limit": "512m", "cpu_shares": 512, "cpuset": "0-1", "pids_limit": "100",
            "hostname": "h", "dns": "1.1.1.1", "extra_hosts": {"gw": "10.0.0.1"},
            "ports": ["127.0.0.1:80:8080/udp", "9000"],
        }))
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(
            d.command.as_deref().unwrap(),
            ["sh", "-c", "echo \"hi there\"", "x y"]
        );
        assert_eq!(d.entrypoint.as_deref().unwrap(), ["/init", "--"]);
        assert_eq!(d.environment["B"], "x=y");
        assert_eq!(d.labels["n"], "1");
        assert_eq!(d.volumes.len(), 4);
        assert_eq!(d.volumes[1].bind_string().unwrap(), "/c:/d:ro,rshared");
        assert!(matches!(&d.volumes[2], Volume::Named { name, .. } if name == "data"));
        assert!(matches!(&d.volumes[3], Volume::Anonymous { target } if target == "/f"));
        assert_eq!(d.network_mode.as_deref(), Some("host"));
        assert!(d.privileged && d.read_only && d.tty && d.stdin_open);
        assert_eq!(d.restart.as_ref().unwrap().max_retries, 3);
        assert_eq!(d.cap_drop, ["ALL"]);
        assert_eq!(d.devices[0].container, "/dev/fuse");
        assert_eq!(d.devices[1].permissions, "r");
        assert_eq!(d.ulimits["nofile"], Ulimit { soft: 10, hard: 20 });
        assert_eq!(d.ulimits["nproc"], Ulimit { soft: 5, hard: 5 });
        assert_eq!(d.tmpfs["/run"], "size=1m");
        assert_eq!(d.tmpfs["/tmp"], "");
        assert_eq!(d.links[0].alias.as_deref(), Some("bee"));
        let h = d.healthcheck.as_ref().unwrap();
        assert_eq!(h.test, ["CMD-SHELL", "true"]);
        assert_eq!(h.interval, Some(Duration::from_secs(90)));
        assert_eq!(h.start_period, Some(Duration::from_millis(500)));
        assert_eq!(d.mem_limit, Some(512 * 1024 * 1024));
        assert_eq!(d.pids_limit, Some(100));
        assert_eq!(d.dns, ["1.1.1.1"]);
        assert_eq!(d.extra_hosts, ["gw:10.0.0.1"]);
        assert_eq!(d.ports[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(d.ports[0].protocol, "udp");
        assert_eq!(d.ports[1].host_port, None);
        assert_eq!(d.container_name(), "c");
    }

    #[test]
    fn unknown_fields_warn_with_path() {
        let (d, w) = parse(json!({"image": "x", "foo": 1, "build": "."})).unwrap();
        assert_eq!(d.image, "x");
        let msgs: Vec<String> = w.iter().map(ToString::to_string).collect();
        assert!(msgs.contains(&"rancher.services.svc.foo: unknown field, ignored".to_string()));
        assert!(msgs.contains(&"rancher.services.svc.build: not supported, ignored".to_string()));
    }

    #[test]
    fn errors_name_service_and_key() {
        let e = parse(json!({"command": "x"})).unwrap_err();
        assert_eq!(e.service, "svc");
        assert_eq!(e.path, "rancher.services.svc.image");
        let e = parse(json!({"image": "x", "volumes": ["/a", "rel:dir"]})).unwrap_err();
        assert_eq!(e.path, "rancher.services.svc.volumes[1]");
        let e = parse(json!({"image": "x", "volumes": ["/a:/b:bogus"]})).unwrap_err();
        assert!(e.message.contains("bogus"));
        let e = parse(json!({"image": "x", "privileged": "maybe"})).unwrap_err();
        assert_eq!(e.path, "rancher.services.svc.privileged");
        let e = parse(json!({"image": "x", "command": "echo 'oops"})).unwrap_err();
        assert!(e.message.contains("unterminated"));
        let e = parse(json!({"image": "x", "restart": "sometimes"})).unwrap_err();
        assert!(e.to_string().starts_with("rancher.services.svc.restart: "));
    }

    #[test]
    fn normalised_defaults() {
        let (a, _) =
            parse(json!({"image": "x", "restart": false, "environment": {"A": "1"}})).unwrap();
        let (b, _) = parse(json!({"image": "x", "restart": "no", "environment": ["A=1"]})).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.restart, None);
    }

    #[test]
    fn net_and_network_mode() {
        let (d, _) = parse(json!({"image": "x", "network_mode": "container:a"})).unwrap();
        assert_eq!(d.network_mode.as_deref(), Some("container:a"));
    }

    #[test]
    fn healthcheck_forms() {
        let (d, _) =
            parse(json!({"image": "x", "healthcheck": {"test": ["CMD", "pg_isready", "-q"]}}))
                .unwrap();
        let h = d.healthcheck.unwrap();
        assert_eq!(h.probe_argv().unwrap(), ["pg_isready", "-q"]);
        let (d, _) =
            parse(json!({"image": "x", "healthcheck": {"test": "x", "disable": true}})).unwrap();
        assert!(!d.healthcheck.unwrap().enabled());
        assert!(parse(json!({"image": "x", "healthcheck": {"test": ["pg"]}})).is_err());
    }

    #[test]
    fn shell_words() {
        assert_eq!(split_shell("  a  b ").unwrap(), ["a", "b"]);
        assert_eq!(split_shell("a'b c'd").unwrap(), ["ab cd"]);
        assert_eq!(split_shell("\"\"").unwrap(), [""]);
        assert_eq!(split_shell("\"a\\$b\\n\"").unwrap(), ["a$b\\n"]);
        assert!(split_shell("a\\").is_err());
        assert!(split_shell("\"a").is_err());
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("s").is_err());
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("100k").unwrap(), 102_400);
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn ports() {
        assert!(parse_port("80-90:80-90").is_err());
        assert!(parse_port("x").is_err());
        let p = parse_port("8080:80").unwrap();
        assert_eq!(p.host_port.as_deref(), Some("8080"));
        assert_eq!(p.container_port, 80);
    }
}
