//! The real system engine (`system-dockerd`) driven by the real docker CLI: containers run
//! through libcontainer under their shims, limits land in cgroups, restart policies apply, and
//! the daemon can be SIGKILLed without losing containers or logs.
//!
//! Root only: `cargo xtask test` runs them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

struct Daemon {
    tmp: tempfile::TempDir,
    child: Option<Child>,
}

impl Daemon {
    fn start() -> Daemon {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("system-dockerd");
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ros"), &bin).unwrap();
        // The busybox test image, loaded into the engine's store before it starts.
        let layout = tmp.path().join("layout");
        let mut l = testkit::layout::Layout::create(&layout).unwrap();
        let layers = testkit::busybox_layers(
            &testkit::busybox().unwrap(),
            testkit::layout::Compression::Zstd,
        )
        .unwrap();
        let desc = l.image(&layers, "amd64", &["sh"]).unwrap();
        l.tag(desc, "docker.io/library/bb:1").unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_ros"))
            .arg("--data-root")
            .arg(tmp.path().join("data"))
            .args(["image", "load", "-i"])
            .arg(&layout)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut d = Daemon { tmp, child: None };
        d.spawn();
        d
    }

    fn sock(&self) -> PathBuf {
        self.tmp.path().join("engine.sock")
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.tmp.path().join("daemon.log")).unwrap();
        let child = Command::new(self.tmp.path().join("system-dockerd"))
            .arg("--data-root")
            .arg(self.tmp.path().join("data"))
            .arg("-H")
            .arg(format!("unix://{}", self.sock().display()))
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(self.sock()).is_err() {
            assert!(Instant::now() < deadline, "daemon did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.sock().display()))
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert!(
            o.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    fn err(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert!(!o.status.success(), "docker {args:?} succeeded");
        String::from_utf8(o.stderr).unwrap()
    }

    fn inspect(&self, name: &str, fmt: &str) -> String {
        self.ok(&["inspect", "-f", fmt, name]).trim().to_owned()
    }

    fn wait_for(&self, what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let ids = self.docker(&["ps", "-aq"]).stdout;
        for id in String::from_utf8_lossy(&ids).split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        self.sigkill();
        // Unmount anything left below the temp dir before it is removed.
        if let Ok(m) = std::fs::read_to_string("/proc/self/mounts") {
            for line in m.lines() {
                if let Some(p) = line.split_whitespace().nth(1)
                    && Path::new(p).starts_with(self.tmp.path())
                {
                    let _ = Command::new("umount").arg("-l").arg(p).status();
                }
            }
        }
    }
}

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
