//! `system-dockerd`: the system engine daemon, with dockerd's spelling of its flags.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Parser;
use nix::sys::signal::{SigSet, Signal};

use crate::engine::daemon::{Engine, EngineConfig};
use crate::image::Store;
use crate::root::Root;

pub const DEFAULT_SOCKET: &str = "/var/run/system-docker.sock";

/// The Paddock system engine daemon.
#[derive(Debug, Parser)]
#[command(
    name = "system-dockerd",
    version,
    about = "Paddock system engine daemon"
)]
pub struct DaemonArgs {
    /// Root of the engine's persistent state (images, containers, volumes).
    #[arg(long, default_value = crate::image::store::DEFAULT_DATA_ROOT, value_name = "DIR")]
    pub data_root: PathBuf,
    /// Socket to listen on; only unix:// is supported (no TCP, by design).
    #[arg(
        short = 'H',
        long = "host",
        default_value = "unix:///var/run/system-docker.sock",
        value_name = "unix:///PATH"
    )]
    pub host: String,
    /// Work below DIR (applies to --data-root and the socket path).
    #[arg(long, default_value = "/", value_name = "DIR")]
    pub root: PathBuf,
    /// Log more (repeat for more detail).
    #[arg(short = 'D', long = "debug", action = clap::ArgAction::Count)]
    pub debug: u8,
}

pub fn socket_path(host: &str) -> anyhow::Result<PathBuf> {
    match host.strip_prefix("unix://") {
        Some(p) if p.starts_with('/') => Ok(PathBuf::from(p)),
        _ => bail!("-H {host}: the system engine listens on a unix socket only (unix:///PATH)"),
    }
}

pub fn run(args: DaemonArgs) -> anyhow::Result<ExitCode> {
    let root = Root::new(&args.root);
    let data_dir = root.path(&args.data_root);
    let socket = root.path(socket_path(&args.host)?);
    // Signals are taken synchronously: block them before any thread exists.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT] {
        signals.add(s);
    }
    signals.thread_block().context("blocking signals")?;
    let store = Store::at(data_dir.join("image"))
        .with_context(|| format!("opening the image store in {}", data_dir.display()))?;
    let engine = Engine::open(EngineConfig::new(data_dir.clone()), store)?;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let server = crate::engine::docker::serve(engine, &socket)
        .map_err(|e| anyhow::anyhow!("listening on {}: {e}", socket.display()))?;
    tracing::info!(
        "system engine listening on {} (data root {})",
        socket.display(),
        data_dir.display()
    );
    let sig = signals.wait().context("waiting for signals")?;
    tracing::info!("{sig:?}: shutting down; containers keep running under their monitors");
    server.shutdown();
    Ok(ExitCode::SUCCESS)
}
