//! Command-line arguments of `remora-operator`. The token is not one of them:
//! it comes from [`crate::token::OPERATOR_TOKEN_ENV`] or is generated into
//! `--token-file`, so it never shows in `ps`.

use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

/// `remora-operator serve --platform local|kubernetes --listen ADDR [--policy FILE]`
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
    /// Targets are in a Kubernetes cluster; clients authenticate with their
    /// Kubernetes bearer token (TokenReview) and are authorised by RBAC
    /// (SubjectAccessReview); sessions show as RemoraSession objects.
    Kubernetes,
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
    /// Kubernetes platform: also serve the aggregated API
    /// `operator.remora.dev/v1alpha1` over TLS here (what the API server
    /// proxies sessions of any kubeconfig user to; docs/operator.md).
    #[arg(long, value_name = "IP:PORT")]
    pub api_listen: Option<SocketAddr>,
    /// The aggregated API's serving certificate (PEM; with --tls-key). Unset:
    /// one is made at start, and the APIService's caBundle set to its CA.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM, PKCS#8).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Kubernetes platform: the kubeconfig to use outside the cluster
    /// (default: KUBECONFIG, ~/.kube/config, else the in-cluster service account).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes platform: the default namespace of targets (default: the
    /// kubeconfig context's, else the operator's own). A client may name
    /// any other: the operator serves every namespace.
    #[arg(long, value_name = "N")]
    pub namespace: Option<String>,
    /// Where state that outlives the operator is kept (`db-branches.json`:
    /// branches are dropped at their TTL even across restarts). Unset: the
    /// state is kept in memory only.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// A directory with PostgreSQL client programs (`pg_dump`, `psql`) to
    /// branch servers newer than the default ones; repeatable. Searched
    /// before /usr/lib/postgresql/*/bin and PATH.
    #[arg(long, value_name = "DIR")]
    pub pg_bindir: Vec<PathBuf>,
    /// Database-branch settings (TOML): `[[branch_server]]` for sources whose
    /// credentials may not create databases, `[[read_only_role]]` to read
    /// sources as, `dump_jobs`. See docs/db-branches.md.
    #[arg(long, value_name = "FILE")]
    pub db_config: Option<PathBuf>,
}
