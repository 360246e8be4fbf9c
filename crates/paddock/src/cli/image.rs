//! `ros image ...`: the daemonless image CLI over [`crate::image::Store`].

use std::fs;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Subcommand, ValueEnum};

use super::Context;
use super::output::{print, table};
use crate::image::archive::{self, Format};
use crate::image::progress::Progress;
use crate::image::reference::familiar;
use crate::image::registry::{AuthConfig, ClientOptions, RegistryAuths};
use crate::image::{Image, Reference, Store};

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Pull an image from a registry.
    Pull {
        /// Image reference: name[:tag] or name@sha256:digest.
        reference: String,
        /// Credentials for this pull's registry, as USER:PASSWORD.
        #[arg(long, value_name = "USER:PASSWORD")]
        creds: Option<String>,
        /// Registry credentials: docker's config.json, or a map of registry -> {auth | username, password}.
        #[arg(long, value_name = "FILE")]
        auth_file: Option<PathBuf>,
        /// Allow plain http to this registry host (loopback hosts always are).
        #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
        insecure: Vec<String>,
        /// Print only the image id.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Load images from a docker-archive or OCI archive (file, directory or - for stdin).
    Load {
        #[arg(short, long, default_value = "-", value_name = "FILE|DIR")]
        input: PathBuf,
        /// Name the loaded image (the archive must hold exactly one).
        #[arg(long, value_name = "NAME[:TAG]")]
        tag: Option<String>,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Save images to an archive.
    Save {
        /// Write to FILE (atomically) instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = SaveFormat::DockerArchive)]
        format: SaveFormat,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// List images.
    #[command(alias = "list", alias = "images")]
    Ls {
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
        /// Only image ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove images (a name untags; an id or an image's last name deletes it).
    #[command(alias = "rmi", alias = "remove")]
    Rm {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Show images as JSON.
    Inspect {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Give an image another name.
    Tag { source: String, target: String },
    /// Remove unnamed images, unreferenced blobs and layers, and leftovers of interrupted pulls.
    Prune,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SaveFormat {
    DockerArchive,
    OciArchive,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

pub fn run(cmd: ImageCmd, ctx: &Context) -> anyhow::Result<ExitCode> {
    let store = Store::open(&ctx.root, &ctx.data_root)?;
    match cmd {
        ImageCmd::Pull {
            reference,
            creds,
            auth_file,
            insecure,
            quiet,
        } => {
            let mut opts = ClientOptions {
                insecure,
                ..Default::default()
            };
            if let Some(f) = auth_file {
                let b =
                    fs::read(&f).with_context(|| format!("reading auth file {}", f.display()))?;
                opts.auths = RegistryAuths::from_json(&b)
                    .with_context(|| format!("auth file {}", f.display()))?;
            }
            if let Some(c) = creds {
                let Some((u, p)) = c.split_once(':') else {
                    bail!("--creds: expected USER:PASSWORD")
                };
                let r: Reference = reference.parse()?;
                opts.auths.0.insert(
                    r.domain.clone(),
                    AuthConfig {
                        username: Some(u.into()),
                        password: Some(p.into()),
                        ..Default::default()
                    },
                );
            }
            let bar = Bars::new(quiet);
            if !quiet {
                eprintln!("Pulling {reference}");
            }
            let img = store
                .pull(&reference, &opts, &bar)
                .with_context(|| format!("pulling {reference}"))?;
            bar.finish();
            if quiet {
                print(&format!("{}\n", img.id))?;
            } else {
                print(&format!(
                    "Digest: {}\nStatus: pulled {}\n",
                    img.manifest_digest,
                    familiar(&img.names.first().cloned().unwrap_or_default())
                ))?;
            }
        }
        ImageCmd::Load { input, tag, quiet } => {
            let bar = Bars::new(quiet);
            let images = archive::load(&store, &input, tag.as_deref(), &bar)
                .with_context(|| format!("loading {}", input.display()))?;
            bar.finish();
            let mut out = String::new();
            for img in images {
                if img.names.is_empty() {
                    out.push_str(&format!("Loaded image ID: {}\n", img.id));
                }
                for n in &img.names {
                    out.push_str(&format!("Loaded image: {}\n", familiar(n)));
                }
            }
            print(&out)?;
        }
        ImageCmd::Save {
            output,
            format,
            images,
        } => {
            let format = match format {
                SaveFormat::DockerArchive => Format::DockerArchive,
                SaveFormat::OciArchive => Format::OciArchive,
            };
            match output {
                Some(path) => save_to_file(&store, &images, format, &path)?,
                None => {
                    if std::io::stdout().is_terminal() {
                        bail!(
                            "refusing to write an archive to a terminal: use -o FILE or redirect stdout"
                        );
                    }
                    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                    archive::save(&store, &images, format, &mut out)?;
                }
            }
        }
        ImageCmd::Ls { format, quiet } => {
            let mut images = store.list()?;
            images.sort_by(|a, b| b.config.created.cmp(&a.config.created));
            if quiet {
                let ids: Vec<String> = images
                    .iter()
                    .map(|i| format!("{}\n", i.id.short()))
                    .collect();
                print(&ids.concat())?;
            } else {
                match format {
                    ListFormat::Json => print(&list_json(&images)?)?,
                    ListFormat::Table => print(&list_table(&images))?,
                }
            }
        }
        ImageCmd::Rm { images } => {
            let mut failed = false;
            for what in images {
                match store.remove(&what) {
                    Ok((untagged, deleted)) => {
                        let mut out = String::new();
                        for n in untagged {
                            out.push_str(&format!("Untagged: {}\n", familiar(&n)));
                        }
                        if let Some(d) = deleted {
                            out.push_str(&format!("Deleted: {d}\n"));
                        }
                        print(&out)?;
                    }
                    Err(e) => {
                        eprintln!("ros: removing {what}: {e}");
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        ImageCmd::Inspect { images } => {
            let mut out = Vec::new();
            for what in images {
                let img = store.find(&what)?;
                out.push(inspect_json(&store, &img)?);
            }
            print(&format!("{}\n", serde_json::to_string_pretty(&out)?))?;
        }
        ImageCmd::Tag { source, target } => {
            store.tag(&source, &target)?;
        }
        ImageCmd::Prune => {
            let r = store.prune()?;
            let mut out = String::new();
            for d in &r.images {
                out.push_str(&format!("Deleted Images: {d}\n"));
            }
            out.push_str(&format!(
                "Removed {} blobs, {} layers, {} temporary entries\nTotal reclaimed space: {}\n",
                r.blobs,
                r.layers,
                r.tmp_entries,
                human_size(r.bytes)
            ));
            print(&out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn save_to_file(
    store: &Store,
    images: &[String],
    format: Format,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let result = (|| -> anyhow::Result<()> {
        let f = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = std::io::BufWriter::new(f);
        archive::save(store, images, format, &mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Splits a full name into docker's REPOSITORY and TAG columns.
fn repo_tag(name: &str) -> (String, String) {
    let f = familiar(name);
    if let Some((r, d)) = f.split_once('@') {
        return (r.to_owned(), format!("<none>@{d}"));
    }
    match f.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r.to_owned(), t.to_owned()),
        _ => (f.to_owned(), "<none>".to_owned()),
    }
}

fn rows(images: &[Image]) -> Vec<(String, String, &Image)> {
    let mut rows = Vec::new();
    for img in images {
        if img.names.is_empty() {
            rows.push(("<none>".into(), "<none>".into(), img));
        }
        for n in &img.names {
            let (r, t) = repo_tag(n);
            rows.push((r, t, img));
        }
    }
    rows
}

fn list_table(images: &[Image]) -> String {
    let rows: Vec<Vec<String>> = rows(images)
        .into_iter()
        .map(|(r, t, img)| {
            vec![
                r,
                t,
                img.id.short().to_owned(),
                img.config.created.clone().unwrap_or_default(),
                human_size(img.size),
            ]
        })
        .collect();
    table(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], &rows)
}

fn list_json(images: &[Image]) -> anyhow::Result<String> {
    let mut out = String::new();
    for (r, t, img) in rows(images) {
        let v = serde_json::json!({
            "Repository": r,
            "Tag": t,
            "ID": img.id.short(),
            "Digest": img.manifest_digest,
            "CreatedAt": img.config.created,
            "Size": human_size(img.size),
            "VirtualSize": img.size,
        });
        out.push_str(&serde_json::to_string(&v)?);
        out.push('\n');
    }
    Ok(out)
}

fn inspect_json(store: &Store, img: &Image) -> anyhow::Result<serde_json::Value> {
    let refs = store.layer_refcounts()?;
    let layers: Vec<serde_json::Value> = img
        .config
        .rootfs
        .diff_ids
        .iter()
        .zip(&img.manifest.layers)
        .map(|(d, l)| {
            serde_json::json!({
                "DiffID": d,
                "Blob": l.digest,
                "MediaType": l.media_type,
                "Dir": store.layer_fs(d),
                "UsedBy": refs.get(d).copied().unwrap_or(0),
            })
        })
        .collect();
    Ok(serde_json::json!({
        "Id": img.id,
        "RepoTags": img.names.iter().filter(|n| !n.contains('@')).map(|n| familiar(n)).collect::<Vec<_>>(),
        "RepoDigests": img.names.iter().filter_map(|n| n.split_once('@').map(|(r, _)| format!("{}@{}", familiar(r), img.manifest_digest))).collect::<Vec<_>>(),
        "ManifestDigest": img.manifest_digest,
        "ManifestMediaType": img.manifest.media_type,
        "Created": img.config.created,
        "Architecture": img.config.architecture,
        "Os": img.config.os,
        "Config": img.config.config,
        "RootFS": { "Type": img.config.rootfs.kind, "Layers": img.config.rootfs.diff_ids },
        "Size": img.size,
        "Layers": layers,
    }))
}

/// Sizes as docker prints them (decimal units).
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{:.3}{}", v, UNITS[u]).replace(".000", "")
    }
}

/// Progress bars on stderr: redrawn in place on a terminal, one line per event otherwise.
struct Bars {
    quiet: bool,
    tty: bool,
    state: Mutex<BarState>,
}

#[derive(Default)]
struct BarState {
    order: Vec<String>,
    lines: std::collections::HashMap<String, (u64, Option<u64>, String)>,
    drawn: usize,
    last: Option<Instant>,
}

impl Bars {
    fn new(quiet: bool) -> Self {
        Bars {
            quiet,
            tty: std::io::stderr().is_terminal(),
            state: Mutex::new(BarState::default()),
        }
    }

    fn redraw(&self, st: &mut BarState, force: bool) {
        if !self.tty || self.quiet {
            return;
        }
        if !force
            && st
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        st.last = Some(Instant::now());
        let mut err = std::io::stderr().lock();
        let mut s = String::new();
        if st.drawn > 0 {
            s.push_str(&format!("\x1b[{}A", st.drawn));
        }
        for id in &st.order {
            let (done, total, status) = &st.lines[id];
            let bar = match total {
                Some(t) if *t > 0 && status == "Downloading" => {
                    let filled = ((*done as f64 / *t as f64) * 30.0).min(30.0) as usize;
                    format!(
                        "[{}>{}] {}/{}",
                        "=".repeat(filled),
                        " ".repeat(30 - filled),
                        human_size(*done),
                        human_size(*t)
                    )
                }
                _ => String::new(),
            };
            s.push_str(&format!("\x1b[2K{id}: {status} {bar}\n"));
        }
        st.drawn = st.order.len();
        let _ = err.write_all(s.as_bytes());
    }

    fn finish(&self) {
        if let Ok(mut st) = self.state.lock() {
            self.redraw(&mut st, true);
        }
    }
}

impl Progress for Bars {
    fn start(&self, id: &str, total: Option<u64>) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if !st.lines.contains_key(id) {
            st.order.push(id.to_owned());
        }
        st.lines
            .insert(id.to_owned(), (0, total, "Downloading".into()));
        if !self.tty && !self.quiet {
            eprintln!(
                "{id}: Downloading {}",
                total.map(human_size).unwrap_or_default()
            );
        }
        self.redraw(&mut st, true);
    }

    fn advance(&self, id: &str, bytes: u64) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if let Some(l) = st.lines.get_mut(id) {
            l.0 += bytes;
        }
        self.redraw(&mut st, false);
    }

    fn done(&self, id: &str, status: &str) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if !st.lines.contains_key(id) {
            st.order.push(id.to_owned());
        }
        let entry = st
            .lines
            .entry(id.to_owned())
            .or_insert((0, None, String::new()));
        entry.2 = status.to_owned();
        if !self.tty && !self.quiet {
            eprintln!("{id}: {status}");
        }
        self.redraw(&mut st, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_columns() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(4_260_000), "4.260MB");
        assert_eq!(human_size(2_000_000), "2MB");
        assert_eq!(
            repo_tag("docker.io/library/busybox:latest"),
            ("busybox".into(), "latest".into())
        );
        assert_eq!(
            repo_tag("localhost:5000/a/b:1"),
            ("localhost:5000/a/b".into(), "1".into())
        );
    }
}
