//! A [`ServiceDef`] as the Docker Engine API create body, for the system engine or the user
//! Docker alike.
//!
//! Notes on the mapping:
//! - `links` and `depends_on` only order the start ([`super::graph`]); nothing is sent.
//! - `service:X` in `net`/`pid`/`ipc` becomes `container:X` (the container of service X has the
//!   service's name unless it sets `container_name`, which the caller resolves with
//!   [`to_create_body_with`]).
//! - `healthcheck` is probed by the executor ([`super::exec`]); the create body type has no
//!   `Healthcheck` field yet, so Docker itself does not report health.
//! - `ports` become `ExposedPorts` and `PortBindings`; the system engine refuses them (it has
//!   no bridge), the user Docker honours them.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::def::ServiceDef;
use super::hash::config_hash;
use super::labels;
use crate::engine::api::types::{
    ContainerConfig, ContainerCreateBody, DeviceMapping, HostConfig, LogConfig, RestartPolicy,
    Ulimit,
};

/// `(container name, create body)` for `def`, labels stamped with `project` and the config
/// hash. `service:X` namespace references are taken to be containers named X.
pub fn to_create_body(def: &ServiceDef, project: &str) -> (String, ContainerCreateBody) {
    to_create_body_with(def, project, &BTreeMap::new())
}

/// [`to_create_body`] with `service:X` references resolved through `containers` (service
/// name -> container name).
pub fn to_create_body_with(
    def: &ServiceDef,
    project: &str,
    containers: &BTreeMap<String, String>,
) -> (String, ContainerCreateBody) {
    let ns = |v: &Option<String>| -> String {
        match v.as_deref() {
            Some(s) => match s.strip_prefix("service:") {
                Some(svc) => format!(
                    "container:{}",
                    containers.get(svc).map(String::as_str).unwrap_or(svc)
                ),
                None => s.to_string(),
            },
            None => String::new(),
        }
    };
    let mut labels_out = def.labels.clone();
    labels::stamp(&mut labels_out, project, &def.name, &config_hash(def));

    let mut exposed: BTreeMap<String, Value> = BTreeMap::new();
    let mut bindings: BTreeMap<String, Value> = BTreeMap::new();
    for e in &def.expose {
        let key = if e.contains('/') {
            e.clone()
        } else {
            format!("{e}/tcp")
        };
        exposed.insert(key, json!({}));
    }
    for p in &def.ports {
        let key = format!("{}/{}", p.container_port, p.protocol);
        exposed.insert(key.clone(), json!({}));
        if p.host_port.is_some() || p.host_ip.is_some() {
            let entry = bindings.entry(key).or_insert_with(|| json!([]));
            if let Value::Array(list) = entry {
                list.push(json!({
                    "HostIp": p.host_ip.clone().unwrap_or_default(),
                    "HostPort": p.host_port.clone().unwrap_or_default(),
                }));
            }
        }
    }
    let anonymous: BTreeMap<String, Value> = def
        .volumes
        .iter()
        .filter(|v| v.bind_string().is_none())
        .filter_map(|v| match v {
            super::def::Volume::Anonymous { target } => Some((target.clone(), json!({}))),
            _ => None,
        })
        .collect();

    let config = ContainerConfig {
        hostname: def.hostname.clone().unwrap_or_default(),
        domainname: def.domainname.clone().unwrap_or_default(),
        user: def.user.clone().unwrap_or_default(),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        tty: def.tty,
        open_stdin: def.stdin_open,
        env: def
            .environment
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        cmd: def.command.clone(),
        image: def.image.clone(),
        volumes: (!anonymous.is_empty()).then_some(anonymous),
        working_dir: def.working_dir.clone().unwrap_or_default(),
        entrypoint: def.entrypoint.clone(),
        labels: labels_out,
        stop_signal: def.stop_signal.clone(),
        stop_timeout: def
            .stop_grace_period
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
        ..ContainerConfig::default()
    };
    let host_config = HostConfig {
        binds: def.volumes.iter().filter_map(|v| v.bind_string()).collect(),
        privileged: def.privileged,
        cap_add: def.cap_add.clone(),
        cap_drop: def.cap_drop.clone(),
        devices: def
            .devices
            .iter()
            .map(|d| DeviceMapping {
                path_on_host: d.host.clone(),
                path_in_container: d.container.clone(),
                cgroup_permissions: d.permissions.clone(),
            })
            .collect(),
        network_mode: ns(&def.network_mode),
        pid_mode: ns(&def.pid),
        ipc_mode: ns(&def.ipc),
        uts_mode: def.uts.clone().unwrap_or_default(),
        readonly_rootfs: def.read_only,
        tmpfs: def.tmpfs.clone(),
        ulimits: def
            .ulimits
            .iter()
            .map(|(name, u)| Ulimit {
                name: name.clone(),
                soft: u.soft,
                hard: u.hard,
            })
            .collect(),
        memory: def.mem_limit.unwrap_or(0),
        memory_swap: def.memswap_limit.unwrap_or(0),
        memory_reservation: def.mem_reservation.unwrap_or(0),
        cpu_shares: def.cpu_shares.unwrap_or(0),
        cpu_period: def.cpu_period.unwrap_or(0),
        cpu_quota: def.cpu_quota.unwrap_or(0),
        cpuset_cpus: def.cpuset.clone().unwrap_or_default(),
        pids_limit: def.pids_limit,
        oom_score_adj: def.oom_score_adj.unwrap_or(0),
        restart_policy: def
            .restart
            .as_ref()
            .map(|r| RestartPolicy {
                name: r.name.clone(),
                maximum_retry_count: r.max_retries,
            })
            .unwrap_or_default(),
        volumes_from: def.volumes_from.clone(),
        log_config: LogConfig {
            kind: def.log_driver.clone().unwrap_or_default(),
            config: def.log_opt.clone(),
        },
        init: def.init,
        group_add: def.group_add.clone(),
        security_opt: def.security_opt.clone(),
        sysctls: def.sysctls.clone(),
        dns: def.dns.clone(),
        extra_hosts: def.extra_hosts.clone(),
        shm_size: def.shm_size.unwrap_or(0),
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        ..HostConfig::default()
    };
    (
        def.container_name().to_string(),
        ContainerCreateBody {
            config,
            host_config,
            networking_config: None,
        },
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn def(v: Value) -> ServiceDef {
        let Value::Object(m) = v else { panic!() };
        ServiceDef::from_map("console", "p", &m).unwrap().0
    }

    #[test]
    fn console_body() {
        let d = def(json!({
            "image": "rancher/os-console:v1", "command": "ros console-init",
            "privileged": true, "labels": {"io.rancher.os.scope": "system"},
            "volumes_from": ["all-volumes"], "volumes": ["/media:/media:shared", "/data"],
            "restart": "always", "pid": "host", "ipc": "host", "net": "host", "uts": "host",
            "environment": {"A": "1"}, "ulimits": {"nofile": 100},
            "ports": ["127.0.0.1:80:8080"], "tmpfs": "/run:size=1m",
        }));
        let (name, body) = to_create_body(&d, "os");
        assert_eq!(name, "console");
        let c = &body.config;
        assert_eq!(c.image, "rancher/os-console:v1");
        assert_eq!(c.cmd.as_deref().unwrap(), ["ros", "console-init"]);
        assert_eq!(c.env, ["A=1"]);
        assert_eq!(c.labels["com.docker.compose.project"], "os");
        assert_eq!(c.labels["com.docker.compose.service"], "console");
        assert_eq!(c.labels["com.docker.compose.config-hash"], config_hash(&d));
        assert!(c.volumes.as_ref().unwrap().contains_key("/data"));
        let h = &body.host_config;
        assert!(h.privileged);
        assert_eq!(h.binds, ["/media:/media:shared"]);
        assert_eq!(h.volumes_from, ["all-volumes"]);
        assert_eq!(h.restart_policy.name, "always");
        assert_eq!(
            (&*h.pid_mode, &*h.ipc_mode, &*h.network_mode, &*h.uts_mode),
            ("host", "host", "host", "host")
        );
        assert_eq!(h.ulimits[0].soft, 100);
        assert_eq!(h.tmpfs["/run"], "size=1m");
        let j = serde_json::to_value(&body).unwrap();
        assert_eq!(
            j["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostIp"],
            "127.0.0.1"
        );
        assert_eq!(
            j["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostPort"],
            "80"
        );
        assert!(j["ExposedPorts"]["8080/tcp"].is_object());
        // round trip through the API type
        let back: ContainerCreateBody = serde_json::from_value(j).unwrap();
        assert_eq!(back, body);
    }

    #[test]
    fn container_name_and_service_refs() {
        let d = def(json!({"image": "x", "container_name": "c1", "net": "service:network"}));
        let mut m = BTreeMap::new();
        m.insert("network".to_string(), "net-ctr".to_string());
        let (name, body) = to_create_body_with(&d, "os", &m);
        assert_eq!(name, "c1");
        assert_eq!(body.host_config.network_mode, "container:net-ctr");
        assert_eq!(body.config.cmd, None);
    }
}
