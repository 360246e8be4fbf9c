//! The content-addressed image store.
//!
//! Layout below the engine's data root (`/var/lib/system-docker` under `ros --root`):
//!
//! ```text
//! image/blobs/sha256/<hex>       manifests, configs and layer blobs, byte for byte as received
//! image/layers/<diff-id hex>/    one unpacked layer: fs/ (an overlayfs lowerdir) + layer.json
//! image/images.json              manifest digest -> names; the only mutable index
//! image/tmp/                     work in progress; anything here is garbage after a crash
//! image/lock                     flock: shared while pulling/loading, exclusive to commit or prune
//! ```
//!
//! Invariants: a blob file exists only once its digest and size were verified; a layer
//! directory exists only once fully unpacked and its diff id verified; `images.json` is the
//! last thing written (atomically), so an interrupted pull leaves no visible image, and
//! whatever it left is unreferenced and removed by [`Store::prune`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::digest::{Digest, HashingReader, TeeReader};
use super::progress::{Counting, Progress};
use super::reference::{BadReference, Reference};
use super::registry::{ClientOptions, RegistryError, Session};
use super::spec::{
    self, Compression, Descriptor, ImageConfig, Manifest, ManifestOrIndex, SpecError,
};
use super::unpack::{self, UnpackError};
use crate::fsutil;
use crate::root::Root;

/// Where the system engine keeps its data, as the running OS sees it.
pub const DEFAULT_DATA_ROOT: &str = "/var/lib/system-docker";

/// Largest manifest or config we accept.
const MAX_JSON: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Reference(#[from] BadReference),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("{what}: {err}")]
    Unpack { what: String, err: UnpackError },
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: io::Error },
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{what}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("no such image: {0}")]
    NoSuchImage(String),
    #[error("{0}: no linux/amd64 image in the index (platforms offered: {1})")]
    NoPlatform(String, String),
    #[error("{what}: {why}")]
    Invalid { what: String, why: String },
}

/// Maps an io error to [`StoreError::Io`] naming `path`.
pub(crate) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |err| StoreError::Io {
        path: path.to_path_buf(),
        err,
    }
}

/// One stored image, as listed and inspected.
#[derive(Debug, Clone, Serialize)]
pub struct Image {
    /// Full names (`docker.io/library/busybox:latest`), sorted.
    pub names: Vec<String>,
    pub manifest_digest: Digest,
    /// The image id, as docker defines it: the digest of the config.
    pub id: Digest,
    pub manifest: Manifest,
    pub config: ImageConfig,
    /// Sum of the unpacked layer sizes.
    pub size: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    #[serde(default)]
    images: BTreeMap<Digest, ImageEntry>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct ImageEntry {
    #[serde(default)]
    names: BTreeSet<String>,
}

/// `layer.json` beside an unpacked layer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerMeta {
    pub diff_id: Digest,
    /// Size of the uncompressed tar.
    pub size: u64,
}

/// What `prune` removed.
#[derive(Debug, Default, Serialize)]
pub struct PruneReport {
    pub images: Vec<Digest>,
    pub blobs: usize,
    pub layers: usize,
    pub tmp_entries: usize,
    pub bytes: u64,
}

/// Where the blobs of an image being imported come from (a registry, an OCI layout directory,
/// a docker archive). `open` must be callable from several threads at once.
pub trait BlobSource: Sync {
    fn open(&self, d: &Descriptor) -> Result<Box<dyn Read + Send>, StoreError>;
}

/// The image store. Cheap to construct; all state is on disk.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// The store of the engine whose data root is `data_root` (as the OS sees it) below `root`.
    pub fn open(root: &Root, data_root: &str) -> Result<Store, StoreError> {
        Store::at(root.path(data_root).join("image"))
    }

    /// A store in exactly this directory.
    pub fn at(dir: PathBuf) -> Result<Store, StoreError> {
        for sub in ["blobs/sha256", "layers", "tmp"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(io_at(&p))?;
        }
        Ok(Store { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(d.hex())
    }

    fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.dir.join("layers").join(diff_id.hex())
    }

    /// The unpacked filesystem of a layer (an overlayfs lowerdir).
    pub fn layer_fs(&self, diff_id: &Digest) -> PathBuf {
        self.layer_path(diff_id).join("fs")
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("images.json")
    }

    fn tmp_name(&self, what: &str) -> PathBuf {
        let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join("tmp")
            .join(format!("{what}-{}-{n}", std::process::id()))
    }

    fn lock(&self, exclusive: bool) -> Result<File, StoreError> {
        let p = self.dir.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io_at(&p))?;
        if exclusive { f.lock() } else { f.lock_shared() }.map_err(io_at(&p))?;
        Ok(f)
    }

    fn read_index(&self) -> Result<Index, StoreError> {
        let p = self.index_path();
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| StoreError::Invalid {
                what: p.display().to_string(),
                why: format!("corrupt image index: {e}"),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(StoreError::Io { path: p, err: e }),
        }
    }

    fn write_index(&self, idx: &Index) -> Result<(), StoreError> {
        let p = self.index_path();
        let bytes = serde_json::to_vec_pretty(idx).map_err(|e| StoreError::Invalid {
            what: "image index".into(),
            why: e.to_string(),
        })?;
        fsutil::write_atomic(&p, &bytes, 0o600).map_err(io_at(&p))
    }

    /// Reads a stored blob, verifying nothing (it was verified on the way in).
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let p = self.blob_path(d);
        fs::read(&p).map_err(io_at(&p))
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    pub fn open_blob(&self, d: &Digest) -> Result<File, StoreError> {
        let p = self.blob_path(d);
        File::open(&p).map_err(io_at(&p))
    }

    /// Stores a small blob that is already in memory, verifying it against `expect`.
    fn put_blob_bytes(
        &self,
        bytes: &[u8],
        expect: Option<&Descriptor>,
        what: &str,
    ) -> Result<Digest, StoreError> {
        let d = Digest::of(bytes);
        if let Some(e) = expect {
            if e.digest != d {
                return Err(StoreError::DigestMismatch {
                    what: what.into(),
                    expected: e.digest.clone(),
                    actual: d,
                });
            }
            if e.size != bytes.len() as u64 {
                return Err(StoreError::SizeMismatch {
                    what: what.into(),
                    expected: e.size,
                    actual: bytes.len() as u64,
                });
            }
        }
        let p = self.blob_path(&d);
        if !p.exists() {
            fsutil::write_atomic(&p, bytes, 0o644).map_err(io_at(&p))?;
        }
        Ok(d)
    }

    pub fn layer_meta(&self, diff_id: &Digest) -> Result<LayerMeta, StoreError> {
        let p = self.layer_path(diff_id).join("layer.json");
        let b = fs::read(&p).map_err(io_at(&p))?;
        serde_json::from_slice(&b).map_err(|e| StoreError::Invalid {
            what: p.display().to_string(),
            why: e.to_string(),
        })
    }

    // ---------------------------------------------------------------- import (pull, load)

    /// Pulls `reference` from its registry; returns the stored image.
    pub fn pull(
        &self,
        reference: &str,
        opts: &ClientOptions,
        progress: &dyn Progress,
    ) -> Result<Image, StoreError> {
        let r: Reference = reference.parse()?;
        let session = Session::open(&r, opts)?;
        let source = RegistrySource(session);
        let (mut bytes, ct) = source.0.clone().manifest(&r.api_reference())?;
        if let Some(pinned) = &r.digest {
            check_digest(&bytes, pinned, &r.to_string())?;
        }
        let mut ct = ct;
        let mut manifest_digest = Digest::of(&bytes);
        if let ManifestOrIndex::Index(idx) =
            ManifestOrIndex::parse(&bytes, ct.as_deref(), &r.to_string())?
        {
            let want = spec::host_platform();
            let d = spec::select_platform(&idx, &want).ok_or_else(|| {
                let offered: Vec<String> = idx
                    .manifests
                    .iter()
                    .filter_map(|m| {
                        m.platform
                            .as_ref()
                            .map(|p| format!("{}/{}", p.os, p.architecture))
                    })
                    .collect();
                StoreError::NoPlatform(r.to_string(), offered.join(", "))
            })?;
            let (b, c) = source.0.clone().manifest(d.digest.as_str())?;
            check_digest(&b, &d.digest, &format!("{r} (linux/amd64)"))?;
            bytes = b;
            ct = c;
            manifest_digest = d.digest.clone();
        }
        let ManifestOrIndex::Manifest(_) =
            ManifestOrIndex::parse(&bytes, ct.as_deref(), &r.to_string())?
        else {
            return Err(StoreError::Invalid {
                what: r.to_string(),
                why: "an index that points at another index".into(),
            });
        };
        let img = self.import(&bytes, &source, &[r.name()], progress)?;
        if img.manifest_digest != manifest_digest {
            return Err(StoreError::DigestMismatch {
                what: format!("{r} manifest"),
                expected: manifest_digest,
                actual: img.manifest_digest,
            });
        }
        Ok(img)
    }

    /// Imports an image whose manifest is `manifest_bytes`, reading missing blobs from
    /// `source`, then gives it `names`. The manifest is stored as given, so its digest is the
    /// image's manifest digest.
    pub fn import(
        &self,
        manifest_bytes: &[u8],
        source: &dyn BlobSource,
        names: &[String],
        progress: &dyn Progress,
    ) -> Result<Image, StoreError> {
        let _shared = self.lock(false)?;
        let what = names.first().cloned().unwrap_or_else(|| "image".into());
        let ManifestOrIndex::Manifest(manifest) =
            ManifestOrIndex::parse(manifest_bytes, None, &what)?
        else {
            return Err(StoreError::Invalid {
                what,
                why: "expected an image manifest, got an index".into(),
            });
        };
        for l in &manifest.layers {
            if Compression::from_media_type(&l.media_type).is_none() {
                return Err(StoreError::Invalid {
                    what: format!("{what} layer {}", l.digest),
                    why: format!("unsupported layer media type {:?}", l.media_type),
                });
            }
        }
        // Config first: it names the diff ids we verify layers against.
        let config_bytes = if self.has_blob(&manifest.config.digest) {
            self.read_blob(&manifest.config.digest)?
        } else {
            let cfg_what = format!("{what} config {}", manifest.config.digest);
            if manifest.config.size > MAX_JSON {
                return Err(StoreError::Invalid {
                    what: cfg_what,
                    why: format!("config of {} bytes is too large", manifest.config.size),
                });
            }
            let mut r = source
                .open(&manifest.config)?
                .take(manifest.config.size + 1);
            let mut b = Vec::new();
            r.read_to_end(&mut b).map_err(|e| StoreError::Invalid {
                what: cfg_what.clone(),
                why: e.to_string(),
            })?;
            self.put_blob_bytes(&b, Some(&manifest.config), &cfg_what)?;
            b
        };
        let config = ImageConfig::parse(&config_bytes, &format!("{what} config"))?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(StoreError::Invalid {
                what: format!("{what} config"),
                why: format!(
                    "{} diff_ids for {} layers",
                    config.rootfs.diff_ids.len(),
                    manifest.layers.len()
                ),
            });
        }

        // Layers, up to three at a time.
        let jobs: Vec<(&Descriptor, &Digest)> = manifest
            .layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let errors = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..jobs.len().min(3) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((desc, diff_id)) = jobs.get(i) else {
                            break;
                        };
                        if let Err(e) = self.import_layer(desc, diff_id, source, progress) {
                            if let Ok(mut errs) = errors.lock() {
                                errs.push((i, e));
                            }
                            // Stop handing out further layers after a failure.
                            next.store(usize::MAX / 2, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        let mut errs = errors.into_inner().unwrap_or_default();
        errs.sort_by_key(|(i, _)| *i);
        if let Some((_, e)) = errs.into_iter().next() {
            return Err(e);
        }
        let manifest_digest = self.put_blob_bytes(manifest_bytes, None, &what)?;
        drop(_shared);
        self.set_names(&manifest_digest, names)?;
        self.image_by_manifest(&manifest_digest)
    }

    /// Makes sure blob `desc` and the unpacked layer `diff_id` are in the store.
    fn import_layer(
        &self,
        desc: &Descriptor,
        diff_id: &Digest,
        source: &dyn BlobSource,
        progress: &dyn Progress,
    ) -> Result<(), StoreError> {
        let id = &desc.digest.short().to_owned();
        let have_layer = self.layer_path(diff_id).join("layer.json").is_file();
        if have_layer && self.has_blob(&desc.digest) {
            progress.done(id, "Already exists");
            return Ok(());
        }
        progress.start(id, Some(desc.size));
        let what = format!("layer {}", desc.digest);
        let compression =
            Compression::from_media_type(&desc.media_type).unwrap_or(Compression::None);
        let blob_tmp = self.tmp_name("blob");
        let layer_tmp = self.tmp_name("layer");
        let result = (|| {
            let raw = source.open(desc)?;
            let blob_file = File::create(&blob_tmp).map_err(io_at(&blob_tmp))?;
            let mut blob_w = BufWriter::with_capacity(256 * 1024, blob_file);
            let counted = Counting {
                inner: raw.take(desc.size + 1),
                id,
                progress,
            };
            let mut compressed = HashingReader::new(TeeReader {
                inner: counted,
                sink: &mut blob_w,
            });
            let diff = {
                let decoded = unpack::decompress(&mut compressed, compression).map_err(|e| {
                    StoreError::Invalid {
                        what: what.clone(),
                        why: e.to_string(),
                    }
                })?;
                let mut diff = HashingReader::new(decoded);
                if !have_layer {
                    let fs_dir = layer_tmp.join("fs");
                    fs::create_dir_all(&fs_dir).map_err(io_at(&fs_dir))?;
                    unpack::unpack(&mut diff, &fs_dir, unpack::Mode::Overlay).map_err(|err| {
                        StoreError::Unpack {
                            what: what.clone(),
                            err,
                        }
                    })?;
                }
                let (d, n) = diff.drain().map_err(|e| StoreError::Invalid {
                    what: what.clone(),
                    why: format!("decompressing: {e}"),
                })?;
                (d, n)
            };
            let (blob_digest, blob_size) = compressed.drain().map_err(|e| StoreError::Invalid {
                what: what.clone(),
                why: format!("reading: {e}"),
            })?;
            if blob_size != desc.size {
                return Err(StoreError::SizeMismatch {
                    what: what.clone(),
                    expected: desc.size,
                    actual: blob_size,
                });
            }
            if blob_digest != desc.digest {
                return Err(StoreError::DigestMismatch {
                    what: what.clone(),
                    expected: desc.digest.clone(),
                    actual: blob_digest,
                });
            }
            if &diff.0 != diff_id {
                return Err(StoreError::DigestMismatch {
                    what: format!("{what} (uncompressed)"),
                    expected: diff_id.clone(),
                    actual: diff.0,
                });
            }
            let blob_file = blob_w.into_inner().map_err(|e| StoreError::Io {
                path: blob_tmp.clone(),
                err: e.into_error(),
            })?;
            blob_file.sync_all().map_err(io_at(&blob_tmp))?;
            let dest = self.blob_path(&desc.digest);
            fs::rename(&blob_tmp, &dest).map_err(io_at(&dest))?;
            if !have_layer {
                let meta = LayerMeta {
                    diff_id: diff_id.clone(),
                    size: diff.1,
                };
                let mp = layer_tmp.join("layer.json");
                let mb = serde_json::to_vec(&meta).map_err(|e| StoreError::Invalid {
                    what: what.clone(),
                    why: e.to_string(),
                })?;
                fsutil::write_atomic(&mp, &mb, 0o644).map_err(io_at(&mp))?;
                let dest = self.layer_path(diff_id);
                if let Err(e) = fs::rename(&layer_tmp, &dest) {
                    // Another import finished the same layer first: keep theirs.
                    if !dest.join("layer.json").is_file() {
                        return Err(StoreError::Io { path: dest, err: e });
                    }
                }
            }
            Ok(())
        })();
        let _ = fs::remove_file(&blob_tmp);
        if layer_tmp.exists() {
            let _ = fs::remove_dir_all(&layer_tmp);
        }
        match &result {
            Ok(()) => progress.done(id, "Pull complete"),
            Err(_) => progress.done(id, "Failed"),
        }
        result
    }

    /// Gives `names` to the image with `manifest_digest` (taking them from any other image).
    fn set_names(&self, manifest_digest: &Digest, names: &[String]) -> Result<(), StoreError> {
        let _lock = self.lock(true)?;
        let mut idx = self.read_index()?;
        for entry in idx.images.values_mut() {
            for n in names {
                entry.names.remove(n);
            }
        }
        let entry = idx.images.entry(manifest_digest.clone()).or_default();
        entry.names.extend(names.iter().cloned());
        self.write_index(&idx)
    }

    // ---------------------------------------------------------------- queries

    fn image_by_manifest(&self, md: &Digest) -> Result<Image, StoreError> {
        let idx = self.read_index()?;
        let names = idx
            .images
            .get(md)
            .map(|e| e.names.iter().cloned().collect())
            .unwrap_or_default();
        self.build_image(md, names)
    }

    fn build_image(&self, md: &Digest, names: Vec<String>) -> Result<Image, StoreError> {
        let mb = self.read_blob(md)?;
        let ManifestOrIndex::Manifest(manifest) = ManifestOrIndex::parse(&mb, None, md.as_str())?
        else {
            return Err(StoreError::Invalid {
                what: md.to_string(),
                why: "stored manifest is an index".into(),
            });
        };
        let cb = self.read_blob(&manifest.config.digest)?;
        let config = ImageConfig::parse(&cb, md.as_str())?;
        let size = config
            .rootfs
            .diff_ids
            .iter()
            .filter_map(|d| self.layer_meta(d).ok())
            .map(|m| m.size)
            .sum();
        Ok(Image {
            names,
            manifest_digest: md.clone(),
            id: manifest.config.digest.clone(),
            manifest,
            config,
            size,
        })
    }

    /// Every image, newest name first within an image.
    pub fn list(&self) -> Result<Vec<Image>, StoreError> {
        let idx = self.read_index()?;
        idx.images
            .iter()
            .map(|(md, e)| self.build_image(md, e.names.iter().cloned().collect()))
            .collect()
    }

    /// Finds an image by name (`busybox`, `host/repo:tag`), image id (full or a prefix of at
    /// least 4 hex digits, with or without `sha256:`) or manifest digest.
    pub fn find(&self, what: &str) -> Result<Image, StoreError> {
        let idx = self.read_index()?;
        if let Ok(r) = what.parse::<Reference>() {
            let full = r.name();
            if let Some((md, e)) = idx.images.iter().find(|(_, e)| e.names.contains(&full)) {
                return self.build_image(md, e.names.iter().cloned().collect());
            }
            if let Some((d, e)) = r
                .digest
                .as_ref()
                .and_then(|d| idx.images.get(d).map(|e| (d, e)))
            {
                return self.build_image(d, e.names.iter().cloned().collect());
            }
        }
        let hex = what.strip_prefix("sha256:").unwrap_or(what);
        if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut found = Vec::new();
            for (md, e) in &idx.images {
                let img = self.build_image(md, e.names.iter().cloned().collect())?;
                if img.id.hex().starts_with(hex) || md.hex().starts_with(hex) {
                    found.push(img);
                }
            }
            if found.len() == 1 {
                return Ok(found.remove(0));
            }
            if found.len() > 1 {
                return Err(StoreError::Invalid {
                    what: what.into(),
                    why: "ambiguous: matches more than one image".into(),
                });
            }
        }
        Err(StoreError::NoSuchImage(what.into()))
    }

    /// The layer directories of an image, lowest first (reverse them for overlayfs lowerdir=).
    pub fn layer_dirs(&self, img: &Image) -> Vec<PathBuf> {
        img.config
            .rootfs
            .diff_ids
            .iter()
            .map(|d| self.layer_fs(d))
            .collect()
    }

    /// How many images use each layer (by diff id).
    pub fn layer_refcounts(&self) -> Result<HashMap<Digest, usize>, StoreError> {
        let mut counts = HashMap::new();
        for img in self.list()? {
            for d in img.config.rootfs.diff_ids.iter().collect::<BTreeSet<_>>() {
                *counts.entry(d.clone()).or_insert(0) += 1;
            }
        }
        Ok(counts)
    }

    // ---------------------------------------------------------------- changes

    /// Adds `target` as a name of the image `source` names.
    pub fn tag(&self, source: &str, target: &str) -> Result<Image, StoreError> {
        let img = self.find(source)?;
        let r: Reference = target.parse()?;
        if r.digest.is_some() {
            return Err(StoreError::Invalid {
                what: target.into(),
                why: "a tag cannot contain a digest".into(),
            });
        }
        self.set_names(&img.manifest_digest, &[r.name()])?;
        self.image_by_manifest(&img.manifest_digest)
    }

    /// Removes a name; when `what` is an id, or the image's last name, the image itself goes,
    /// and with it every blob and layer no other image uses. Returns what was untagged and deleted.
    pub fn remove(&self, what: &str) -> Result<(Vec<String>, Option<Digest>), StoreError> {
        let img = self.find(what)?;
        let by_name = what
            .parse::<Reference>()
            .ok()
            .map(|r| r.name())
            .filter(|n| img.names.contains(n));
        let _lock = self.lock(true)?;
        let mut idx = self.read_index()?;
        let Some(entry) = idx.images.get_mut(&img.manifest_digest) else {
            return Err(StoreError::NoSuchImage(what.into()));
        };
        let (untagged, deleted) = match by_name {
            Some(n) if entry.names.len() > 1 => {
                entry.names.remove(&n);
                (vec![n], None)
            }
            _ => {
                let names = entry.names.iter().cloned().collect();
                idx.images.remove(&img.manifest_digest);
                (names, Some(img.id.clone()))
            }
        };
        self.write_index(&idx)?;
        if deleted.is_some() {
            self.collect_garbage(&idx, false)?;
        }
        Ok((untagged, deleted))
    }

    /// Removes images without a name, everything no image references (blobs, layers), and
    /// leftovers of interrupted work in `tmp/`.
    pub fn prune(&self) -> Result<PruneReport, StoreError> {
        let _lock = self.lock(true)?;
        let mut idx = self.read_index()?;
        let dangling: Vec<Digest> = idx
            .images
            .iter()
            .filter(|(_, e)| e.names.is_empty())
            .map(|(d, _)| d.clone())
            .collect();
        let mut report = PruneReport::default();
        for d in &dangling {
            if let Ok(img) = self.build_image(d, vec![]) {
                report.images.push(img.id);
            }
            idx.images.remove(d);
        }
        if !dangling.is_empty() {
            self.write_index(&idx)?;
        }
        let gc = self.collect_garbage(&idx, true)?;
        report.blobs = gc.blobs;
        report.layers = gc.layers;
        report.tmp_entries = gc.tmp_entries;
        report.bytes = gc.bytes;
        Ok(report)
    }

    /// Deletes blobs and layers not reachable from `idx`. Call with the exclusive lock held.
    fn collect_garbage(&self, idx: &Index, with_tmp: bool) -> Result<PruneReport, StoreError> {
        let mut keep_blobs = BTreeSet::new();
        let mut keep_layers = BTreeSet::new();
        for md in idx.images.keys() {
            keep_blobs.insert(md.hex().to_owned());
            let Ok(mb) = self.read_blob(md) else { continue };
            let Ok(ManifestOrIndex::Manifest(m)) = ManifestOrIndex::parse(&mb, None, md.as_str())
            else {
                continue;
            };
            keep_blobs.insert(m.config.digest.hex().to_owned());
            keep_blobs.extend(m.layers.iter().map(|l| l.digest.hex().to_owned()));
            let config = self
                .read_blob(&m.config.digest)
                .ok()
                .and_then(|cb| ImageConfig::parse(&cb, md.as_str()).ok());
            if let Some(c) = config {
                keep_layers.extend(c.rootfs.diff_ids.iter().map(|d| d.hex().to_owned()));
            }
        }
        let mut report = PruneReport::default();
        let blobs = self.dir.join("blobs/sha256");
        for e in fs::read_dir(&blobs).map_err(io_at(&blobs))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep_blobs.contains(&name) {
                report.bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(e.path()).map_err(io_at(&e.path()))?;
                report.blobs += 1;
            }
        }
        let layers = self.dir.join("layers");
        for e in fs::read_dir(&layers).map_err(io_at(&layers))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep_layers.contains(&name) {
                fs::remove_dir_all(e.path()).map_err(io_at(&e.path()))?;
                report.layers += 1;
            }
        }
        if with_tmp {
            let tmp = self.dir.join("tmp");
            for e in fs::read_dir(&tmp).map_err(io_at(&tmp))?.flatten() {
                let p = e.path();
                let r = if p.is_dir() && !p.is_symlink() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                r.map_err(io_at(&p))?;
                report.tmp_entries += 1;
            }
        }
        Ok(report)
    }

    /// Applies an image's layers one after the other into `dest` (a plain rootfs directory,
    /// whiteouts applied as deletions). Used to build root filesystems offline.
    pub fn flatten(&self, img: &Image, dest: &Path) -> Result<(), StoreError> {
        fs::create_dir_all(dest).map_err(io_at(dest))?;
        for l in &img.manifest.layers {
            let what = format!("layer {}", l.digest);
            let c = Compression::from_media_type(&l.media_type).unwrap_or(Compression::None);
            let f = self.open_blob(&l.digest)?;
            let r =
                unpack::decompress(io::BufReader::new(f), c).map_err(|e| StoreError::Invalid {
                    what: what.clone(),
                    why: e.to_string(),
                })?;
            unpack::unpack(r, dest, unpack::Mode::Flatten)
                .map_err(|err| StoreError::Unpack { what, err })?;
        }
        Ok(())
    }

    /// A scratch directory inside the store (same filesystem, removed by `prune` if left over).
    pub(crate) fn scratch_dir(&self, what: &str) -> Result<ScratchDir, StoreError> {
        let p = self.tmp_name(what);
        fs::create_dir_all(&p).map_err(io_at(&p))?;
        Ok(ScratchDir(p))
    }
}

/// A temporary directory removed on drop.
pub(crate) struct ScratchDir(pub PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn check_digest(bytes: &[u8], expected: &Digest, what: &str) -> Result<(), StoreError> {
    let actual = Digest::of(bytes);
    if &actual != expected {
        return Err(StoreError::DigestMismatch {
            what: what.into(),
            expected: expected.clone(),
            actual,
        });
    }
    Ok(())
}

/// Blobs from a registry session.
struct RegistrySource(Session);

impl BlobSource for RegistrySource {
    fn open(&self, d: &Descriptor) -> Result<Box<dyn Read + Send>, StoreError> {
        let mut s = self.0.clone();
        Ok(s.blob(&d.digest)?.0)
    }
}
