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
    /// List, remove or print the URL of the operator's database branches.
    #[command(subcommand)]
    Db(DbCommand),
    /// List the operator's active queue splits.
    #[command(subcommand)]
    Queues(QueuesCommand),
    /// Install the operator in a Kubernetes cluster.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Prepare a session for a process an IDE starts; print the env it needs.
    Ext(Box<ExtArgs>),
    /// Run a test command with one session; only the test processes see the target.
    Test(Box<TestArgs>),
    /// Start (and stop) an app under remora in the background, for CI jobs.
    #[command(subcommand)]
    Ci(CiCommand),
    /// List the targets: processes of this machine (`pid/<PID>`) and, when a
    /// cluster is configured, the pods and workloads of a namespace.
    Ls(LsArgs),
    /// Write IDE run configurations.
    #[command(subcommand)]
    Ide(IdeCommand),
    /// Check this machine (seccomp user notification) and say how a
    /// program would be intercepted.
    Doctor(DoctorArgs),
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// (internal) The per-run proxy between layers and the agent.
    #[command(hide = true)]
    Intproxy(IntproxyArgs),
    /// (internal) Exec a test binary inside the session `remora test` prepared
    /// (the Cargo runner, `go test -exec`).
    #[command(hide = true)]
    Runner(RunnerArgs),
    /// Become PROGRAM (same process), with this process's environment (a
    /// session's, e.g. from `remora ext`), under the seccomp supervisor:
    /// for IDEs starting a Go or static debuggee (docs/ide.md)
    Supervise(RunnerArgs),
}

#[derive(Debug, Args)]
pub struct ExtArgs {
    #[command(flatten)]
    pub session: SessionArgs,
    /// Print JSON lines (progress, then a `ready` or `error` object) instead
    /// of shell `export` lines.
    #[arg(long)]
    pub json: bool,
    /// Seconds the session waits for the first process before it ends.
    #[arg(
        long,
        env = "REMORA_EXT_WAIT_TIMEOUT",
        default_value_t = 120,
        value_name = "SECS"
    )]
    pub wait_timeout: u64,
    /// Append the intproxy's and agent's log to this file (default: discarded).
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Name of the run in the agent's and operator's logs (e.g. the launch configuration's name).
    #[arg(long)]
    pub program: Option<String>,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    #[command(flatten)]
    pub session: SessionArgs,
    /// Put the layer on the whole command (build tool included) instead of
    /// only on the test binaries (the default for `cargo` and `go test`).
    #[arg(long)]
    pub whole: bool,
    /// The test command, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunnerArgs {
    /// The test binary and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum CiCommand {
    /// Start the app under remora in the background; return once it listens.
    Start(Box<CiStartArgs>),
    /// Stop the app started by `ci start`, and its session.
    Stop {
        /// The name given to `ci start`.
        #[arg(long, default_value = "default")]
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct CiStartArgs {
    #[command(flatten)]
    pub session: SessionArgs,
    /// Name of this app, for `ci stop --name` (several apps may run at once).
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Ready once this local TCP port accepts connections (default: once any
    /// process of the app listens on a TCP port).
    #[arg(long, value_name = "PORT")]
    pub wait_port: Option<u16>,
    /// Seconds to wait for the app to listen.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub timeout: u64,
    /// The server command, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only this platform's targets: `local` (processes of this machine) or
    /// `kubernetes` (default: both; Kubernetes when a cluster is configured).
    #[arg(long, value_parser = ["local", "kubernetes"])]
    pub platform: Option<String>,
    /// Kubernetes namespace to list (default: the kubeconfig context's).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Kubeconfig context (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
    /// Kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Config file whose `namespace`, `context` and `kubeconfig` apply.
    #[arg(short = 'f', long = "config")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum IdeCommand {
    /// Write IntelliJ run configurations (`.run/*.run.xml`) that launch
    /// through `remora run`, plus a Remote JVM Debug one with `--jdwp-port`.
    Intellij(Box<IntellijArgs>),
}

#[derive(Debug, Args)]
pub struct IntellijArgs {
    /// Target: pid/<PID>, ...
    #[arg(short = 't', long)]
    pub target: String,
    /// Config file passed to `remora run -f`.
    #[arg(short = 'f', long = "config")]
    pub config: Option<PathBuf>,
    /// Name of the run configuration.
    #[arg(long, default_value = "remora")]
    pub name: String,
    /// Project directory (the configurations go to its `.run/`).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Also write a Remote JVM Debug configuration attaching to this port,
    /// and start the JVM with a JDWP agent listening on it.
    #[arg(long, value_name = "PORT")]
    pub jdwp_port: Option<u16>,
    /// The program to run, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub session: SessionArgs,
    /// How the command's calls are intercepted: `preload` (the LD_PRELOAD
    /// layer), `seccomp` (the seccomp supervisor, for Go and static
    /// programs) or `auto` (by the program's ELF; the default, also config
    /// key `interception`).
    #[arg(long, value_parser = ["auto", "seccomp", "preload"])]
    pub interception: Option<String>,
    /// The command to run, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Everything that shapes a session (target, config, env, files, network):
/// shared by `run`, `ext`, `test` and `ci start`.
#[derive(Debug, Clone, Default, Args)]
pub struct SessionArgs {
    /// Target: pid/<PID> (local platform), pod/<name>[/container/<c>], deployment/<name>, ...
    #[arg(short = 't', long)]
    pub target: Option<String>,
    /// Kubernetes namespace of the target (default: the kubeconfig context's).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Kubeconfig context for Kubernetes targets (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
    /// Kubeconfig file for Kubernetes targets (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Config file (.toml, .json, .yaml). Default: $REMORA_CONFIG_FILE, else ./.remora/config.toml.
    #[arg(short = 'f', long = "config")]
    pub config: Option<PathBuf>,
    /// The remora operator: host:port, or kube[:NAMESPACE[/SERVICE]] for the
    /// one installed in the cluster (reached through the API server as your
    /// kubeconfig user).
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
    /// Seconds one remote call may wait for its reply (default 120); sets
    /// layer.reply_timeout_secs.
    #[arg(long = "reply-timeout", value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub reply_timeout: Option<u64>,
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
        #[arg(long, env = "REMORA_OPERATOR", required_unless_present = "kubernetes")]
        operator: Option<String>,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        kube: SessionKubeArgs,
        /// With --kubernetes: every namespace.
        #[arg(
            short = 'A',
            long,
            requires = "kubernetes",
            conflicts_with = "namespace"
        )]
        all_namespaces: bool,
    },
    /// End a session: its traffic returns to the target at once.
    Kill {
        /// The session id, as `remora session ls` shows it.
        id: String,
        /// The operator (host:port).
        #[arg(long, env = "REMORA_OPERATOR", required_unless_present = "kubernetes")]
        operator: Option<String>,
        #[command(flatten)]
        kube: SessionKubeArgs,
    },
}

/// `remora session --kubernetes`: the sessions as RemoraSession objects.
#[derive(Debug, Clone, Args)]
pub struct SessionKubeArgs {
    /// Read (ls) or delete (kill) RemoraSession objects in the cluster
    /// instead of asking an operator's address.
    #[arg(long, conflicts_with = "operator")]
    pub kubernetes: bool,
    /// With --kubernetes: the kubeconfig (default: KUBECONFIG, ~/.kube/config).
    #[arg(long, requires = "kubernetes", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// With --kubernetes: the namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long, requires = "kubernetes", value_name = "N")]
    pub namespace: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Print the operator's install manifests (CRDs, namespace, service
    /// account, RBAC, Deployment, Service) as YAML for `kubectl apply -f -`.
    Manifests {
        /// The namespace of the operator and of the agents it starts.
        #[arg(long, default_value = remora_operator_kube::manifests::DEFAULT_NAMESPACE, value_name = "N")]
        namespace: String,
        /// The operator image.
        #[arg(long, default_value = remora_operator_kube::manifests::DEFAULT_IMAGE, value_name = "I")]
        image: String,
        /// A namespace that registers RemoraQueueSplits: adds the Role
        /// `remora-queue-splits` there (update its workloads, get its
        /// ConfigMaps and Secrets), bound to the operator. Repeatable.
        #[arg(long = "queue-split-namespace", value_name = "NS")]
        queue_split_namespaces: Vec<String>,
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
    /// Start the agent in a Kubernetes cluster (settings in
    /// REMORA_INTPROXY_KUBE) and connect to it through port-forward.
    #[arg(long, conflicts_with_all = ["agent", "agent_bin"])]
    pub kube: bool,
    /// Connect to the operator installed in a Kubernetes cluster (in
    /// REMORA_INTPROXY_KUBE_OPERATOR) through port-forwards.
    #[arg(long, conflicts_with_all = ["agent", "agent_bin", "kube"])]
    pub kube_operator: bool,
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
    /// Exit when no process connected within this many seconds.
    #[arg(long, default_value_t = 30)]
    pub first_connect_timeout: u64,
    /// How many first sessions are remora's own set-up sessions, which do not
    /// count as the first process (`remora ext` uses 1).
    #[arg(long, default_value_t = 0)]
    pub setup_sessions: usize,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Force the interception mode, as `remora run --interception`.
    #[arg(long, value_parser = ["auto", "seccomp", "preload"])]
    pub interception: Option<String>,
    /// The program to explain (optional), after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `remora queues ...`: the operator's queue splits.
#[derive(Debug, Subcommand)]
pub enum QueuesCommand {
    /// List the active splits: each queue's sessions, filters, and the depth
    /// and routed count of every temporary queue (and the original's lag).
    Ls {
        /// The operator (host:port).
        #[arg(long, env = "REMORA_OPERATOR")]
        operator: String,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `remora db ...`: the operator's database branches.
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// List the live branches.
    Ls {
        /// The operator (host:port).
        #[arg(long, env = "REMORA_OPERATOR")]
        operator: String,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Drop a branch now.
    Rm {
        /// The branch id, as `remora db ls` shows it.
        id: String,
        /// The operator (host:port).
        #[arg(long, env = "REMORA_OPERATOR")]
        operator: String,
    },
    /// Print a connection URL for a branch.
    Url {
        /// The branch id, as `remora db ls` shows it.
        id: String,
        /// The operator (host:port).
        #[arg(long, env = "REMORA_OPERATOR")]
        operator: String,
    },
}
