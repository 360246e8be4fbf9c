//! Layers are hostile input: every escape trick is refused with an error naming the entry, and
//! nothing appears, changes or is followed outside the store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::PathBuf;

use paddock::image::archive;
use paddock::image::progress::Silent;
use paddock::image::store::Store;
use testkit::layout::{Compression, Entry, Layer, Layout, compress};

/// A sandbox: `outside/` holds a sentinel file the layer tries to reach; the store lives in
/// `store/`, the OCI layout in `layout/`.
struct Sandbox {
    _tmp: tempfile::TempDir,
    base: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_path_buf();
        fs::create_dir_all(base.join("outside")).unwrap();
        fs::write(base.join("outside/sentinel"), b"untouched").unwrap();
        Sandbox { _tmp: tmp, base }
    }

    fn store(&self) -> Store {
        Store::at(self.base.join("store/image")).unwrap()
    }

    /// Loads an image made of `layers` and returns the error text (or "ok").
    fn load(&self, layers: Vec<Layer>) -> String {
        let dir = self.base.join("layout");
        let _ = fs::remove_dir_all(&dir);
        let mut l = Layout::create(&dir).unwrap();
        let d = l.image(&layers, "amd64", &["sh"]).unwrap();
        l.tag(d, "docker.io/library/hostile:1").unwrap();
        match archive::load_dir(&self.store(), &dir, None, &Silent) {
            Ok(_) => "ok".into(),
            Err(e) => format!("{e:#}"),
        }
    }

    /// Nothing outside the store and the layout changed, and after prune the store holds nothing.
    fn assert_contained(&self) {
        let mut top: Vec<String> = fs::read_dir(&self.base)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        top.sort();
        assert_eq!(
            top,
            ["layout", "outside", "store"],
            "something was created next to the store"
        );
        let outside: Vec<_> = fs::read_dir(self.base.join("outside")).unwrap().collect();
        assert_eq!(outside.len(), 1, "a file appeared in outside/");
        assert_eq!(
            fs::read(self.base.join("outside/sentinel")).unwrap(),
            b"untouched"
        );
        assert!(
            fs::symlink_metadata("/pwned").is_err(),
            "a file was written at /pwned"
        );
        let store = self.store();
        store.prune().unwrap();
        assert!(store.list().unwrap().is_empty());
        for sub in ["blobs/sha256", "layers", "tmp"] {
            let n = fs::read_dir(store.dir().join(sub)).unwrap().count();
            assert_eq!(n, 0, "{sub} not empty after prune");
        }
    }
}

fn gz(entries: &[Entry]) -> Vec<Layer> {
    vec![Layer::new(entries, Compression::Gzip).unwrap()]
}

fn outside_abs(sb: &Sandbox) -> String {
    sb.base.join("outside").display().to_string()
}

#[test]
fn dotdot_paths_are_refused() {
    let sb = Sandbox::new();
    let depth = "../".repeat(12);
    for path in [
        "../outside/sentinel".to_owned(),
        format!("{depth}pwned"),
        "a/../../outside/x".to_owned(),
    ] {
        let err = sb.load(gz(&[Entry::file(&path, 0o644, b"pwned")]));
        assert!(
            err.contains("refused") && err.contains("'..'"),
            "{path}: {err}"
        );
        assert!(
            err.contains(&path),
            "error does not name the entry {path}: {err}"
        );
    }
    sb.assert_contained();
}

#[test]
fn absolute_paths_are_neutralised_inside_the_layer() {
    let sb = Sandbox::new();
    let err = sb.load(gz(&[Entry::file("/pwned", 0o644, b"inside")]));
    assert_eq!(err, "ok");
    let store = sb.store();
    let img = store.find("hostile:1").unwrap();
    let dir = &store.layer_dirs(&img)[0];
    assert_eq!(fs::read(dir.join("pwned")).unwrap(), b"inside");
    store.remove("hostile:1").unwrap();
    sb.assert_contained();
}

#[test]
fn writing_through_a_symlink_is_refused() {
    let sb = Sandbox::new();
    let out = outside_abs(&sb);
    for (link_target, name) in [
        (out.as_str(), "abs"),
        ("../../../../../../../../tmp", "rel"),
        (".", "dot"),
    ] {
        let err = sb.load(gz(&[
            Entry::symlink("link", link_target),
            Entry::file("link/sentinel", 0o644, b"pwned"),
        ]));
        assert!(
            err.contains("link/sentinel") && err.contains("symlink \"link\""),
            "{name}: {err}"
        );
    }
    // Deeper: a directory, then a symlink inside it, then a write through both.
    let err = sb.load(gz(&[
        Entry::dir("d"),
        Entry::symlink("d/l", &out),
        Entry::file("d/l/x", 0o644, b"pwned"),
    ]));
    assert!(
        err.contains("d/l/x") && err.contains("symlink \"d/l\""),
        "{err}"
    );
    sb.assert_contained();
}

#[test]
fn a_file_replaces_a_symlink_instead_of_following_it() {
    let sb = Sandbox::new();
    let target = format!("{}/sentinel", outside_abs(&sb));
    let err = sb.load(gz(&[
        Entry::symlink("s", &target),
        Entry::file("s", 0o600, b"replaced"),
    ]));
    assert_eq!(err, "ok");
    let store = sb.store();
    let img = store.find("hostile:1").unwrap();
    let p = store.layer_dirs(&img)[0].join("s");
    assert!(fs::symlink_metadata(&p).unwrap().is_file());
    assert_eq!(fs::read(&p).unwrap(), b"replaced");
    store.remove("hostile:1").unwrap();
    sb.assert_contained();
}

#[test]
fn hardlinks_outside_the_layer_are_refused() {
    let sb = Sandbox::new();
    let err = sb.load(gz(&[Entry::hardlink("h", "../outside/sentinel")]));
    assert!(err.contains("\"h\"") && err.contains("'..'"), "{err}");
    // An absolute target is made relative, so it names a file that is not in the layer.
    let err = sb.load(gz(&[Entry::hardlink("h", "/etc/passwd")]));
    assert!(err.contains("not in this layer"), "{err}");
    // Through a symlink to outside.
    let out = outside_abs(&sb);
    let err = sb.load(gz(&[
        Entry::symlink("l", &out),
        Entry::hardlink("h", "l/sentinel"),
    ]));
    assert!(err.contains("symlink \"l\""), "{err}");
    sb.assert_contained();
}

#[test]
fn a_hardlink_to_a_symlink_links_the_symlink_itself() {
    let sb = Sandbox::new();
    let target = format!("{}/sentinel", outside_abs(&sb));
    let err = sb.load(gz(&[
        Entry::symlink("l", &target),
        Entry::hardlink("h", "l"),
    ]));
    assert_eq!(err, "ok");
    let store = sb.store();
    let img = store.find("hostile:1").unwrap();
    let h = store.layer_dirs(&img)[0].join("h");
    assert!(fs::symlink_metadata(&h).unwrap().file_type().is_symlink());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(sb.base.join("outside/sentinel"))
            .unwrap()
            .nlink(),
        1,
        "the outside file gained a link"
    );
    store.remove("hostile:1").unwrap();
    sb.assert_contained();
}

#[test]
fn bad_whiteouts_and_overlay_xattrs_are_refused_or_dropped() {
    let sb = Sandbox::new();
    let err = sb.load(gz(&[Entry::file(".wh..", 0o644, b"")]));
    assert!(err.contains("whiteout") && err.contains(".wh.."), "{err}");
    let err = sb.load(gz(&[Entry::File {
        path: "f".into(),
        mode: 0o644,
        uid: 0,
        gid: 0,
        data: b"x".to_vec(),
        xattrs: vec![("trusted.overlay.redirect".into(), b"/etc".to_vec())],
    }]));
    assert_eq!(err, "ok");
    let store = sb.store();
    let img = store.find("hostile:1").unwrap();
    let f = store.layer_dirs(&img)[0].join("f");
    assert!(
        xattr::get(&f, "trusted.overlay.redirect")
            .unwrap()
            .is_none(),
        "overlay xattr was applied"
    );
    store.remove("hostile:1").unwrap();
    sb.assert_contained();
}

#[test]
fn truncated_gzip_and_wrong_digests_are_refused() {
    let sb = Sandbox::new();
    // A truncated gzip layer, with manifest digest and size describing the truncated bytes.
    let dir = sb.base.join("layout");
    let mut l = Layout::create(&dir).unwrap();
    let good =
        testkit::layout::tar_bytes(&[Entry::file("a", 0o644, &testkit::layout::noise(100_000, 1))])
            .unwrap();
    let gzipped = compress(&good, Compression::Gzip).unwrap();
    let truncated = &gzipped[..gzipped.len() / 2];
    let manifest = write_manual_image(&mut l, truncated, &testkit::layout::sha256(&good));
    l.tag(manifest, "docker.io/library/hostile:1").unwrap();
    let err = format!(
        "{:#}",
        archive::load_dir(&sb.store(), &dir, None, &Silent).unwrap_err()
    );
    assert!(
        err.contains("layer sha256:")
            && (err.contains("end of file") || err.contains("incomplete")),
        "{err}"
    );

    // A blob whose bytes do not match the digest the manifest gives.
    let _ = fs::remove_dir_all(&dir);
    let mut l = Layout::create(&dir).unwrap();
    let manifest = write_manual_image(&mut l, &gzipped, &testkit::layout::sha256(&good));
    let layer_digest = testkit::layout::sha256(&gzipped);
    let blob = dir
        .join("blobs/sha256")
        .join(&layer_digest["sha256:".len()..]);
    let mut bytes = fs::read(&blob).unwrap();
    let last = bytes.len() - 20;
    bytes[last] ^= 0xff;
    fs::write(&blob, bytes).unwrap();
    l.tag(manifest, "docker.io/library/hostile:1").unwrap();
    let err = format!(
        "{:#}",
        archive::load_dir(&sb.store(), &dir, None, &Silent).unwrap_err()
    );
    assert!(
        err.contains("mismatch") || err.contains("corrupt") || err.contains("invalid"),
        "{err}"
    );
    assert!(
        sb.store().list().unwrap().is_empty(),
        "a half image is visible"
    );
    sb.assert_contained();
}

/// Writes config + manifest for one layer blob given as bytes with an explicit diff id.
fn write_manual_image(l: &mut Layout, blob: &[u8], diff_id: &str) -> serde_json::Value {
    l.blob(blob).unwrap();
    let config = serde_json::json!({"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[diff_id]},"config":{}});
    let cb = serde_json::to_vec(&config).unwrap();
    l.blob(&cb).unwrap();
    let m = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": testkit::layout::descriptor("application/vnd.oci.image.config.v1+json", &cb),
        "layers": [testkit::layout::descriptor("application/vnd.oci.image.layer.v1.tar+gzip", blob)],
    });
    let mb = serde_json::to_vec(&m).unwrap();
    l.blob(&mb).unwrap();
    testkit::layout::descriptor("application/vnd.oci.image.manifest.v1+json", &mb)
}

#[test]
fn hostile_archives_are_refused_too() {
    let sb = Sandbox::new();
    // A docker archive whose manifest.json points a layer at a symlink to a host file.
    let arch = sb.base.join("layout");
    fs::create_dir_all(&arch).unwrap();
    let entries = vec![
        Entry::file(
            "manifest.json",
            0o644,
            br#"[{"Config":"c.json","RepoTags":["x:1"],"Layers":["evil/layer.tar"]}]"#,
        ),
        Entry::file(
            "c.json",
            0o644,
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        ),
        Entry::symlink("evil", "/etc"),
    ];
    let tar = testkit::layout::tar_bytes(&entries).unwrap();
    let p = arch.join("evil.tar");
    fs::write(&p, tar).unwrap();
    let err = format!(
        "{:#}",
        archive::load(&sb.store(), &p, None, &Silent).unwrap_err()
    );
    assert!(
        err.contains("symlink") && err.contains("evil/layer.tar"),
        "{err}"
    );
    // An archive entry climbing out of the scratch directory.
    let tar =
        testkit::layout::tar_bytes(&[Entry::file("../../../outside/sentinel", 0o644, b"pwned")])
            .unwrap();
    fs::write(&p, tar).unwrap();
    let err = format!(
        "{:#}",
        archive::load(&sb.store(), &p, None, &Silent).unwrap_err()
    );
    assert!(
        err.contains("refused") && err.contains("../../../outside/sentinel"),
        "{err}"
    );
    fs::remove_file(&p).unwrap();
    sb.assert_contained();
}
