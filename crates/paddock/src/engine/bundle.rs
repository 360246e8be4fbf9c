//! Turning a [`ContainerSpec`] plus its image into an OCI runtime spec (`config.json`).
//!
//! Defaults follow docker's: the default capability set, masked and read-only /proc paths,
//! private namespaces unless the spec asks for the host's, a devices cgroup that allows the
//! standard character devices only. `privileged` lifts all of that.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use serde_json::{Value, json};

use super::spec::{ContainerSpec, NsMode};
use crate::image::spec::ContainerConfig;

/// Docker's default capabilities.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability Linux 6.1 knows, in number order.
pub const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

const MASKED: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{what}: {why}")]
    Invalid { what: String, why: String },
}

fn invalid(what: impl Into<String>, why: impl Into<String>) -> BundleError {
    BundleError::Invalid {
        what: what.into(),
        why: why.into(),
    }
}

/// A mount resolved to host paths, ready for the runtime spec.
#[derive(Debug, Clone)]
pub struct ResolvedMount {
    pub destination: String,
    /// `bind` or `tmpfs`.
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// The canonical capability name (`net_admin`, `NET_ADMIN`, `CAP_NET_ADMIN` -> `CAP_NET_ADMIN`).
pub fn cap_name(s: &str) -> Result<String, BundleError> {
    let up = s.to_ascii_uppercase();
    let full = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    if full == "CAP_ALL" || ALL_CAPS.contains(&full.as_str()) {
        Ok(full)
    } else {
        Err(invalid(format!("capability {s}"), "unknown capability"))
    }
}

/// Every capability this process may hand on: [`ALL_CAPS`] (in kernel order, so the index is
/// the capability number) within our own bounding set. A sandbox may lack some (seen here:
/// CAP_SYS_RESOURCE), and asking the kernel for one we lack fails the container's start.
pub fn all_caps() -> Vec<String> {
    within(own_bounding_set())
}

fn within(bounding: u64) -> Vec<String> {
    ALL_CAPS
        .iter()
        .enumerate()
        .filter(|(i, _)| bounding & (1u64 << i) != 0)
        .map(|(_, c)| c.to_string())
        .collect()
}

fn own_bounding_set() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX)
}

/// The capability set after docker's rules: default set (all when privileged), plus cap_add,
/// minus cap_drop; `ALL` in either list means every capability.
pub fn capabilities(spec: &ContainerSpec) -> Result<Vec<String>, BundleError> {
    let mut caps: Vec<String> = if spec.privileged {
        all_caps()
    } else {
        DEFAULT_CAPS.iter().map(|c| c.to_string()).collect()
    };
    for c in &spec.cap_add {
        let c = cap_name(c)?;
        if c == "CAP_ALL" {
            caps = all_caps();
        } else if !caps.contains(&c) {
            caps.push(c);
        }
    }
    for c in &spec.cap_drop {
        let c = cap_name(c)?;
        if c == "CAP_ALL" {
            caps.clear();
        } else {
            caps.retain(|x| x != &c);
        }
    }
    Ok(caps)
}

/// Resolves `user` (`name`, `uid`, `uid:gid`, `name:group`) against the rootfs's passwd and
/// group files. Returns (uid, gid, additional gids).
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<(u32, u32, Vec<u32>), BundleError> {
    if user.is_empty() {
        return Ok((0, 0, vec![]));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let group = fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    let find = |text: &str, key: &str| -> Option<(u32, u32)> {
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 3 && (f[0] == key || f[2] == key)).then(|| {
                let id = f[2].parse().ok()?;
                let gid = f.get(3).and_then(|g| g.parse().ok()).unwrap_or(id);
                Some((id, gid))
            })?
        })
    };
    let (uid, mut gid) = match u.parse::<u32>() {
        Ok(n) => (n, find(&passwd, u).map(|p| p.1).unwrap_or(n)),
        Err(_) => find(&passwd, u).ok_or_else(|| {
            invalid(
                format!("user {user}"),
                "no such user in the image's /etc/passwd",
            )
        })?,
    };
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => find(&group, g).map(|x| x.0).ok_or_else(|| {
                invalid(
                    format!("user {user}"),
                    "no such group in the image's /etc/group",
                )
            })?,
        };
    }
    Ok((uid, gid, vec![]))
}

fn rlimit_name(n: &str) -> Result<String, BundleError> {
    let known = [
        "core",
        "cpu",
        "data",
        "fsize",
        "locks",
        "memlock",
        "msgqueue",
        "nice",
        "nofile",
        "nproc",
        "rss",
        "rtprio",
        "rttime",
        "sigpending",
        "stack",
        "as",
    ];
    if known.contains(&n) {
        Ok(format!("RLIMIT_{}", n.to_ascii_uppercase()))
    } else {
        Err(invalid(format!("ulimit {n}"), "unknown limit"))
    }
}

/// The process arguments: entrypoint + cmd with docker's override rules.
pub fn command(spec: &ContainerSpec, image: &ContainerConfig) -> Vec<String> {
    let entrypoint = spec
        .entrypoint
        .clone()
        .or_else(|| image.entrypoint.clone())
        .unwrap_or_default();
    // An entrypoint given by the creator resets the image's cmd.
    let cmd = match (&spec.cmd, &spec.entrypoint) {
        (Some(c), _) => c.clone(),
        (None, Some(_)) => vec![],
        (None, None) => image.cmd.clone().unwrap_or_default(),
    };
    entrypoint.into_iter().chain(cmd).collect()
}

/// The environment: image env, then the spec's (same keys replaced), then defaults.
pub fn environment(spec: &ContainerSpec, image: &ContainerConfig, hostname: &str) -> Vec<String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = vec![];
    for e in image.env.iter().flatten().chain(spec.env.iter()) {
        let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
        if !env.contains_key(k) {
            order.push(k.to_owned());
        }
        env.insert(k.to_owned(), v.to_owned());
    }
    let mut defaults = vec![
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("HOSTNAME", hostname),
    ];
    if spec.tty {
        defaults.push(("TERM", "xterm"));
    }
    for (k, v) in defaults {
        if !env.contains_key(k) {
            order.push(k.to_owned());
            env.insert(k.to_owned(), v.to_owned());
        }
    }
    order
        .iter()
        .map(|k| format!("{k}={}", env.get(k).map(String::as_str).unwrap_or("")))
        .collect()
}

fn device_entry(d: &super::spec::Device) -> Result<(Value, Value), BundleError> {
    let m =
        fs::metadata(&d.host).map_err(|e| invalid(format!("device {}", d.host), e.to_string()))?;
    let ft = m.file_type();
    let kind = if ft.is_char_device() {
        "c"
    } else if ft.is_block_device() {
        "b"
    } else {
        return Err(invalid(
            format!("device {}", d.host),
            "not a character or block device",
        ));
    };
    let rdev = m.rdev();
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    let perms = if d.permissions.is_empty() {
        "rwm".to_owned()
    } else {
        d.permissions.clone()
    };
    Ok((
        json!({"path": d.container, "type": kind, "major": major, "minor": minor, "fileMode": m.mode() & 0o7777, "uid": 0, "gid": 0}),
        json!({"allow": true, "type": kind, "major": major, "minor": minor, "access": perms}),
    ))
}

/// Builds the OCI runtime spec. `rootfs` is the mounted container root (absolute).
pub fn runtime_spec(
    id: &str,
    spec: &ContainerSpec,
    image: &ContainerConfig,
    rootfs: &Path,
    mounts: &[ResolvedMount],
) -> Result<Value, BundleError> {
    let args = command(spec, image);
    if args.is_empty() {
        return Err(invalid(
            format!("container {id}"),
            "no command: the image has no entrypoint or cmd and none was given",
        ));
    }
    let hostname = if !spec.hostname.is_empty() {
        spec.hostname.clone()
    } else if spec.uts == NsMode::Host {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        id.chars().take(12).collect()
    };
    let user = if spec.user.is_empty() {
        image.user.clone().unwrap_or_default()
    } else {
        spec.user.clone()
    };
    let (uid, gid, additional) = resolve_user(rootfs, &user)?;
    let caps = capabilities(spec)?;
    let cwd = [
        spec.working_dir.as_str(),
        image.working_dir.as_deref().unwrap_or(""),
    ]
    .into_iter()
    .find(|w| !w.is_empty())
    .unwrap_or("/")
    .to_owned();
    let mut rlimits = vec![];
    for u in &spec.ulimits {
        rlimits.push(json!({"type": rlimit_name(&u.name)?, "soft": u.soft, "hard": u.hard}));
    }
    let mut process = json!({
        "terminal": spec.tty,
        "user": {"uid": uid, "gid": gid, "additionalGids": additional},
        "args": args,
        "env": environment(spec, image, &hostname),
        "cwd": cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "rlimits": rlimits,
        "noNewPrivileges": false,
    });
    if spec.oom_score_adj != 0 {
        process["oomScoreAdj"] = json!(spec.oom_score_adj);
    }

    let mut namespaces = vec![json!({"type": "mount"})];
    if spec.pid != NsMode::Host {
        namespaces.push(json!({"type": "pid"}));
    }
    if spec.ipc != NsMode::Host {
        namespaces.push(json!({"type": "ipc"}));
    }
    if spec.uts != NsMode::Host {
        namespaces.push(json!({"type": "uts"}));
    }
    match spec.network {
        NsMode::Host => {}
        NsMode::None => namespaces.push(json!({"type": "network"})),
        NsMode::Private => {
            return Err(invalid(
                format!("container {id}"),
                "bridge networking is not supported by the system engine: use network mode host or none",
            ));
        }
    }
    if !spec.privileged {
        namespaces.push(json!({"type": "cgroup"}));
    }

    let sys_opts = if spec.privileged {
        vec!["nosuid", "noexec", "nodev", "rw"]
    } else {
        vec!["nosuid", "noexec", "nodev", "ro"]
    };
    let mut all_mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_opts}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", if spec.privileged { "rw" } else { "ro" }]}),
    ];
    if spec.network == NsMode::Host {
        // sysfs cannot be mounted afresh without a network namespace of our own.
        all_mounts[5] = json!({"destination": "/sys", "type": "bind", "source": "/sys", "options": ["rbind", "nosuid", "noexec", "nodev", if spec.privileged { "rw" } else { "ro" }]});
    }
    if spec.privileged && spec.network == NsMode::Host {
        // Host devices for privileged system services (udev, network).
        all_mounts[1] = json!({"destination": "/dev", "type": "bind", "source": "/dev", "options": ["rbind", "rw"]});
        all_mounts.remove(2);
    }
    for m in mounts {
        all_mounts.push(json!({"destination": m.destination, "type": m.kind, "source": m.source, "options": m.options}));
    }

    let mut devices = vec![];
    let mut device_rules = vec![json!({"allow": false, "access": "rwm"})];
    if spec.privileged {
        device_rules = vec![json!({"allow": true, "access": "rwm"})];
    } else {
        for (t, maj, min) in [
            ("c", 1, 3),
            ("c", 1, 5),
            ("c", 1, 7),
            ("c", 1, 8),
            ("c", 1, 9),
            ("c", 5, 0),
            ("c", 5, 1),
            ("c", 5, 2),
            ("c", 136, -1),
        ] {
            let minor = if min < 0 { Value::Null } else { json!(min) };
            device_rules.push(
                json!({"allow": true, "type": t, "major": maj, "minor": minor, "access": "rwm"}),
            );
        }
    }
    for d in &spec.devices {
        let (dev, rule) = device_entry(d)?;
        devices.push(dev);
        device_rules.push(rule);
    }
    let mut resources = json!({"devices": device_rules});
    if spec.memory > 0 {
        resources["memory"] = json!({"limit": spec.memory});
    }
    let mut cpu = serde_json::Map::new();
    if spec.nano_cpus > 0 {
        cpu.insert("period".into(), json!(100_000u64));
        cpu.insert("quota".into(), json!(spec.nano_cpus / 10_000));
    }
    if spec.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(spec.cpu_shares));
    }
    if !cpu.is_empty() {
        resources["cpu"] = Value::Object(cpu);
    }
    if spec.pids_limit > 0 {
        resources["pids"] = json!({"limit": spec.pids_limit});
    }
    let mut linux = json!({
        "namespaces": namespaces,
        "resources": resources,
        "devices": devices,
        "cgroupsPath": format!("/{CGROUP_PARENT}/{id}"),
    });
    if !spec.privileged {
        linux["maskedPaths"] = json!(MASKED);
        linux["readonlyPaths"] = json!(READONLY);
    }
    let mut out = json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": rootfs, "readonly": spec.read_only},
        "mounts": all_mounts,
        "linux": linux,
        "annotations": spec.labels,
    });
    // With the host's UTS namespace the runtime must not set a hostname (it would refuse).
    if spec.uts != NsMode::Host {
        out["hostname"] = json!(hostname);
    }
    Ok(out)
}

/// The cgroup under which every container's cgroup is made.
pub const CGROUP_PARENT: &str = "system-docker";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn caps_follow_docker_rules() {
        let mut s = ContainerSpec {
            cap_add: vec!["net_admin".into()],
            cap_drop: vec!["CAP_CHOWN".into()],
            ..Default::default()
        };
        let caps = capabilities(&s).unwrap();
        assert!(
            caps.contains(&"CAP_NET_ADMIN".to_owned()) && !caps.contains(&"CAP_CHOWN".to_owned())
        );
        s.cap_drop = vec!["ALL".into()];
        assert!(capabilities(&s).unwrap().is_empty());
        s.cap_add = vec!["bogus".into()];
        assert!(capabilities(&s).is_err());
        let p = ContainerSpec {
            privileged: true,
            ..Default::default()
        };
        assert_eq!(capabilities(&p).unwrap(), all_caps());
        assert!(
            capabilities(&p)
                .unwrap()
                .contains(&"CAP_SYS_ADMIN".to_string())
        );
        // Only what our bounding set holds: bit 24 is CAP_SYS_RESOURCE.
        let w = within(0x1fffeffffff);
        assert_eq!(w.len(), ALL_CAPS.len() - 1);
        assert!(!w.contains(&"CAP_SYS_RESOURCE".to_string()));
    }

    #[test]
    fn entrypoint_resets_image_cmd() {
        let img = ContainerConfig {
            entrypoint: Some(vec!["/init".into()]),
            cmd: Some(vec!["serve".into()]),
            ..Default::default()
        };
        assert_eq!(command(&ContainerSpec::default(), &img), ["/init", "serve"]);
        let s = ContainerSpec {
            entrypoint: Some(vec!["/bin/sh".into()]),
            ..Default::default()
        };
        assert_eq!(command(&s, &img), ["/bin/sh"]);
        let s = ContainerSpec {
            cmd: Some(vec!["x".into()]),
            ..Default::default()
        };
        assert_eq!(command(&s, &img), ["/init", "x"]);
    }

    #[test]
    fn env_overrides_and_defaults() {
        let img = ContainerConfig {
            env: Some(vec!["A=1".into(), "PATH=/bin".into()]),
            ..Default::default()
        };
        let s = ContainerSpec {
            env: vec!["A=2".into(), "B".into()],
            ..Default::default()
        };
        let env = environment(&s, &img, "h");
        assert_eq!(env, ["A=2", "PATH=/bin", "B=", "HOSTNAME=h"]);
    }

    #[test]
    fn users_resolve_from_the_image() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("etc")).unwrap();
        fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0::/:/bin/sh\nrancher:x:1100:1101::/home/rancher:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            d.path().join("etc/group"),
            "root:x:0:\ndocker:x:999:rancher\n",
        )
        .unwrap();
        assert_eq!(
            resolve_user(d.path(), "rancher").unwrap(),
            (1100, 1101, vec![])
        );
        assert_eq!(
            resolve_user(d.path(), "rancher:docker").unwrap(),
            (1100, 999, vec![])
        );
        assert_eq!(resolve_user(d.path(), "42").unwrap(), (42, 42, vec![]));
        assert!(resolve_user(d.path(), "nobody").is_err());
    }

    #[test]
    fn bridge_network_is_refused_clearly() {
        let s = ContainerSpec {
            network: NsMode::Private,
            cmd: Some(vec!["true".into()]),
            ..Default::default()
        };
        let e = runtime_spec(
            "c1",
            &s,
            &ContainerConfig::default(),
            Path::new("/tmp/r"),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("not supported by the system engine"));
    }
}
