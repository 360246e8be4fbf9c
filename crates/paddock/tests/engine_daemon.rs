//! The real system engine (`system-dockerd`) driven by the real docker CLI: containers run
//! through libcontainer under their shims, limits land in cgroups, restart policies apply, and
//! the daemon can be SIGKILLed without losing containers or logs.
//!
//! Root only: `cargo xtask test` runs them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::Daemon;

fn cgroup_file(controller: &str, id: &str, file: &str) -> Option<String> {
    for base in [
        format!("/sys/fs/cgroup/{controller}/system-docker/{id}"),
        format!("/sys/fs/cgroup/system-docker/{id}"),
    ] {
        if let Ok(s) = std::fs::read_to_string(Path::new(&base).join(file)) {
            return Some(s.trim().to_owned());
        }
    }
    None
}

#[test]
#[ignore = "needs root and the test tools: run `cargo xtask test`"]
fn run_logs_exit_codes_mounts_limits_and_caps() {
    let d = Daemon::start();
    assert!(
        d.ok(&["version", "--format", "{{.Server.APIVersion}}"])
            .trim()
            == "1.44"
    );
    assert_eq!(
        d.ok(&["run", "--rm", "--network", "host", "bb:1", "echo", "hello"]),
        "hello\n"
    );
    let o = d.docker(&[
        "run",
        "--rm",
        "bb:1",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
    assert!(String::from_utf8_lossy(&o.stderr).contains("err"));

    // A bind mount and a tmpfs, seen from inside.
    let host = d.tmp.path().join("shared");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("f"), "from the host").unwrap();
    let bind = format!("{}:/data:ro", host.display());
    let out = d.ok(&[
        "run",
        "--rm",
        "-v",
        &bind,
        "--tmpfs",
        "/scratch",
        "bb:1",
        "sh",
        "-c",
        "cat /data/f; grep -c ' /scratch tmpfs' /proc/mounts",
    ]);
    assert_eq!(out, "from the host1\n");

    // Limits and capabilities on a running container.
    let id = d.ok(&[
        "run",
        "-d",
        "--name",
        "limited",
        "--pids-limit",
        "50",
        "--memory",
        "64m",
        "--cap-drop",
        "ALL",
        "--label",
        "paddock.test=1",
        "bb:1",
        "sleep",
        "1000",
    ]);
    let id = id.trim();
    let pid = d.inspect("limited", "{{.State.Pid}}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.lines().any(|l| l == "CapEff:\t0000000000000000"),
        "capabilities were not dropped"
    );
    assert_eq!(cgroup_file("pids", id, "pids.max").as_deref(), Some("50"));
    let mem = cgroup_file("memory", id, "memory.limit_in_bytes")
        .or_else(|| cgroup_file("memory", id, "memory.max"));
    assert_eq!(mem.as_deref(), Some("67108864"));
    assert!(
        d.ok(&[
            "ps",
            "--filter",
            "label=paddock.test=1",
            "--format",
            "{{.Names}}"
        ])
        .contains("limited")
    );

    // Fault cases: clear errors, the daemon keeps serving.
    assert!(
        d.err(&["run", "--name", "limited", "bb:1", "true"])
            .contains("already in use")
    );
    assert!(d.err(&["rm", "limited"]).contains("running"));
    assert!(d.err(&["rmi", "bb:1"]).contains("being used by container"));
    assert!(
        d.err(&["create", "--network", "bridge", "bb:1", "true"])
            .contains("not supported by the system engine")
    );
    let t = Instant::now();
    d.ok(&["stop", "-t", "1", "limited"]);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(d.inspect("limited", "{{.State.Status}}"), "exited");
    d.ok(&["rm", "limited"]);
    assert!(d.ok(&["ps", "-aq"]).trim().is_empty());
}

#[test]
#[ignore = "needs root and the test tools: run `cargo xtask test`"]
fn restart_policies_back_off_and_on_failure_stops_after_n() {
    let d = Daemon::start();
    d.ok(&[
        "run",
        "-d",
        "--name",
        "crashy",
        "--restart",
        "on-failure:3",
        "bb:1",
        "sh",
        "-c",
        "echo run; exit 1",
    ]);
    d.wait_for("3 restarts", || {
        d.inspect("crashy", "{{.RestartCount}}") == "3"
            && d.inspect("crashy", "{{.State.Status}}") == "exited"
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        d.inspect("crashy", "{{.RestartCount}}"),
        "3",
        "restarted more than on-failure:3 allows"
    );
    assert_eq!(d.ok(&["logs", "crashy"]).matches("run").count(), 4);

    d.ok(&[
        "run",
        "-d",
        "--name",
        "always",
        "--restart",
        "always",
        "bb:1",
        "sh",
        "-c",
        "exit 0",
    ]);
    d.wait_for("restarts with always", || {
        d.inspect("always", "{{.RestartCount}}")
            .parse::<u32>()
            .unwrap_or(0)
            >= 2
    });
    d.ok(&["stop", "always"]);
    let n = d.inspect("always", "{{.RestartCount}}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        d.inspect("always", "{{.RestartCount}}"),
        n,
        "a stopped container was restarted"
    );
}

#[test]
#[ignore = "needs root and the test tools: run `cargo xtask test`"]
fn sigkill_of_the_daemon_keeps_containers_and_logs() {
    let mut d = Daemon::start();
    d.ok(&[
        "run",
        "-d",
        "--name",
        "ticker",
        "bb:1",
        "sh",
        "-c",
        "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done",
    ]);
    let pid = d.inspect("ticker", "{{.State.Pid}}");
    std::thread::sleep(Duration::from_millis(500));
    d.sigkill();
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the container died with the daemon"
    );
    d.spawn();
    assert_eq!(d.inspect("ticker", "{{.State.Status}}"), "running");
    assert_eq!(d.inspect("ticker", "{{.State.Pid}}"), pid);
    std::thread::sleep(Duration::from_millis(300));
    let logs = d.ok(&["logs", "ticker"]);
    let ticks: Vec<u32> = logs
        .lines()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .collect();
    assert!(ticks.len() >= 10, "{logs}");
    for (i, t) in ticks.iter().enumerate() {
        assert_eq!(*t, i as u32, "gap in the logs around {i}");
    }
    d.ok(&["stop", "-t", "1", "ticker"]);
    assert_eq!(d.inspect("ticker", "{{.State.Status}}"), "exited");
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

/// System services see the host's devices: privileged host-network containers and a
/// `-v /dev:/dev` volume get the host's /dev itself, which the runtime must leave as it is.
#[test]
#[ignore = "needs root and the test tools: run `cargo xtask test`"]
fn host_dev_for_privileged_services_and_dev_volumes() {
    use std::os::unix::fs::FileTypeExt as _;
    let d = Daemon::start();
    let ptmx_before = std::fs::symlink_metadata("/dev/ptmx").unwrap();
    // Twice each: the first start must not leave anything that breaks the second.
    for name in ["priv1", "priv2"] {
        let out = d.ok(&[
            "run",
            "--rm",
            "--name",
            name,
            "--privileged",
            "--network",
            "host",
            "bb:1",
            "sh",
            "-c",
            "test -c /dev/null && ls /dev/pts >/dev/null && echo devices ok",
        ]);
        assert_eq!(out.trim(), "devices ok", "{name}");
    }
    for name in ["devvol1", "devvol2"] {
        let out = d.ok(&[
            "run",
            "--rm",
            "--name",
            name,
            "--privileged",
            "-v",
            "/dev:/dev",
            "bb:1",
            "sh",
            "-c",
            "test -c /dev/ptmx && echo ptmx is a device",
        ]);
        assert_eq!(out.trim(), "ptmx is a device", "{name}");
    }
    // A device node made on the host after the container started is visible in it: the
    // container has the host's /dev, not a copy.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "watcher",
        "--privileged",
        "--network",
        "host",
        "bb:1",
        "sleep",
        "30",
    ]);
    let node = "/dev/paddock-test-null";
    let _ = std::fs::remove_file(node);
    assert!(
        Command::new("mknod")
            .args([node, "c", "1", "3"])
            .status()
            .unwrap()
            .success()
    );
    let seen = d.docker(&["exec", "watcher", "sh", "-c", &format!("test -c {node}")]);
    let _ = std::fs::remove_file(node);
    assert!(
        seen.status.success(),
        "the new host device is not visible in the container: {seen:?}"
    );
    // Terminals where /dev is the host's: `system-docker exec -it console sh`.
    let host = format!("unix://{}", d.sock().display());
    let out = in_terminal(
        &format!("docker -H {host} exec -it watcher sh -c 'tty; echo tty-ok'"),
        "",
    );
    assert!(out.contains("/dev/pts/") && out.contains("tty-ok"), "{out}");
    let out = in_terminal(
        &format!("docker -H {host} run --rm -t --privileged --network host bb:1 tty"),
        "",
    );
    assert!(out.contains("/dev/pts/"), "{out}");
    d.ok(&["rm", "-f", "watcher"]);
    let ptmx_after = std::fs::symlink_metadata("/dev/ptmx").unwrap();
    assert!(
        ptmx_after.file_type().is_char_device(),
        "the host's /dev/ptmx was replaced"
    );
    assert_eq!(
        ptmx_before.file_type().is_char_device(),
        ptmx_after.file_type().is_char_device()
    );
}

/// Runs `cmd` under a pseudo-terminal (util-linux `script`), as a user at a terminal would.
/// `typed` is what the user types.
fn in_terminal(cmd: &str, typed: &str) -> String {
    use std::io::Write as _;
    let mut c = Command::new("script")
        .args(["-qec", cmd, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(typed.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&o.stdout).replace('\r', "")
}

#[test]
#[ignore = "needs root and the test tools: run `cargo xtask test`"]
fn exec_and_terminals() {
    let d = Daemon::start();
    d.ok(&[
        "run",
        "-d",
        "--name",
        "box",
        "-e",
        "FROM_RUN=1",
        "bb:1",
        "sleep",
        "1000",
    ]);
    assert_eq!(d.ok(&["exec", "box", "echo", "hi"]), "hi\n");
    // The exit code, stderr apart from stdout.
    let o = d.docker(&["exec", "box", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");
    // Environment (the container's plus -e), working dir, user.
    assert_eq!(
        d.ok(&[
            "exec",
            "-e",
            "A=2",
            "-w",
            "/tmp",
            "-u",
            "1000:1000",
            "box",
            "sh",
            "-c",
            "echo $FROM_RUN $A $(pwd) $(id -u):$(id -g)"
        ]),
        "1 2 /tmp 1000:1000\n"
    );
    // It runs in the container's namespaces: same pid namespace as its init.
    let ours = d.ok(&["exec", "box", "readlink", "/proc/1/ns/pid"]);
    let pid = d.inspect("box", "{{.State.Pid}}");
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
    assert_eq!(ours.trim(), theirs.to_str().unwrap());
    // stdin with -i.
    let mut child = Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{}", d.sock().display()))
        .args(["exec", "-i", "box", "sh", "-c", "tr a-z A-Z"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped input\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "PIPED INPUT\n");
    // Detached: it runs after the CLI returned.
    d.ok(&[
        "exec",
        "-d",
        "box",
        "sh",
        "-c",
        "sleep 0.2; echo done > /tmp/detached",
    ]);
    d.wait_for("the detached exec", || {
        d.docker(&["exec", "box", "cat", "/tmp/detached"])
            .status
            .success()
    });
    // Privileged gets every capability; a plain exec the container's.
    let eff = |args: &[&str]| {
        let mut a = vec!["exec"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["box", "grep", "CapEff", "/proc/self/status"]);
        d.ok(&a)
    };
    assert_ne!(eff(&["--privileged"]), eff(&[]));
    // Faults: a missing executable, an unknown container, a stopped one.
    let o = d.docker(&["exec", "box", "/no/such/thing"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("/no/such/thing"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        d.err(&["exec", "nosuch", "true"])
            .contains("No such container")
    );

    // -it: a real pty in the container, for exec and for run.
    let host = format!("unix://{}", d.sock().display());
    let out = in_terminal(
        &format!("docker -H {host} exec -it box sh -c 'tty; stty size; echo tty-ok'"),
        "",
    );
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("tty-ok"), "{out}");
    let out = in_terminal(
        &format!("docker -H {host} run --rm -i -t bb:1 sh; echo status=$?"),
        "echo typed-$((6*7)); exit 5\n",
    );
    assert!(out.contains("typed-42"), "{out}");
    assert!(out.contains("status=5"), "{out}");
    let out = in_terminal(&format!("docker -H {host} run --rm -t bb:1 tty"), "");
    assert!(out.contains("/dev/pts/0"), "{out}");

    // Container processes start with a clean signal state: nothing blocked, SIGPIPE default
    // (the daemon blocks SIGTERM and Rust ignores SIGPIPE; neither may leak into containers).
    let status = d.ok(&["exec", "box", "cat", "/proc/1/status"]);
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap()
    };
    assert_eq!(field("SigBlk:"), 0, "{status}");
    assert_eq!(
        field("SigIgn:") & (1 << 12),
        0,
        "SIGPIPE is ignored: {status}"
    );
    assert_eq!(
        d.ok(&["exec", "box", "sh", "-c", "yes | head -n 2"]),
        "y\ny\n"
    );
    // So a container that handles SIGTERM stops at once, without waiting for the SIGKILL.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "polite",
        "bb:1",
        "sh",
        "-c",
        "trap 'exit 0' TERM; sleep 1000 & wait",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    d.ok(&["stop", "-t", "10", "polite"]);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        t.elapsed()
    );
    assert_eq!(d.inspect("polite", "{{.State.ExitCode}}"), "0");

    d.ok(&["stop", "-t", "1", "box"]);
    assert!(d.err(&["exec", "box", "true"]).contains("not running"));
}

#[test]
#[ignore = "needs root and the test tools: run `cargo xtask test`"]
fn system_docker_client() {
    let d = Daemon::start();
    let bin = d.tmp.path().join("system-docker");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ros"), &bin).unwrap();
    let sd = |args: &[&str]| {
        Command::new(&bin)
            .env(
                "SYSTEM_DOCKER_HOST",
                format!("unix://{}", d.sock().display()),
            )
            .args(args)
            .output()
            .unwrap()
    };
    let ok = |args: &[&str]| {
        let o = sd(args);
        assert!(
            o.status.success(),
            "system-docker {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    assert!(ok(&["version"]).contains("API version"));
    assert_eq!(ok(&["run", "--rm", "bb:1", "echo", "hello"]), "hello\n");
    assert_eq!(
        sd(&["run", "--rm", "bb:1", "sh", "-c", "exit 4"])
            .status
            .code(),
        Some(4)
    );
    let id = ok(&[
        "run",
        "-d",
        "--name",
        "ntp",
        "-l",
        "io.rancher.os.scope=system",
        "bb:1",
        "sh",
        "-c",
        "echo synced; sleep 1000",
    ]);
    assert_eq!(
        d.inspect("ntp", "{{.Id}}"),
        id.trim(),
        "the docker CLI sees the same engine"
    );
    let ps = ok(&["ps"]);
    assert!(ps.starts_with("CONTAINER ID"), "{ps}");
    assert!(ps.contains("ntp") && ps.contains("bb:1"), "{ps}");
    let json: serde_json::Value = serde_json::from_str(&ok(&[
        "ps",
        "--format",
        "json",
        "--filter",
        "label=io.rancher.os.scope=system",
    ]))
    .unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1);
    assert_eq!(json[0]["Names"][0], "/ntp");
    d.wait_for("the log line", || ok(&["logs", "ntp"]) == "synced\n");
    assert_eq!(ok(&["exec", "ntp", "sh", "-c", "echo $((1+2))"]), "3\n");
    let insp: serde_json::Value = serde_json::from_str(&ok(&["inspect", "ntp"])).unwrap();
    assert_eq!(insp[0]["State"]["Running"], true);
    assert!(ok(&["images"]).contains("bb"));
    ok(&["restart", "-t", "1", "ntp"]);
    assert_eq!(d.inspect("ntp", "{{.RestartCount}}"), "0");
    ok(&["rename", "ntp", "ntpd"]);
    ok(&["stop", "-t", "1", "ntpd"]);
    assert_eq!(d.inspect("ntpd", "{{.State.Status}}"), "exited");
    ok(&["rm", "ntpd"]);
    // Errors name what is wrong; -H beats the environment.
    let o = sd(&["logs", "nosuch"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("nosuch"));
    assert!(!o.status.success());
    let o = Command::new(&bin)
        .args(["-H", "unix:///nonexistent.sock", "ps"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent.sock"));
}

#[test]
#[ignore = "needs root and the test tools: run `cargo xtask test`"]
fn a_full_disk_under_the_logs_loses_nothing_already_written() {
    // The whole data root on a 24 MiB tmpfs: the image fits, a flood of output does not.
    // (The daemon's drop unmounts everything below its temp dir, this tmpfs included.)
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(&data)
        .status()
        .unwrap();
    assert!(st.success());
    let mut d = Daemon::start_in(tmp);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "first",
        "bb:1",
        "sh",
        "-c",
        "echo before-the-flood; sleep 1000",
    ]);
    d.wait_for("the first log line", || {
        d.ok(&["logs", "first"]) == "before-the-flood\n"
    });
    d.ok(&["run", "-d", "--name", "flood", "bb:1", "sh", "-c",
        "while true; do echo xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; done"]);
    d.wait_for("the disk to fill", || {
        nix::sys::statvfs::statvfs(&data)
            .unwrap()
            .blocks_available()
            == 0
    });
    std::thread::sleep(Duration::from_millis(300));
    // The daemon still serves, the flooding container still runs, old logs are intact.
    assert_eq!(d.inspect("flood", "{{.State.Status}}"), "running");
    assert_eq!(d.ok(&["logs", "first"]), "before-the-flood\n");
    // New work fails with a clear error rather than a crash.
    let e = d.err(&["run", "--name", "late", "bb:1", "true"]);
    assert!(e.to_lowercase().contains("no space left"), "{e}");
    d.ok(&["rm", "-f", "flood"]);
    assert_eq!(
        d.ok(&["run", "--rm", "bb:1", "echo", "room-again"]),
        "room-again\n"
    );
    d.sigkill();
    d.spawn();
    assert_eq!(d.ok(&["logs", "first"]), "before-the-flood\n");
}
