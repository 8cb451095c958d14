//! `remora intproxy` (hidden): the per-run proxy, started by `remora run`.
//!
//! With `--detach` it re-launches itself in a new session and exits, so the
//! real intproxy is not a child of the user's command. The real one starts
//! the agent (with `--agent-bin`) or connects to a given one (`--agent`),
//! prints `REMORA_INTPROXY_LISTENING <addr>` (or `REMORA_INTPROXY_FAILED
//! <why>`) on stdout, then serves layers until the process tree is gone.

use crate::args::IntproxyArgs;
use crate::error::{Error, Result};
use crate::local::{self, AGENT_READY_PREFIX, FAILED_PREFIX, Ready};
use remora_intproxy::{IntProxy, IntProxyConfig, READY_PREFIX};
use remora_protocol::{ClientIdentity, SessionToken};
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Environment variable carrying the agent's token.
pub const AGENT_TOKEN_ENV: &str = "REMORA_AGENT_TOKEN";
/// Environment variable carrying the layers' token.
pub const LAYER_TOKEN_ENV: &str = "REMORA_LAYER_TOKEN";
/// How long the agent may take to start listening.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(20);

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
    let agent_token = std::env::var(AGENT_TOKEN_ENV).unwrap_or_default();
    let layer_token = std::env::var(LAYER_TOKEN_ENV).unwrap_or_default();
    let program = std::env::var("REMORA_PROGRAM").unwrap_or_default();
    let target = args.target.clone().unwrap_or_else(|| "targetless".into());
    let mut agent_child = None;
    let agent_addr = match (args.agent, &args.agent_bin) {
        (Some(addr), _) => addr,
        (None, Some(bin)) => {
            let (child, addr) = spawn_agent(bin, &target, &agent_token)?;
            agent_child = Some(child);
            addr
        }
        (None, None) => {
            return Err(Error::IntproxyStart {
                reason: "needs --agent or --agent-bin".into(),
            });
        }
    };
    let config = IntProxyConfig {
        agent: agent_addr,
        agent_token: SessionToken(agent_token),
        layer_token: SessionToken(layer_token),
        identity: identity(&program),
        target: args.target,
        listen: args.listen,
        first_connect_timeout: Duration::from_secs(30),
        linger: Duration::from_secs(2),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Io(format!("starting the intproxy runtime: {e}")))?;
    let result = runtime.block_on(async {
        let proxy = IntProxy::start(config).await?;
        let addr = proxy.local_addr()?;
        announce(&format!("{READY_PREFIX} {addr}"));
        // Nobody reads stdout after the ready line: the reader exec'd away.
        silence_stdout();
        proxy.run().await?;
        Ok::<_, Error>(())
    });
    drop(runtime);
    if let Some(child) = agent_child {
        stop_agent(child);
    }
    result
}

fn silence_stdout() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(null);
    }
}

/// Start the agent for `target` and wait for its ready line.
fn spawn_agent(bin: &std::path::Path, target: &str, token: &str) -> Result<(Child, SocketAddr)> {
    let agent_error = |reason: String| Error::AgentStart {
        target: target.into(),
        reason,
    };
    let mut cmd = Command::new(bin);
    cmd.args(["--target", target, "--listen", "127.0.0.1:0"])
        .env(AGENT_TOKEN_ENV, token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    if std::env::var_os("REMORA_AGENT_LOG").is_none() {
        cmd.env("REMORA_AGENT_LOG", "warn");
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| agent_error(format!("spawning {}: {e}", bin.display())))?;
    let Some(stdout) = child.stdout.take() else {
        return Err(agent_error("no stdout pipe".into()));
    };
    match local::first_line(stdout, AGENT_START_TIMEOUT) {
        Ready::Line(line) => match local::parse_ready(&line, AGENT_READY_PREFIX) {
            Some(addr) => Ok((child, addr)),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(agent_error(format!("unexpected output {line:?}")))
            }
        },
        Ready::Eof => {
            let _ = child.wait();
            Err(agent_error(local::exit_of(&mut child)))
        }
        Ready::Timeout => {
            let _ = child.kill();
            let _ = child.wait();
            Err(agent_error(format!(
                "no answer within {}s",
                AGENT_START_TIMEOUT.as_secs()
            )))
        }
    }
}

/// The agent exits by itself once its last client is gone; make sure.
fn stop_agent(mut child: Child) {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
