//! `docker save` archives and OCI image layouts: loading them into the store and writing them.
//!
//! An archive is hostile input just like a layer: it is unpacked with the same unpacker
//! (nothing escapes the scratch directory) and every path it names is resolved with
//! [`safe_join`], which refuses `..`, absolute paths and symlinks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::digest::{Digest, HashingReader};
use super::progress::Progress;
use super::reference::{Reference, familiar};
use super::spec::{self, Compression, Descriptor, Index, Manifest, ManifestOrIndex};
use super::store::{BlobSource, Image, Store, StoreError, io_at};
use super::unpack;

/// The archive formats `ros image save` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `docker save` / `docker load` format (manifest.json, `<id>/layer.tar`).
    DockerArchive,
    /// An OCI image layout in a tar (oci-layout, index.json, blobs/).
    OciArchive,
}

fn invalid(what: impl Into<String>, why: impl Into<String>) -> StoreError {
    StoreError::Invalid {
        what: what.into(),
        why: why.into(),
    }
}

/// Joins `rel` (a path an archive names) to `dir`, refusing anything that could leave `dir`:
/// absolute paths, `..`, and symlinks at any step.
pub fn safe_join(dir: &Path, rel: &str) -> Result<PathBuf, StoreError> {
    let mut p = dir.to_path_buf();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(n) => {
                p.push(n);
                if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
                    return Err(invalid(rel, "archive path goes through a symlink"));
                }
            }
            Component::CurDir => {}
            _ => {
                return Err(invalid(
                    rel,
                    "archive path must be relative and stay inside the archive",
                ));
            }
        }
    }
    Ok(p)
}

/// Loads every image in `input` (a docker-archive or OCI archive file, possibly gzipped, or an
/// OCI layout / extracted archive directory; `-` is stdin). `tag` names the image when the
/// archive holds exactly one.
pub fn load(
    store: &Store,
    input: &Path,
    tag: Option<&str>,
    progress: &dyn Progress,
) -> Result<Vec<Image>, StoreError> {
    if input.is_dir() {
        return load_dir(store, input, tag, progress);
    }
    let reader: Box<dyn Read> = if input == Path::new("-") {
        Box::new(io::stdin().lock())
    } else {
        Box::new(File::open(input).map_err(io_at(input))?)
    };
    load_reader(store, reader, tag, progress)
}

/// Loads from an archive stream (tar, tar.gz or tar.zst).
pub fn load_reader(
    store: &Store,
    reader: impl Read,
    tag: Option<&str>,
    progress: &dyn Progress,
) -> Result<Vec<Image>, StoreError> {
    let mut r = io::BufReader::with_capacity(256 * 1024, reader);
    let head = io::BufRead::fill_buf(&mut r).map_err(|e| invalid("archive", e.to_string()))?;
    let c = Compression::sniff(head);
    let scratch = store.scratch_dir("load")?;
    let tar = unpack::decompress(r, c).map_err(|e| invalid("archive", e.to_string()))?;
    unpack::unpack(tar, &scratch.0, unpack::Mode::Flatten).map_err(|err| StoreError::Unpack {
        what: "archive".into(),
        err,
    })?;
    load_dir(store, &scratch.0, tag, progress)
}

/// Loads from a directory: an OCI layout, or an extracted docker archive.
pub fn load_dir(
    store: &Store,
    dir: &Path,
    tag: Option<&str>,
    progress: &dyn Progress,
) -> Result<Vec<Image>, StoreError> {
    let tag = tag
        .map(|t| t.parse::<Reference>().map(|r| r.name()))
        .transpose()?;
    if safe_join(dir, "manifest.json")?.is_file() {
        load_docker(store, dir, tag.as_deref(), progress)
    } else if safe_join(dir, "index.json")?.is_file() {
        load_oci(store, dir, tag.as_deref(), progress)
    } else {
        Err(invalid(
            dir.display().to_string(),
            "neither a docker archive (manifest.json) nor an OCI layout (index.json)",
        ))
    }
}

/// Blobs from files in a directory, by digest.
struct FileSource(HashMap<Digest, PathBuf>);

impl BlobSource for FileSource {
    fn open(&self, d: &Descriptor) -> Result<Box<dyn Read + Send>, StoreError> {
        let p = self
            .0
            .get(&d.digest)
            .ok_or_else(|| invalid(d.digest.to_string(), "blob missing from the archive"))?;
        Ok(Box::new(BufReader::with_capacity(
            256 * 1024,
            File::open(p).map_err(io_at(p))?,
        )))
    }
}

/// Blobs of an OCI layout: `blobs/sha256/<hex>`.
struct LayoutSource<'a>(&'a Path);

impl BlobSource for LayoutSource<'_> {
    fn open(&self, d: &Descriptor) -> Result<Box<dyn Read + Send>, StoreError> {
        let p = safe_join(self.0, &format!("blobs/sha256/{}", d.digest.hex()))?;
        let f = File::open(&p)
            .map_err(|_| invalid(d.digest.to_string(), "blob missing from the OCI layout"))?;
        Ok(Box::new(BufReader::with_capacity(256 * 1024, f)))
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn read_limited(p: &Path, what: &str) -> Result<Vec<u8>, StoreError> {
    let f = File::open(p).map_err(io_at(p))?;
    let mut b = Vec::new();
    f.take(4 << 20).read_to_end(&mut b).map_err(io_at(p))?;
    if b.len() >= 4 << 20 {
        return Err(invalid(what, "larger than 4 MiB"));
    }
    Ok(b)
}

fn hash_file(p: &Path) -> Result<(Digest, u64, Compression), StoreError> {
    let mut f = BufReader::with_capacity(256 * 1024, File::open(p).map_err(io_at(p))?);
    let head = io::BufRead::fill_buf(&mut f).map_err(io_at(p))?;
    let c = Compression::sniff(head);
    let (d, n) = HashingReader::new(f).drain().map_err(io_at(p))?;
    Ok((d, n, c))
}

fn load_docker(
    store: &Store,
    dir: &Path,
    tag: Option<&str>,
    progress: &dyn Progress,
) -> Result<Vec<Image>, StoreError> {
    let mp = safe_join(dir, "manifest.json")?;
    let entries: Vec<DockerManifestEntry> =
        serde_json::from_slice(&read_limited(&mp, "manifest.json")?)
            .map_err(|e| invalid("archive manifest.json", e.to_string()))?;
    if tag.is_some() && entries.len() != 1 {
        return Err(invalid(
            "--tag",
            format!(
                "the archive holds {} images; --tag needs exactly one",
                entries.len()
            ),
        ));
    }
    let mut out = Vec::new();
    for e in entries {
        let cp = safe_join(dir, &e.config)?;
        let config_bytes = read_limited(&cp, &e.config)?;
        let config_digest = Digest::of(&config_bytes);
        let mut blobs = HashMap::new();
        blobs.insert(config_digest.clone(), cp);
        let mut layers = Vec::new();
        for l in &e.layers {
            let lp = safe_join(dir, l)?;
            let (digest, size, c) = hash_file(&lp)?;
            let media_type = match c {
                Compression::None => spec::DOCKER_LAYER,
                Compression::Gzip => spec::DOCKER_LAYER_GZIP,
                Compression::Zstd => spec::OCI_LAYER_ZSTD,
            };
            blobs.insert(digest.clone(), lp);
            layers.push(Descriptor {
                media_type: media_type.into(),
                digest,
                size,
                platform: None,
                annotations: BTreeMap::new(),
            });
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: spec::DOCKER_MANIFEST.into(),
            config: Descriptor {
                media_type: spec::DOCKER_CONFIG.into(),
                digest: config_digest,
                size: config_bytes.len() as u64,
                platform: None,
                annotations: BTreeMap::new(),
            },
            layers,
            annotations: BTreeMap::new(),
        };
        let mbytes =
            serde_json::to_vec(&manifest).map_err(|e| invalid("manifest", e.to_string()))?;
        let names: Vec<String> = match tag {
            Some(t) => vec![t.to_owned()],
            None => e
                .repo_tags
                .unwrap_or_default()
                .iter()
                .map(|t| t.parse::<Reference>().map(|r| r.name()))
                .collect::<Result<_, _>>()?,
        };
        out.push(store.import(&mbytes, &FileSource(blobs), &names, progress)?);
    }
    Ok(out)
}

fn load_oci(
    store: &Store,
    dir: &Path,
    tag: Option<&str>,
    progress: &dyn Progress,
) -> Result<Vec<Image>, StoreError> {
    let ip = safe_join(dir, "index.json")?;
    let index: Index = serde_json::from_slice(&read_limited(&ip, "index.json")?)
        .map_err(|e| invalid("OCI layout index.json", e.to_string()))?;
    let source = LayoutSource(dir);
    let read_blob = |d: &Descriptor| -> Result<Vec<u8>, StoreError> {
        let mut b = Vec::new();
        source
            .open(d)?
            .take(4 << 20)
            .read_to_end(&mut b)
            .map_err(|e| invalid(d.digest.to_string(), e.to_string()))?;
        let actual = Digest::of(&b);
        if actual != d.digest {
            return Err(StoreError::DigestMismatch {
                what: "OCI layout blob".into(),
                expected: d.digest.clone(),
                actual,
            });
        }
        Ok(b)
    };
    // Resolve every entry to a platform manifest, with the names its annotations give.
    let mut found: Vec<(Vec<u8>, Vec<String>)> = Vec::new();
    for desc in &index.manifests {
        let bytes = read_blob(desc)?;
        let mbytes =
            match ManifestOrIndex::parse(&bytes, Some(&desc.media_type), desc.digest.as_str())? {
                ManifestOrIndex::Manifest(_) => bytes,
                ManifestOrIndex::Index(nested) => {
                    let d = spec::select_platform(&nested, &spec::host_platform()).ok_or_else(
                        || {
                            StoreError::NoPlatform(
                                desc.digest.to_string(),
                                "see the layout's index".into(),
                            )
                        },
                    )?;
                    read_blob(d)?
                }
            };
        let name = desc
            .annotations
            .get("io.containerd.image.name")
            .or_else(|| desc.annotations.get("org.opencontainers.image.ref.name"))
            .filter(|n| n.contains(['/', ':']) || n.contains('.'))
            .and_then(|n| n.parse::<Reference>().ok())
            .map(|r| r.name());
        match found.iter_mut().find(|(b, _)| *b == mbytes) {
            Some((_, names)) => names.extend(name),
            None => found.push((mbytes, name.into_iter().collect())),
        }
    }
    if tag.is_some() && found.len() != 1 {
        return Err(invalid(
            "--tag",
            format!(
                "the layout holds {} images; --tag needs exactly one",
                found.len()
            ),
        ));
    }
    let mut out = Vec::new();
    for (mbytes, names) in found {
        let names = match tag {
            Some(t) => vec![t.to_owned()],
            None => names,
        };
        out.push(store.import(&mbytes, &source, &names, progress)?);
    }
    Ok(out)
}

// -------------------------------------------------------------------- save

fn append(
    tar: &mut tar::Builder<&mut dyn Write>,
    path: &str,
    size: u64,
    data: impl Read,
) -> Result<(), StoreError> {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, path, data)
        .map_err(|e| invalid(format!("writing {path}"), e.to_string()))
}

fn append_dir(tar: &mut tar::Builder<&mut dyn Write>, path: &str) -> Result<(), StoreError> {
    let mut h = tar::Header::new_ustar();
    h.set_size(0);
    h.set_mode(0o755);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Directory);
    tar.append_data(&mut h, path, io::empty())
        .map_err(|e| invalid(format!("writing {path}"), e.to_string()))
}

/// Writes the images named by `what` (names or ids) to `w` in `format`.
pub fn save(
    store: &Store,
    what: &[String],
    format: Format,
    w: &mut dyn Write,
) -> Result<(), StoreError> {
    let mut images = Vec::new();
    for s in what {
        let img = store.find(s)?;
        // Saving by name keeps just that name; by id, all of them.
        let names = match s.parse::<Reference>().map(|r| r.name()) {
            Ok(n) if img.names.contains(&n) => vec![n],
            _ => img.names.clone(),
        };
        images.push((img, names));
    }
    let mut tar = tar::Builder::new(w);
    match format {
        Format::DockerArchive => save_docker(store, &images, &mut tar)?,
        Format::OciArchive => save_oci(store, &images, &mut tar)?,
    }
    tar.into_inner()
        .and_then(|w| w.flush())
        .map_err(|e| invalid("writing archive", e.to_string()))
}

fn save_docker(
    store: &Store,
    images: &[(Image, Vec<String>)],
    tar: &mut tar::Builder<&mut dyn Write>,
) -> Result<(), StoreError> {
    let mut written = BTreeSet::new();
    let mut entries = Vec::new();
    for (img, names) in images {
        let cfg_name = format!("{}.json", img.id.hex());
        if written.insert(cfg_name.clone()) {
            let b = store.read_blob(&img.id)?;
            append(tar, &cfg_name, b.len() as u64, &b[..])?;
        }
        let mut layer_paths = Vec::new();
        for (desc, diff_id) in img.manifest.layers.iter().zip(&img.config.rootfs.diff_ids) {
            let dir = diff_id.hex().to_owned();
            let path = format!("{dir}/layer.tar");
            if written.insert(path.clone()) {
                let meta = store.layer_meta(diff_id)?;
                let c = Compression::from_media_type(&desc.media_type).unwrap_or(Compression::None);
                let blob = BufReader::with_capacity(256 * 1024, store.open_blob(&desc.digest)?);
                let data = unpack::decompress(blob, c)
                    .map_err(|e| invalid(path.clone(), e.to_string()))?;
                append_dir(tar, &dir)?;
                append(tar, &format!("{dir}/VERSION"), 3, &b"1.0"[..])?;
                append(tar, &path, meta.size, data)?;
            }
            layer_paths.push(path);
        }
        let tags: Vec<String> = names
            .iter()
            .filter(|n| !n.contains('@'))
            .map(|n| familiar(n).to_owned())
            .collect();
        entries.push(DockerManifestEntry {
            config: cfg_name,
            repo_tags: (!tags.is_empty()).then_some(tags),
            layers: layer_paths,
        });
    }
    let m = serde_json::to_vec(&entries).map_err(|e| invalid("manifest.json", e.to_string()))?;
    append(tar, "manifest.json", m.len() as u64, &m[..])
}

/// The OCI manifest for an image: the stored one when it is OCI already, else a translation
/// of the Docker one (same blobs, OCI media types).
fn oci_manifest(store: &Store, img: &Image) -> Result<Vec<u8>, StoreError> {
    if img.manifest.media_type == spec::OCI_MANIFEST {
        return store.read_blob(&img.manifest_digest);
    }
    let mut m = img.manifest.clone();
    m.media_type = spec::OCI_MANIFEST.into();
    m.config.media_type = spec::OCI_CONFIG.into();
    for l in &mut m.layers {
        l.media_type = match Compression::from_media_type(&l.media_type) {
            Some(Compression::Gzip) => spec::OCI_LAYER_GZIP,
            Some(Compression::Zstd) => spec::OCI_LAYER_ZSTD,
            _ => spec::OCI_LAYER,
        }
        .into();
    }
    serde_json::to_vec(&m).map_err(|e| invalid("manifest", e.to_string()))
}

fn save_oci(
    store: &Store,
    images: &[(Image, Vec<String>)],
    tar: &mut tar::Builder<&mut dyn Write>,
) -> Result<(), StoreError> {
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    append(tar, "oci-layout", layout.len() as u64, &layout[..])?;
    append_dir(tar, "blobs")?;
    append_dir(tar, "blobs/sha256")?;
    let mut written = BTreeSet::new();
    let mut index = Index {
        schema_version: 2,
        media_type: spec::OCI_INDEX.into(),
        manifests: vec![],
        annotations: BTreeMap::new(),
    };
    for (img, names) in images {
        let mbytes = oci_manifest(store, img)?;
        let mdigest = Digest::of(&mbytes);
        if written.insert(mdigest.clone()) {
            append(
                tar,
                &format!("blobs/sha256/{}", mdigest.hex()),
                mbytes.len() as u64,
                &mbytes[..],
            )?;
        }
        let mut blobs = vec![(img.manifest.config.digest.clone(), img.manifest.config.size)];
        blobs.extend(
            img.manifest
                .layers
                .iter()
                .map(|l| (l.digest.clone(), l.size)),
        );
        for (d, size) in blobs {
            if written.insert(d.clone()) {
                let f = store.open_blob(&d)?;
                append(
                    tar,
                    &format!("blobs/sha256/{}", d.hex()),
                    size,
                    BufReader::with_capacity(256 * 1024, f),
                )?;
            }
        }
        let desc = |annotations| Descriptor {
            media_type: spec::OCI_MANIFEST.into(),
            digest: mdigest.clone(),
            size: mbytes.len() as u64,
            platform: Some(spec::Platform {
                architecture: img.config.architecture.clone(),
                os: img.config.os.clone(),
                variant: None,
            }),
            annotations,
        };
        let tagged: Vec<&String> = names.iter().filter(|n| !n.contains('@')).collect();
        if tagged.is_empty() {
            index.manifests.push(desc(BTreeMap::new()));
        }
        for n in tagged {
            let tag = n
                .rsplit_once(':')
                .map(|(_, t)| t.to_owned())
                .unwrap_or_default();
            let mut a = BTreeMap::new();
            a.insert("io.containerd.image.name".to_owned(), n.clone());
            a.insert("org.opencontainers.image.ref.name".to_owned(), tag);
            index.manifests.push(desc(a));
        }
    }
    let ib = serde_json::to_vec(&index).map_err(|e| invalid("index.json", e.to_string()))?;
    append(tar, "index.json", ib.len() as u64, &ib[..])
}
