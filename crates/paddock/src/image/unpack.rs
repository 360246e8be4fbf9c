//! Unpacking layer tars, which are hostile input.
//!
//! The rules, all enforced here and nowhere else:
//! - an entry path is made relative (a leading `/` is dropped) and refused if any component is
//!   `..`; nothing is ever created, changed or followed outside `dest`;
//! - every parent of an entry must be a real directory inside `dest`: an entry that would write
//!   through a symlink (or through a file) is refused, naming the entry and the symlink;
//! - the final component is never followed: an existing symlink or file there is replaced,
//!   files are opened with `O_NOFOLLOW | O_EXCL`, directory metadata is applied through an fd
//!   opened with `O_NOFOLLOW | O_DIRECTORY`;
//! - hardlink targets obey the same rules and must already exist in this layer;
//! - xattrs in the `trusted.overlay.` namespace are dropped (they would let a layer forge
//!   overlayfs metadata); whiteouts are the only way a layer hides lower content.
//!
//! Whiteouts follow the OCI image spec. In [`Mode::Overlay`] (the store: one directory per
//! layer, stacked later as overlayfs lowerdirs) `.wh.NAME` becomes a 0/0 character device and
//! `.wh..wh..opq` becomes `trusted.overlay.opaque=y` on its directory. In [`Mode::Flatten`]
//! (applying layers one after the other into a single rootfs) they delete lower content. Either
//! way they affect only lower layers, never what the same layer wrote.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::sys::stat::{Mode as NixMode, SFlag};
use tar::EntryType;

/// How whiteouts are represented on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One directory per layer: whiteouts become overlayfs whiteouts.
    Overlay,
    /// All layers into one directory: whiteouts delete.
    Flatten,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {entry:?} refused: {why}")]
    Refused { entry: String, why: String },
    #[error("layer entry {entry:?}: {err}")]
    Io { entry: String, err: io::Error },
    #[error("reading layer tar: {0}")]
    Tar(io::Error),
}

/// What an unpack did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub entries: u64,
    pub whiteouts: u64,
    /// Device nodes skipped because we are not root.
    pub skipped_devices: u64,
}

const OPAQUE: &str = ".wh..wh..opq";
const WH_PREFIX: &str = ".wh.";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

struct DirMeta {
    path: PathBuf,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

struct Unpacker<'a> {
    dest: &'a Path,
    mode: Mode,
    root: bool,
    /// Paths (relative) this layer wrote, so whiteouts never hide them.
    written: HashSet<PathBuf>,
    dirs: Vec<DirMeta>,
    stats: Stats,
    buf: Vec<u8>,
}

/// Unpacks one uncompressed layer tar from `tar_stream` into `dest` (which must exist).
/// Returns after the tar's end marker; the caller drains the rest of the stream if it hashes it.
pub fn unpack<R: Read>(tar_stream: R, dest: &Path, mode: Mode) -> Result<Stats, UnpackError> {
    let mut u = Unpacker {
        dest,
        mode,
        root: nix::unistd::geteuid().is_root(),
        written: HashSet::new(),
        dirs: Vec::new(),
        stats: Stats::default(),
        buf: vec![0; 256 * 1024],
    };
    let mut archive = tar::Archive::new(tar_stream);
    for entry in archive.entries().map_err(UnpackError::Tar)? {
        let mut entry = entry.map_err(UnpackError::Tar)?;
        u.entry(&mut entry)?;
    }
    u.finish_dirs();
    Ok(u.stats)
}

fn display(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

/// Makes a tar path relative and clean; refuses `..`. Returns `None` for the root itself.
fn sanitize(raw: &[u8]) -> Result<Option<PathBuf>, String> {
    if raw.contains(&0) {
        return Err("path contains a NUL byte".into());
    }
    let mut out = PathBuf::new();
    for c in Path::new(OsStr::from_bytes(raw)).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            Component::ParentDir => return Err("path contains '..'".into()),
        }
    }
    Ok(if out.as_os_str().is_empty() {
        None
    } else {
        Some(out)
    })
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = entry.path_bytes().into_owned();
        let name = display(&raw);
        let refuse = |why: String| UnpackError::Refused {
            entry: name.clone(),
            why,
        };
        let io_err = |err: io::Error| UnpackError::Io {
            entry: name.clone(),
            err,
        };
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let Some(rel) = sanitize(&raw).map_err(refuse)? else {
            return Ok(()); // the layer's root directory itself
        };
        self.stats.entries += 1;
        let file_name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();

        // Whiteouts.
        if file_name == OPAQUE {
            self.stats.whiteouts += 1;
            let dir = self.ensure_parents(&rel).map_err(&refuse)?;
            return self.opaque(&parent_rel, &dir).map_err(io_err);
        }
        if let Some(hidden) = file_name.strip_prefix(WH_PREFIX) {
            if hidden.starts_with(WH_PREFIX) {
                return Ok(()); // other aufs metadata (.wh..wh.plnk etc.): meaningless here
            }
            if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.contains('/') {
                return Err(refuse(format!("whiteout names an invalid file {hidden:?}")));
            }
            self.stats.whiteouts += 1;
            let dir = self.ensure_parents(&rel).map_err(&refuse)?;
            return self
                .whiteout(&parent_rel.join(hidden), &dir.join(hidden))
                .map_err(io_err);
        }

        let dir = self.ensure_parents(&rel).map_err(&refuse)?;
        let path = dir.join(rel.file_name().unwrap_or_default());
        let h = entry.header();
        let mode = h.mode().map_err(io_err)? & 0o7777;
        let uid = h.uid().map_err(io_err)?;
        let gid = h.gid().map_err(io_err)?;
        let mtime = h.mtime().unwrap_or(0);

        let existing = fs::symlink_metadata(&path).ok();
        if kind == EntryType::Directory {
            match existing {
                Some(m) if m.is_dir() => {}
                Some(_) => {
                    fs::remove_file(&path).map_err(io_err)?;
                    fs::create_dir(&path).map_err(io_err)?;
                }
                None => fs::create_dir(&path).map_err(io_err)?,
            }
            self.dirs.push(DirMeta {
                path: path.clone(),
                mode,
                uid,
                gid,
                mtime,
            });
        } else {
            match existing {
                Some(m) if m.is_dir() => fs::remove_dir_all(&path).map_err(io_err)?,
                Some(_) => fs::remove_file(&path).map_err(io_err)?,
                None => {}
            }
            match kind {
                EntryType::Regular | EntryType::Continuous => {
                    let mut f = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .custom_flags(nix::libc::O_NOFOLLOW)
                        .open(&path)
                        .map_err(io_err)?;
                    loop {
                        let n = entry.read(&mut self.buf).map_err(UnpackError::Tar)?;
                        if n == 0 {
                            break;
                        }
                        f.write_all(&self.buf[..n]).map_err(io_err)?;
                    }
                    if self.root {
                        std::os::unix::fs::fchown(&f, Some(uid as u32), Some(gid as u32))
                            .map_err(io_err)?;
                    }
                    f.set_permissions(fs::Permissions::from_mode(mode))
                        .map_err(io_err)?;
                    f.set_modified(time(mtime)).map_err(io_err)?;
                }
                EntryType::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .ok_or_else(|| refuse("symlink without a target".into()))?;
                    if target.contains(&0) {
                        return Err(refuse("symlink target contains a NUL byte".into()));
                    }
                    std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                        .map_err(io_err)?;
                    if self.root {
                        std::os::unix::fs::lchown(&path, Some(uid as u32), Some(gid as u32))
                            .map_err(io_err)?;
                    }
                }
                EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .ok_or_else(|| refuse("hardlink without a target".into()))?;
                    let target_rel = sanitize(&target)
                        .map_err(|w| {
                            refuse(format!("hardlink target {:?}: {w}", display(&target)))
                        })?
                        .ok_or_else(|| refuse("hardlink to the layer root".into()))?;
                    let tdir = self.check_parents(&target_rel).map_err(|w| {
                        refuse(format!("hardlink target {:?}: {w}", display(&target)))
                    })?;
                    let tpath = tdir.join(target_rel.file_name().unwrap_or_default());
                    match fs::symlink_metadata(&tpath) {
                        Ok(m) if m.is_dir() => {
                            return Err(refuse("hardlink to a directory".into()));
                        }
                        Ok(_) => {}
                        Err(_) => {
                            return Err(refuse(format!(
                                "hardlink target {:?} is not in this layer",
                                display(&target)
                            )));
                        }
                    }
                    // std's hard_link is linkat(2) without AT_SYMLINK_FOLLOW: a symlink target is
                    // linked itself, never followed.
                    fs::hard_link(&tpath, &path).map_err(io_err)?;
                }
                EntryType::Char | EntryType::Block => {
                    if !self.root {
                        self.stats.skipped_devices += 1;
                        tracing::warn!("layer entry {name:?}: device node skipped (not root)");
                        return Ok(());
                    }
                    let major = h.device_major().map_err(io_err)?.unwrap_or(0);
                    let minor = h.device_minor().map_err(io_err)?.unwrap_or(0);
                    let kind = if kind == EntryType::Char {
                        SFlag::S_IFCHR
                    } else {
                        SFlag::S_IFBLK
                    };
                    nix::sys::stat::mknod(
                        &path,
                        kind,
                        NixMode::from_bits_truncate(mode),
                        nix::sys::stat::makedev(major.into(), minor.into()),
                    )
                    .map_err(|e| io_err(e.into()))?;
                    self.chown_chmod_path(&path, uid, gid, mode)
                        .map_err(io_err)?;
                }
                EntryType::Fifo => {
                    nix::unistd::mkfifo(&path, NixMode::from_bits_truncate(mode))
                        .map_err(|e| io_err(e.into()))?;
                    self.chown_chmod_path(&path, uid, gid, mode)
                        .map_err(io_err)?;
                }
                other => return Err(refuse(format!("unsupported tar entry type {other:?}"))),
            }
        }
        self.apply_xattrs(entry, &path, &name)?;
        self.written.insert(rel);
        Ok(())
    }

    /// Creates missing parent directories of `rel` and returns the real parent path. Refuses
    /// when a parent is a symlink or not a directory.
    fn ensure_parents(&mut self, rel: &Path) -> Result<PathBuf, String> {
        self.parents(rel, true)
    }

    /// Like `ensure_parents` but creates nothing.
    fn check_parents(&mut self, rel: &Path) -> Result<PathBuf, String> {
        self.parents(rel, false)
    }

    fn parents(&mut self, rel: &Path, create: bool) -> Result<PathBuf, String> {
        let mut cur = self.dest.to_path_buf();
        let mut shown = PathBuf::new();
        let parent = rel.parent().unwrap_or(Path::new(""));
        for c in parent.components() {
            cur.push(c);
            shown.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(format!(
                        "it would write through the symlink {:?}",
                        shown.display().to_string()
                    ));
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(format!(
                        "parent {:?} is not a directory",
                        shown.display().to_string()
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    fs::create_dir(&cur)
                        .map_err(|e| format!("creating {:?}: {e}", shown.display().to_string()))?;
                    self.written.insert(shown.clone());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(format!(
                        "{:?} is not in this layer",
                        shown.display().to_string()
                    ));
                }
                Err(e) => return Err(format!("{:?}: {e}", shown.display().to_string())),
            }
        }
        Ok(cur)
    }

    fn whiteout(&mut self, rel: &Path, path: &Path) -> io::Result<()> {
        if self.written.contains(rel) {
            return Ok(()); // whiteouts hide lower layers only
        }
        match self.mode {
            Mode::Overlay => {
                match fs::symlink_metadata(path) {
                    Ok(m) if m.is_dir() => fs::remove_dir_all(path)?,
                    Ok(_) => fs::remove_file(path)?,
                    Err(_) => {}
                }
                if !self.root {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "an overlay whiteout is a 0/0 device node and needs root",
                    ));
                }
                nix::sys::stat::mknod(path, SFlag::S_IFCHR, NixMode::empty(), 0)?;
            }
            Mode::Flatten => match fs::symlink_metadata(path) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(path)?,
                Ok(_) => fs::remove_file(path)?,
                Err(_) => {}
            },
        }
        Ok(())
    }

    fn opaque(&mut self, dir_rel: &Path, dir: &Path) -> io::Result<()> {
        match self.mode {
            Mode::Overlay => xattr::set(dir, OVERLAY_OPAQUE_XATTR, b"y"),
            Mode::Flatten => {
                for child in fs::read_dir(dir)? {
                    let child = child?;
                    if self.written.contains(&dir_rel.join(child.file_name())) {
                        continue;
                    }
                    if child.file_type()?.is_dir() {
                        fs::remove_dir_all(child.path())?;
                    } else {
                        fs::remove_file(child.path())?;
                    }
                }
                Ok(())
            }
        }
    }

    fn chown_chmod_path(&self, path: &Path, uid: u64, gid: u64, mode: u32) -> io::Result<()> {
        if self.root {
            std::os::unix::fs::lchown(path, Some(uid as u32), Some(gid as u32))?;
        }
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
    }

    fn apply_xattrs<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &Path,
        name: &str,
    ) -> Result<(), UnpackError> {
        let Some(exts) = entry.pax_extensions().map_err(UnpackError::Tar)? else {
            return Ok(());
        };
        for ext in exts {
            let ext = ext.map_err(UnpackError::Tar)?;
            let Ok(key) = ext.key() else { continue };
            let Some(attr) = key.strip_prefix("SCHILY.xattr.") else {
                continue;
            };
            if attr.starts_with("trusted.overlay.") {
                tracing::warn!("layer entry {name:?}: xattr {attr} dropped (overlayfs metadata)");
                continue;
            }
            if !self.root && !attr.starts_with("user.") {
                continue;
            }
            // xattr::set is lsetxattr: it never follows a symlink.
            if let Err(e) = xattr::set(path, attr, ext.value_bytes()) {
                tracing::warn!("layer entry {name:?}: xattr {attr} not set: {e}");
            }
        }
        Ok(())
    }

    /// Directory owners, modes and times are applied last (a read-only directory must still
    /// receive its children), deepest first, through an fd that refuses symlinks.
    fn finish_dirs(&mut self) {
        for d in self.dirs.iter().rev() {
            let f = match OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_DIRECTORY)
                .open(&d.path)
            {
                Ok(f) => f,
                Err(_) => continue, // replaced by a later entry
            };
            if self.root {
                let _ = std::os::unix::fs::fchown(&f, Some(d.uid as u32), Some(d.gid as u32));
            }
            let _ = f.set_permissions(fs::Permissions::from_mode(d.mode));
            let _ = f.set_modified(time(d.mtime));
        }
    }
}

fn time(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// Opens a layer stream for reading its tar: gzip (multi-member), zstd (multi-frame) or plain.
pub fn decompress<'a, R: Read + 'a>(
    r: R,
    c: super::spec::Compression,
) -> io::Result<Box<dyn Read + 'a>> {
    use super::spec::Compression;
    Ok(match c {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(ZstdFrames::new(io::BufReader::new(r))?),
    })
}

/// A zstd reader that continues across concatenated frames.
struct ZstdFrames<R: io::BufRead> {
    cur: Option<ruzstd::decoding::StreamingDecoder<R, ruzstd::decoding::FrameDecoder>>,
}

impl<R: io::BufRead> ZstdFrames<R> {
    fn new(r: R) -> io::Result<Self> {
        let d = ruzstd::decoding::StreamingDecoder::new(r)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}")))?;
        Ok(ZstdFrames { cur: Some(d) })
    }
}

impl<R: io::BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(d) = self.cur.as_mut() else {
                return Ok(0);
            };
            let n = d.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            let Some(d) = self.cur.take() else {
                return Ok(0);
            };
            let mut src = d.into_inner();
            if src.fill_buf()?.is_empty() {
                return Ok(0);
            }
            self.cur =
                Some(ruzstd::decoding::StreamingDecoder::new(src).map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}"))
                })?);
        }
    }
}
