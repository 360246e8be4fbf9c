//! Writing OCI image layouts for tests: layers from entry lists (including hostile ones that a
//! normal tar writer refuses to produce), images, multi-arch indexes.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

pub fn sha256(data: &[u8]) -> String {
    let h = Sha256::digest(data);
    let mut s = String::from("sha256:");
    for b in h.iter() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// One tar entry. Paths and link targets are written byte for byte (`..` and absolute paths
/// included) so hostile layers can be built.
#[derive(Debug, Clone)]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        uid: u64,
        gid: u64,
        data: Vec<u8>,
        xattrs: Vec<(String, Vec<u8>)>,
    },
    Symlink {
        path: String,
        target: String,
    },
    Hardlink {
        path: String,
        target: String,
    },
    Char {
        path: String,
        major: u32,
        minor: u32,
        mode: u32,
    },
    Fifo {
        path: String,
        mode: u32,
    },
}

impl Entry {
    pub fn dir(path: &str) -> Entry {
        Entry::Dir {
            path: path.into(),
            mode: 0o755,
        }
    }
    pub fn file(path: &str, mode: u32, data: &[u8]) -> Entry {
        Entry::File {
            path: path.into(),
            mode,
            uid: 0,
            gid: 0,
            data: data.to_vec(),
            xattrs: vec![],
        }
    }
    pub fn symlink(path: &str, target: &str) -> Entry {
        Entry::Symlink {
            path: path.into(),
            target: target.into(),
        }
    }
    pub fn hardlink(path: &str, target: &str) -> Entry {
        Entry::Hardlink {
            path: path.into(),
            target: target.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

fn raw_header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> Result<tar::Header> {
    let mut h = tar::Header::new_gnu();
    let name = path.as_bytes();
    anyhow::ensure!(name.len() < 100, "test entry path too long: {path}");
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    Ok(h)
}

fn set_link(h: &mut tar::Header, target: &str) -> Result<()> {
    let t = target.as_bytes();
    anyhow::ensure!(t.len() < 100, "test link target too long: {target}");
    h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
    Ok(())
}

/// An uncompressed tar of `entries`, in order.
pub fn tar_bytes(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h;
        let mut data: &[u8] = &[];
        match e {
            Entry::Dir { path, mode } => h = raw_header(path, tar::EntryType::Directory, *mode, 0)?,
            Entry::File {
                path,
                mode,
                uid,
                gid,
                data: d,
                xattrs,
            } => {
                if !xattrs.is_empty() {
                    let exts: Vec<(String, &[u8])> = xattrs
                        .iter()
                        .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
                        .collect();
                    b.append_pax_extensions(exts.iter().map(|(k, v)| (k.as_str(), *v)))?;
                }
                h = raw_header(path, tar::EntryType::Regular, *mode, d.len() as u64)?;
                h.set_uid(*uid);
                h.set_gid(*gid);
                data = d;
            }
            Entry::Symlink { path, target } => {
                h = raw_header(path, tar::EntryType::Symlink, 0o777, 0)?;
                set_link(&mut h, target)?;
            }
            Entry::Hardlink { path, target } => {
                h = raw_header(path, tar::EntryType::Link, 0o644, 0)?;
                set_link(&mut h, target)?;
            }
            Entry::Char {
                path,
                major,
                minor,
                mode,
            } => {
                h = raw_header(path, tar::EntryType::Char, *mode, 0)?;
                h.set_device_major(*major)?;
                h.set_device_minor(*minor)?;
            }
            Entry::Fifo { path, mode } => h = raw_header(path, tar::EntryType::Fifo, *mode, 0)?,
        }
        h.set_cksum();
        b.append(&h, data)?;
    }
    Ok(b.into_inner()?)
}

pub fn compress(data: &[u8], c: Compression) -> Result<Vec<u8>> {
    Ok(match c {
        Compression::None => data.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data)?;
            e.finish()?
        }
        Compression::Zstd => {
            ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
        }
    })
}

pub fn layer_media_type(c: Compression) -> &'static str {
    match c {
        Compression::None => "application/vnd.oci.image.layer.v1.tar",
        Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

/// A descriptor as JSON.
pub fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": sha256(data), "size": data.len()})
}

/// An OCI layout directory being written.
pub struct Layout {
    pub dir: PathBuf,
    index: Vec<Value>,
}

/// A layer to put in an image: its uncompressed tar and how to compress it.
pub struct Layer {
    pub tar: Vec<u8>,
    pub compression: Compression,
}

impl Layer {
    pub fn new(entries: &[Entry], compression: Compression) -> Result<Layer> {
        Ok(Layer {
            tar: tar_bytes(entries)?,
            compression,
        })
    }
}

impl Layout {
    pub fn create(dir: &Path) -> Result<Layout> {
        fs::create_dir_all(dir.join("blobs/sha256"))
            .with_context(|| format!("creating {}", dir.display()))?;
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        Ok(Layout {
            dir: dir.to_path_buf(),
            index: vec![],
        })
    }

    /// Stores a blob, returning its digest.
    pub fn blob(&self, data: &[u8]) -> Result<String> {
        let d = sha256(data);
        fs::write(
            self.dir.join("blobs/sha256").join(&d["sha256:".len()..]),
            data,
        )?;
        Ok(d)
    }

    /// Writes config and manifest for `layers`; returns the manifest's descriptor (with platform).
    pub fn image(&self, layers: &[Layer], arch: &str, cmd: &[&str]) -> Result<Value> {
        let mut diff_ids = vec![];
        let mut descs = vec![];
        for l in layers {
            diff_ids.push(sha256(&l.tar));
            let blob = compress(&l.tar, l.compression)?;
            self.blob(&blob)?;
            descs.push(descriptor(layer_media_type(l.compression), &blob));
        }
        let config = json!({
            "architecture": arch, "os": "linux", "created": "2026-11-23T00:00:00Z",
            "config": {"Cmd": cmd, "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Labels": {"io.paddock.test": "yes"}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [],
        });
        let cb = serde_json::to_vec(&config)?;
        self.blob(&cb)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": descriptor("application/vnd.oci.image.config.v1+json", &cb),
            "layers": descs,
        });
        let mb = serde_json::to_vec(&manifest)?;
        self.blob(&mb)?;
        let mut d = descriptor("application/vnd.oci.image.manifest.v1+json", &mb);
        d["platform"] = json!({"architecture": arch, "os": "linux"});
        Ok(d)
    }

    /// Writes an index over `manifests` as a blob; returns its descriptor.
    pub fn nested_index(&self, manifests: Vec<Value>) -> Result<Value> {
        let idx = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
        let b = serde_json::to_vec(&idx)?;
        self.blob(&b)?;
        Ok(descriptor("application/vnd.oci.image.index.v1+json", &b))
    }

    /// Adds `desc` to the top-level index.json under the tag `name`.
    pub fn tag(&mut self, mut desc: Value, name: &str) -> Result<()> {
        desc["annotations"] = json!({"org.opencontainers.image.ref.name": name});
        self.index.push(desc);
        let idx = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": self.index});
        fs::write(self.dir.join("index.json"), serde_json::to_vec(&idx)?)?;
        Ok(())
    }
}

/// Deterministic pseudo-random bytes (incompressible test data).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}
