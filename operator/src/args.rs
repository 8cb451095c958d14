//! Command-line arguments of `remora-operator`. The token is not one of them:
//! it comes from [`crate::token::OPERATOR_TOKEN_ENV`] or is generated into
//! `--token-file`, so it never shows in `ps`.

use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

/// `remora-operator serve --platform local --listen ADDR [--policy FILE]`
#[derive(Debug, Clone, Parser)]
#[command(
    name = "remora-operator",
    version,
    about = "Shares one agent per target between remora sessions: session registry, \
             filter routing and policies.",
    after_help = "Clients authenticate with the operator's token: set REMORA_OPERATOR_TOKEN \
                  for both, or let the operator generate one into --token-file (mode 0600). \
                  Logs go to stderr (filter with REMORA_OPERATOR_LOG, default info)."
)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `remora-operator` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the operator as a daemon until SIGTERM/SIGINT.
    Serve(ServeArgs),
}

/// Where targets live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlatformKind {
    /// Targets are processes on this machine (`pid/<PID>`).
    Local,
}

/// Arguments of `serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Where targets live.
    #[arg(long, value_enum, default_value_t = PlatformKind::Local)]
    pub platform: PlatformKind,
    /// Where clients connect (`remora run --operator ADDR`).
    #[arg(long, default_value = "127.0.0.1:8443", value_name = "IP:PORT")]
    pub listen: SocketAddr,
    /// Policy file (TOML, `[[policy]]` tables), reloaded when it changes.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// The agent binary (default: $REMORA_AGENT_BIN, else next to this binary).
    #[arg(long, value_name = "PATH")]
    pub agent_bin: Option<PathBuf>,
    /// Without REMORA_OPERATOR_TOKEN: write a new random token here (mode 0600).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}
