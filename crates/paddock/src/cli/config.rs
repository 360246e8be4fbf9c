//! `ros config ...`: read, change and validate the cloud-config.
//!
//! `get`, `export` and `images` read the merged config (see [`crate::config::sources`]);
//! `set` and `merge` change only `/var/lib/rancher/conf/cloud-config.yml`, atomically, and
//! refuse a change that would add a problem (the file is then left as it was).

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use serde_json::Value;

use super::Context;
use super::output;
use crate::config::sources::{self, LoadOptions};
use crate::config::{self as cfg, CLOUD_CONFIG_FILE, KeyPath, Problem, export, merge, path, yaml};
use crate::fsutil::write_atomic;

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Print the value at a dotted KEY of the merged config (maps and lists as YAML).
    Get { key: String },
    /// Set KEY to VALUE in cloud-config.yml. VALUE is YAML: "[a, b]" is a list, "yes" a boolean.
    Set { key: String, value: String },
    /// Merge a YAML document into cloud-config.yml (maps merge, lists replace except
    /// ssh_authorized_keys, write_files, runcmd and mounts, which append).
    Merge {
        /// Read the document from FILE instead of stdin.
        #[arg(short, long, value_name = "FILE")]
        input: Option<PathBuf>,
    },
    /// Print the config: the files on disk, or with --full everything including defaults.
    Export {
        /// Write to FILE instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Include secrets (ssh host keys, passwords, TLS keys, registry auths).
        #[arg(short, long)]
        private: bool,
        /// Include the built-in defaults, the kernel command line and metadata.
        #[arg(short, long)]
        full: bool,
    },
    /// Check a cloud-config (FILE, or text piped in; with neither, every source on this
    /// system). Exits 1 listing every problem with its file, line and key.
    Validate {
        #[arg(short, long, value_name = "FILE")]
        input: Option<PathBuf>,
    },
    /// List the images a config references (rancher.services, bootstrap, cloud_init_services).
    Images {
        /// Read the config from FILE instead of the merged config.
        #[arg(short, long, value_name = "FILE")]
        input: Option<PathBuf>,
    },
}

pub fn run(cmd: ConfigCmd, ctx: &Context) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCmd::Get { key } => get(ctx, &key),
        ConfigCmd::Set { key, value } => set(ctx, &key, &value),
        ConfigCmd::Merge { input } => merge_cmd(ctx, input),
        ConfigCmd::Export {
            output,
            private,
            full,
        } => export_cmd(ctx, output, private, full),
        ConfigCmd::Validate { input } => validate(ctx, input),
        ConfigCmd::Images { input } => images(ctx, input),
    }
}

/// Prints problems of loading on stderr (they do not stop `get`/`export`).
fn warn(problems: &[Problem]) {
    for p in problems {
        eprintln!("ros: {p}");
    }
}

fn get(ctx: &Context, key: &str) -> anyhow::Result<ExitCode> {
    let key = KeyPath::parse(key)?;
    let loaded = sources::load(&ctx.root, LoadOptions::FULL);
    let concrete = path::resolve(&loaded.value, &key);
    let text = match path::get(&loaded.value, &concrete) {
        // Like RancherOS: an unset key prints nothing and succeeds.
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => format!("{s}\n"),
        Some(v @ (Value::Bool(_) | Value::Number(_))) => format!("{v}\n"),
        Some(v) => yaml::to_yaml(v),
    };
    output::print(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// The current cloud-config.yml: its text (empty if absent) and its tree.
fn read_user_file(ctx: &Context) -> anyhow::Result<(String, Value)> {
    let text = sources::read_optional(&ctx.root, CLOUD_CONFIG_FILE)
        .map_err(|p| anyhow::anyhow!("{p}"))?
        .unwrap_or_default();
    let parsed = yaml::parse(&text).map_err(|e| {
        anyhow::anyhow!(
            "{CLOUD_CONFIG_FILE}:{}: not valid YAML ({}); fix or remove it first",
            e.line,
            e.message
        )
    })?;
    let value = if parsed.value.is_object() {
        parsed.value
    } else {
        Value::Object(Default::default())
    };
    Ok((text, value))
}

/// Writes `new` as cloud-config.yml unless it has a problem the old file did not have.
fn commit(ctx: &Context, old_text: &str, new: &Value) -> anyhow::Result<()> {
    let new_text = format!("#cloud-config\n{}", yaml::to_yaml(new));
    let before: Vec<(Option<String>, String)> = match cfg::check_text(CLOUD_CONFIG_FILE, old_text) {
        Ok(c) => c
            .problems
            .iter()
            .map(|p| (p.key.clone(), p.message.clone()))
            .collect(),
        Err(_) => Vec::new(),
    };
    let checked = cfg::check_text(CLOUD_CONFIG_FILE, &new_text)
        .map_err(|p| anyhow::anyhow!("refused: {p}"))?;
    let added: Vec<&Problem> = checked
        .problems
        .iter()
        .filter(|p| !before.contains(&(p.key.clone(), p.message.clone())))
        .collect();
    if !added.is_empty() {
        let list: Vec<String> = added.iter().map(|p| format!("  {}", describe(p))).collect();
        bail!(
            "refused, {CLOUD_CONFIG_FILE} is unchanged:\n{}",
            list.join("\n")
        );
    }
    let p = ctx.root.path(CLOUD_CONFIG_FILE);
    write_atomic(&p, new_text.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", p.display()))?;
    Ok(())
}

/// A problem without the file's line (the line refers to the would-be file, not the input).
fn describe(p: &Problem) -> String {
    let sev = if p.severity == cfg::Severity::Warning {
        "unknown key "
    } else {
        ""
    };
    match &p.key {
        Some(k) => format!("{sev}{k}: {}", p.message),
        None => p.message.clone(),
    }
}

/// Sets `key` in cloud-config.yml (atomically, refusing a change that adds a problem).
pub(super) fn set_value(ctx: &Context, key: &KeyPath, value: Value) -> anyhow::Result<()> {
    let (old_text, mut tree) = read_user_file(ctx)?;
    let concrete = path::resolve(&tree, key);
    path::set(&mut tree, &concrete, value)?;
    commit(ctx, &old_text, &tree)
}

/// Removes `key` from cloud-config.yml; false if it was not there.
pub(super) fn remove_value(ctx: &Context, key: &KeyPath) -> anyhow::Result<bool> {
    let (old_text, mut tree) = read_user_file(ctx)?;
    let concrete = path::resolve(&tree, key);
    if path::remove(&mut tree, &concrete).is_none() {
        return Ok(false);
    }
    commit(ctx, &old_text, &tree)?;
    Ok(true)
}

fn set(ctx: &Context, key: &str, value: &str) -> anyhow::Result<ExitCode> {
    let key = KeyPath::parse(key)?;
    let (old_text, mut tree) = read_user_file(ctx)?;
    let value = yaml::parse_scalar_or_yaml(value);
    let concrete = path::resolve(&tree, &key);
    path::set(&mut tree, &concrete, value)?;
    commit(ctx, &old_text, &tree)?;
    Ok(ExitCode::SUCCESS)
}

/// What stdin holds, if it ends within half a second (a pipe from an interactive ssh session
/// may never end; then there is no piped text).
fn piped_text() -> Option<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = tx.send(std::io::stdin().read_to_string(&mut text).map(|_| text));
    });
    rx.recv_timeout(std::time::Duration::from_millis(500))
        .ok()?
        .ok()
}

fn read_input(input: &Option<PathBuf>) -> anyhow::Result<(String, String)> {
    match input {
        Some(p) if p.as_os_str() != "-" => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Ok((p.display().to_string(), text))
        }
        _ => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading stdin")?;
            Ok(("<stdin>".into(), text))
        }
    }
}

fn merge_cmd(ctx: &Context, input: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let (name, text) = read_input(&input)?;
    let checked = cfg::check_text(&name, &text).map_err(|p| anyhow::anyhow!("refused: {p}"))?;
    if !checked.problems.is_empty() {
        let list: Vec<String> = checked.problems.iter().map(|p| format!("  {p}")).collect();
        bail!(
            "refused, {CLOUD_CONFIG_FILE} is unchanged:\n{}",
            list.join("\n")
        );
    }
    let (old_text, mut tree) = read_user_file(ctx)?;
    merge::merge_into(&mut tree, checked.value);
    commit(ctx, &old_text, &tree)?;
    Ok(ExitCode::SUCCESS)
}

fn export_cmd(
    ctx: &Context,
    output: Option<PathBuf>,
    private: bool,
    full: bool,
) -> anyhow::Result<ExitCode> {
    let loaded = sources::load(
        &ctx.root,
        if full {
            LoadOptions::FULL
        } else {
            LoadOptions::USER
        },
    );
    warn(&loaded.problems);
    let mut value = loaded.value;
    if !private {
        export::hide_secrets(&mut value);
    }
    let text = format!("#cloud-config\n{}", yaml::to_yaml(&value));
    match output {
        Some(p) => {
            let mode = if private { 0o600 } else { 0o644 };
            write_atomic(&p, text.as_bytes(), mode)
                .with_context(|| format!("writing {}", p.display()))?;
        }
        None => output::print(&text)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn validate(ctx: &Context, input: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    // Without -i, piped text is checked; no text (a terminal, /dev/null, an empty pipe or one
    // nothing is written to, as under `ssh host ros config validate`) checks every source on
    // this system.
    let text = match &input {
        Some(_) => Some(read_input(&input)?),
        None if std::io::stdin().is_terminal() => None,
        None => piped_text()
            .filter(|t| !t.trim().is_empty())
            .map(|t| ("<stdin>".to_owned(), t)),
    };
    let problems = match text {
        None => sources::validate_all(&ctx.root),
        Some((name, text)) => match cfg::check_text(&name, &text) {
            Ok(c) => c.problems,
            Err(p) => vec![p],
        },
    };
    if problems.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let text: String = problems.iter().map(|p| format!("{p}\n")).collect();
    output::print(&text)?;
    Ok(ExitCode::FAILURE)
}

fn images(ctx: &Context, input: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let value = match input {
        Some(_) => {
            let (name, text) = read_input(&input)?;
            let checked = cfg::check_text(&name, &text).map_err(|p| anyhow::anyhow!("{p}"))?;
            warn(&checked.problems);
            checked.value
        }
        None => {
            let loaded = sources::load(&ctx.root, LoadOptions::FULL);
            warn(&loaded.problems);
            loaded.value
        }
    };
    let text: String = export::images(&value)
        .iter()
        .map(|i| format!("{i}\n"))
        .collect();
    output::print(&text)?;
    Ok(ExitCode::SUCCESS)
}
