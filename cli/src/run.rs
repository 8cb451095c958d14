//! `remora run --target T -- COMMAND`: resolve config, start the intproxy
//! (which starts the agent), fetch the target's environment, then exec the
//! command in place with the layer preloaded.

use crate::args::RunArgs;
use crate::error::{Error, Result};
use crate::intproxy_cmd::{AGENT_TOKEN_ENV, LAYER_TOKEN_ENV};
use crate::local::{self, AGENT_BIN_ENV, FAILED_PREFIX, LAYER_PATH_ENV, Ready};
use crate::progress::Progress;
use remora_config::{Config, FsMode, IncomingMode, Overrides, Target};
use remora_protocol::codec;
use remora_protocol::env::EnvRequest;
use remora_protocol::messages::{
    LayerHello, LayerHelloReply, LayerMessage, LayerRequest, LayerResponse, ProxyMessage,
};
use remora_protocol::{PROTOCOL_VERSION, Request, RequestId, Response, SessionToken};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long the intproxy (and the agent it starts) may take to be ready.
const INTPROXY_START_TIMEOUT: Duration = Duration::from_secs(30);
/// File name of the layer library next to the `remora` binary.
pub const LAYER_FILE: &str = "libremora_layer.so";
/// File name of the agent binary next to the `remora` binary.
pub const AGENT_FILE: &str = "remora-agent";

pub fn run(args: RunArgs) -> Result<i32> {
    let overrides = Overrides {
        target: args.target.clone(),
        namespace: args.namespace.clone(),
        operator: args.operator.clone(),
        fs_mode: args
            .fs_mode
            .as_deref()
            .and_then(|m| m.parse::<FsMode>().ok()),
        env_include: args.env_include.clone(),
        env_exclude: args.env_exclude.clone(),
        env_set: args.env_set.clone(),
        env_unset: args.env_unset.clone(),
        no_outgoing: args.no_outgoing,
        no_remote_dns: args.no_remote_dns,
        incoming_mode: if args.steal {
            Some(IncomingMode::Steal)
        } else if args.mirror {
            Some(IncomingMode::Mirror)
        } else {
            None
        },
        ports: args.ports.clone(),
        port_mappings: args.port_mappings.clone(),
        http_header_filter: args.http_header_filter.clone(),
        http_path_filter: args.http_path_filter.clone(),
        http_method_filter: args.http_method_filter.clone(),
        override_filter: args.override_filter,
    };
    let loaded = Config::from_env_and_overrides(args.config.clone(), overrides)?;
    let config = loaded.config;
    let policies = config.policies()?;
    let target_name = policies.target.to_string();
    let layer = local::find_component(LAYER_FILE, LAYER_PATH_ENV)?;
    let program = args.command[0].clone();
    let backend = match &config.operator {
        // The operator resolves the target and runs the agent, with its own
        // privileges: nothing to check or start here.
        Some(operator) => {
            if config.target.is_none() {
                return Err(Error::NoTarget);
            }
            Backend::Operator {
                addr: operator_addr(operator)?,
                token: operator_token()?,
            }
        }
        None => {
            let pid = match &policies.target {
                Target::Pid(pid) => *pid,
                Target::Targetless if config.target.is_none() => return Err(Error::NoTarget),
                other => {
                    return Err(Error::UnsupportedTarget {
                        target: other.to_string(),
                        kind: other.kind().to_string(),
                    });
                }
            };
            local::check_target(pid, &target_name)?;
            local::check_privileges(&target_name)?;
            Backend::Agent {
                bin: local::find_component(AGENT_FILE, AGENT_BIN_ENV)?,
                token: random_token()?,
            }
        }
    };
    warn_if_unhookable(&program);

    let progress = Progress::start(&match &backend {
        Backend::Operator { addr, .. } => {
            format!("joining {target_name} through the operator at {addr}")
        }
        Backend::Agent { .. } => format!("starting the agent for {target_name}"),
    });
    let layer_token = random_token()?;
    let proxy = start_intproxy(
        &backend,
        &target_name,
        &layer_token,
        &program,
        config.network.incoming.override_filter,
    )?;
    progress.step("fetching the target's environment");
    let env_policy = &policies.env;
    let request = EnvRequest {
        include: env_policy.include_patterns().to_vec(),
        exclude: env_policy.agent_exclude_patterns(),
    };
    let (remote_env, lifeline) =
        fetch_env(proxy, &layer_token, request).map_err(|reason| Error::Env {
            target: target_name.clone(),
            reason,
        })?;
    progress.finish();

    let local_env: BTreeMap<String, String> = std::env::vars().collect();
    let mut env = env_policy.select(&remote_env, &local_env);
    let preload = match env.get("LD_PRELOAD") {
        Some(existing) if !existing.is_empty() => format!("{}:{existing}", layer.display()),
        _ => layer.display().to_string(),
    };
    env.insert("LD_PRELOAD".into(), preload);
    env.insert("REMORA_INTPROXY_ADDR".into(), proxy.to_string());
    env.insert(LAYER_TOKEN_ENV.into(), layer_token);
    env.insert(
        remora_config::RESOLVED_CONFIG_ENV.into(),
        config.to_env_value(),
    );
    env.remove(AGENT_TOKEN_ENV);

    // The lifeline session stays open in the command (and whatever inherits
    // it), keeping the intproxy alive even for programs the layer cannot load
    // into. It is not close-on-exec on purpose.
    let _lifeline = keep_across_exec(lifeline);
    let err = Command::new(&program)
        .args(&args.command[1..])
        .env_clear()
        .envs(&env)
        .exec();
    Err(Error::Exec {
        program,
        source: err,
    })
}

fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| Error::Io(format!("generating a token: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// What the intproxy connects to.
#[derive(Debug)]
enum Backend {
    /// Start this agent binary with this token.
    Agent {
        bin: std::path::PathBuf,
        token: String,
    },
    /// Go through the operator at this address with its token.
    Operator { addr: SocketAddr, token: String },
}

/// `operator` (`host:port`) as a socket address.
fn operator_addr(operator: &str) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    operator
        .to_socket_addrs()
        .map_err(|e| Error::Operator {
            operator: operator.into(),
            reason: e.to_string(),
        })?
        .next()
        .ok_or_else(|| Error::Operator {
            operator: operator.into(),
            reason: "the name resolves to no address".into(),
        })
}

/// The operator's token, from [`remora_operator::token::OPERATOR_TOKEN_ENV`].
pub fn operator_token() -> Result<String> {
    std::env::var(remora_operator::token::OPERATOR_TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty())
        .ok_or(Error::OperatorToken)
}

fn start_intproxy(
    backend: &Backend,
    target: &str,
    layer_token: &str,
    program: &str,
    override_filter: bool,
) -> Result<SocketAddr> {
    let exe = std::env::current_exe().map_err(|e| Error::Io(format!("locating remora: {e}")))?;
    let mut command = Command::new(exe);
    command.arg("intproxy").arg("--detach");
    match backend {
        Backend::Agent { bin, token } => {
            command
                .arg("--agent-bin")
                .arg(bin)
                .env(AGENT_TOKEN_ENV, token);
        }
        Backend::Operator { addr, token } => {
            command
                .arg("--agent")
                .arg(addr.to_string())
                .env(AGENT_TOKEN_ENV, token);
        }
    }
    if override_filter {
        command.arg("--override-filter");
    }
    let mut child = command
        .args(["--target", target])
        .env(LAYER_TOKEN_ENV, layer_token)
        .env("REMORA_PROGRAM", program)
        .env_remove("LD_PRELOAD")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| Error::IntproxyStart {
            reason: format!("spawning: {e}"),
        })?;
    let stdout = child.stdout.take();
    // The launcher exits as soon as the real intproxy is spawned.
    let _ = child.wait();
    let Some(stdout) = stdout else {
        return Err(Error::IntproxyStart {
            reason: "no stdout pipe".into(),
        });
    };
    match local::first_line(stdout, INTPROXY_START_TIMEOUT) {
        Ready::Line(line) => {
            if let Some(addr) = local::parse_ready(&line, remora_intproxy::READY_PREFIX) {
                Ok(addr)
            } else if let Some(reason) = line.strip_prefix(FAILED_PREFIX) {
                Err(Error::IntproxyStart {
                    reason: reason.trim().to_string(),
                })
            } else {
                Err(Error::IntproxyStart {
                    reason: format!("unexpected output {line:?}"),
                })
            }
        }
        Ready::Eof => Err(Error::IntproxyStart {
            reason: "it exited without a word".into(),
        }),
        Ready::Timeout => Err(Error::IntproxyStart {
            reason: format!("no answer within {}s", INTPROXY_START_TIMEOUT.as_secs()),
        }),
    }
}

/// Ask for the target's environment over a layer session, and keep that
/// session as the run's lifeline.
fn fetch_env(
    proxy: SocketAddr,
    token: &str,
    request: EnvRequest,
) -> Result<(BTreeMap<String, String>, TcpStream), String> {
    let mut stream = TcpStream::connect_timeout(&proxy, Duration::from_secs(5))
        .map_err(|e| format!("connecting to the intproxy: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let hello = LayerHello {
        version: PROTOCOL_VERSION,
        token: SessionToken(token.to_string()),
        pid: std::process::id(),
        parent_pid: std::os::unix::process::parent_id(),
        program: "remora".into(),
    };
    codec::write_frame(&mut stream, &hello).map_err(|e| e.to_string())?;
    match codec::read_frame::<_, LayerHelloReply>(&mut stream).map_err(|e| e.to_string())? {
        LayerHelloReply::Accepted { .. } => {}
        LayerHelloReply::Rejected { reason } => return Err(reason),
    }
    let id = RequestId(1);
    let msg = LayerMessage::Request {
        id,
        request: LayerRequest::Remote(Request::Env(request)),
    };
    codec::write_frame(&mut stream, &msg).map_err(|e| e.to_string())?;
    loop {
        match codec::read_frame::<_, ProxyMessage>(&mut stream).map_err(|e| e.to_string())? {
            ProxyMessage::Response { result, .. } => {
                return match result.map_err(|e| e.to_string())? {
                    LayerResponse::Remote(Response::Env(reply)) => Ok((reply.vars, stream)),
                    other => Err(format!("unexpected reply {other:?}")),
                };
            }
            ProxyMessage::Log { message, .. } => eprintln!("remora: {message}"),
        }
    }
}

/// Let the lifeline survive `exec` (std opens sockets close-on-exec).
fn keep_across_exec(stream: TcpStream) -> Option<std::os::fd::OwnedFd> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    let fd = std::os::fd::OwnedFd::from(stream);
    fcntl(&fd, FcntlArg::F_SETFD(FdFlag::empty())).ok()?;
    Some(fd)
}

/// Statically linked and Go programs bypass libc: remora cannot see their calls.
fn warn_if_unhookable(program: &str) {
    let path = if program.contains('/') {
        Some(std::path::PathBuf::from(program))
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
    };
    let Some(path) = path else { return };
    match crate::elf::inspect(&path) {
        Some(crate::elf::Kind::Static) => eprintln!(
            "remora: warning: {} is statically linked; remora cannot intercept its calls \
             (only dynamically linked programs see the target)",
            path.display()
        ),
        Some(crate::elf::Kind::Go) => eprintln!(
            "remora: warning: {} is a Go program, which makes system calls directly; \
             remora cannot intercept them",
            path.display()
        ),
        _ => {}
    }
}
