//! The Docker API server against the stock docker CLI (Debian's docker.io client, or any docker
//! CLI on PATH), with an in-memory fake engine behind it. Unprivileged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod engine_api_fake;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use engine_api_fake::Harness;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn docker_bin() -> String {
    std::env::var("PADDOCK_DOCKER_CLI").unwrap_or_else(|_| "docker".to_string())
}

/// Runs the docker CLI against the harness socket, with a 30 s limit.
fn docker_in(h: &Harness, args: &[&str], stdin: Option<&[u8]>) -> Out {
    let config = h.dir.path().join("docker-config");
    let mut child = Command::new(docker_bin())
        .arg("-H")
        .arg(format!("unix://{}", h.sock.display()))
        .args(args)
        .env("DOCKER_CONFIG", &config)
        .env_remove("DOCKER_HOST")
        .env_remove("DOCKER_CONTEXT")
        .env_remove("DOCKER_API_VERSION")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run the docker CLI ({}): {e}", docker_bin()));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("docker {args:?} hung");
        }
    };
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn docker(h: &Harness, args: &[&str]) -> Out {
    docker_in(h, args, None)
}

/// Runs and expects success; returns stdout.
fn ok(h: &Harness, args: &[&str]) -> String {
    let out = docker(h, args);
    assert_eq!(
        out.code, 0,
        "docker {args:?} failed:\nstdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    out.stdout
}

/// Runs and expects failure; returns stderr.
fn fails(h: &Harness, args: &[&str]) -> String {
    let out = docker(h, args);
    assert_ne!(out.code, 0, "docker {args:?} should fail: {}", out.stdout);
    out.stderr
}

#[test]
fn version_negotiates_1_44_and_info_renders() {
    let h = Harness::start();
    let v = ok(
        &h,
        &[
            "version",
            "--format",
            "{{.Server.Version}} {{.Server.APIVersion}} {{.Server.MinAPIVersion}} {{.Client.APIVersion}}",
        ],
    );
    assert_eq!(v.trim(), "0.0.0-fake 1.44 1.24 1.44");
    let plain = ok(&h, &["version"]);
    assert!(plain.contains("Paddock system engine"), "{plain}");
    ok(&h, &["run", "-d", "busybox", "sleep"]);
    let info = ok(
        &h,
        &[
            "info",
            "--format",
            "{{.Name}} {{.Containers}} {{.ContainersRunning}} {{.Images}} {{.OperatingSystem}}",
        ],
    );
    assert_eq!(info.trim(), "fakehost 1 1 1 Paddock");
    // The full human rendering works too.
    let info = ok(&h, &["info"]);
    assert!(info.contains("Server Version: 0.0.0-fake"), "{info}");
}

#[test]
fn run_detached_ps_filters_inspect_stop_kill_rm() {
    let h = Harness::start();
    let id = ok(
        &h,
        &[
            "run",
            "-d",
            "--name",
            "web",
            "--label",
            "tier=sys",
            "--network",
            "host",
            "--privileged",
            "--cap-drop",
            "ALL",
            "--read-only",
            "--tmpfs",
            "/run:size=1m",
            "--ulimit",
            "nofile=10:20",
            "--memory",
            "64m",
            "--cpus",
            "0.5",
            "--pids-limit",
            "50",
            "--restart",
            "on-failure:3",
            "-v",
            "/srv:/srv:rshared",
            "busybox",
            "sleep",
        ],
    );
    assert_eq!(id.trim().len(), 64, "{id}");
    ok(&h, &["run", "-d", "--name", "other", "busybox", "sleep"]);

    // What the CLI sent arrives typed.
    {
        let st = h.fake.lock();
        let hc = &st.created[0].host_config;
        assert_eq!(hc.network_mode, "host");
        assert!(hc.privileged && hc.readonly_rootfs);
        assert_eq!(hc.cap_drop, vec!["ALL".to_string()]);
        assert_eq!(hc.tmpfs.get("/run").map(String::as_str), Some("size=1m"));
        assert_eq!((hc.ulimits[0].soft, hc.ulimits[0].hard), (10, 20));
        assert_eq!(hc.memory, 64 << 20);
        assert_eq!(hc.nano_cpus, 500_000_000);
        assert_eq!(hc.pids_limit, Some(50));
        assert_eq!(hc.restart_policy.name, "on-failure");
        assert_eq!(hc.restart_policy.maximum_retry_count, 3);
        assert_eq!(hc.binds, vec!["/srv:/srv:rshared".to_string()]);
    }

    let ps = ok(
        &h,
        &["ps", "--format", "{{.Names}}|{{.Status}}|{{.Command}}"],
    );
    let mut lines: Vec<&str> = ps.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        vec![
            "other|Up Less than a second|\"sleep\"",
            "web|Up Less than a second|\"sleep\""
        ]
    );
    let filtered = ok(
        &h,
        &["ps", "--filter", "label=tier=sys", "--format", "{{.Names}}"],
    );
    assert_eq!(filtered.trim(), "web");
    let filtered = ok(&h, &["ps", "-q", "--filter", "label=tier=nope"]);
    assert_eq!(filtered.trim(), "");

    let inspect = ok(
        &h,
        &[
            "inspect",
            "-f",
            "{{.Name}} {{.State.Running}} {{.HostConfig.NetworkMode}} {{index .Config.Labels \"tier\"}}",
            "web",
        ],
    );
    assert_eq!(inspect.trim(), "/web true host sys");
    // Full JSON, by id prefix.
    let json = ok(&h, &["inspect", &id.trim()[..12]]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["HostConfig"]["PidsLimit"], 50);

    assert_eq!(ok(&h, &["stop", "web"]).trim(), "web");
    let ps = ok(
        &h,
        &[
            "ps",
            "-a",
            "--filter",
            "status=exited",
            "--format",
            "{{.Names}} {{.Status}}",
        ],
    );
    assert_eq!(ps.trim(), "web Exited (143) Less than a second ago");
    // Only running ones without -a.
    assert_eq!(ok(&h, &["ps", "--format", "{{.Names}}"]).trim(), "other");

    assert_eq!(ok(&h, &["kill", "-s", "HUP", "other"]).trim(), "other");
    assert_eq!(
        ok(&h, &["inspect", "-f", "{{.State.ExitCode}}", "other"]).trim(),
        "129"
    );
    let err = fails(&h, &["kill", "other"]);
    assert!(err.contains("is not running"), "{err}");

    ok(&h, &["restart", "web"]);
    let err = fails(&h, &["rm", "web"]);
    assert!(err.contains("cannot remove a running container"), "{err}");
    assert_eq!(ok(&h, &["rm", "-f", "web"]).trim(), "web");
    ok(&h, &["rm", "other"]);
    assert_eq!(ok(&h, &["ps", "-aq"]).trim(), "");
    let err = fails(&h, &["rm", "web"]);
    assert!(err.contains("No such container: web"), "{err}");
}

#[test]
fn run_attached_streams_output_and_exit_code() {
    let h = Harness::start();
    let out = docker(
        &h,
        &["run", "--name", "e1", "busybox", "echo", "hello", "world"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "hello world\n");
    // Without --network the CLI sends NetworkMode "default" (the engine decides what it means).
    assert_eq!(h.fake.lock().created[0].host_config.network_mode, "default");

    // stderr stays stderr (multiplexed frames), the exit code is the container's, --rm removes.
    let out = docker(&h, &["run", "--rm", "busybox", "fail", "3"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("failing with 3"), "{}", out.stderr);
    assert_eq!(ok(&h, &["ps", "-a", "--format", "{{.Names}}"]).trim(), "e1");
    assert!(h.fake.lock().created[1].host_config.auto_remove);

    // -t without -i: a raw stream, no frame headers.
    let out = docker(&h, &["run", "-t", "busybox", "echo", "on", "a", "tty"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "on a tty\n");
}

#[test]
fn create_then_start_attached() {
    let h = Harness::start();
    let id = ok(
        &h,
        &["create", "--name", "a1", "busybox", "echo", "attached"],
    );
    assert_eq!(id.trim().len(), 64);
    assert_eq!(
        ok(&h, &["inspect", "-f", "{{.State.Status}}", "a1"]).trim(),
        "created"
    );
    let out = docker(&h, &["start", "-a", "a1"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "attached\n"),
        "{}",
        out.stderr
    );
    let out = docker(&h, &["create", "--name", "b1", "busybox", "fail", "7"]);
    assert_eq!(out.code, 0);
    let out = docker(&h, &["start", "-a", "b1"]);
    assert_eq!(out.code, 7);
    assert!(out.stderr.contains("failing with 7"), "{}", out.stderr);
    // Starting a running container is a no-op (304), not an error.
    ok(&h, &["run", "-d", "--name", "s1", "busybox", "sleep"]);
    assert_eq!(ok(&h, &["start", "s1"]).trim(), "s1");
}

#[test]
fn logs_tail_streams_and_wait() {
    let h = Harness::start();
    ok(
        &h,
        &["run", "-d", "--name", "l1", "busybox", "lines", "5", "5"],
    );
    assert_eq!(ok(&h, &["wait", "l1"]).trim(), "0");
    assert_eq!(
        ok(&h, &["logs", "l1"]),
        "line 1\nline 2\nline 3\nline 4\nline 5\n"
    );
    assert_eq!(ok(&h, &["logs", "--tail", "2", "l1"]), "line 4\nline 5\n");
    ok(&h, &["run", "-d", "--name", "f1", "busybox", "fail", "4"]);
    assert_eq!(ok(&h, &["wait", "f1"]).trim(), "4");
    let out = docker(&h, &["logs", "f1"]);
    assert_eq!(out.code, 0);
    assert_eq!(out.stdout, "");
    assert_eq!(out.stderr, "failing with 4\n");
    let err = fails(&h, &["logs", "nosuch"]);
    assert!(err.contains("No such container: nosuch"), "{err}");
    let err = fails(&h, &["wait", "nosuch"]);
    assert!(err.contains("No such container: nosuch"), "{err}");
}

#[test]
fn logs_follow_ends_with_the_container() {
    let h = Harness::start();
    ok(
        &h,
        &["run", "-d", "--name", "f1", "busybox", "lines", "20", "40"],
    );
    let t = Instant::now();
    let out = docker(&h, &["logs", "-f", "f1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let expected: String = (1..=20).map(|i| format!("line {i}\n")).collect();
    assert_eq!(out.stdout, expected);
    // It really followed (the container needs ~0.8 s to print everything).
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn exec_pipes_stdin_through_the_hijack() {
    let h = Harness::start();
    ok(&h, &["run", "-d", "--name", "x1", "busybox", "sleep"]);
    let input = "hello through the hijack\n".repeat(2000);
    let out = docker_in(&h, &["exec", "-i", "x1", "upper"], Some(input.as_bytes()));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, input.to_uppercase());
    assert_eq!(out.stderr, "done\n");
    // Exit codes come back through exec inspect.
    let out = docker(&h, &["exec", "x1", "fail", "5"]);
    assert_eq!(out.code, 5);
    assert_eq!(ok(&h, &["exec", "x1", "echo", "hi"]), "hi\n");
    ok(&h, &["exec", "-d", "x1", "echo", "detached"]);
    ok(&h, &["stop", "x1"]);
    let err = fails(&h, &["exec", "x1", "echo", "hi"]);
    assert!(err.contains("is not running"), "{err}");
}

#[test]
fn attach_with_stdin_on_start() {
    let h = Harness::start();
    ok(&h, &["create", "-i", "--name", "c1", "busybox", "cat"]);
    let out = docker_in(&h, &["start", "-a", "-i", "c1"], Some(b"piped in\n"));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "piped in\n");
}

#[test]
fn rename_and_name_conflicts() {
    let h = Harness::start();
    ok(&h, &["create", "--name", "x1", "busybox", "sleep"]);
    let err = fails(&h, &["create", "--name", "x1", "busybox", "sleep"]);
    assert!(err.contains("is already in use"), "{err}");
    ok(&h, &["rename", "x1", "y1"]);
    assert_eq!(ok(&h, &["inspect", "-f", "{{.Name}}", "y1"]).trim(), "/y1");
    let err = fails(&h, &["inspect", "x1"]);
    assert!(err.contains("No such object: x1"), "{err}");
    let err = fails(&h, &["rename", "y1", "bad/name"]);
    assert!(err.contains("Invalid container name"), "{err}");
    let err = fails(&h, &["create", "--name", "y1", "busybox", "sleep"]);
    assert!(err.contains("is already in use"), "{err}");
}

#[test]
fn images_pull_tag_save_load_rmi() {
    let h = Harness::start();
    let images = ok(&h, &["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert_eq!(images.trim(), "busybox:latest");

    let pulled = ok(&h, &["pull", "alpine:3.19"]);
    assert!(
        pulled.contains("Status: Downloaded newer image for alpine:3.19"),
        "{pulled}"
    );
    let err = fails(&h, &["pull", "nosuch/thing"]);
    assert!(err.contains("pull access denied"), "{err}");
    let err = fails(&h, &["pull", "broken/thing"]);
    assert!(
        err.contains("unexpected EOF while downloading a layer"),
        "{err}"
    );

    // run pulls a missing image, then creates.
    let out = docker(&h, &["run", "--rm", "debian:12", "echo", "pulled"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "pulled\n");
    assert!(
        out.stderr
            .contains("Unable to find image 'debian:12' locally"),
        "{}",
        out.stderr
    );

    ok(&h, &["tag", "busybox", "paddock/base:1"]);
    let inspect = ok(
        &h,
        &[
            "image",
            "inspect",
            "-f",
            "{{.Os}} {{json .RepoTags}}",
            "paddock/base:1",
        ],
    );
    assert_eq!(
        inspect.trim(),
        r#"linux ["busybox:latest","paddock/base:1"]"#
    );

    let tar = h.dir.path().join("img.tar");
    ok(&h, &["save", "-o", tar.to_str().unwrap(), "paddock/base:1"]);
    let saved = std::fs::read(&tar).unwrap();
    assert!(saved.starts_with(b"FAKE-IMAGE-TAR paddock/base:1\n"));
    assert_eq!(saved.len(), 30 + 20_000 * 21);

    let untagged = ok(&h, &["rmi", "paddock/base:1"]);
    assert_eq!(untagged.trim(), "Untagged: paddock/base:1");
    let loaded = ok(&h, &["load", "-i", tar.to_str().unwrap()]);
    assert_eq!(loaded.trim(), "Loaded image: paddock/base:1");
    assert_eq!(h.fake.lock().loaded[0], saved);
    let err = fails(&h, &["load", "-i", "/dev/null"]);
    assert!(err.contains("not an image tarball"), "{err}");

    ok(&h, &["create", "--name", "user", "alpine:3.19", "sleep"]);
    let err = fails(&h, &["rmi", "alpine:3.19"]);
    assert!(err.contains("must force"), "{err}");
    let removed = ok(&h, &["rmi", "-f", "alpine:3.19"]);
    assert!(
        removed.contains("Untagged: alpine:3.19") && removed.contains("Deleted: sha256:"),
        "{removed}"
    );
    let err = fails(&h, &["rmi", "nosuch"]);
    assert!(err.contains("No such image: nosuch"), "{err}");
}

#[test]
fn unsupported_verbs_say_so_and_the_server_keeps_serving() {
    let h = Harness::start();
    for args in [
        &["network", "ls"][..],
        &["volume", "ls"][..],
        &["pause", "x"][..],
        &["system", "df"][..],
    ] {
        let err = fails(&h, args);
        assert!(
            err.contains("not supported by the system engine"),
            "{args:?}: {err}"
        );
    }
    let err = fails(&h, &["ps", "--filter", "network=x"]);
    assert!(
        err.contains("not supported by the system engine: the filter 'network'"),
        "{err}"
    );
    let err = fails(&h, &["logs", "--since", "nonsense", "x"]);
    assert!(!err.is_empty());
    assert_eq!(ok(&h, &["ps", "-aq"]).trim(), "");
}

#[test]
fn run_it_through_a_pty() {
    let h = Harness::start();
    // `script` gives the CLI a terminal, so it takes the -it path: raw mode, upgrade with a
    // raw (tty) stream, resize calls.
    let cmd = format!(
        "stty rows 40 cols 100; {} -H unix://{} run -it --name tty1 busybox untilq",
        docker_bin(),
        h.sock.display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("DOCKER_CONFIG", h.dir.path().join("docker-config"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Type once the container runs.
    assert!(h.fake.wait_until(|st| {
        st.containers
            .values()
            .any(|c| c.name == "tty1" && c.status == "running")
    }));
    std::thread::sleep(Duration::from_millis(300));
    stdin.write_all(b"typed text q").unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("docker run -it hung");
        }
    };
    drop(stdin);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("TYPED TEXT "), "{stdout:?}");
    let st = h.fake.lock();
    assert!(st.created[0].config.tty && st.created[0].config.open_stdin);
    assert!(!st.resizes.is_empty(), "the CLI sized the tty");
    assert!(
        st.resizes
            .iter()
            .any(|(_, s)| (s.height, s.width) == (40, 100)),
        "{:?}",
        st.resizes
    );
    assert_eq!(st.created[0].host_config.console_size, Some([40, 100]));
}
