//! The image store against real parts: Debian's docker-registry on 127.0.0.1 (anonymous,
//! htpasswd basic auth, bearer tokens), skopeo to seed it and to read what we write, the real
//! kernel's overlayfs to stack the layers we unpacked, and the `ros` binary as users run it.
//!
//! Root only (device nodes, owners, overlay mounts): `cargo xtask test` runs them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

use paddock::image::Store;
use testkit::registry::{Auth, Registry};

fn ros(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ros"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "ros failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fail(out: Output) -> String {
    assert!(
        !out.status.success(),
        "ros succeeded unexpectedly: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

/// A registry seeded with the busybox test image (multi-arch `latest`, and `amd64`).
struct Seeded {
    tmp: tempfile::TempDir,
    reg: Registry,
    amd64_digest: String,
}

fn seeded(auth: Auth) -> Seeded {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let amd64_digest = testkit::busybox_layout(&testkit::busybox().unwrap(), &layout).unwrap();
    let reg = Registry::start(&tmp.path().join("registry"), auth).unwrap();
    let dest = format!("docker://{}/paddock/busybox", reg.addr);
    let mut creds = vec![];
    let c;
    if let Some(cr) = reg.creds() {
        c = format!("--dest-creds={cr}");
        creds.push(c.as_str());
    }
    let mut all = creds.clone();
    all.push("--all");
    testkit::skopeo_copy(
        &format!("oci:{}:latest", layout.display()),
        &format!("{dest}:latest"),
        &all,
    )
    .unwrap();
    testkit::skopeo_copy(
        &format!("oci:{}:amd64", layout.display()),
        &format!("{dest}:amd64"),
        &creds,
    )
    .unwrap();
    Seeded {
        tmp,
        reg,
        amd64_digest,
    }
}

fn store(root: &Path) -> Store {
    Store::at(root.join("var/lib/system-docker/image")).unwrap()
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
#[ignore = "needs root and the test tools: run `cargo xtask test`"]
fn pull_multiarch_unpacks_layers_and_overlay_stacks_them() {
    let s = seeded(Auth::Anonymous);
    let root = s.tmp.path().join("root");
    let image = format!("{}/paddock/busybox:latest", s.reg.addr);
    let out = ros(&root, &["image", "pull", &image]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = ok(out);
    assert!(
        stdout.contains(&s.amd64_digest),
        "the index did not resolve to the amd64 manifest: {stdout}"
    );
    assert!(
        stderr.contains("Pull complete"),
        "no progress shown: {stderr}"
    );

    let st = store(&root);
    let img = st.find(&image).unwrap();
    assert_eq!(img.manifest_digest.as_str(), s.amd64_digest);
    assert_eq!(img.config.architecture, "amd64");
    let dirs = st.layer_dirs(&img);
    assert_eq!(dirs.len(), 2);
    let (l1, l2) = (&dirs[0], &dirs[1]);

    // Layer 1 (gzip): files, modes, symlinks.
    assert_eq!(mode(&l1.join("bin/busybox")), 0o755);
    assert_eq!(
        fs::read_link(l1.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(mode(&l1.join("tmp")), 0o1777);
    // Layer 2 (zstd): whiteouts as overlayfs wants them, owners, modes, links, devices, xattrs.
    let wh = fs::symlink_metadata(l2.join("etc/motd")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "etc/.wh.motd is not a 0/0 char device"
    );
    assert!(!l2.join("etc/.wh.motd").exists());
    assert_eq!(
        xattr::get(l2.join("opt/old"), "trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    let owned = fs::metadata(l2.join("data/owned")).unwrap();
    assert_eq!(
        (
            owned.uid(),
            owned.gid(),
            owned.permissions().mode() & 0o7777
        ),
        (1100, 1100, 0o640)
    );
    assert_eq!(
        xattr::get(l2.join("data/owned"), "user.paddock")
            .unwrap()
            .as_deref(),
        Some(&b"yes"[..])
    );
    assert_eq!(mode(&l2.join("data/setuid")), 0o4755);
    assert_eq!(
        fs::metadata(l2.join("data/hardlink")).unwrap().ino(),
        owned.ino()
    );
    assert!(
        fs::symlink_metadata(l2.join("data/fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    let null = fs::symlink_metadata(l2.join("data/null")).unwrap();
    assert!(null.file_type().is_char_device() && null.rdev() == nix::sys::stat::makedev(1, 3));

    // The kernel stacks them: the whiteout and the opaque directory hide layer 1's files, and
    // busybox runs from the merged tree.
    let merged = s.tmp.path().join("merged");
    let work = s.tmp.path().join("work");
    let upper = s.tmp.path().join("upper");
    for d in [&merged, &work, &upper] {
        fs::create_dir_all(d).unwrap();
    }
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        l2.display(),
        l1.display(),
        upper.display(),
        work.display()
    );
    let mounted = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&merged)
        .status()
        .unwrap();
    assert!(mounted.success(), "overlay mount failed");
    let result = std::panic::catch_unwind(|| {
        assert!(
            !merged.join("etc/motd").exists(),
            "whiteout did not hide etc/motd"
        );
        assert!(
            !merged.join("opt/old/gone.txt").exists(),
            "opaque dir did not hide gone.txt"
        );
        assert_eq!(
            fs::read(merged.join("opt/old/new.txt")).unwrap(),
            b"written by layer 2\n"
        );
        assert!(merged.join("etc/passwd").exists());
        let out = Command::new("chroot")
            .arg(&merged)
            .args(["/bin/sh", "-c", "echo hello from $(id -u)"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from 0\n");
    });
    let _ = Command::new("umount").arg(&merged).status();
    result.unwrap();

    // Flattening gives the same view without overlayfs.
    let flat = s.tmp.path().join("flat");
    st.flatten(&img, &flat).unwrap();
    assert!(!flat.join("etc/motd").exists() && !flat.join("opt/old/gone.txt").exists());
    assert!(flat.join("opt/old/new.txt").exists() && flat.join("bin/busybox").exists());

    // A second pull finds everything present.
    let out = ros(&root, &["image", "pull", &image]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("Already exists"));
    ok(out);
}

#[test]
#[ignore = "needs root and the test tools: run `cargo xtask test`"]
fn pull_by_digest_list_json_tag_and_remove() {
    let s = seeded(Auth::Anonymous);
    let root = s.tmp.path().join("root");
    let repo = format!("{}/paddock/busybox", s.reg.addr);
    ok(ros(
        &root,
        &["image", "pull", "-q", &format!("{repo}@{}", s.amd64_digest)],
    ));
    ok(ros(
        &root,
        &["image", "pull", "-q", &format!("{repo}:amd64")],
    ));
    // Tag and by-digest name point at the same image: one id.
    let json = ok(ros(&root, &["image", "ls", "--format", "json"]));
    let rows: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{json}");
    assert_eq!(rows[0]["ID"], rows[1]["ID"]);
    assert!(rows.iter().any(|r| r["Tag"] == "amd64"));

    // A digest the registry does not have.
    let missing = format!("{repo}@sha256:{}", "0".repeat(64));
    let err = fail(ros(&root, &["image", "pull", &missing]));
    assert!(
        err.contains("not found") && err.contains("MANIFEST_UNKNOWN"),
        "{err}"
    );

    // Tag, inspect, untag, delete; layers go only with the last image using them.
    ok(ros(
        &root,
        &["image", "tag", &format!("{repo}:amd64"), "paddock/copy:v1"],
    ));
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(ros(&root, &["image", "inspect", "paddock/copy:v1"]))).unwrap();
    assert_eq!(inspect[0]["ManifestDigest"], s.amd64_digest);
    assert_eq!(inspect[0]["Layers"].as_array().unwrap().len(), 2);
    let out = ok(ros(&root, &["image", "rm", "paddock/copy:v1"]));
    assert!(
        out.contains("Untagged: paddock/copy:v1") && !out.contains("Deleted"),
        "{out}"
    );
    let id = rows[0]["ID"].as_str().unwrap().to_owned();
    let out = ok(ros(&root, &["image", "rm", &id]));
    assert!(out.contains("Deleted: sha256:"), "{out}");
    let st = store(&root);
    assert!(st.list().unwrap().is_empty());
    assert_eq!(
        fs::read_dir(st.dir().join("layers")).unwrap().count(),
        0,
        "layers left after rm"
    );
    assert_eq!(
        fs::read_dir(st.dir().join("blobs/sha256")).unwrap().count(),
        0,
        "blobs left after rm"
    );
    let err = fail(ros(&root, &["image", "inspect", "paddock/copy:v1"]));
    assert!(err.contains("no such image: paddock/copy:v1"), "{err}");
}

fn auth_cases(auth: Auth, kind: &str) {
    let s = seeded(auth);
    let root = s.tmp.path().join("root");
    let image = format!("{}/paddock/busybox:amd64", s.reg.addr);
    let err = fail(ros(&root, &["image", "pull", &image]));
    assert!(
        err.contains("authentication failed"),
        "{kind} without credentials: {err}"
    );
    let err = fail(ros(
        &root,
        &["image", "pull", "--creds", "paddock:wrong", &image],
    ));
    assert!(
        err.contains("authentication failed"),
        "{kind} with a wrong password: {err}"
    );
    assert!(store(&root).list().unwrap().is_empty());
    ok(ros(
        &root,
        &["image", "pull", "--creds", "paddock:s3cret", &image],
    ));
    // RancherOS's registry_auths shape: {"registry": {"auth": base64(user:pass)}}.
    let auth_file = s.tmp.path().join("auths.json");
    fs::write(
        &auth_file,
        format!(
            r#"{{"{}": {{"auth": "cGFkZG9jazpzM2NyZXQ="}}}}"#,
            s.reg.addr
        ),
    )
    .unwrap();
    let root2 = s.tmp.path().join("root2");
    ok(ros(
        &root2,
        &[
            "image",
            "pull",
            "--auth-file",
            auth_file.to_str().unwrap(),
            &image,
        ],
    ));
    assert_eq!(store(&root2).list().unwrap().len(), 1);
}

#[test]
#[ignore = "needs root and the test tools: run `cargo xtask test`"]
fn basic_auth_registry() {
    auth_cases(
        Auth::Basic {
            user: "paddock".into(),
            password: "s3cret".into(),
        },
        "basic",
    );
}

#[test]
#[ignore = "needs root and the test tools: run `cargo xtask test`"]
fn token_auth_registry() {
    auth_cases(
        Auth::Token {
            user: "paddock".into(),
            password: "s3cret".into(),
        },
        "token",
    );
}

#[test]
#[ignore = "needs root and the test tools: run `cargo xtask test`"]
fn load_skopeo_docker_archive_and_round_trip_both_formats() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    testkit::busybox_layout(&testkit::busybox().unwrap(), &layout).unwrap();
    let archive = tmp.path().join("skopeo.tar");
    testkit::skopeo_copy(
        &format!("oci:{}:gzip", layout.display()),
        &format!("docker-archive:{}:paddock/bb:v1", archive.display()),
        &[],
    )
    .unwrap();

    let a = tmp.path().join("a");
    let out = ok(ros(&a, &["image", "load", "-i", archive.to_str().unwrap()]));
    assert_eq!(out, "Loaded image: paddock/bb:v1\n");
    let img = store(&a).find("paddock/bb:v1").unwrap();
    let dirs = store(&a).layer_dirs(&img);
    assert!(dirs[0].join("bin/busybox").is_file());
    assert!(
        fs::symlink_metadata(dirs[1].join("etc/motd"))
            .unwrap()
            .file_type()
            .is_char_device()
    );

    for (format, transport) in [
        ("docker-archive", "docker-archive"),
        ("oci-archive", "oci-archive"),
    ] {
        let saved = tmp.path().join(format!("saved-{format}.tar"));
        ok(ros(
            &a,
            &[
                "image",
                "save",
                "--format",
                format,
                "-o",
                saved.to_str().unwrap(),
                "paddock/bb:v1",
            ],
        ));
        // The real peer reads what we wrote.
        let inspect = Command::new("skopeo")
            .arg("inspect")
            .arg(format!("{transport}:{}", saved.display()))
            .output()
            .unwrap();
        assert!(
            inspect.status.success(),
            "skopeo cannot read our {format}: {}",
            String::from_utf8_lossy(&inspect.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
        assert_eq!(v["Layers"].as_array().unwrap().len(), 2, "{format}");
        // And we read it back into a fresh store: same image id, same layers.
        let b = tmp.path().join(format!("b-{format}"));
        let out = ok(ros(&b, &["image", "load", "-i", saved.to_str().unwrap()]));
        assert_eq!(out, "Loaded image: paddock/bb:v1\n", "{format}");
        let back = store(&b).find("paddock/bb:v1").unwrap();
        assert_eq!(
            back.id, img.id,
            "{format}: image id changed in the round trip"
        );
        assert_eq!(back.config.rootfs.diff_ids, img.config.rootfs.diff_ids);
    }
    // Loading from stdin, renaming with --tag.
    let c = tmp.path().join("c");
    let out = Command::new(env!("CARGO_BIN_EXE_ros"))
        .arg("--root")
        .arg(&c)
        .args(["image", "load", "--tag", "renamed:1"])
        .stdin(fs::File::open(&archive).unwrap())
        .output()
        .unwrap();
    assert_eq!(ok(out), "Loaded image: renamed:1\n");
}

#[test]
#[ignore = "needs root and the test tools: run `cargo xtask test`"]
fn corrupted_blob_aborts_the_pull_and_prune_leaves_nothing() {
    let s = seeded(Auth::Anonymous);
    let root = s.tmp.path().join("root");
    // Find the zstd layer's digest and flip bytes in the registry's copy of it.
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(
            s.tmp
                .path()
                .join("layout/blobs/sha256")
                .join(&s.amd64_digest["sha256:".len()..]),
        )
        .unwrap(),
    )
    .unwrap();
    let layer = manifest["layers"][1]["digest"].as_str().unwrap();
    let data = s.reg.blob_data(layer);
    let mut bytes = fs::read(&data).unwrap();
    let n = bytes.len();
    for b in &mut bytes[n - 64..n - 8] {
        *b ^= 0x5a;
    }
    fs::write(&data, bytes).unwrap();

    let err = fail(ros(
        &root,
        &[
            "image",
            "pull",
            &format!("{}/paddock/busybox:amd64", s.reg.addr),
        ],
    ));
    assert!(
        err.contains(layer)
            && (err.contains("mismatch") || err.contains("zstd") || err.contains("reading")),
        "{err}"
    );
    let st = store(&root);
    assert!(st.list().unwrap().is_empty(), "a half image is visible");
    let out = ok(ros(&root, &["image", "prune"]));
    assert!(out.contains("Total reclaimed space"), "{out}");
    for sub in ["blobs/sha256", "layers", "tmp"] {
        assert_eq!(
            fs::read_dir(st.dir().join(sub)).unwrap().count(),
            0,
            "{sub} not empty after prune"
        );
    }
}
