//! The shared harness of the root integration tests: a real `system-dockerd` on a temporary
//! data root and socket, with the busybox test image loaded, driven by the real docker CLI.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

pub struct Daemon {
    pub tmp: tempfile::TempDir,
    child: Option<Child>,
}

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::start_in(tempfile::tempdir().unwrap())
    }

    /// A daemon in `tmp`, whose `data` directory the caller may have prepared (a mount).
    pub fn start_in(tmp: tempfile::TempDir) -> Daemon {
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

    pub fn sock(&self) -> PathBuf {
        self.tmp.path().join("engine.sock")
    }

    pub fn spawn(&mut self) {
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

    pub fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.sock().display()))
            .args(args)
            .output()
            .unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert!(
            o.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    pub fn err(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert!(!o.status.success(), "docker {args:?} succeeded");
        String::from_utf8(o.stderr).unwrap()
    }

    pub fn inspect(&self, name: &str, fmt: &str) -> String {
        self.ok(&["inspect", "-f", fmt, name]).trim().to_owned()
    }

    pub fn wait_for(&self, what: &str, f: impl Fn() -> bool) {
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
