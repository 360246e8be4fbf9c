//! Test and benchmark harness for Paddock: a real `docker-registry` (anonymous, basic or token
//! auth) on 127.0.0.1, `skopeo` to seed it, OCI layouts built from Debian's busybox-static, and
//! hostile layers. Used by the integration tests and by `cargo xtask`; never shipped.

pub mod layout;
pub mod registry;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use layout::{Compression, Entry, Layer, Layout};

/// The busybox-static binary `cargo xtask test` extracted from Debian's package.
pub fn busybox() -> Result<PathBuf> {
    let p = std::env::var_os("PADDOCK_BUSYBOX")
        .map(PathBuf::from)
        .context("PADDOCK_BUSYBOX is not set: run the tests through `cargo xtask test`")?;
    if !p.is_file() {
        bail!("PADDOCK_BUSYBOX={} does not exist", p.display());
    }
    Ok(p)
}

/// The two layers of the test busybox image.
///
/// Layer 1 (gzip): busybox, applet symlinks, /etc, a file and a directory that layer 2 hides.
/// Layer 2 (`second`, zstd in the registry tests): a whiteout of /etc/motd, an opaque /opt/old, odd modes and owners, a
/// hardlink, a fifo, a device node and an xattr.
pub fn busybox_layers(busybox: &Path, second: Compression) -> Result<Vec<Layer>> {
    let bb = std::fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    let mut l1 = vec![
        Entry::dir("bin"),
        Entry::file("bin/busybox", 0o755, &bb),
        Entry::dir("etc"),
        Entry::file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\nrancher:x:1100:1100::/home/rancher:/bin/sh\n",
        ),
        Entry::file("etc/group", 0o644, b"root:x:0:\nrancher:x:1100:\n"),
        Entry::file("etc/motd", 0o644, b"hidden by a whiteout\n"),
        Entry::dir("opt"),
        Entry::dir("opt/old"),
        Entry::file("opt/old/gone.txt", 0o644, b"hidden by an opaque dir\n"),
        Entry::Dir {
            path: "tmp".into(),
            mode: 0o1777,
        },
        Entry::dir("root"),
    ];
    for applet in [
        "sh", "echo", "ls", "cat", "true", "false", "sleep", "id", "env", "stat", "httpd",
        "readlink", "tr", "grep", "pwd", "tty", "stty", "mkdir", "rm", "wc", "head", "touch", "ps",
        "kill", "hostname", "mount",
    ] {
        l1.push(Entry::symlink(&format!("bin/{applet}"), "busybox"));
    }
    let l2 = vec![
        Entry::file("etc/.wh.motd", 0o644, b""),
        Entry::dir("opt/old"),
        Entry::file("opt/old/.wh..wh..opq", 0o644, b""),
        Entry::file("opt/old/new.txt", 0o644, b"written by layer 2\n"),
        Entry::dir("data"),
        Entry::File {
            path: "data/owned".into(),
            mode: 0o640,
            uid: 1100,
            gid: 1100,
            data: b"owned by rancher\n".to_vec(),
            xattrs: vec![("user.paddock".into(), b"yes".to_vec())],
        },
        Entry::file("data/setuid", 0o4755, b"#!/bin/sh\n"),
        Entry::hardlink("data/hardlink", "data/owned"),
        Entry::Fifo {
            path: "data/fifo".into(),
            mode: 0o600,
        },
        Entry::Char {
            path: "data/null".into(),
            major: 1,
            minor: 3,
            mode: 0o666,
        },
    ];
    Ok(vec![
        Layer::new(&l1, Compression::Gzip)?,
        Layer::new(&l2, second)?,
    ])
}

/// Writes an OCI layout with the busybox image tagged `latest` (a linux/amd64 + linux/arm64
/// index), `amd64` (the amd64 manifest alone) and `gzip` (the same with both layers gzipped,
/// for tools that cannot write zstd into docker archives). Returns the amd64 manifest digest.
pub fn busybox_layout(busybox: &Path, dir: &Path) -> Result<String> {
    let mut layout = Layout::create(dir)?;
    let amd64 = layout.image(
        &busybox_layers(busybox, Compression::Zstd)?,
        "amd64",
        &["sh"],
    )?;
    let gzip = layout.image(
        &busybox_layers(busybox, Compression::Gzip)?,
        "amd64",
        &["sh"],
    )?;
    let arm_layer = Layer::new(
        &[Entry::file("ARM64", 0o644, b"not for this machine\n")],
        Compression::Gzip,
    )?;
    let arm64 = layout.image(&[arm_layer], "arm64", &["sh"])?;
    let digest = amd64["digest"].as_str().unwrap_or_default().to_owned();
    let index = layout.nested_index(vec![arm64, amd64.clone()])?;
    layout.tag(index, "latest")?;
    layout.tag(amd64, "amd64")?;
    layout.tag(gzip, "gzip")?;
    Ok(digest)
}

/// `skopeo copy` with TLS verification off for the loopback test registry.
pub fn skopeo_copy(src: &str, dst: &str, extra: &[&str]) -> Result<()> {
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ])
        .args(extra)
        .args([src, dst])
        .output()
        .context("running skopeo (apt-get install skopeo, or run cargo xtask setup)")?;
    if !out.status.success() {
        bail!(
            "skopeo copy {src} {dst}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
