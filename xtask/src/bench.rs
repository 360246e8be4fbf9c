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
        _ => bail!("usage: cargo xtask bench pull [RUNS]"),
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
