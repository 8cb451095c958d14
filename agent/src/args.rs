//! Command-line arguments of `remora-agent`. The session token is not one of
//! them: it comes from [`crate::TOKEN_ENV`] so it never shows in `ps`.

use crate::incoming::NetfilterBackend;
use crate::target::TargetPid;
use std::net::SocketAddr;

/// `remora-agent (--target pid/<PID> | --container-id <ID> | --targetless) [--listen 127.0.0.1:0] [--idle-timeout-secs 30]
/// [--netfilter auto]`
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "remora-agent",
    version,
    about = "Runs next to a target process and performs network, DNS, file and environment \
             operations inside its namespaces for remora clients.",
    after_help = "The session token is read from the REMORA_AGENT_TOKEN environment variable. \
                  Logs go to stderr (filter with REMORA_AGENT_LOG, default info)."
)]
pub struct Args {
    /// The process to serve, as pid/<PID>.
    #[arg(
        long,
        value_name = "pid/<PID>",
        required_unless_present_any = ["container_id", "targetless"]
    )]
    pub target: Option<TargetPid>,

    /// Serve a Kubernetes container instead, by its runtime id
    /// (`containerd://<id>`, `cri-o://<id>`, `docker://<id>` or the bare id):
    /// its main process is asked of the runtimes' APIs (the one the scheme
    /// names first), else found through `/proc/*/cgroup` (needs the host's
    /// PID namespace).
    #[arg(long, value_name = "ID", conflicts_with = "target")]
    pub container_id: Option<String>,

    /// containerd's API socket, asked for the pid of `--container-id`
    /// (`Tasks/Get`, namespace k8s.io); skipped when absent.
    #[arg(long, default_value = crate::container::containerd::DEFAULT_SOCKET, value_name = "PATH")]
    pub containerd_socket: std::path::PathBuf,

    /// CRI-O's API socket, asked for the pid of `--container-id` (CRI
    /// `ContainerStatus`, verbose); skipped when absent.
    #[arg(long, default_value = crate::container::crio::DEFAULT_SOCKET, value_name = "PATH")]
    pub crio_socket: std::path::PathBuf,

    /// Docker's API socket, asked for the pid of `--container-id` (`GET
    /// /containers/{id}/json`); skipped when absent.
    #[arg(long, default_value = crate::container::docker::DEFAULT_SOCKET, value_name = "PATH")]
    pub docker_socket: std::path::PathBuf,

    /// Serve no target: files, DNS, environment and connections are the
    /// agent's own (its pod's, for `remora run --target targetless`). Needs
    /// no privilege.
    #[arg(long, conflicts_with_all = ["target", "container_id"])]
    pub targetless: bool,

    /// Where clients connect.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "IP:PORT")]
    pub listen: SocketAddr,

    /// Exit when no client connected within this many seconds (0: never).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub idle_timeout_secs: u64,

    /// Which tools redirect incoming traffic inside the target: nftables
    /// when `nft` is installed (auto), or forced.
    #[arg(long, value_enum, default_value_t = NetfilterBackend::Auto)]
    pub netfilter: NetfilterBackend,

    /// Also serve the local fast path on this unix socket: layers of the
    /// run on this machine get real file and socket descriptors from inside
    /// the target (token in REMORA_FD_BROKER_TOKEN).
    #[arg(long, value_name = "PATH")]
    pub fd_broker: Option<std::path::PathBuf>,
}
