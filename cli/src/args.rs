//! Command-line arguments (clap). Every config key that makes sense as a flag
//! has one; flags override `REMORA_*` variables, which override the file.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "remora",
    version,
    about = "Run a local process as if it were inside a pod"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command with the target's environment, files, DNS and network.
    #[command(visible_alias = "exec")]
    Run(Box<RunArgs>),
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// List or kill the sessions of an operator.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// (internal) The per-run proxy between layers and the agent.
    #[command(hide = true)]
    Intproxy(IntproxyArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Target: pid/<PID> (local platform), pod/<name>[/container/<c>], deployment/<name>, ...
    #[arg(short = 't', long)]
    pub target: Option<String>,
    /// Kubernetes namespace of the target.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Config file (.toml, .json, .yaml). Default: $REMORA_CONFIG_FILE, else ./.remora/config.toml.
    #[arg(short = 'f', long = "config")]
    pub config: Option<PathBuf>,
    /// Address of a remora operator.
    #[arg(long)]
    pub operator: Option<String>,
    /// File mode: local (nothing remote), read (read the target's files), write.
    #[arg(long, value_parser = ["local", "read", "write"])]
    pub fs_mode: Option<String>,
    /// Only import the target's variables matching this glob (repeatable).
    #[arg(long = "env-include", value_name = "GLOB")]
    pub env_include: Vec<String>,
    /// Never import the target's variables matching this glob (repeatable).
    #[arg(long = "env-exclude", value_name = "GLOB")]
    pub env_exclude: Vec<String>,
    /// Set KEY=VALUE in the command's environment (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env_set: Vec<String>,
    /// Remove variables matching this glob (repeatable).
    #[arg(long = "env-unset", value_name = "GLOB")]
    pub env_unset: Vec<String>,
    /// Keep all outgoing connections local.
    #[arg(long)]
    pub no_outgoing: bool,
    /// Resolve names locally.
    #[arg(long)]
    pub no_remote_dns: bool,
    /// Take the target's incoming traffic on the ports the command listens on.
    #[arg(long, conflicts_with = "mirror")]
    pub steal: bool,
    /// Receive a copy of the target's incoming traffic (the target still answers).
    #[arg(long)]
    pub mirror: bool,
    /// Only these target ports (repeatable; default: every port the command listens on).
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// LOCAL:REMOTE: the command listens on LOCAL and receives the target's REMOTE port.
    #[arg(short = 'p', long = "port-mapping", value_name = "LOCAL:REMOTE")]
    pub port_mappings: Vec<String>,
    /// Only steal HTTP requests with a header line matching this regex (`name: value`).
    #[arg(long, value_name = "REGEX")]
    pub http_header_filter: Option<String>,
    /// Only steal HTTP requests whose path matches this regex.
    #[arg(long, value_name = "REGEX")]
    pub http_path_filter: Option<String>,
    /// Only steal HTTP requests with this method.
    #[arg(long = "http-method", value_name = "METHOD")]
    pub http_method_filter: Option<String>,
    /// Through an operator: take the port over from a session holding an
    /// identical filter (it is told) instead of being refused.
    #[arg(long)]
    pub override_filter: bool,
    /// The command to run, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the JSON Schema of the config file (for editor completion).
    Schema,
    /// Validate the configuration (file + environment) and explain it.
    Check {
        /// Config file; default as for `run`.
        #[arg(short = 'f', long = "config")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// List every session of the operator.
    Ls {
        /// The operator (host:port).
        #[arg(long, env = "REMORA_OPERATOR")]
        operator: String,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// End a session: its traffic returns to the target at once.
    Kill {
        /// The session id, as `remora session ls` shows it.
        id: String,
        /// The operator (host:port).
        #[arg(long, env = "REMORA_OPERATOR")]
        operator: String,
    },
}

#[derive(Debug, Args)]
pub struct IntproxyArgs {
    /// Connect to an agent (or operator) already listening here.
    #[arg(long, conflicts_with = "agent_bin")]
    pub agent: Option<SocketAddr>,
    /// Start this agent binary for the target and connect to it.
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
    /// The target, for the agent's session list.
    #[arg(long)]
    pub target: Option<String>,
    /// Where to listen for layers.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Start the real intproxy in its own session and return at once.
    #[arg(long)]
    pub detach: bool,
    /// Ask the operator to take ports over from conflicting filters.
    #[arg(long)]
    pub override_filter: bool,
}
