//! `ros service ...`: the system services of the merged cloud-config, reconciled against the
//! system engine (and the user Docker for user-scope services, when it runs).

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use serde_json::Value;

use super::Context;
use super::output::{exit_code, for_each_name, print, table, to_terminal};
use crate::config::sources::{self as cfgsrc, LoadOptions};
use crate::config::{CloudConfig, KeyPath};
use crate::engine::client::{Client, system_engine_host};
use crate::service::api_engine::ApiEngine;
use crate::service::exec::{Engines, ExecOptions, ServiceEngine, execute};
use crate::service::graph::{Graph, GraphOptions};
use crate::service::labels::{self, Scope};
use crate::service::plan::{Action, DesiredService, PlanOptions, plan};
use crate::service::sources::{Resolver, collect};
use crate::service::{Environment, Loaded};

/// The compose project system services belong to.
pub const PROJECT: &str = labels::OS_PROJECT;

#[derive(Debug, Clone, Copy, clap::ValueEnum, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct ServiceArgs {
    /// The system engine (default: $SYSTEM_DOCKER_HOST, then unix:///var/run/system-docker.sock).
    #[arg(short = 'H', long = "host", global = true, value_name = "unix:///PATH")]
    pub host: Option<String>,
    /// The user Docker, for user-scope services (default: $DOCKER_HOST, then
    /// unix:///var/run/docker.sock).
    #[arg(long = "user-host", global = true, value_name = "unix:///PATH")]
    pub user_host: Option<String>,
    #[command(subcommand)]
    pub cmd: ServiceCmd,
}

#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// List the services of the config and whether they are enabled.
    #[command(alias = "ls")]
    List {
        /// Also the services the repositories offer.
        #[arg(short, long)]
        all: bool,
        /// Refresh cached repository files.
        #[arg(short, long)]
        update: bool,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Switch a service on (rancher.services_include.NAME: true): a repository service name,
    /// a URL, or a file under /var/lib/rancher/conf.
    Enable { name: String },
    /// Switch a service off (rancher.services_include.NAME: false).
    Disable { name: String },
    /// Forget a service (remove it from rancher.services_include).
    Delete { name: String },
    /// Bring services to the config: create, recreate (config hash or image changed), keep,
    /// or remove; in dependency order.
    Up {
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Refresh cached service files first.
        #[arg(short, long)]
        update: bool,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
        /// Only these services (and what they depend on); nothing is removed.
        names: Vec<String>,
        /// Only the user-scope services (and what they depend on): what the docker service
        /// runs once the user Docker answers.
        #[arg(long, conflicts_with = "names")]
        user_scope: bool,
        /// Print each step (created, started, healthy, ...) on stderr as it happens.
        #[arg(long)]
        progress: bool,
    },
    /// Start services' containers.
    Start {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Stop services' containers.
    Stop {
        #[arg(short = 't', long = "time")]
        time: Option<u64>,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Restart services' containers.
    Restart {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove services' containers.
    Rm {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Print a service's logs.
    Logs {
        #[arg(short, long)]
        follow: bool,
        #[arg(long, short = 'n')]
        tail: Option<String>,
        name: String,
    },
    /// The services' containers and their state.
    Ps {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Pull the images of services (all when no name is given).
    Pull { names: Vec<String> },
}

/// The config, its services and the engines, loaded once per command.
struct World {
    config: CloudConfig,
    loaded: Loaded,
    system: ApiEngine,
    user: Option<ApiEngine>,
}

impl World {
    fn load(ctx: &Context, args: &ServiceArgs, update: bool) -> anyhow::Result<World> {
        let cfg_loaded = cfgsrc::load(&ctx.root, LoadOptions::FULL);
        for p in &cfg_loaded.problems {
            eprintln!("ros: config: {p}");
        }
        let config = cfg_loaded.config();
        let mut env = Environment::from_rancher(&config.rancher);
        if let Ok(u) = nix::sys::utsname::uname() {
            env.set("KERNEL_VERSION", u.release().to_string_lossy().into_owned());
        }
        let resolver = Resolver::new(ctx.root.clone(), &config.rancher, update);
        let loaded = collect(&config.rancher, &resolver, &env);
        let auths =
            crate::image::registry::RegistryAuths::from_config(&config.rancher.registry_auths);
        let system = ApiEngine {
            client: Client::new(&system_engine_host(args.host.as_deref()))?
                .with_registry_auths(auths.clone()),
            scope: Scope::System,
        };
        let user_host = args
            .user_host
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
        let user = Client::new(&user_host)
            .ok()
            .map(|c| c.with_registry_auths(auths))
            .filter(|c| c.ping().is_ok())
            .map(|client| ApiEngine {
                client,
                scope: Scope::User,
            });
        Ok(World {
            config,
            loaded,
            system,
            user,
        })
    }

    fn report_problems(&self) {
        for e in &self.loaded.errors {
            eprintln!("ros: service {}: {e}", e.service);
        }
        for w in &self.loaded.warnings {
            eprintln!("ros: warning: {w}");
        }
    }

    fn engine(&self, scope: Scope) -> Option<&ApiEngine> {
        match scope {
            Scope::System => Some(&self.system),
            Scope::User => self.user.as_ref(),
        }
    }

    /// The container and engine of a service name (or a container name).
    fn target(&self, name: &str) -> anyhow::Result<(&ApiEngine, String)> {
        match self.loaded.services.get(name) {
            Some(def) => {
                let scope = labels::RosLabels::from_labels(&def.labels).scope;
                let e = self.engine(scope).with_context(|| {
                    format!("service {name}: the user Docker is not running (waiting for docker)")
                })?;
                Ok((e, def.container_name().to_owned()))
            }
            None => Ok((&self.system, name.to_owned())),
        }
    }
}

pub fn run(args: ServiceArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    match &args.cmd {
        ServiceCmd::Enable { name } => return set_include(ctx, name, Some(true)),
        ServiceCmd::Disable { name } => return set_include(ctx, name, Some(false)),
        ServiceCmd::Delete { name } => return set_include(ctx, name, None),
        _ => {}
    }
    let update = matches!(
        args.cmd,
        ServiceCmd::List { update: true, .. } | ServiceCmd::Up { update: true, .. }
    );
    let w = World::load(ctx, &args, update)?;
    match &args.cmd {
        ServiceCmd::List { all, format, .. } => list(ctx, &w, *all, *format),
        ServiceCmd::Up {
            dry_run,
            format,
            user_scope: true,
            progress,
            ..
        } => {
            let user: Vec<String> = w
                .loaded
                .services
                .iter()
                .filter(|(_, d)| labels::RosLabels::from_labels(&d.labels).scope == Scope::User)
                .map(|(n, _)| n.clone())
                .collect();
            if user.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            up(&w, *dry_run, *format, &user, *progress)
        }
        ServiceCmd::Up {
            dry_run,
            format,
            names,
            progress,
            ..
        } => up(&w, *dry_run, *format, names, *progress),
        ServiceCmd::Start { names } => each(&w, names, |e, c| e.start(c).map_err(|x| x.0)),
        ServiceCmd::Stop { time, names } => each(&w, names, |e, c| {
            e.stop(c, std::time::Duration::from_secs(time.unwrap_or(10)))
                .map_err(|x| x.0)
        }),
        ServiceCmd::Restart { names } => each(&w, names, |e, c| {
            e.client.verb(c, "restart", "").map_err(|x| x.to_string())
        }),
        ServiceCmd::Rm { force, names } => each(&w, names, |e, c| {
            e.client.remove(c, *force).map_err(|x| x.to_string())
        }),
        ServiceCmd::Logs { follow, tail, name } => {
            let (e, c) = w.target(name)?;
            e.client.logs(&c, *follow, tail.as_deref(), to_terminal)?;
            Ok(ExitCode::SUCCESS)
        }
        ServiceCmd::Ps { format } => ps(&w, *format),
        ServiceCmd::Pull { names } => pull(&w, names),
        ServiceCmd::Enable { .. } | ServiceCmd::Disable { .. } | ServiceCmd::Delete { .. } => {
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn each(
    w: &World,
    names: &[String],
    f: impl Fn(&ApiEngine, &str) -> Result<(), String>,
) -> anyhow::Result<ExitCode> {
    for_each_name(names, "ros: service ", |n| {
        let (e, c) = w.target(n)?;
        f(e, &c).map_err(anyhow::Error::msg)
    })
}

/// Changes `rancher.services_include.NAME` in cloud-config.yml (atomically; None removes it).
fn set_include(ctx: &Context, name: &str, on: Option<bool>) -> anyhow::Result<ExitCode> {
    if name.trim().is_empty() {
        bail!("a service name, url or file is needed");
    }
    let key = KeyPath::root()
        .key("rancher")
        .key("services_include")
        .key(name);
    match on {
        Some(v) => super::config::set_value(ctx, &key, Value::Bool(v))?,
        None => {
            if !super::config::remove_value(ctx, &key)? {
                bail!("service {name} is not in rancher.services_include");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn list(ctx: &Context, w: &World, all: bool, format: Format) -> anyhow::Result<ExitCode> {
    #[derive(serde::Serialize)]
    struct Row {
        name: String,
        enabled: bool,
        source: String,
    }
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    for name in w.config.rancher.services.keys() {
        rows.insert(
            name.clone(),
            Row {
                name: name.clone(),
                enabled: true,
                source: "rancher.services".into(),
            },
        );
    }
    for (name, on) in &w.config.rancher.services_include {
        rows.insert(
            name.clone(),
            Row {
                name: name.clone(),
                enabled: *on,
                source: "rancher.services_include".into(),
            },
        );
    }
    if all {
        let resolver = Resolver::new(ctx.root.clone(), &w.config.rancher, false);
        let (avail, warnings) = resolver.available();
        for warn in warnings {
            eprintln!("ros: warning: {warn}");
        }
        for (name, repo) in avail {
            rows.entry(name.clone()).or_insert(Row {
                name,
                enabled: false,
                source: format!("repository {repo}"),
            });
        }
    }
    let rows: Vec<Row> = rows.into_values().collect();
    if format == Format::Json {
        print(&format!("{}\n", serde_json::to_string_pretty(&rows)?))?;
    } else {
        let t: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    if r.enabled { "enabled" } else { "disabled" }.into(),
                    r.source.clone(),
                ]
            })
            .collect();
        print(&table(&["SERVICE", "STATE", "SOURCE"], &t))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `names` and everything they depend on.
fn with_dependencies(w: &World, names: &[String]) -> anyhow::Result<BTreeSet<String>> {
    let graph = Graph::build(&w.loaded.services, &GraphOptions::default());
    let mut out = BTreeSet::new();
    let mut todo: Vec<String> = names.to_vec();
    while let Some(n) = todo.pop() {
        if !w.loaded.services.contains_key(&n) {
            bail!("no service {n} in the config");
        }
        if out.insert(n.clone()) {
            todo.extend(
                graph
                    .dependencies(&n)
                    .into_iter()
                    .map(|(s, _)| s.to_string()),
            );
        }
    }
    Ok(out)
}

fn desired(w: &World, only: Option<&BTreeSet<String>>) -> anyhow::Result<Vec<DesiredService>> {
    let mut out = vec![];
    // One lookup per (engine, image): a hundred services usually share a handful of images.
    let mut ids: BTreeMap<(Scope, String), Option<String>> = BTreeMap::new();
    for (name, def) in &w.loaded.services {
        if only.is_some_and(|o| !o.contains(name)) {
            continue;
        }
        let scope = labels::RosLabels::from_labels(&def.labels).scope;
        let image_id = match (ids.get(&(scope, def.image.clone())), w.engine(scope)) {
            (Some(id), _) => id.clone(),
            (None, Some(e)) => {
                let id = e
                    .image_id(&def.image)
                    .map_err(|x| anyhow::anyhow!("service {name}: {x}"))?;
                ids.insert((scope, def.image.clone()), id.clone());
                id
            }
            (None, None) => None,
        };
        out.push(DesiredService::new(def.clone(), image_id));
    }
    Ok(out)
}

fn up(
    w: &World,
    dry_run: bool,
    format: Format,
    names: &[String],
    progress: bool,
) -> anyhow::Result<ExitCode> {
    w.report_problems();
    let only = if names.is_empty() {
        None
    } else {
        Some(with_dependencies(w, names)?)
    };
    let desired = desired(w, only.as_ref())?;
    let mut current = w
        .system
        .list_containers()
        .map_err(|e| anyhow::anyhow!("system engine: {e}"))?;
    if let Some(u) = &w.user {
        current.extend(
            u.list_containers()
                .map_err(|e| anyhow::anyhow!("user docker: {e}"))?,
        );
    }
    let mut the_plan = plan(PROJECT, &desired, &current, &PlanOptions::default());
    if only.is_some() {
        the_plan
            .items
            .retain(|i| !matches!(i.action, Action::Remove { .. }));
    }
    if dry_run {
        if format == Format::Json {
            print(&format!("{}\n", serde_json::to_string_pretty(&the_plan)?))?;
        } else {
            print(&the_plan.to_string())?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let engines = Engines {
        system: &w.system,
        user: w.user.as_ref().map(|u| u as &dyn ServiceEngine),
    };
    let opts = ExecOptions {
        progress,
        ..ExecOptions::default()
    };
    let report = execute(&the_plan, &desired, &engines, &opts);
    if format == Format::Json {
        print(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        print(&report.to_string())?;
    }
    Ok(if report.ok() && w.loaded.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn ps(w: &World, format: Format) -> anyhow::Result<ExitCode> {
    #[derive(serde::Serialize)]
    struct Row {
        service: String,
        container: String,
        id: String,
        scope: String,
        state: String,
        status: String,
        image: String,
        config_hash: String,
    }
    let filter = vec![("label".to_owned(), format!("{}={PROJECT}", labels::PROJECT))];
    let mut rows = vec![];
    for e in [Some(&w.system), w.user.as_ref()].into_iter().flatten() {
        for c in e.client.containers(true, &filter)? {
            rows.push(Row {
                service: c.labels.get(labels::SERVICE).cloned().unwrap_or_default(),
                container: c
                    .names
                    .first()
                    .map(|n| n.trim_start_matches('/').to_owned())
                    .unwrap_or_default(),
                id: c.id.chars().take(12).collect(),
                scope: e.scope.to_string(),
                state: c.state.clone(),
                status: c.status.clone(),
                image: c.image.clone(),
                config_hash: c
                    .labels
                    .get(labels::CONFIG_HASH)
                    .map(|h| h.chars().take(12).collect())
                    .unwrap_or_default(),
            });
        }
    }
    rows.sort_by(|a, b| a.service.cmp(&b.service));
    if format == Format::Json {
        print(&format!("{}\n", serde_json::to_string_pretty(&rows)?))?;
    } else {
        let t: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    r.service.clone(),
                    r.container.clone(),
                    r.id.clone(),
                    r.scope.clone(),
                    r.status.clone(),
                    r.image.clone(),
                ]
            })
            .collect();
        print(&table(
            &["SERVICE", "CONTAINER", "ID", "SCOPE", "STATUS", "IMAGE"],
            &t,
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn pull(w: &World, names: &[String]) -> anyhow::Result<ExitCode> {
    w.report_problems();
    let mut failed = false;
    for (name, def) in &w.loaded.services {
        if !names.is_empty() && !names.contains(name) {
            continue;
        }
        let scope = labels::RosLabels::from_labels(&def.labels).scope;
        let Some(e) = w.engine(scope) else {
            eprintln!("ros: service {name}: the user Docker is not running (waiting for docker)");
            failed = true;
            continue;
        };
        eprintln!("pulling {} for {name}", def.image);
        if let Err(err) = e.pull(&def.image) {
            eprintln!("ros: service {name}: {err}");
            failed = true;
        }
    }
    Ok(exit_code(failed))
}
