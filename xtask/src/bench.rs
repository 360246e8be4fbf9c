//! Benchmarks that print Paddock's figures beside the peer they replace.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use testkit::layout::{Compression, Entry, Layer, Layout};

use crate::{build_ros, cache_dir, fixtures, is_root, setup, sh};

pub fn main(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("pull") => {
            let runs = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
            pull(runs)
        }
        Some("start") => {
            let runs = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100);
            start(runs)
        }
        Some("reconcile") => {
            let n = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100);
            reconcile(n)
        }
        Some("boot") => crate::os::bench_boot(),
        _ => bail!("usage: cargo xtask bench pull|start|reconcile|boot [RUNS|SERVICES]"),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A ~100 MB (uncompressed) image in seven layers: busybox, then five 20 MB layers that mix incompressible
/// data with text, so both the network path and the decompressor matter.
fn big_layout(busybox: &Path) -> Result<PathBuf> {
    let dir = cache_dir().join("bench/big-layout");
    if dir.join("index.json").is_file() {
        return Ok(dir);
    }
    eprintln!("xtask: building the ~100 MB benchmark image");
    let _ = std::fs::remove_dir_all(&dir);
    let mut layout = Layout::create(&dir)?;
    let mut layers = testkit::busybox_layers(busybox, Compression::Gzip)?;
    for i in 0..5u64 {
        let mut entries = vec![Entry::dir(&format!("data{i}"))];
        for f in 0..80u64 {
            let data = if f % 2 == 0 {
                testkit::layout::noise(250_000, i * 100 + f)
            } else {
                let line =
                    format!("layer {i} file {f}: the quick brown fox jumps over the lazy dog\n");
                line.repeat(250_000 / line.len()).into_bytes()
            };
            entries.push(Entry::file(&format!("data{i}/f{f}"), 0o644, &data));
        }
        // umoci 0.4 (the peer) cannot read zstd layers, so the benchmark image is all gzip.
        layers.push(Layer::new(&entries, Compression::Gzip)?);
    }
    let desc = layout.image(&layers, "amd64", &["sh"])?;
    layout.tag(desc, "latest")?;
    Ok(dir)
}

fn pull(runs: usize) -> Result<()> {
    setup()?;
    let ros = build_ros()?;
    let fx = fixtures()?;
    let work = cache_dir().join("bench/pull");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let registry = testkit::registry::Registry::start(
        &work.join("registry"),
        testkit::registry::Auth::Anonymous,
    )?;
    let layout = big_layout(&fx.busybox)?;
    let image = format!("{}/bench/big:latest", registry.addr);
    testkit::skopeo_copy(
        &format!("oci:{}:latest", layout.display()),
        &format!("docker://{image}"),
        &[],
    )?;
    let size: u64 = std::fs::read_dir(layout.join("blobs/sha256"))?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    eprintln!(
        "xtask: image {image}: {:.1} MB compressed; {runs} runs each",
        size as f64 / 1e6
    );

    let mut ours = vec![];
    let mut peer = vec![];
    for i in 0..runs {
        let root = work.join(format!("ros-{i}"));
        let t = Instant::now();
        let out = Command::new(&ros)
            .arg("--root")
            .arg(&root)
            .args(["image", "pull", "-q", &image])
            .output()?;
        let dt = t.elapsed();
        if !out.status.success() {
            bail!(
                "ros image pull failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        ours.push(dt);
        std::fs::remove_dir_all(&root)?;

        let oci = work.join(format!("oci-{i}"));
        let bundle = work.join(format!("bundle-{i}"));
        let t = Instant::now();
        testkit::skopeo_copy(
            &format!("docker://{image}"),
            &format!("oci:{}:latest", oci.display()),
            &[],
        )?;
        let mut umoci = Command::new("umoci");
        umoci.arg("unpack");
        if !is_root() {
            umoci.arg("--rootless");
        }
        let out = umoci
            .arg("--image")
            .arg(format!("{}:latest", oci.display()))
            .arg(&bundle)
            .output()
            .context("running umoci")?;
        let dt = t.elapsed();
        if !out.status.success() {
            bail!(
                "umoci unpack failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        peer.push(dt);
        sh(Command::new("rm").arg("-rf").arg(&oci).arg(&bundle))?;
        eprintln!(
            "  run {}: ros {:.0} ms, skopeo+umoci {:.0} ms",
            i + 1,
            ours[i].as_secs_f64() * 1e3,
            peer[i].as_secs_f64() * 1e3
        );
    }
    let (m_ours, m_peer) = (median(ours), median(peer));
    println!(
        "bench pull ({runs} runs, median wall time, pull + unpack of a {:.0} MB 7-layer image from a local registry)",
        size as f64 / 1e6
    );
    println!(
        "  ros image pull            {:>8.0} ms",
        m_ours.as_secs_f64() * 1e3
    );
    println!(
        "  skopeo copy + umoci unpack {:>7.0} ms",
        m_peer.as_secs_f64() * 1e3
    );
    println!(
        "  ratio ros / peer          {:>8.2}   (target <= 1.00)",
        m_ours.as_secs_f64() / m_peer.as_secs_f64()
    );
    Ok(())
}

/// Median in milliseconds.
fn ms(v: &[Duration]) -> f64 {
    median(v.to_vec()).as_secs_f64() * 1e3
}

/// Installs a Debian package for a benchmark peer when its binary is missing.
fn peer_package(pkg: &str, binary: &str) -> bool {
    if Path::new(binary).exists() {
        return true;
    }
    eprintln!("xtask: installing the peer {pkg}");
    let _ = crate::deb::apt_update_once();
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends", pkg])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok && Path::new(binary).exists()
}

/// A minimal OCI bundle: busybox's `true` with the host network, as crun and runc run it.
fn oci_bundle(dir: &Path, busybox: &Path) -> Result<()> {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin"))?;
    for d in ["proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    std::fs::copy(busybox, rootfs.join("bin/busybox"))?;
    for a in ["true", "sh"] {
        let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a));
    }
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/true"],
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"],
                "effective": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"],
                "permitted": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"]
            },
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "bench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
        }
    });
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
    Ok(())
}

fn time_runs(runs: usize, mut one: impl FnMut(usize) -> Result<()>) -> Result<Vec<Duration>> {
    let mut v = Vec::with_capacity(runs);
    // One warm-up run: page cache, first cgroup creation.
    one(usize::MAX)?;
    for i in 0..runs {
        let t = Instant::now();
        one(i)?;
        v.push(t.elapsed());
    }
    Ok(v)
}

fn ok_output(cmd: &mut Command, what: &str) -> Result<String> {
    let o = cmd.output().with_context(|| format!("running {what}"))?;
    if !o.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn rss_kb(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// `cargo xtask bench start [RUNS]`: start-to-exit latency of `/bin/true` in a busybox
/// container with the host network, ours beside crun, runc and Debian's dockerd; then the
/// system engine's RSS with 10 containers running.
pub fn start(runs: usize) -> Result<()> {
    if !is_root() {
        bail!("bench start needs root (containers)");
    }
    // crun refuses this host's hybrid cgroup layout; it runs with the cgroup2 mount hidden.
    // So the whole benchmark re-runs itself in a private mount namespace without it, and every
    // runtime is measured in the same environment.
    if std::env::var_os("PADDOCK_BENCH_NS").is_none() {
        setup()?;
        let ros = build_ros()?;
        let fx = fixtures()?;
        let me = std::env::current_exe()?;
        let st = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg("umount /sys/fs/cgroup/unified 2>/dev/null; exec \"$0\" bench start \"$1\"")
            .arg(&me)
            .arg(runs.to_string())
            .env("PADDOCK_BENCH_NS", "1")
            .env("PADDOCK_BENCH_ROS", &ros)
            .env("PADDOCK_BUSYBOX", &fx.busybox)
            .status()?;
        if !st.success() {
            bail!("bench start failed");
        }
        return Ok(());
    }
    let ros = PathBuf::from(std::env::var("PADDOCK_BENCH_ROS")?);
    let busybox = PathBuf::from(std::env::var("PADDOCK_BUSYBOX")?);
    let work = cache_dir().join("bench/start");
    let _ = Command::new("umount")
        .arg("-R")
        .arg("-l")
        .arg(&work)
        .status();
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let bundle = work.join("bundle");
    oci_bundle(&bundle, &busybox)?;

    let mut rows: Vec<(String, Option<f64>, String)> = vec![];

    // crun and runc on the same bundle.
    for (name, pkg, bin) in [
        ("crun run", "crun", "/usr/bin/crun"),
        ("runc run", "runc", "/usr/sbin/runc"),
    ] {
        if !peer_package(pkg, bin) {
            rows.push((name.into(), None, format!("{pkg} could not be installed")));
            continue;
        }
        let state = work.join(format!("{pkg}-state"));
        let r = time_runs(runs, |i| {
            ok_output(
                Command::new(bin)
                    .arg("--root")
                    .arg(&state)
                    .args(["run", "--bundle"])
                    .arg(&bundle)
                    .arg(format!("bench-{pkg}-{i}")),
                name,
            )
            .map(|_| ())
        });
        match r {
            Ok(v) => rows.push((name.into(), Some(ms(&v)), String::new())),
            Err(e) => rows.push((name.into(), None, format!("{e:#}"))),
        }
    }

    // Ours: the daemon with the busybox image loaded, driven by our small client.
    let data = work.join("data");
    let (mut daemon, host, bin) = start_engine(&work, &ros, &busybox)?;
    let sd = bin.join("system-docker");
    let result = (|| -> Result<()> {
        let v = time_runs(runs, |_| {
            ok_output(
                Command::new(&sd)
                    .args(["-H", &host, "run", "--rm", "--net", "host", "bb:1", "true"]),
                "system-docker run",
            )
            .map(|_| ())
        })?;
        rows.push((
            "ros: system-docker run --rm".into(),
            Some(ms(&v)),
            String::new(),
        ));
        if Path::new("/usr/bin/docker").exists() || which("docker") {
            let v = docker_run_times(&host, runs.min(30), "docker run against the system engine")?;
            rows.push((
                "ros: docker CLI run --rm".into(),
                Some(ms(&v)),
                "the 44 MB docker CLI as the client".into(),
            ));
        }
        // Daemon memory with 10 containers running.
        for i in 0..10 {
            ok_output(
                Command::new(&sd).args([
                    "-H",
                    &host,
                    "run",
                    "-d",
                    "--name",
                    &format!("idle{i}"),
                    "--net",
                    "host",
                    "bb:1",
                    "sleep",
                    "3600",
                ]),
                "system-docker run -d",
            )?;
        }
        std::thread::sleep(Duration::from_millis(500));
        let rss = rss_kb(daemon.id()).unwrap_or(0);
        println!(
            "system engine daemon RSS with 10 containers running: {:.1} MB (target <= 8 MB)",
            rss as f64 / 1024.0
        );
        for i in 0..10 {
            let _ = Command::new(&sd)
                .args(["-H", &host, "rm", "-f", &format!("idle{i}")])
                .output();
        }
        Ok(())
    })();
    let _ = daemon.kill();
    let _ = daemon.wait();
    result?;

    // Debian's dockerd, where it can run here.
    match docker_peer(&work, &ros, &data, runs.min(30)) {
        Ok(v) => rows.push(("dockerd: docker run --rm".into(), Some(v), String::new())),
        Err(e) => rows.push(("dockerd: docker run --rm".into(), None, format!("{e:#}"))),
    }

    let crun = rows.iter().find(|r| r.0 == "crun run").and_then(|r| r.1);
    println!("bench start ({runs} runs, median start-to-exit of /bin/true, host network)");
    for (name, v, note) in &rows {
        match (v, crun) {
            (Some(v), Some(c)) => {
                println!("  {name:<30} {v:>8.1} ms   {:>5.2}x crun  {note}", v / c)
            }
            (Some(v), None) => println!("  {name:<30} {v:>8.1} ms   {note}"),
            (None, _) => println!("  {name:<30}      n/a   {note}"),
        }
    }
    println!("  target: ros <= 1.2x crun");
    let _ = Command::new("umount")
        .arg("-R")
        .arg("-l")
        .arg(&work)
        .status();
    Ok(())
}

/// Starts `system-dockerd` on `work/data` with the busybox image loaded as `bb:1`; returns
/// the daemon, its host URL and the directory with the multi-call links.
fn start_engine(
    work: &Path,
    ros: &Path,
    busybox: &Path,
) -> Result<(std::process::Child, String, PathBuf)> {
    let data = work.join("data");
    let layout = work.join("layout");
    let mut l = Layout::create(&layout)?;
    let layers = testkit::busybox_layers(busybox, Compression::Zstd)?;
    let desc = l.image(&layers, "amd64", &["sh"])?;
    l.tag(desc, "docker.io/library/bb:1")?;
    ok_output(
        Command::new(ros)
            .arg("--data-root")
            .arg(&data)
            .args(["image", "load", "-i"])
            .arg(&layout),
        "ros image load",
    )?;
    let bin = work.join("bin");
    std::fs::create_dir_all(&bin)?;
    for n in ["system-dockerd", "system-docker"] {
        let _ = std::fs::remove_file(bin.join(n));
        std::os::unix::fs::symlink(ros, bin.join(n))?;
    }
    let sock = work.join("engine.sock");
    let host = format!("unix://{}", sock.display());
    let daemon = Command::new(bin.join("system-dockerd"))
        .arg("--data-root")
        .arg(&data)
        .args(["-H", &host])
        .stderr(std::fs::File::create(work.join("daemon.log"))?)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        if Instant::now() > deadline {
            bail!(
                "system-dockerd did not start; see {}",
                work.join("daemon.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((daemon, host, bin))
}

/// `cargo xtask bench reconcile [N]`: N system services are up; one service's environment
/// changes; `ros service up` must recreate exactly that one, quickly.
pub fn reconcile(n: usize) -> Result<()> {
    if !is_root() {
        bail!("bench reconcile needs root (containers)");
    }
    setup()?;
    let ros = build_ros()?;
    let fx = fixtures()?;
    let work = cache_dir().join("bench/reconcile");
    let _ = Command::new("umount")
        .arg("-R")
        .arg("-l")
        .arg(&work)
        .status();
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let (mut daemon, host, _bin) = start_engine(&work, &ros, &fx.busybox)?;
    let root = work.join("root");
    let conf = root.join("var/lib/rancher/conf");
    std::fs::create_dir_all(&conf)?;
    let config = |changed: Option<usize>| {
        let mut s = String::from("#cloud-config\nrancher:\n  services:\n");
        for i in 0..n {
            let v = if changed == Some(i) { "changed" } else { "v1" };
            s.push_str(&format!(
                "    svc{i:03}:\n      image: bb:1\n      command: [sh, -c, 'trap \"exit 0\" TERM; sleep 1000 & wait']\n      environment: [VERSION={v}]\n      labels: {{io.rancher.os.scope: system}}\n"
            ));
        }
        s
    };
    let ros_service = |args: &[&str]| -> Result<String> {
        ok_output(
            Command::new(&ros)
                .arg("--root")
                .arg(&root)
                .args(["service", "-H", &host])
                .args(args),
            "ros service",
        )
    };
    let ids = || -> Result<std::collections::BTreeMap<String, String>> {
        let v: serde_json::Value =
            serde_json::from_str(&ros_service(&["ps", "--format", "json"])?)?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .map(|r| {
                        (
                            r["service"].as_str().unwrap_or("").to_owned(),
                            r["id"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    };
    let result = (|| -> Result<()> {
        std::fs::write(conf.join("cloud-config.yml"), config(None))?;
        let t = Instant::now();
        ros_service(&["up"])?;
        let first = t.elapsed();
        let before = ids()?;
        if before.len() != n {
            bail!("{} of {n} services came up", before.len());
        }
        let t = Instant::now();
        ros_service(&["up"])?;
        let noop = t.elapsed();
        std::fs::write(conf.join("cloud-config.yml"), config(Some(n / 2)))?;
        let t = Instant::now();
        ros_service(&["up"])?;
        let one = t.elapsed();
        let after = ids()?;
        let recreated = before
            .iter()
            .filter(|(k, v)| after.get(*k) != Some(*v))
            .count();
        println!("bench reconcile ({n} system services)");
        println!(
            "  first up (create + start {n})   {:>8.0} ms",
            first.as_secs_f64() * 1e3
        );
        println!(
            "  up with nothing changed        {:>8.0} ms",
            noop.as_secs_f64() * 1e3
        );
        println!(
            "  up with one service changed    {:>8.0} ms   (target <= 1000 ms)",
            one.as_secs_f64() * 1e3
        );
        println!("  containers recreated           {recreated:>8}      (target exactly 1)");
        Ok(())
    })();
    let _ = Command::new(&ros)
        .arg("--root")
        .arg(&root)
        .args(["service", "-H", &host, "rm", "-f"])
        .args((0..n).map(|i| format!("svc{i:03}")))
        .output();
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = Command::new("umount")
        .arg("-R")
        .arg("-l")
        .arg(&work)
        .status();
    result
}

/// Times `docker -H host run --rm --network host bb:1 true`.
fn docker_run_times(host: &str, runs: usize, what: &str) -> Result<Vec<Duration>> {
    time_runs(runs, |_| {
        ok_output(
            Command::new("docker").args([
                "-H",
                host,
                "run",
                "--rm",
                "--network",
                "host",
                "bb:1",
                "true",
            ]),
            what,
        )
        .map(|_| ())
    })
}

fn which(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Times `docker run --rm` against a private Debian dockerd (installed if missing).
fn docker_peer(work: &Path, ros: &Path, data: &Path, runs: usize) -> Result<f64> {
    if !peer_package("docker.io", "/usr/sbin/dockerd") {
        bail!("docker.io could not be installed");
    }
    let dir = work.join("dockerd");
    std::fs::create_dir_all(&dir)?;
    let sock = dir.join("docker.sock");
    let host = format!("unix://{}", sock.display());
    let mut d = Command::new("/usr/sbin/dockerd")
        .arg("--data-root")
        .arg(dir.join("root"))
        .arg("--exec-root")
        .arg(dir.join("exec"))
        .arg("--pidfile")
        .arg(dir.join("pid"))
        .args([
            "-H",
            &host,
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("dockerd.log"))?)
        .spawn()?;
    let result = (|| -> Result<f64> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !Command::new("docker")
            .args(["-H", &host, "version"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
        {
            if Instant::now() > deadline || d.try_wait()?.is_some() {
                bail!(
                    "dockerd did not start; see {}",
                    dir.join("dockerd.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let tar = dir.join("bb.tar");
        ok_output(
            Command::new(ros)
                .arg("--data-root")
                .arg(data)
                .args(["image", "save", "-o"])
                .arg(&tar)
                .arg("bb:1"),
            "ros image save",
        )?;
        ok_output(
            Command::new("docker")
                .args(["-H", &host, "load", "-i"])
                .arg(&tar),
            "docker load",
        )?;
        let v = docker_run_times(&host, runs, "docker run against dockerd")?;
        Ok(ms(&v))
    })();
    let _ = d.kill();
    let _ = d.wait();
    result
}
