//! `ros config ...` (being written: see issue "Cloud-config").

use std::process::ExitCode;

use clap::Subcommand;

use super::Context;

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Print the value at a dotted KEY of the merged config.
    Get { key: String },
}

pub fn run(cmd: ConfigCmd, _ctx: &Context) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCmd::Get { key } => anyhow::bail!("config key {key}: ros config is not built yet"),
    }
}
