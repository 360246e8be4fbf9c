//! `system-docker`: a small client for the system engine's Docker API, so the OS does not
//! need the 44 MB docker CLI to run `system-docker ps` or `system-docker logs ntp`.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

use super::output::{exit_code, for_each_name, print, table, to_terminal};
use crate::engine::api::types::{
    ContainerConfig, ContainerCreateBody, ExecCreateBody, ExecStartBody, HostConfig, RestartPolicy,
};
use crate::engine::client::{Client, demux, enc, enc_image, system_engine_host};

/// A client for Paddock's system engine (a subset of the docker CLI).
#[derive(Debug, Parser)]
#[command(
    name = "system-docker",
    version,
    about = "Paddock system engine client"
)]
pub struct Args {
    /// The engine socket (default: $SYSTEM_DOCKER_HOST, then unix:///var/run/system-docker.sock).
    #[arg(short = 'H', long = "host", global = true, value_name = "unix:///PATH")]
    pub host: Option<String>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Show the engine's version.
    Version,
    /// Show engine-wide information.
    Info,
    /// List containers.
    Ps {
        #[arg(short, long)]
        all: bool,
        /// Only ids.
        #[arg(short, long)]
        quiet: bool,
        /// `key=value` (label=..., name=..., status=..., id=...).
        #[arg(short, long)]
        filter: Vec<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show a container's (or image's) details as JSON.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
        /// container or image (default: try a container, then an image).
        #[arg(long = "type")]
        kind: Option<String>,
    },
    /// Start stopped containers.
    Start {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Stop containers (stop signal, then SIGKILL after the timeout).
    Stop {
        #[arg(short = 't', long = "time")]
        time: Option<i64>,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Restart containers.
    Restart {
        #[arg(short = 't', long = "time")]
        time: Option<i64>,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Send a signal to containers.
    Kill {
        #[arg(short, long)]
        signal: Option<String>,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove containers.
    Rm {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Print a container's logs.
    Logs {
        #[arg(short, long)]
        follow: bool,
        #[arg(long, short = 'n')]
        tail: Option<String>,
        name: String,
    },
    /// Wait for containers to stop and print their exit codes.
    Wait {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Rename a container.
    Rename { old: String, new: String },
    /// Run a command in a running container.
    Exec {
        #[arg(short, long)]
        interactive: bool,
        #[arg(short, long)]
        tty: bool,
        #[arg(short, long)]
        detach: bool,
        #[arg(short, long)]
        user: Option<String>,
        #[arg(short, long)]
        workdir: Option<String>,
        #[arg(short, long)]
        env: Vec<String>,
        #[arg(long)]
        privileged: bool,
        name: String,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Create and start a container.
    Run {
        #[arg(short, long)]
        detach: bool,
        #[arg(long)]
        rm: bool,
        #[arg(long)]
        name: Option<String>,
        #[arg(short, long)]
        env: Vec<String>,
        #[arg(short, long)]
        volume: Vec<String>,
        #[arg(long, alias = "network")]
        net: Option<String>,
        #[arg(long)]
        privileged: bool,
        #[arg(long)]
        restart: Option<String>,
        #[arg(short, long)]
        label: Vec<String>,
        #[arg(long)]
        entrypoint: Option<String>,
        image: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// List images.
    Images {
        #[arg(short, long)]
        quiet: bool,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Pull an image from a registry.
    Pull { reference: String },
    /// Remove images.
    Rmi {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Give an image another name.
    Tag { source: String, target: String },
    /// Load images from a tar archive (docker-archive or OCI).
    Load {
        #[arg(short, long)]
        input: Option<PathBuf>,
    },
    /// Save images to a tar archive.
    Save {
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub fn main(args: Vec<std::ffi::OsString>) -> ExitCode {
    let a = match super::parse::<Args>(args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    match run(a) {
        Ok(code) => code,
        Err(e) if super::output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("system-docker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn short(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..12.min(id.len())]
}

fn ago(unix: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let s = (now - unix).max(0);
    match s {
        0..=59 => format!("{s} seconds ago"),
        60..=3599 => format!("{} minutes ago", s / 60),
        3600..=86399 => format!("{} hours ago", s / 3600),
        _ => format!("{} days ago", s / 86400),
    }
}

fn json_out(v: &impl serde::Serialize) -> anyhow::Result<()> {
    print(&format!("{}\n", serde_json::to_string_pretty(v)?))?;
    Ok(())
}

fn each(names: &[String], f: impl FnMut(&str) -> anyhow::Result<()>) -> anyhow::Result<ExitCode> {
    for_each_name(names, "system-docker: ", f)
}

fn run(a: Args) -> anyhow::Result<ExitCode> {
    let host = system_engine_host(a.host.as_deref());
    let mut c = Client::new(&host)?;
    if matches!(a.cmd, Cmd::Pull { .. } | Cmd::Run { .. }) {
        // Pulls carry rancher.registry_auths, as the service layer's do.
        let cfg = crate::config::sources::load(
            &crate::root::Root::new("/"),
            crate::config::sources::LoadOptions::FULL,
        )
        .config();
        c = c.with_registry_auths(crate::image::registry::RegistryAuths::from_config(
            &cfg.rancher.registry_auths,
        ));
    }
    match a.cmd {
        Cmd::Version => {
            let v: serde_json::Value = c.json("GET", "/version", None::<&()>)?;
            let g = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
            print(&format!(
                "Server: {}\n Version:     {}\n API version: {}\n OS/Arch:     {}/{}\n Kernel:      {}\n",
                host,
                g("Version"),
                g("ApiVersion"),
                g("Os"),
                g("Arch"),
                g("KernelVersion")
            ))?;
        }
        Cmd::Info => {
            let v: serde_json::Value = c.json("GET", "/info", None::<&()>)?;
            json_out(&v)?;
        }
        Cmd::Ps {
            all,
            quiet,
            filter,
            format,
        } => {
            let filters = filter
                .iter()
                .map(|f| {
                    f.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .with_context(|| format!("--filter {f}: expected key=value"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let list = c.containers(all, &filters)?;
            if quiet {
                let ids: String = list.iter().map(|s| format!("{}\n", short(&s.id))).collect();
                print(&ids)?;
            } else if format == Format::Json {
                json_out(&list)?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|s| {
                        let mut cmd = s.command.clone();
                        if cmd.chars().count() > 20 {
                            cmd = format!("{}…", cmd.chars().take(19).collect::<String>());
                        }
                        vec![
                            short(&s.id).to_owned(),
                            s.image.clone(),
                            format!("\"{cmd}\""),
                            ago(s.created),
                            s.status.clone(),
                            s.names
                                .iter()
                                .map(|n| n.trim_start_matches('/'))
                                .collect::<Vec<_>>()
                                .join(","),
                        ]
                    })
                    .collect();
                print(&table(
                    &[
                        "CONTAINER ID",
                        "IMAGE",
                        "COMMAND",
                        "CREATED",
                        "STATUS",
                        "NAMES",
                    ],
                    &rows,
                ))?;
            }
        }
        Cmd::Inspect { names, kind } => {
            let mut out = vec![];
            let mut failed = false;
            for n in &names {
                let r = match kind.as_deref() {
                    Some(k) => c.inspect_raw(k, n),
                    None => c
                        .inspect_raw("container", n)
                        .or_else(|_| c.inspect_raw("image", n)),
                };
                match r {
                    Ok(v) => out.push(v),
                    Err(e) => {
                        eprintln!("system-docker: {e}");
                        failed = true;
                    }
                }
            }
            json_out(&out)?;
            if failed {
                return Ok(exit_code(true));
            }
        }
        Cmd::Start { names } => return each(&names, |n| Ok(c.verb(n, "start", "")?)),
        Cmd::Stop { time, names } => {
            let q = time.map(|t| format!("t={t}")).unwrap_or_default();
            return each(&names, |n| Ok(c.verb(n, "stop", &q)?));
        }
        Cmd::Restart { time, names } => {
            let q = time.map(|t| format!("t={t}")).unwrap_or_default();
            return each(&names, |n| Ok(c.verb(n, "restart", &q)?));
        }
        Cmd::Kill { signal, names } => {
            let q = signal
                .map(|s| format!("signal={}", enc(&s)))
                .unwrap_or_default();
            return each(&names, |n| Ok(c.verb(n, "kill", &q)?));
        }
        Cmd::Rm { force, names } => return each(&names, |n| Ok(c.remove(n, force)?)),
        Cmd::Logs { follow, tail, name } => {
            c.logs(&name, follow, tail.as_deref(), to_terminal)?;
        }
        Cmd::Wait { names } => {
            for n in &names {
                print(&format!("{}\n", c.wait(n)?))?;
            }
        }
        Cmd::Rename { old, new } => {
            c.verb(&old, "rename", &format!("name={}", enc(&new)))?;
        }
        Cmd::Exec {
            interactive,
            tty,
            detach,
            user,
            workdir,
            env,
            privileged,
            name,
            cmd,
        } => {
            let body = ExecCreateBody {
                attach_stdin: interactive && !detach,
                attach_stdout: !detach,
                attach_stderr: !detach,
                tty,
                env,
                cmd,
                privileged,
                user: user.unwrap_or_default(),
                working_dir: workdir.unwrap_or_default(),
                ..ExecCreateBody::default()
            };
            let id = c.exec_create(&name, &body)?;
            return exec_start(&c, &id, interactive, tty, detach);
        }
        Cmd::Run {
            detach,
            rm,
            name,
            env,
            volume,
            net,
            privileged,
            restart,
            label,
            entrypoint,
            image,
            cmd,
        } => {
            let labels: BTreeMap<String, String> = label
                .iter()
                .map(|l| match l.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (l.clone(), String::new()),
                })
                .collect();
            let body = ContainerCreateBody {
                config: ContainerConfig {
                    image: image.clone(),
                    cmd: (!cmd.is_empty()).then_some(cmd),
                    entrypoint: entrypoint.map(|e| vec![e]),
                    env,
                    labels,
                    ..ContainerConfig::default()
                },
                host_config: HostConfig {
                    binds: volume,
                    network_mode: net.unwrap_or_default(),
                    privileged,
                    auto_remove: rm,
                    restart_policy: restart
                        .map(|r| {
                            let (n, m) = r.split_once(':').unwrap_or((&r, "0"));
                            RestartPolicy {
                                name: n.to_owned(),
                                maximum_retry_count: m.parse().unwrap_or(0),
                            }
                        })
                        .unwrap_or_default(),
                    ..HostConfig::default()
                },
                ..ContainerCreateBody::default()
            };
            let id = match c.create(name.as_deref(), &body) {
                Err(e) if e.status() == Some(404) && e.to_string().contains("image") => {
                    eprintln!("Unable to find image '{image}' locally");
                    c.pull(&image, progress_line)?;
                    c.create(name.as_deref(), &body)?
                }
                r => r?,
            };
            c.verb(&id, "start", "")?;
            if detach {
                print(&format!("{id}\n"))?;
                return Ok(ExitCode::SUCCESS);
            }
            let logs = c.logs(&id, true, None, to_terminal);
            // With --rm the engine keeps the exit code of a container it just removed.
            let code = c.wait_for(&id, if rm { "removed" } else { "not-running" })?;
            logs?;
            return Ok(ExitCode::from(code.clamp(0, 255) as u8));
        }
        Cmd::Images { quiet, format } => {
            let list = c.images()?;
            if quiet {
                print(
                    &list
                        .iter()
                        .map(|i| format!("{}\n", short(&i.id)))
                        .collect::<String>(),
                )?;
            } else if format == Format::Json {
                json_out(&list)?;
            } else {
                let mut rows = vec![];
                for i in &list {
                    let tags = if i.repo_tags.is_empty() {
                        vec!["<none>:<none>".to_owned()]
                    } else {
                        i.repo_tags.clone()
                    };
                    for t in tags {
                        let (repo, tag) = t.rsplit_once(':').unwrap_or((&t, ""));
                        rows.push(vec![
                            repo.to_owned(),
                            tag.to_owned(),
                            short(&i.id).to_owned(),
                            ago(i.created),
                            human_size(i.size),
                        ]);
                    }
                }
                print(&table(
                    &["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"],
                    &rows,
                ))?;
            }
        }
        Cmd::Pull { reference } => {
            c.pull(&reference, progress_line)?;
            print(&format!("{reference}\n"))?;
        }
        Cmd::Rmi { force, names } => {
            return each(&names, |n| {
                c.call(
                    "DELETE",
                    &format!("/images/{}?force={}", enc_image(n), force as u8),
                    None::<&()>,
                )?;
                Ok(())
            });
        }
        Cmd::Tag { source, target } => {
            let (repo, tag) = match target.rsplit_once(':') {
                Some((r, t)) if !t.contains('/') => (r.to_owned(), t.to_owned()),
                _ => (target.clone(), "latest".to_owned()),
            };
            c.call(
                "POST",
                &format!(
                    "/images/{}/tag?repo={}&tag={}",
                    enc_image(&source),
                    enc(&repo),
                    enc(&tag)
                ),
                None::<&()>,
            )?;
        }
        Cmd::Load { input } => {
            let mut src: Box<dyn Read> = match &input {
                Some(p) => Box::new(
                    std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
                ),
                None => Box::new(io::stdin()),
            };
            let resp = c.request(
                "POST",
                "/images/load",
                Some("application/x-tar"),
                Some(&mut src),
            )?;
            let mut b = String::new();
            let mut body = resp.body;
            body.read_to_string(&mut b)?;
            for line in b.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
                if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
                    bail!("{e}");
                }
                if let Some(s) = v.get("stream").and_then(|s| s.as_str()) {
                    print(s)?;
                }
            }
        }
        Cmd::Save { output, names } => {
            let q: Vec<String> = names.iter().map(|n| format!("names={}", enc(n))).collect();
            let resp = c.request("GET", &format!("/images/get?{}", q.join("&")), None, None)?;
            let mut body = resp.body;
            match &output {
                Some(p) => {
                    let tmp = p.with_extension("tmp");
                    let mut f = std::fs::File::create(&tmp)
                        .with_context(|| format!("creating {}", tmp.display()))?;
                    io::copy(&mut body, &mut f)?;
                    f.sync_all()?;
                    std::fs::rename(&tmp, p)?;
                }
                None => {
                    io::copy(&mut body, &mut io::stdout().lock())?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn human_size(n: i64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2}GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1}MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}kB", n / 1e3)
    } else {
        format!("{n}B")
    }
}

fn progress_line(m: &crate::engine::api::types::ProgressMessage) {
    let mut line = String::new();
    if let Some(id) = &m.id {
        line.push_str(id);
        line.push_str(": ");
    }
    if let Some(s) = &m.status {
        line.push_str(s);
    }
    if !line.is_empty() {
        eprintln!("{line}");
    }
}

/// Runs an exec's stream: stdin to the process when `-i`, output back; with `-t` the local
/// terminal is put in raw mode for the duration.
fn exec_start(
    c: &Client,
    id: &str,
    interactive: bool,
    tty: bool,
    detach: bool,
) -> anyhow::Result<ExitCode> {
    let body = ExecStartBody {
        detach,
        tty,
        console_size: None,
    };
    if detach {
        c.call("POST", &format!("/exec/{id}/start"), Some(&body))?;
        return Ok(ExitCode::SUCCESS);
    }
    let _raw = if tty { RawMode::enter() } else { None };
    if tty && let Some((h, w)) = RawMode::size() {
        let _ = c.call(
            "POST",
            &format!("/exec/{id}/resize?h={h}&w={w}"),
            None::<&()>,
        );
    }
    let (raw, up) = c.upgrade(&format!("/exec/{id}/start"), &body)?;
    if interactive {
        let mut w = up.writer.try_clone()?;
        std::thread::spawn(move || {
            let _ = io::copy(&mut io::stdin().lock(), &mut w);
            let _ = w.shutdown(std::net::Shutdown::Write);
        });
    }
    let _ = demux(up.reader, raw || tty, &mut to_terminal);
    drop(_raw);
    let st = c.exec_inspect(id)?;
    Ok(ExitCode::from(st.exit_code.unwrap_or(0).clamp(0, 255) as u8))
}

/// The local terminal in raw mode, restored on drop.
struct RawMode(rustix::termios::Termios);

impl RawMode {
    fn enter() -> Option<RawMode> {
        let stdin = io::stdin();
        let saved = rustix::termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw).ok()?;
        Some(RawMode(saved))
    }

    fn size() -> Option<(u16, u16)> {
        let ws = rustix::termios::tcgetwinsize(io::stdout()).ok()?;
        Some((ws.ws_row, ws.ws_col))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ =
            rustix::termios::tcsetattr(io::stdin(), rustix::termios::OptionalActions::Now, &self.0);
    }
}
