//! Shipped image stores installed into the engine's store.
//!
//! Images reach a machine as ready image stores (unpacked layers, blobs, an index): the images
//! disk (every image), and on the ISO a second initrd archive (the system images, in RAM).
//! With a state partition, init moves or copies what the partition's store lacks into it, so
//! the images no longer hold RAM: a layer or blob the store has already (same digest, so the
//! same content) is only deleted from RAM, which makes every boot after the first cheap.
//! Without one, [`link_from`] uses the images disk in place. Images pulled into the system
//! engine earlier stay; a shipped name (say `paddock/console:0.1.0` after an OS upgrade) moves
//! to the shipped image.
//!
//! Crash safety: new layers and blobs are copied under the store's `tmp/`, synced, then renamed
//! into place, and `images.json` is written atomically last, so an interrupted install leaves
//! the old store usable (and only `tmp/` leftovers, which prune removes).

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::switchroot::{copy_dir, copy_entry};

/// What an install did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Installed {
    /// Layers and blobs copied to the store.
    pub moved: usize,
    /// Layers and blobs the store had already.
    pub reused: usize,
    /// Images (manifest digests) named in the index.
    pub images: usize,
}

fn err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// Moves `shipped` (an image store directory) into `store` (another, possibly empty or absent)
/// and removes `shipped`.
pub fn install(shipped: &Path, store: &Path) -> Result<Installed, String> {
    transfer(shipped, store, false)
}

/// Copies the store at `from` (read-only: an images disk) into `store`, adding what it lacks.
pub fn add_from(from: &Path, store: &Path) -> Result<Installed, String> {
    transfer(from, store, true)
}

/// Uses the store at `from` (a mounted images disk) in place: `store` (in RAM) gets symlinks to
/// the layers and blobs it lacks, and the index merged. The store stays a real directory, so
/// what the engine pulls later is unpacked on the RAM filesystem (overlayfs whiteouts and
/// opaque directories cannot be made through an overlay).
pub fn link_from(from: &Path, store: &Path) -> Result<Installed, String> {
    let (store_index, from_index) = prepare(from, store)?;
    let mut done = Installed::default();
    for sub in ["blobs/sha256", "layers"] {
        let Ok(rd) = fs::read_dir(from.join(sub)) else {
            continue;
        };
        for e in rd.flatten() {
            let target = store.join(sub).join(e.file_name());
            if fs::symlink_metadata(&target).is_ok() {
                done.reused += 1;
                continue;
            }
            std::os::unix::fs::symlink(e.path(), &target).map_err(|e| err(target.display(), e))?;
            done.moved += 1;
        }
    }
    done.images = write_merged_index(store, &store_index, &from_index)?;
    Ok(done)
}

/// Creates the store's directories and reads both indexes, before anything is changed.
fn prepare(from: &Path, store: &Path) -> Result<(Value, Value), String> {
    for sub in ["blobs/sha256", "layers", "tmp"] {
        let d = store.join(sub);
        fs::create_dir_all(&d).map_err(|e| err(d.display(), e))?;
    }
    Ok((
        read_index(&store.join("images.json"))?,
        read_index(&from.join("images.json"))?,
    ))
}

/// Writes the store's index with `from`'s images merged in (atomically, last); returns how
/// many images it names.
fn write_merged_index(store: &Path, store_index: &Value, from: &Value) -> Result<usize, String> {
    let index = merge_index(store_index, from);
    let bytes = serde_json::to_vec_pretty(&index).map_err(|e| err("images.json", e))?;
    crate::fsutil::write_atomic(&store.join("images.json"), &bytes, 0o644)
        .map_err(|e| err(store.join("images.json").display(), e))?;
    Ok(index
        .get("images")
        .and_then(Value::as_object)
        .map_or(0, |m| m.len()))
}

fn transfer(shipped: &Path, store: &Path, keep: bool) -> Result<Installed, String> {
    let dev = fs::metadata(shipped)
        .map_err(|e| err(shipped.display(), e))?
        .dev();
    // Everything that can refuse, before anything is copied.
    let (store_index, shipped_index) = prepare(shipped, store)?;
    let tmp = store.join("tmp");
    let mut done = Installed::default();
    // (source, staged path, final path) of what the store lacks.
    let mut missing: Vec<(PathBuf, PathBuf, PathBuf)> = vec![];
    for (sub, prefix) in [("blobs/sha256", "blob-"), ("layers", "layer-")] {
        let Ok(rd) = fs::read_dir(shipped.join(sub)) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let target = store.join(sub).join(&name);
            if target.exists() {
                done.reused += 1;
            } else {
                let stage = tmp.join(format!("{prefix}{}", name.to_string_lossy()));
                missing.push((e.path(), stage, target));
            }
        }
    }
    let (need, inodes) = missing.iter().fold((0, 0), |(b, n), (src, _, _)| {
        let (b2, n2) = usage(src);
        (b + b2, n + n2)
    });
    let vfs = nix::sys::statvfs::statvfs(store).map_err(|e| err(store.display(), e))?;
    let free = vfs.blocks_available() * vfs.fragment_size();
    if free < need + need / 10 + (8 << 20) || vfs.files_available() < inodes + inodes / 10 {
        return Err(format!(
            "{}: {} MB and {} inodes free, the images need {} MB and {} inodes",
            store.display(),
            free >> 20,
            vfs.files_available(),
            need >> 20,
            inodes
        ));
    }
    // Copied (never moved) while staging: a failure leaves the source whole for the caller.
    let remove = |p: &Path| {
        let _ = fs::remove_dir_all(p).or_else(|_| fs::remove_file(p));
    };
    let unstage = |missing: &[(PathBuf, PathBuf, PathBuf)]| {
        for (_, stage, _) in missing {
            remove(stage);
        }
    };
    let mut links = HashMap::new();
    let mut problems = vec![];
    for (src, stage, _) in &missing {
        // A leftover of an interrupted boot.
        remove(stage);
        let r = if src.is_dir() {
            fs::create_dir(stage)
                .map(|()| copy_dir(src, stage, dev, &mut links, &mut problems, true))
        } else {
            copy_entry(src, stage, dev, &mut links, &mut problems, true)
        };
        if let Some(p) = r.err().map(|e| e.to_string()).or(problems.first().cloned()) {
            unstage(&missing);
            return Err(format!("copying {}: {p}", src.display()));
        }
    }
    // Contents on disk before the names that make them visible.
    nix::unistd::sync();
    for (_, stage, target) in &missing {
        if let Err(e) = fs::rename(stage, target) {
            // What was renamed already is unnamed data, which prune removes.
            unstage(&missing);
            return Err(err(target.display(), e));
        }
        done.moved += 1;
    }
    done.images = write_merged_index(store, &store_index, &shipped_index)?;
    // Only now, with the images named in the store, does the source go.
    if !keep {
        fs::remove_dir_all(shipped).map_err(|e| err(shipped.display(), e))?;
    }
    Ok(done)
}

/// Bytes allocated below `path` (blocks, hard links counted once, 4 KiB per directory) and the
/// number of inodes it takes.
fn usage(path: &Path) -> (u64, u64) {
    fn go(p: &Path, seen: &mut std::collections::HashSet<u64>) -> (u64, u64) {
        let Ok(m) = fs::symlink_metadata(p) else {
            return (0, 0);
        };
        if m.is_dir() {
            let Ok(rd) = fs::read_dir(p) else {
                return (4096, 1);
            };
            rd.flatten().fold((4096, 1), |(b, n), e| {
                let (b2, n2) = go(&e.path(), seen);
                (b + b2, n + n2)
            })
        } else if seen.insert(m.ino()) {
            ((m.blocks() * 512).max(m.size().div_ceil(4096) * 4096), 1)
        } else {
            (0, 0)
        }
    }
    go(path, &mut std::collections::HashSet::new())
}

fn read_index(p: &Path) -> Result<Value, String> {
    match fs::read(p) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| err(p.display(), e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(serde_json::json!({"images": {}})),
        Err(e) => Err(err(p.display(), e)),
    }
}

/// The store's index with the shipped images added; a name the shipped index gives moves to
/// the shipped image.
fn merge_index(store: &Value, shipped: &Value) -> Value {
    let mut images: Map<String, Value> = store
        .get("images")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let empty = Map::new();
    let new = shipped
        .get("images")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let names_of = |v: &Value| -> Vec<Value> {
        v.get("names")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let taken: Vec<Value> = new.values().flat_map(names_of).collect();
    for (digest, entry) in images.iter_mut() {
        if new.contains_key(digest) {
            continue;
        }
        if let Some(names) = entry.get_mut("names").and_then(Value::as_array_mut) {
            names.retain(|n| !taken.contains(n));
        }
    }
    for (digest, entry) in new {
        let mut names = images.get(digest).map(names_of).unwrap_or_default();
        for n in names_of(entry) {
            if !names.contains(&n) {
                names.push(n);
            }
        }
        let mut e = entry.clone();
        if let Some(o) = e.as_object_mut() {
            o.insert("names".into(), Value::Array(names));
        }
        images.insert(digest.clone(), e);
    }
    let mut out = store.as_object().cloned().unwrap_or_default();
    out.insert("images".into(), Value::Object(images));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn shipped_store(dir: &Path, console_digest: &str) {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::create_dir_all(dir.join("layers/aaa/fs/bin")).unwrap();
        fs::write(dir.join("layers/aaa/fs/bin/sh"), b"busybox").unwrap();
        fs::hard_link(
            dir.join("layers/aaa/fs/bin/sh"),
            dir.join("layers/aaa/fs/bin/ls"),
        )
        .unwrap();
        std::os::unix::fs::symlink("sh", dir.join("layers/aaa/fs/bin/ash")).unwrap();
        fs::write(dir.join("layers/aaa/layer.json"), b"{}").unwrap();
        fs::write(dir.join("blobs/sha256").join(console_digest), b"manifest").unwrap();
        let index = json!({"images": {
            format!("sha256:{console_digest}"): {"names": ["docker.io/paddock/console:0.1.0"]}
        }});
        fs::write(dir.join("images.json"), index.to_string()).unwrap();
    }

    #[test]
    fn first_install_moves_everything_and_later_ones_only_free_ram() {
        let d = tempfile::tempdir().unwrap();
        let (shipped, store) = (d.path().join("ram"), d.path().join("state"));
        shipped_store(&shipped, "c1");
        let done = install(&shipped, &store).unwrap();
        assert_eq!(
            done,
            Installed {
                moved: 2,
                reused: 0,
                images: 1
            }
        );
        assert!(!shipped.exists(), "the RAM copy is freed");
        let sh = store.join("layers/aaa/fs/bin/sh");
        assert_eq!(fs::read(&sh).unwrap(), b"busybox");
        assert_eq!(
            fs::metadata(&sh).unwrap().ino(),
            fs::metadata(store.join("layers/aaa/fs/bin/ls"))
                .unwrap()
                .ino()
        );
        assert_eq!(
            fs::read_link(store.join("layers/aaa/fs/bin/ash")).unwrap(),
            Path::new("sh")
        );
        assert_eq!(fs::read_dir(store.join("tmp")).unwrap().count(), 0);
        // The next boot ships the same store again: nothing is copied.
        shipped_store(&shipped, "c1");
        let again = install(&shipped, &store).unwrap();
        assert_eq!(
            again,
            Installed {
                moved: 0,
                reused: 2,
                images: 1
            }
        );
        assert!(!shipped.exists());
    }

    #[test]
    fn pulled_images_stay_and_a_shipped_name_moves_to_the_new_image() {
        let d = tempfile::tempdir().unwrap();
        let (shipped, store) = (d.path().join("ram"), d.path().join("state"));
        fs::create_dir_all(&store).unwrap();
        let old = json!({"images": {
            "sha256:old": {"names": ["docker.io/paddock/console:0.1.0", "docker.io/me/console:mine"]},
            "sha256:pulled": {"names": ["docker.io/library/alpine:3"]}
        }});
        fs::write(store.join("images.json"), old.to_string()).unwrap();
        shipped_store(&shipped, "c2");
        install(&shipped, &store).unwrap();
        let idx: Value =
            serde_json::from_slice(&fs::read(store.join("images.json")).unwrap()).unwrap();
        assert_eq!(
            idx["images"]["sha256:c2"]["names"],
            json!(["docker.io/paddock/console:0.1.0"])
        );
        assert_eq!(
            idx["images"]["sha256:old"]["names"],
            json!(["docker.io/me/console:mine"])
        );
        assert_eq!(
            idx["images"]["sha256:pulled"]["names"],
            json!(["docker.io/library/alpine:3"])
        );
    }

    #[test]
    fn an_images_disk_is_linked_in_place_without_copying() {
        let d = tempfile::tempdir().unwrap();
        let (disk, store) = (d.path().join("disk"), d.path().join("ram"));
        shipped_store(&disk, "d1");
        let done = link_from(&disk, &store).unwrap();
        assert_eq!(
            done,
            Installed {
                moved: 2,
                reused: 0,
                images: 1
            }
        );
        let layer = store.join("layers/aaa");
        assert!(fs::symlink_metadata(&layer).unwrap().is_symlink());
        assert_eq!(fs::read_link(&layer).unwrap(), disk.join("layers/aaa"));
        assert_eq!(
            fs::read(store.join("layers/aaa/fs/bin/sh")).unwrap(),
            b"busybox"
        );
        assert!(store.join("images.json").is_file() && store.join("tmp").is_dir());
        assert!(
            !fs::symlink_metadata(store.join("images.json"))
                .unwrap()
                .is_symlink()
        );
        assert_eq!(link_from(&disk, &store).unwrap().moved, 0);
    }

    #[test]
    fn an_images_disk_is_copied_and_left_as_it_was() {
        let d = tempfile::tempdir().unwrap();
        let (disk, store) = (d.path().join("disk"), d.path().join("state"));
        shipped_store(&disk, "d1");
        let done = add_from(&disk, &store).unwrap();
        assert_eq!(
            done,
            Installed {
                moved: 2,
                reused: 0,
                images: 1
            }
        );
        assert!(
            disk.join("layers/aaa/fs/bin/sh").exists(),
            "the source stays"
        );
        assert_eq!(
            fs::read(store.join("layers/aaa/fs/bin/sh")).unwrap(),
            b"busybox"
        );
        assert_eq!(
            fs::metadata(store.join("layers/aaa/fs/bin/sh"))
                .unwrap()
                .ino(),
            fs::metadata(store.join("layers/aaa/fs/bin/ls"))
                .unwrap()
                .ino(),
            "hard links stay links in a copy too"
        );
        assert_eq!(add_from(&disk, &store).unwrap().moved, 0);
    }

    #[test]
    fn a_broken_index_is_an_error_naming_it_and_keeps_ram() {
        let d = tempfile::tempdir().unwrap();
        let (shipped, store) = (d.path().join("ram"), d.path().join("state"));
        shipped_store(&shipped, "c3");
        fs::create_dir_all(&store).unwrap();
        fs::write(store.join("images.json"), b"{not json").unwrap();
        let e = install(&shipped, &store).unwrap_err();
        assert!(e.contains("images.json"), "{e}");
        assert!(shipped.join("images.json").exists());
    }
}
