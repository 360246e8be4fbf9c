//! The RancherOS service corpus (os-services files, copied from
//! ../shared/reference/rancheros-corpus/services into tests/corpus/rancheros-services) and the
//! `rancher.services` of the cloud-config corpus, taken through interpolation, typing, the
//! graph, the plan and the Docker create body, with concrete facts checked.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use paddock::config::{self, merge};
use paddock::engine::api::types::ContainerCreateBody;
use paddock::service::convert::to_create_body;
use paddock::service::graph::{Graph, GraphOptions};
use paddock::service::labels::{Rebuild, RosLabels, Scope};
use paddock::service::plan::{Action, DesiredService, PlanOptions, plan};
use paddock::service::{Environment, Loaded, ServiceDef, load_services, parse_compose_text};

fn dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(name);
    assert!(
        d.join("INDEX.md").exists(),
        "the corpus is missing at {}",
        d.display()
    );
    d
}

/// (file name, text without the provenance line)
fn files(name: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = fs::read_dir(dir(name))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yml"))
        .map(|n| {
            let text = fs::read_to_string(dir(name).join(&n)).unwrap();
            let (first, rest) = text.split_once('\n').unwrap();
            assert!(first.starts_with("# source: "), "{n}: no provenance line");
            (n, rest.to_string())
        })
        .collect();
    out.sort();
    out
}

/// The environment of a machine as RancherOS would have it for the os-services files.
fn machine_env() -> Environment {
    let mut env = Environment::default();
    env.set("REGISTRY_DOMAIN", "docker.io");
    env.set("SUFFIX", "");
    env.set("KERNEL_VERSION", "4.14.138-rancher");
    env.set("ECS_AGENT_VERSION", ":v1.9.0");
    env.set("ECS_CLUSTER", "prod");
    env.set("AWS_DEFAULT_REGION", "eu-west-1");
    env.set("HTTP_PROXY", "http://proxy:3128");
    env.set("ecs-agent/ECS_LOGLEVEL", "debug");
    env
}

fn all_services() -> (Loaded, BTreeMap<String, (ServiceDef, ContainerCreateBody)>) {
    let env = machine_env();
    let mut all = Loaded::default();
    for (name, text) in files("rancheros-services") {
        let l = parse_compose_text(&name, &text, &env).unwrap();
        assert!(l.errors.is_empty(), "{name}: {:?}", l.errors);
        assert!(l.warnings.is_empty(), "{name}: {:?}", l.warnings);
        assert_eq!(l.services.len(), 1, "{name}");
        all.services.extend(l.services);
    }
    let bodies = all
        .services
        .iter()
        .map(|(n, d)| (n.clone(), (d.clone(), to_create_body(d, "os").1)))
        .collect();
    (all, bodies)
}

#[test]
fn os_services_files_become_create_bodies() {
    let (loaded, b) = all_services();
    assert_eq!(
        loaded.services.keys().collect::<Vec<_>>(),
        [
            "console",
            "container-cron",
            "docker",
            "docker-compose",
            "ecs-agent",
            "kernel-headers",
            "open-vm-tools",
            "zfs"
        ]
    );

    // 01: the debian console
    let (d, body) = &b["console"];
    assert_eq!(
        body.config.image,
        "docker.io/rancher/os-debianconsole:v1.5.5"
    );
    assert_eq!(body.config.cmd.as_deref().unwrap(), ["ros", "console-init"]);
    assert!(body.host_config.privileged);
    assert_eq!(
        body.host_config.binds,
        ["/media:/media:shared", "/mnt:/mnt:shared"]
    );
    assert_eq!(body.host_config.volumes_from, ["all-volumes"]);
    assert_eq!(body.host_config.restart_policy.name, "always");
    for mode in [
        &body.host_config.pid_mode,
        &body.host_config.ipc_mode,
        &body.host_config.network_mode,
        &body.host_config.uts_mode,
    ] {
        assert_eq!(mode, "host");
    }
    let l = RosLabels::from_labels(&d.labels);
    assert_eq!(l.scope, Scope::System);
    assert_eq!(l.console.as_deref(), Some("debian"));
    assert_eq!(l.rebuild, Rebuild::Never);
    assert_eq!(l.after, ["network"]);
    assert_eq!(body.config.labels["com.docker.compose.project"], "os");
    assert_eq!(body.config.labels["com.docker.compose.service"], "console");
    assert_eq!(
        body.config.labels["com.docker.compose.config-hash"].len(),
        64
    );

    // 02: the engine passes the proxy variables that are set, drops the unset ones
    let (_, body) = &b["docker"];
    assert_eq!(body.config.image, "docker.io/rancher/os-docker:19.03.11");
    assert_eq!(body.config.env, ["HTTP_PROXY=http://proxy:3128"]);
    assert!(
        body.host_config
            .binds
            .contains(&"/var/lib/system-docker:/var/lib/system-docker:shared".to_string())
    );

    // 03: quoted booleans, before+after, commented-out volumes
    let (d, body) = &b["zfs"];
    assert!(body.host_config.privileged, "privileged: \"true\"");
    assert_eq!(body.host_config.binds, ["/usr/src:/usr/src"]);
    assert_eq!(body.config.cmd.as_deref().unwrap(), ["./build.sh"]);
    let l = RosLabels::from_labels(&d.labels);
    assert!(!l.detach);
    assert_eq!(
        (l.before.as_slice(), l.after.as_slice()),
        (&["docker".to_string()][..], &["console".to_string()][..])
    );

    // 04: the kernel version in the tag, no command
    let (_, body) = &b["kernel-headers"];
    assert_eq!(
        body.config.image,
        "docker.io/rancher/os-headers:4.14.138-rancher"
    );
    assert_eq!(body.config.cmd, None);
    assert_eq!(body.host_config.binds.len(), 3);

    // 05: several volumes_from
    let (_, body) = &b["open-vm-tools"];
    assert_eq!(
        body.host_config.volumes_from,
        ["command-volumes", "system-volumes", "user-volumes"]
    );
    assert_eq!(
        body.config.image,
        "docker.io/rancher/os-openvmtools:10.3.10-2"
    );

    // 06: user scope, ports on 127.0.0.1, wildcards
    let (d, body) = &b["ecs-agent"];
    assert_eq!(RosLabels::from_labels(&d.labels).scope, Scope::User);
    assert_eq!(
        body.config.image,
        "docker.io/amazon/amazon-ecs-agent:v1.9.0"
    );
    let env: BTreeMap<&str, &str> = body
        .config
        .env
        .iter()
        .map(|e| e.split_once('=').unwrap())
        .collect();
    assert_eq!(env["ECS_LOGFILE"], "/log/ecs-agent.log");
    assert_eq!(env["ECS_DATADIR"], "/data");
    assert_eq!(env["AWS_DEFAULT_REGION"], "eu-west-1");
    // ECS_* matched the service-qualified ecs-agent/ECS_LOGLEVEL first, so it wins over the
    // file's ECS_LOGLEVEL=info and the unqualified ECS_CLUSTER is not imported
    assert_eq!(env["ECS_LOGLEVEL"], "debug");
    assert!(!env.contains_key("ECS_CLUSTER"));
    assert!(
        body.host_config
            .binds
            .contains(&"/sys/fs/cgroup:/sys/fs/cgroup:ro".to_string())
    );
    let j = serde_json::to_value(body).unwrap();
    assert_eq!(
        j["HostConfig"]["PortBindings"]["51678/tcp"][0]["HostIp"],
        "127.0.0.1"
    );
    assert_eq!(
        j["HostConfig"]["PortBindings"]["51679/tcp"][0]["HostPort"],
        "51679"
    );

    // 07: environment as a map with a float
    let (_, body) = &b["container-cron"];
    assert_eq!(body.config.env, ["DOCKER_API_VERSION=1.24"]);
    assert_eq!(body.host_config.uts_mode, "host");

    // 08: rebuild always
    let (d, body) = &b["docker-compose"];
    assert_eq!(RosLabels::from_labels(&d.labels).rebuild, Rebuild::Always);
    assert_eq!(
        body.config.image,
        "docker.io/burmilla/os-dockercompose:latest"
    );
    assert_eq!(body.host_config.restart_policy.name, "");
}

#[test]
fn os_services_order_together() {
    let (loaded, _) = all_services();
    let g = Graph::build(&loaded.services, &GraphOptions::default());
    let o = g.order();
    assert!(o.blocked.is_empty(), "{:?}", o.blocked);
    let pos = |n: &str| {
        o.waves
            .iter()
            .position(|w| w.iter().any(|x| x == n))
            .unwrap()
    };
    assert!(pos("docker") > pos("console"));
    assert!(pos("docker") > pos("zfs"), "zfs has before: docker");
    assert!(pos("zfs") > pos("console"));
    assert!(
        pos("ecs-agent") > pos("docker"),
        "user scope waits for docker"
    );
    assert!(pos("container-cron") > pos("docker"));
    // network, all-volumes, ... are not in this set: noted, not blocking
    assert!(o.notes.iter().any(|n| n.message.contains("all-volumes")));
    assert!(o.notes.iter().any(|n| n.message.contains("network")));
}

#[test]
fn os_services_plan_then_replan_is_all_keep() {
    let (loaded, bodies) = all_services();
    let desired: Vec<DesiredService> = loaded
        .services
        .values()
        .map(|d| DesiredService::new(d.clone(), Some(format!("sha256:{}", d.name))))
        .collect();
    let p = plan("os", &desired, &[], &PlanOptions::default());
    assert_eq!(p.count("create"), 8);
    // pretend they were created from the bodies
    let current: Vec<_> = desired
        .iter()
        .map(|d| paddock::service::plan::CurrentContainer {
            id: format!("id-{}", d.def.name),
            name: d.def.container_name().to_string(),
            labels: bodies[&d.def.name].1.config.labels.clone(),
            image_id: format!("sha256:{}", d.def.name),
            state: paddock::service::plan::RunState::Exited,
            scope: d.scope(),
        })
        .collect();
    let p = plan("os", &desired, &current, &PlanOptions::default());
    // docker-compose has rebuild: always
    assert_eq!(p.count("keep"), 7, "{p}");
    assert!(matches!(
        p.item("docker-compose").unwrap().action,
        Action::Recreate { .. }
    ));
}

#[test]
fn config_corpus_services_parse() {
    let mut seen = 0;
    for (name, text) in files("rancheros-configs") {
        let Ok(checked) = config::check_text(&name, &text) else {
            continue;
        };
        let r = &checked.config.rancher;
        let env = Environment::from_rancher(r);
        for (prefix, set) in [
            ("rancher.services", &r.services),
            ("rancher.bootstrap", &r.bootstrap),
            ("rancher.cloud_init_services", &r.cloud_init_services),
        ] {
            let l = load_services(prefix, set, &env);
            assert!(l.errors.is_empty(), "{name}: {:?}", l.errors);
            assert!(l.warnings.is_empty(), "{name}: {:?}", l.warnings);
            for d in l.services.values() {
                let (_, body) = to_create_body(d, "os");
                assert!(!body.config.image.is_empty());
                seen += 1;
            }
        }
    }
    assert_eq!(
        seen, 2,
        "16-services-system-env-wildcards and 17-services-ros-install"
    );
}

fn load_config(file: &str) -> config::model::CloudConfig {
    let (_, text) = files("rancheros-configs")
        .into_iter()
        .find(|(n, _)| n == file)
        .unwrap();
    config::check_text(file, &text).unwrap().config
}

#[test]
fn env_wildcards_from_the_test_11_config() {
    let cfg = load_config("16-services-system-env-wildcards.yml");
    let env = Environment::from_rancher(&cfg.rancher);
    let l = load_services("rancher.services", &cfg.rancher.services, &env);
    let (name, body) = to_create_body(&l.services["env"], "os");
    assert_eq!(name, "env");
    assert_eq!(body.config.image, "busybox");
    assert_eq!(body.config.cmd.as_deref().unwrap(), ["env"]);
    // `A` takes its value, `B*` imports BB and BC (RancherOS's test_11 expects exactly these)
    assert_eq!(body.config.env, ["A=A", "BB=BB", "BC=BC"]);
    let labels = RosLabels::from_labels(&l.services["env"].labels);
    assert_eq!(labels.before, ["console"]);
}

#[test]
fn entrypoint_and_volumes_from_the_install_config() {
    let cfg = load_config("17-services-ros-install-entrypoint.yml");
    let env = Environment::from_rancher(&cfg.rancher);
    let l = load_services("rancher.services", &cfg.rancher.services, &env);
    let (_, body) = to_create_body(&l.services["ros-install"], "os");
    assert_eq!(body.config.image, "alpine");
    assert_eq!(
        body.config.entrypoint.as_deref().unwrap(),
        ["/usr/bin/ros", "entrypoint"]
    );
    assert_eq!(body.config.cmd.as_deref().unwrap(), ["/opt/install"]);
    assert!(body.host_config.privileged);
    assert_eq!(body.host_config.binds, ["/var/log:/var/log"]);
    assert_eq!(body.host_config.volumes_from, ["all-volumes"]);
    assert_eq!(body.host_config.uts_mode, "host");
}

#[test]
fn ecs_include_with_its_documented_config() {
    // The defaults (REGISTRY_DOMAIN=docker.io) under the amazon-ecs docs config.
    let defaults = config::check_text("os-config.yml", config::DEFAULT_OS_CONFIG).unwrap();
    let (_, text) = files("rancheros-configs")
        .into_iter()
        .find(|(n, _)| n.starts_with("19-"))
        .unwrap();
    let user = config::check_text("19", &text).unwrap();
    assert_eq!(
        user.config.rancher.services_include.get("amazon-ecs-agent"),
        Some(&true)
    );
    let tree = merge::merged(&defaults.value, &user.value);
    let cfg = config::check_value("merged", tree, &Default::default(), &[])
        .unwrap()
        .config;
    let env = Environment::from_rancher(&cfg.rancher);
    let (_, ecs) = files("rancheros-services")
        .into_iter()
        .find(|(n, _)| n.contains("amazon-ecs-agent"))
        .unwrap();
    let l = parse_compose_text("amazon-ecs-agent.yml", &ecs, &env).unwrap();
    assert!(
        l.errors.is_empty() && l.warnings.is_empty(),
        "{:?} {:?}",
        l.errors,
        l.warnings
    );
    let (_, body) = to_create_body(&l.services["ecs-agent"], "os");
    assert_eq!(
        body.config.image,
        "docker.io/amazon/amazon-ecs-agent:v1.9.0"
    );
    assert!(
        body.config
            .env
            .contains(&"ECS_CLUSTER=your-ecs-cluster-name".to_string())
    );
    assert!(
        body.config
            .env
            .contains(&"ECS_AGENT_VERSION=:v1.9.0".to_string())
    );
}

#[test]
fn built_in_os_config_services_parse() {
    let c = config::check_text("os-config.yml", config::DEFAULT_OS_CONFIG).unwrap();
    let r = &c.config.rancher;
    let env = Environment::from_rancher(r);
    for set in [&r.services, &r.bootstrap, &r.cloud_init_services] {
        let l = load_services("rancher.services", set, &env);
        assert!(l.errors.is_empty() && l.warnings.is_empty());
        // os-config.yml has no services today; any it gets must convert
        for d in l.services.values() {
            to_create_body(d, "os");
        }
    }
}
