//! System services against the real system engine: a 12-service config comes up in dependency
//! order (one-shots, create-only volume containers, volumes_from, after/before, a health
//! check), and `ros service up` then recreates exactly what changed.
//!
//! Root only: `cargo xtask test` runs them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use common::Daemon;

const CONFIG: &str = r#"#cloud-config
rancher:
  environment:
    NTP_SERVER: pool.example
    ntp/NTP_MODE: strict
  services:
    volumes:
      image: bb:1
      volumes: [/data]
      labels: {io.rancher.os.createonly: "true", io.rancher.os.scope: system}
    volumes2:
      image: bb:1
      volumes: [/more]
      labels: {io.rancher.os.createonly: "true", io.rancher.os.scope: system}
    syslog:
      image: bb:1
      command: sleep 1000
      environment: [LEVEL=info]
      labels: {io.rancher.os.scope: system, io.docker.compose.rebuild: "false"}
    udev-cold:
      image: bb:1
      command: sh -c "sleep 0.3; echo cold done"
      labels: {io.rancher.os.scope: system, io.rancher.os.detach: "false"}
    udev:
      image: bb:1
      command: sleep 1000
      labels: {io.rancher.os.scope: system, io.rancher.os.after: udev-cold}
    network:
      image: bb:1
      command: sh -c "sleep 1; touch /tmp/ready; sleep 1000"
      healthcheck:
        test: [CMD, cat, /tmp/ready]
        interval: 200ms
        retries: 50
      labels: {io.rancher.os.scope: system, io.rancher.os.after: udev}
    ntp:
      image: bb:1
      command: sleep 1000
      environment:
        - SERVER=${NTP_SERVER}
        - NTP_MODE
      labels: {io.rancher.os.scope: system, io.rancher.os.after: network}
    cloud-init-execute:
      image: bb:1
      command: sh -c "echo from-cloud-init > /data/seen"
      volumes_from: [volumes]
      labels: {io.rancher.os.scope: system, io.rancher.os.detach: "false", io.rancher.os.after: network}
    preload:
      image: bb:1
      command: "true"
      labels: {io.rancher.os.scope: system, io.rancher.os.detach: "false", io.rancher.os.before: console}
    console:
      image: bb:1
      command: sleep 1000
      volumes_from: [volumes, volumes2]
      labels: {io.rancher.os.scope: system, io.rancher.os.after: cloud-init-execute}
    acpid:
      image: bb:acpid
      command: sleep 1000
      labels: {io.rancher.os.scope: system}
    late:
      image: bb:1
      command: sleep 1000
      depends_on: [ntp]
      labels: {io.rancher.os.scope: system}
"#;

struct Ros<'a> {
    d: &'a Daemon,
    root: std::path::PathBuf,
}

impl Ros<'_> {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_ros"))
            .arg("--root")
            .arg(&self.root)
            .arg("service")
            .arg("-H")
            .arg(format!("unix://{}", self.d.sock().display()))
            .args(args)
            .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "ros service {args:?}: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    fn write_config(&self, text: &str) {
        let p = self.root.join("var/lib/rancher/conf/cloud-config.yml");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

fn ids(d: &Daemon) -> BTreeMap<String, String> {
    d.ok(&["ps", "-a", "--no-trunc", "--format", "{{.Names}} {{.ID}}"])
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, i)| (n.to_owned(), i.to_owned()))
        .collect()
}

/// Nanoseconds since the epoch of an RFC 3339 timestamp from `docker inspect` (same day).
fn t(d: &Daemon, name: &str, field: &str) -> u128 {
    let s = d.inspect(name, &format!("{{{{.State.{field}}}}}"));
    let time = s.split('T').nth(1).unwrap().trim_end_matches('Z');
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let p: Vec<u128> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    let frac = format!("{frac:0<9}");
    ((p[0] * 3600 + p[1] * 60 + p[2]) * 1_000_000_000) + frac[..9].parse::<u128>().unwrap()
}

/// Loads an image that differs from bb:1 (one more layer) as `tag`.
fn load_other_image(d: &Daemon, tag: &str) {
    let dir = d.tmp.path().join("other");
    let mut l = testkit::layout::Layout::create(&dir.join("layout")).unwrap();
    let mut layers = testkit::busybox_layers(
        &testkit::busybox().unwrap(),
        testkit::layout::Compression::Gzip,
    )
    .unwrap();
    layers.push(
        testkit::layout::Layer::new(
            &[testkit::layout::Entry::file("etc/other", 0o644, b"v2")],
            testkit::layout::Compression::Gzip,
        )
        .unwrap(),
    );
    let desc = l.image(&layers, "amd64", &["sh"]).unwrap();
    l.tag(desc, &format!("docker.io/library/{tag}")).unwrap();
    let ros = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_ros"))
            .arg("--data-root")
            .arg(dir.join("store"))
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    ros(&["image", "load", "-i", dir.join("layout").to_str().unwrap()]);
    let tar = dir.join("other.tar");
    ros(&["image", "save", "-o", tar.to_str().unwrap(), tag]);
    d.ok(&["load", "-i", tar.to_str().unwrap()]);
}

#[test]
#[ignore = "needs root and the test tools: run `cargo xtask test`"]
fn twelve_services_come_up_in_order_and_only_changes_are_recreated() {
    let d = Daemon::start();
    d.ok(&["tag", "bb:1", "bb:acpid"]);
    let ros = Ros {
        d: &d,
        root: d.tmp.path().join("root"),
    };
    ros.write_config(CONFIG);

    // The plan first: everything to create, nothing changed yet.
    let plan = ros.ok(&["up", "--dry-run"]);
    let creates = plan
        .lines()
        .filter(|l| l.trim_start().starts_with("create "))
        .count();
    assert_eq!(creates, 12, "{plan}");
    assert!(ids(&d).is_empty(), "--dry-run created containers");

    let report = ros.ok(&["up"]);
    assert!(report.contains("ntp"), "{report}");
    let before = ids(&d);
    assert_eq!(before.len(), 12, "{before:?}");

    // Create-only containers exist and never ran; one-shots ran and exited 0.
    for v in ["volumes", "volumes2"] {
        assert_eq!(d.inspect(v, "{{.State.Status}}"), "created");
    }
    for o in ["udev-cold", "cloud-init-execute", "preload"] {
        assert_eq!(
            d.inspect(o, "{{.State.Status}} {{.State.ExitCode}}"),
            "exited 0"
        );
    }
    for r in [
        "syslog", "udev", "network", "ntp", "console", "acpid", "late",
    ] {
        assert_eq!(d.inspect(r, "{{.State.Status}}"), "running", "{r}");
    }
    // Order, from the engine's own timestamps.
    assert!(t(&d, "udev-cold", "FinishedAt") <= t(&d, "udev", "StartedAt"));
    assert!(t(&d, "udev", "StartedAt") <= t(&d, "network", "StartedAt"));
    // ntp waited for network's health check (network becomes healthy after 1 s).
    assert!(t(&d, "ntp", "StartedAt") >= t(&d, "network", "StartedAt") + 900_000_000);
    assert!(t(&d, "cloud-init-execute", "FinishedAt") <= t(&d, "console", "StartedAt"));
    assert!(t(&d, "preload", "FinishedAt") <= t(&d, "console", "StartedAt"));
    assert!(t(&d, "ntp", "StartedAt") <= t(&d, "late", "StartedAt"));
    // volumes_from: the one-shot wrote into the volume container's /data; console sees it.
    assert_eq!(
        d.ok(&["exec", "console", "cat", "/data/seen"]),
        "from-cloud-init\n"
    );
    assert!(
        d.docker(&["exec", "console", "ls", "/more"])
            .status
            .success()
    );
    // Interpolation and RancherOS's <service>/<KEY> lookup.
    let env = d.inspect("ntp", "{{json .Config.Env}}");
    assert!(
        env.contains("SERVER=pool.example") && env.contains("NTP_MODE=strict"),
        "{env}"
    );
    // Labels stamped.
    assert_eq!(
        d.inspect(
            "ntp",
            "{{index .Config.Labels \"com.docker.compose.project\"}}"
        ),
        "os"
    );
    assert_eq!(
        d.inspect(
            "ntp",
            "{{index .Config.Labels \"com.docker.compose.service\"}}"
        ),
        "ntp"
    );

    // Up again with nothing changed keeps everything.
    ros.ok(&["up"]);
    assert_eq!(ids(&d), before);

    // Change one service's environment: exactly that one is recreated.
    ros.write_config(&CONFIG.replace("NTP_SERVER: pool.example", "NTP_SERVER: other.example"));
    let plan = ros.ok(&["up", "--dry-run"]);
    assert!(
        plan.lines()
            .any(|l| l.contains("ntp") && l.contains("recreate")),
        "{plan}"
    );
    assert_eq!(ids(&d), before, "--dry-run changed something");
    ros.ok(&["up"]);
    let after = ids(&d);
    for (name, id) in &before {
        if name == "ntp" {
            assert_ne!(&after[name], id, "ntp was not recreated");
        } else {
            assert_eq!(&after[name], id, "{name} was recreated");
        }
    }
    assert!(
        d.inspect("ntp", "{{json .Config.Env}}")
            .contains("other.example")
    );

    // A new image behind a service's tag: that service is recreated.
    load_other_image(&d, "bb:acpid");
    ros.ok(&["up"]);
    let after2 = ids(&d);
    assert_ne!(after2["acpid"], after["acpid"]);
    assert_eq!(after2["console"], after["console"]);

    // rebuild "false": a changed definition is kept, with a warning.
    let changed = CONFIG
        .replace("NTP_SERVER: pool.example", "NTP_SERVER: other.example")
        .replace("LEVEL=info", "LEVEL=debug");
    ros.write_config(&changed);
    let plan = ros.ok(&["up", "--dry-run"]);
    assert!(
        plan.lines()
            .any(|l| l.contains("syslog") && l.contains("keep")),
        "{plan}"
    );
    ros.ok(&["up"]);
    assert_eq!(ids(&d)["syslog"], before["syslog"]);

    // A removed service's container goes; ps and list show the rest.
    let fewer = changed.replace("    late:\n      image: bb:1\n      command: sleep 1000\n      depends_on: [ntp]\n      labels: {io.rancher.os.scope: system}\n", "");
    ros.write_config(&fewer);
    ros.ok(&["up"]);
    assert!(!ids(&d).contains_key("late"));
    let ps: serde_json::Value = serde_json::from_str(&ros.ok(&["ps", "--format", "json"])).unwrap();
    assert_eq!(ps.as_array().unwrap().len(), 11);
    let list = ros.ok(&["list"]);
    assert!(
        list.contains("console") && list.contains("enabled"),
        "{list}"
    );
    assert!(ros.ok(&["logs", "udev-cold"]).contains("cold done"));
    ros.ok(&["stop", "-t", "1", "ntp"]);
    assert_eq!(d.inspect("ntp", "{{.State.Status}}"), "exited");
    ros.ok(&["start", "ntp"]);
    assert_eq!(d.inspect("ntp", "{{.State.Status}}"), "running");
}

#[test]
#[ignore = "needs root and the test tools: run `cargo xtask test`"]
fn cycles_and_missing_dependencies_are_reported_and_the_rest_runs() {
    let d = Daemon::start();
    let ros = Ros {
        d: &d,
        root: d.tmp.path().join("root"),
    };
    ros.write_config(
        r#"#cloud-config
rancher:
  services:
    a:
      image: bb:1
      command: sleep 1000
      labels: {io.rancher.os.scope: system, io.rancher.os.after: b}
    b:
      image: bb:1
      command: sleep 1000
      labels: {io.rancher.os.scope: system, io.rancher.os.after: a}
    orphan:
      image: bb:1
      command: sleep 1000
      depends_on: [missing]
      labels: {io.rancher.os.scope: system}
    fine:
      image: bb:1
      command: sleep 1000
      labels: {io.rancher.os.scope: system}
    mine:
      image: bb:1
      command: sleep 1000
      labels: {io.rancher.os.scope: user}
"#,
    );
    let o = ros.run(&["up"]);
    assert!(
        !o.status.success(),
        "up with broken services reported success"
    );
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("cycle") && out.contains('a') && out.contains('b'),
        "{out}"
    );
    assert!(out.contains("missing"), "{out}");
    assert!(out.contains("waiting for docker"), "{out}");
    let ids = ids(&d);
    assert!(ids.contains_key("fine"), "{out}");
    assert_eq!(d.inspect("fine", "{{.State.Status}}"), "running");
    for broken in ["a", "b", "orphan", "mine"] {
        assert!(!ids.contains_key(broken), "{broken} was created: {out}");
    }

    // #compose user data ends up as services that run.
    let root = paddock::root::Root::new(&ros.root);
    paddock::config::userdata::save(
        &root,
        b"#compose\nhello:\n  image: bb:1\n  command: sh -c 'echo hello from compose; sleep 1000'\n  labels:\n    io.rancher.os.scope: system\n",
    )
    .unwrap();
    let _ = ros.run(&["up", "hello"]);
    d.wait_for("the compose service's output", || {
        d.ok(&["logs", "hello"]).contains("hello from compose")
    });

    // Enable / disable a local service file.
    std::fs::write(
        ros.root.join("var/lib/rancher/conf/extra.yml"),
        "extra:\n  image: bb:1\n  command: sleep 1000\n  labels:\n    io.rancher.os.scope: system\n",
    )
    .unwrap();
    ros.ok(&["enable", "extra"]);
    assert!(
        ros.ok(&["list"])
            .lines()
            .any(|l| l.starts_with("extra") && l.contains("enabled"))
    );
    let _ = ros.run(&["up", "extra"]);
    assert_eq!(d.inspect("extra", "{{.State.Status}}"), "running");
    ros.ok(&["disable", "extra"]);
    let _ = ros.run(&["up"]);
    assert!(
        d.docker(&["inspect", "extra"]).status.code() != Some(0),
        "a disabled service kept its container"
    );
    ros.ok(&["delete", "extra"]);
    assert!(!ros.ok(&["list"]).contains("extra"));
    assert!(Path::new(&ros.root).exists());
}
