//! `ros tls generate`: certificates for the user Docker's TLS socket (`rancher.docker.tls`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Subcommand;

use super::Context;
use crate::config::sources::{self as cfgsrc, LoadOptions};
use crate::tls::{self, Ca, Kind};

#[derive(Debug, Subcommand)]
pub enum TlsCmd {
    /// Generate a client certificate for the docker CLI (into ~/.docker), or with --server
    /// the server certificate dockerd uses when `rancher.docker.tls` is true.
    #[command(alias = "gen")]
    Generate {
        /// A server certificate for dockerd (kept on the state partition for later boots).
        #[arg(short, long)]
        server: bool,
        /// A name or address the server certificate is valid for (repeatable). The hostname,
        /// localhost, 127.0.0.1 and ::1 are always included.
        #[arg(short = 'H', long = "hostname", value_name = "NAME")]
        hostnames: Vec<String>,
        /// Where to write the files (default: /etc/docker/tls with --server, else ~/.docker
        /// of the user who ran sudo).
        #[arg(short, long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

pub fn run(cmd: TlsCmd, ctx: &Context) -> anyhow::Result<ExitCode> {
    let TlsCmd::Generate {
        server,
        hostnames,
        dir,
    } = cmd;
    let cfg = cfgsrc::load(&ctx.root, LoadOptions::FULL).config();
    let d = &cfg.rancher.docker;
    let configured_ca = d.ca_cert.as_deref().zip(d.ca_key.as_deref());
    let state = ctx.root.path(tls::STATE_DIR);
    let (ca, created) = Ca::load_or_create(configured_ca, &state)?;
    if created {
        println!("created a CA in {}", state.display());
    }
    if server {
        let hostname = cfg
            .hostname
            .as_ref()
            .map(|h| h.to_string())
            .or_else(|| nix::unistd::gethostname().ok()?.into_string().ok());
        let names = tls::default_server_names(hostname.as_deref(), &hostnames);
        let pair = ca.issue(Kind::Server, &names)?;
        tls::save_server(&pair, &state)?;
        let out = dir.unwrap_or_else(|| ctx.root.path(tls::SERVER_DIR));
        tls::install_server(ca.cert_pem(), &pair, &out)?;
        println!(
            "server certificate for {} written to {} (and kept in {}); `system-docker restart docker` uses it",
            names.join(", "),
            out.display(),
            state.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let pair = ca.issue(Kind::Client, &[])?;
    let (out, owner) = match dir {
        Some(d) => (d, None),
        None => client_dir(ctx)?,
    };
    tls::install_client(ca.cert_pem(), &pair, &out)?;
    if let Some((uid, gid)) = owner {
        for f in ["", "ca.pem", "cert.pem", "key.pem"] {
            let p = out.join(f);
            std::os::unix::fs::lchown(&p, Some(uid), Some(gid))
                .with_context(|| format!("giving {} to uid {uid}", p.display()))?;
        }
    }
    println!(
        "client certificate written to {}; use it with `docker --tlsverify -H tcp://HOST:2376 ...`",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `~/.docker` of the user who ran sudo (owned by them), else of the caller.
fn client_dir(ctx: &Context) -> anyhow::Result<(PathBuf, Option<(u32, u32)>)> {
    let sudo_user = std::env::var("SUDO_USER").ok().filter(|u| u != "root");
    let (home, owner) = match sudo_user {
        Some(name) => {
            let Some(u) = nix::unistd::User::from_name(&name)
                .ok()
                .flatten()
                .filter(|u| u.dir.is_absolute())
            else {
                bail!("user {name:?} (from SUDO_USER) has no home in /etc/passwd; pass --dir");
            };
            (u.dir, Some((u.uid.as_raw(), u.gid.as_raw())))
        }
        None => (
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|h| h.is_absolute())
                .context("HOME is not set; pass --dir")?,
            None,
        ),
    };
    let home = ctx.root.path(&home);
    let dir = home.join(".docker");
    // The user owns these paths: root never writes through a link they planted.
    for p in [&home, &dir] {
        if crate::fsutil::is_symlink(p) {
            bail!("refusing to write through the link {}", p.display());
        }
    }
    Ok((dir, owner))
}
