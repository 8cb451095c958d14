//! `remora intproxy` (hidden): the per-run proxy, started by `remora run`.
//!
//! With `--detach` it re-launches itself in a new session and exits, so the
//! real intproxy is not a child of the user's command. The real one starts
//! the agent (with `--agent-bin`) or connects to a given one (`--agent`),
//! prints `REMORA_INTPROXY_LISTENING <addr>` (or `REMORA_INTPROXY_FAILED
//! <why>`) on stdout, then serves layers until the process tree is gone.

use crate::args::IntproxyArgs;
use crate::error::{Error, Result};
use crate::local::FAILED_PREFIX;
use remora_intproxy::{AgentEndpoint, IntProxy, IntProxyConfig, READY_PREFIX};
use remora_protocol::{ClientIdentity, SessionToken};
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod stderr_relay;

/// Environment variable carrying the agent's (or operator's) token.
pub use remora_operator::platform::local::AGENT_TOKEN_ENV;
/// Environment variable carrying the layers' token.
pub const LAYER_TOKEN_ENV: &str = "REMORA_LAYER_TOKEN";
use remora_operator::platform::local::AGENT_START_TIMEOUT;

/// Who this run is, for the agent's and operator's session lists.
pub fn identity(program: &str) -> ClientIdentity {
    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into());
    let user = std::env::var("REMORA_USER").unwrap_or_else(|_| {
        let name = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
        format!("{name}@{hostname}")
    });
    ClientIdentity {
        user,
        hostname,
        pid: std::process::id(),
        program: program.to_string(),
        remora_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

pub fn run(args: IntproxyArgs) -> Result<i32> {
    if args.detach {
        return detach();
    }
    // Own session: the terminal's Ctrl-C and hang-ups are the user command's.
    let _ = nix::unistd::setsid();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REMORA_INTPROXY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    match serve(args) {
        Ok(()) => Ok(0),
        Err(e) => {
            announce(&format!("{FAILED_PREFIX} {e}"));
            Ok(1)
        }
    }
}

/// Re-launch without `--detach` and return immediately.
fn detach() -> Result<i32> {
    let exe = std::env::current_exe().map_err(|e| Error::Io(format!("locating remora: {e}")))?;
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--detach")
        .collect();
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| Error::IntproxyStart {
            reason: format!("spawning: {e}"),
        })?;
    Ok(0)
}

fn announce(line: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn serve(args: IntproxyArgs) -> Result<()> {
    // Before the agent starts, so it writes through the relay too.
    let on_idle = stderr_relay::relay_if_pipe();
    let mut agent_token = std::env::var(AGENT_TOKEN_ENV).unwrap_or_default();
    let layer_token = std::env::var(LAYER_TOKEN_ENV).unwrap_or_default();
    let program = std::env::var("REMORA_PROGRAM").unwrap_or_default();
    let target = args.target.clone().unwrap_or_else(|| "targetless".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Io(format!("starting the intproxy runtime: {e}")))?;
    let mut agent_child = None;
    let mut kube_agent = None;
    let agent_addr: AgentEndpoint = match (args.agent, &args.agent_bin, args.kube) {
        (Some(addr), _, _) => addr.into(),
        (None, None, false) if args.kube_operator => {
            let launch = crate::kube_operator::OperatorLaunch::from_env()?;
            if launch.through_api() {
                // Client-certificate users: the aggregated API's relay.
                runtime.block_on(launch.relay())?.into()
            } else {
                AgentEndpoint::Dial(runtime.block_on(launch.dialer())?)
            }
        }
        (None, Some(bin), _) => {
            // The fd broker's abstract name this run chose (nothing on
            // disk to remove, however the agent ends).
            let broker_path = std::env::var_os(remora_protocol::broker::BROKER_PATH_ENV)
                .map(std::path::PathBuf::from);
            let broker = broker_path
                .as_deref()
                .map(|path| (path, layer_token.as_str()));
            let (child, addr) = spawn_agent(bin, &target, &agent_token, broker)?;
            agent_child = Some(child);
            addr.into()
        }
        (None, None, true) => {
            let launch = crate::kube::KubeLaunch::from_env()?;
            let started = runtime.block_on(crate::kube::start_agent(&launch, &target))?;
            agent_token = started.token.0;
            kube_agent = Some(started.handle);
            AgentEndpoint::Dial(crate::kube::dialer(started.forward))
        }
        (None, None, false) => {
            return Err(Error::IntproxyStart {
                reason: "needs --agent, --agent-bin, --kube or --kube-operator".into(),
            });
        }
    };
    let config = IntProxyConfig {
        agent: agent_addr,
        agent_token: SessionToken(agent_token),
        layer_token: SessionToken(layer_token),
        identity: identity(&program),
        // A cluster agent serves the container it found (`pid/<PID>` on its
        // node); it was started for this run alone, its token says so.
        target: if args.kube { None } else { args.target },
        listen: args.listen,
        first_connect_timeout: Duration::from_secs(args.first_connect_timeout),
        linger: Duration::from_secs(2),
        setup_sessions: args.setup_sessions,
        override_filters: args.override_filter,
        on_idle,
    };
    let kube = kube_agent.is_some();
    let result = runtime.block_on(async {
        let proxy = if kube {
            crate::kube::connect_when_listening(config).await?
        } else {
            IntProxy::start(config).await?
        };
        let addr = proxy.local_addr()?;
        announce(&format!("{READY_PREFIX} {addr}"));
        // Nobody reads stdout after the ready line: the reader exec'd away.
        silence_stdout();
        tokio::select! {
            result = proxy.run() => result?,
            signal = terminating_signal() => {
                tracing::warn!("the intproxy received {signal}: stopping the agent");
            }
        }
        Ok::<_, Error>(())
    });
    if let Some(agent) = kube_agent {
        // Deletes the agent Job (or pod) and waits for it to go.
        runtime.block_on(agent.stop());
    }
    drop(runtime);
    if let Some(child) = agent_child {
        stop_agent(child);
    }
    result
}

/// The first of SIGTERM, SIGINT or SIGHUP, by name (never, if none can be watched).
pub(crate) async fn terminating_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let watch = |kind: SignalKind, name: &'static str| async move {
        match signal(kind) {
            Ok(mut s) => {
                s.recv().await;
                name
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        name = watch(SignalKind::terminate(), "SIGTERM") => name,
        name = watch(SignalKind::interrupt(), "SIGINT") => name,
        name = watch(SignalKind::hangup(), "SIGHUP") => name,
    }
}

fn silence_stdout() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(null);
    }
}

/// Start the agent for `target` (the operator's local platform does it the same way).
fn spawn_agent(
    bin: &std::path::Path,
    target: &str,
    token: &str,
    fd_broker: Option<(&std::path::Path, &str)>,
) -> Result<(Child, SocketAddr)> {
    let agent = remora_operator::platform::local::spawn_agent_with(
        bin,
        target,
        token,
        AGENT_START_TIMEOUT,
        fd_broker,
    )
    .map_err(|reason| Error::AgentStart {
        target: target.into(),
        reason,
    })?;
    Ok((agent.child, agent.addr))
}

/// How long the agent gets after SIGTERM before SIGKILL: its own shutdown
/// (incoming drain, clients hearing `Closing`, traffic rules removed) may
/// take `remora_agent::server::INCOMING_DRAIN + 2 * SHUTDOWN_GRACE`, plus a
/// second for its runtime; a SIGKILL before that would leave rules behind
/// (a test below keeps this in step with the agent's constants).
const AGENT_STOP_GRACE: Duration = Duration::from_secs(8);

/// The agent exits by itself once its last client is gone; make sure.
fn stop_agent(child: Child) {
    remora_operator::platform::local::stop_agent(child, Duration::from_secs(3), AGENT_STOP_GRACE);
}

#[cfg(test)]
mod tests {
    use super::AGENT_STOP_GRACE;
    use remora_agent::server::{INCOMING_DRAIN, SHUTDOWN_GRACE};

    #[test]
    fn the_agent_gets_its_whole_shutdown_before_sigkill() {
        assert!(AGENT_STOP_GRACE >= INCOMING_DRAIN + 2 * SHUTDOWN_GRACE);
    }
}
