//! The command line: raw arguments are parsed by clap here, then resolved into library calls.
//!
//! `ros` is a multi-call binary: the name it was invoked as (argv[0]) picks the tool. Today
//! `ros`, `system-dockerd` (the system engine daemon) and `system-docker` (its client) exist;
//! `init` and friends join as they are built.

mod config;
pub mod dockerd;
mod image;
mod output;
mod service;
mod sysdocker;
mod tls;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::root::Root;

/// Paddock's control tool.
#[derive(Debug, Parser)]
#[command(
    name = "ros",
    version,
    about = "Paddock control tool",
    propagate_version = true
)]
pub struct Cli {
    /// Work below DIR instead of `/` (every path ros reads or writes is prefixed with it).
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        default_value = "/",
        env = "ROS_ROOT"
    )]
    pub root: PathBuf,

    /// The system engine's data directory (as the running OS sees it).
    #[arg(long, global = true, value_name = "DIR", default_value = crate::image::store::DEFAULT_DATA_ROOT)]
    pub data_root: String,

    /// Log more (repeat for more detail).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage the system engine's images (pull, load, save, list, remove, ...).
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// Read, change and validate the cloud-config.
    #[command(subcommand, alias = "c")]
    Config(config::ConfigCmd),
    /// Manage system services (compose definitions from the cloud-config).
    #[command(alias = "s")]
    Service(service::ServiceArgs),
    /// Certificates for the user Docker's TLS socket.
    #[command(subcommand)]
    Tls(tls::TlsCmd),
    /// Apply `rancher.network` and keep the DHCP clients running (the network service).
    Netconf,
    /// Run the user Docker daemon in the storage context's mount namespace (the docker service).
    #[command(name = "docker-init")]
    DockerInit,
    /// Internal: the per-container monitor the engine spawns.
    #[command(name = "__shim", hide = true)]
    Shim { dir: PathBuf },
    /// Internal: the helper that runs a `docker exec` process in a container.
    #[command(name = "__exec", hide = true)]
    Exec { config: PathBuf },
}

/// What every subcommand gets besides its own arguments.
#[derive(Debug, Clone)]
pub struct Context {
    pub root: Root,
    pub data_root: String,
}

/// Entry point of the `ros` binary. Never panics on bad input: every failure is an error
/// message on stderr and a non-zero exit status.
pub fn main(args: Vec<OsString>) -> ExitCode {
    // Multi-call: the name we were invoked as picks the tool.
    let argv0 = args.first().map(|a| {
        std::path::Path::new(a)
            .file_name()
            .unwrap_or(a.as_os_str())
            .to_string_lossy()
            .into_owned()
    });
    match argv0.as_deref() {
        Some("system-dockerd") => return daemon_main(args),
        Some("system-docker") => return sysdocker::main(args),
        Some("init") => return ExitCode::from(crate::init::main().clamp(0, 255) as u8),
        Some("reboot") => return power(crate::init::PowerAction::Reboot),
        Some("poweroff") => return power(crate::init::PowerAction::PowerOff),
        Some("halt") => return power(crate::init::PowerAction::Halt),
        Some("netconf") => return netconf(&crate::root::Root::new("/")),
        _ => {}
    }
    let cli = match parse::<Cli>(args) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    // The shim logs errors only (to its shim.log): the runtime's reasons for a failed start,
    // which the engine attaches to the start error. The exec helper's stderr is the user's.
    let level = match cli.command {
        Command::Shim { .. } => "error",
        Command::Exec { .. } => "off",
        _ => verbosity(cli.verbose),
    };
    init_logging(level);
    let ctx = Context {
        root: Root::new(cli.root.clone()),
        data_root: cli.data_root.clone(),
    };
    let result = match cli.command {
        Command::Image(cmd) => image::run(cmd, &ctx),
        Command::Config(cmd) => config::run(cmd, &ctx),
        Command::Service(args) => service::run(args, &ctx),
        Command::Tls(cmd) => tls::run(cmd, &ctx),
        Command::Netconf => Ok(netconf(&ctx.root)),
        Command::DockerInit => {
            let cfg =
                crate::config::sources::load(&ctx.root, crate::config::sources::LoadOptions::FULL)
                    .config();
            let auths =
                crate::image::registry::RegistryAuths::from_config(&cfg.rancher.registry_auths);
            Ok(ExitCode::from(
                crate::userdocker::run(&cfg.rancher.docker, &auths).clamp(0, 255) as u8,
            ))
        }
        Command::Shim { dir } => Ok(ExitCode::from(
            crate::engine::shim::main(&dir).clamp(0, 255) as u8,
        )),
        Command::Exec { config } => Ok(ExitCode::from(
            crate::engine::exec::helper_main(&config).clamp(0, 255) as u8,
        )),
    };
    match result {
        Ok(code) => code,
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ros: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Parses arguments; on failure clap has printed help/version (stdout) or the error (stderr)
/// and the exit code is returned.
fn parse<T: Parser>(args: Vec<OsString>) -> Result<T, ExitCode> {
    T::try_parse_from(args).map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        }
    })
}

/// The network service: the merged config's `rancher.network`, applied and supervised.
fn netconf(root: &crate::root::Root) -> ExitCode {
    let loaded = crate::config::sources::load(root, crate::config::sources::LoadOptions::FULL);
    for p in &loaded.problems {
        eprintln!("netconf: config problem (skipped): {p}");
    }
    let cfg = loaded.config();
    let net = &cfg.rancher.network;
    let user_dns = !net.dns.nameservers.is_empty();
    ExitCode::from(
        crate::netconf::run(net, &cfg.rancher.defaults.network, user_dns).clamp(0, 255) as u8,
    )
}

fn power(action: crate::init::PowerAction) -> ExitCode {
    ExitCode::from(crate::init::request(action).clamp(0, 255) as u8)
}

fn daemon_main(args: Vec<OsString>) -> ExitCode {
    let a = match parse::<dockerd::DaemonArgs>(args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    init_logging(verbosity(a.debug + 1));
    match dockerd::run(a) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("system-dockerd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The log level for `-v` given `verbose` times.
fn verbosity(verbose: u8) -> &'static str {
    match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    }
}

/// Logs at `level` (a tracing filter), unless `ROS_LOG` says otherwise.
fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ROS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .try_init();
}
