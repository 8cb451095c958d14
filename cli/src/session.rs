//! Preparing a session, shared by `run`, `ext`, `test` and `ci start`:
//! resolve the config, start the intproxy (which starts the agent or joins
//! the operator), fetch the target's environment, and compute the
//! environment a process needs to run inside the session.
//!
//! [`prepare`] returns a [`Prepared`] session; `run` execs the command with
//! its [`Prepared::env`], `ext` prints it, `test` hands it to test binaries.

use crate::args::SessionArgs;
use crate::error::{Error, Result};
use crate::intproxy_cmd::{AGENT_TOKEN_ENV, LAYER_TOKEN_ENV};
use crate::local::{self, AGENT_BIN_ENV, FAILED_PREFIX, LAYER_PATH_ENV};
use remora_config::{Config, FsMode, IncomingMode, Overrides, Target};
use remora_protocol::broker::BROKER_PATH_ENV;
use remora_protocol::codec;
use remora_protocol::env::EnvRequest;
use remora_protocol::messages::{
    LayerHello, LayerHelloReply, LayerMessage, LayerRequest, LayerResponse, ProxyMessage,
};
use remora_protocol::queues::{QueueReply, QueueRequest, QueueWanted};
use remora_protocol::{PROTOCOL_VERSION, Request, RequestId, Response, SessionToken};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long the intproxy (and the agent it starts) may take to be ready.
const INTPROXY_START_TIMEOUT: Duration = Duration::from_secs(30);
/// File name of the layer library next to the `remora` binary.
pub const LAYER_FILE: &str = "libremora_layer.so";
/// File name of the agent binary next to the `remora` binary.
pub const AGENT_FILE: &str = "remora-agent";
/// Variable telling the layer where the intproxy listens.
pub const INTPROXY_ADDR_ENV: &str = "REMORA_INTPROXY_ADDR";

/// Where a session reports what it is doing (a spinner, JSON lines).
pub trait Reporter {
    fn step(&mut self, message: &str);
}

/// How the session's intproxy should live.
#[derive(Debug, Clone)]
pub struct Lifetime {
    /// How long the intproxy waits for the first process of the run.
    pub first_connect: Duration,
    /// Whether the CLI's own environment session is only a set-up session
    /// (the CLI exits or stays out of the run), so it does not count as the
    /// first process.
    pub setup_session: bool,
    /// Where the intproxy's (and agent's) stderr goes.
    pub log: Log,
}

/// Where the intproxy's stderr goes.
#[derive(Debug, Clone, Default)]
pub enum Log {
    /// Ours (`run`: the user's terminal).
    #[default]
    Inherit,
    /// Nowhere: the CLI exits and nobody reads it (`ext`, unless asked).
    Null,
    /// Appended to this file.
    File(PathBuf),
}

impl Default for Lifetime {
    fn default() -> Self {
        Lifetime {
            first_connect: Duration::from_secs(30),
            setup_session: false,
            log: Log::Inherit,
        }
    }
}

/// A ready session.
#[derive(Debug)]
pub struct Prepared {
    /// The whole environment a process of the session gets (local variables,
    /// the target's selected ones, the layer and session variables).
    pub env: BTreeMap<String, String>,
    /// Names of the target's variables that were imported.
    pub imported: Vec<String>,
    /// Where the intproxy listens for layers.
    pub intproxy: SocketAddr,
    /// The target, as given (`pid/42`).
    pub target: String,
    /// The layer library.
    pub layer: PathBuf,
    /// The CLI's own layer session: the intproxy counts it as live while it
    /// is open (`run` keeps it across `exec`, `test` holds it for the run).
    pub lifeline: TcpStream,
}

impl Prepared {
    /// The variables that differ from `local` (new or changed, plus every
    /// imported target variable), and the local ones the session removes.
    pub fn diff(
        &self,
        local: &BTreeMap<String, String>,
    ) -> (BTreeMap<String, String>, Vec<String>) {
        let set = self
            .env
            .iter()
            .filter(|(k, v)| local.get(*k) != Some(*v) || self.imported.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let unset = local
            .keys()
            .filter(|k| !self.env.contains_key(*k))
            .cloned()
            .collect();
        (set, unset)
    }
}

/// The config overrides the session flags imply.
pub fn overrides(args: &SessionArgs) -> Overrides {
    Overrides {
        target: args.target.clone(),
        namespace: args.namespace.clone(),
        operator: args.operator.clone(),
        kubeconfig: args.kubeconfig.clone(),
        context: args.context.clone(),
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
        reply_timeout_secs: args.reply_timeout,
    }
}

/// Resolve the config, start the intproxy and agent, fetch the target's
/// environment. `program` names the run in session lists; `reporter` is told
/// each step before anything slow happens.
pub fn prepare(
    args: &SessionArgs,
    program: &str,
    lifetime: &Lifetime,
    reporter: &mut dyn Reporter,
) -> Result<Prepared> {
    let loaded = Config::from_env_and_overrides(args.config.clone(), overrides(args))?;
    let config = loaded.config;
    let policies = config.policies()?;
    let target_name = policies.target.to_string();
    let layer = local::find_component(LAYER_FILE, LAYER_PATH_ENV)?;
    let backend = match &config.operator {
        // The operator resolves the target and runs the agent, with its own
        // privileges: nothing to check or start here.
        Some(operator) => {
            if config.target.is_none() {
                return Err(Error::NoTarget);
            }
            match crate::kube_operator::OperatorLaunch::from_config(&config)? {
                // The operator installed in the cluster: through the API
                // server, as the kubeconfig's user.
                Some(mut launch) => {
                    let token = launch.token()?;
                    let namespace = launch.namespace()?;
                    Backend::KubeOperator {
                        launch: Box::new(launch),
                        token,
                        namespace,
                    }
                }
                None => Backend::Operator {
                    addr: operator_addr(operator)?,
                    token: operator_token()?,
                },
            }
        }
        None => match &policies.target {
            Target::Pid(pid) => {
                local::check_target(*pid, &target_name)?;
                local::check_privileges(&target_name)?;
                Backend::Agent {
                    bin: local::find_component(AGENT_FILE, AGENT_BIN_ENV)?,
                    token: random_token()?,
                    fd_broker: fd_broker_path()?,
                }
            }
            Target::Targetless if config.target.is_none() => return Err(Error::NoTarget),
            // Every other kind lives in a Kubernetes cluster (`targetless`:
            // an agent pod of its own there).
            _ => Backend::Kube(Box::new(crate::kube::KubeLaunch::from_config(&config))),
        },
    };
    if !config.split_queues.is_empty()
        && let (Backend::Operator { .. } | Backend::KubeOperator { .. }, Some(operator)) =
            (&backend, &config.operator)
    {
        // The split's rollout replaces the workload's pods: it must be over
        // before the operator picks the pod this session's agent enters.
        reporter.step(&format!(
            "preparing the queue split of {target_name} (the workload rolls onto its temporary queues)"
        ));
        let request = Request::Queues(QueueRequest::Prepare {
            target: target_name.clone(),
        });
        let kube = match &backend {
            Backend::KubeOperator { launch, .. } => Some(launch.options.clone()),
            _ => None,
        };
        crate::session_cmd::ask_operator_over(operator, kube, request, SPLIT_PREPARE_WAIT)
            .map_err(|e| Error::Env {
                target: target_name.clone(),
                reason: format!("queue splits: {e}"),
            })?;
    }
    reporter.step(&match &backend {
        Backend::Operator { addr, .. } => {
            format!("joining {target_name} through the operator at {addr}")
        }
        Backend::KubeOperator { launch, .. } => {
            format!(
                "joining {target_name} through the operator ({})",
                launch.operator
            )
        }
        Backend::Agent { .. } => format!("starting the agent for {target_name}"),
        Backend::Kube(_) => format!("connecting to the cluster for {target_name}"),
    });
    let layer_token = random_token()?;
    let proxy = start_intproxy(
        &IntproxyLaunch {
            backend: &backend,
            target: &target_name,
            layer_token: &layer_token,
            program,
            override_filter: config.network.incoming.override_filter,
            lifetime,
        },
        reporter,
    )?;
    reporter.step("fetching the target's environment");
    let env_policy = &policies.env;
    let request = EnvRequest {
        include: env_policy.include_patterns().to_vec(),
        exclude: env_policy.agent_exclude_patterns(),
    };
    let (remote_env, mut lifeline) =
        fetch_env(proxy, &layer_token, request).map_err(|reason| Error::Env {
            target: target_name.clone(),
            reason,
        })?;

    let local_env: BTreeMap<String, String> = std::env::vars().collect();
    let mut env = env_policy.select(&remote_env, &local_env);
    if !config.db_branches.is_empty() {
        env.extend(db_branches(
            &config,
            &backend,
            &mut lifeline,
            &target_name,
            reporter,
        )?);
    }
    if !config.split_queues.is_empty() {
        env.extend(split_queues(
            &config,
            &backend,
            &mut lifeline,
            &target_name,
            reporter,
        )?);
    }
    let imported = remote_env
        .iter()
        .filter(|(k, v)| env.get(*k) == Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    let preload = match env.get("LD_PRELOAD") {
        Some(existing) if !existing.is_empty() => format!("{}:{existing}", layer.display()),
        _ => layer.display().to_string(),
    };
    env.insert("LD_PRELOAD".into(), preload);
    env.insert(INTPROXY_ADDR_ENV.into(), proxy.to_string());
    env.insert(LAYER_TOKEN_ENV.into(), layer_token);
    match &backend {
        Backend::Agent {
            fd_broker: Some(path),
            ..
        } => {
            env.insert(BROKER_PATH_ENV.into(), path.display().to_string());
        }
        _ => {
            env.remove(BROKER_PATH_ENV);
        }
    }
    env.insert(
        remora_config::RESOLVED_CONFIG_ENV.into(),
        config.to_env_value(),
    );
    env.remove(AGENT_TOKEN_ENV);
    Ok(Prepared {
        env,
        imported,
        intproxy: proxy,
        target: target_name,
        layer,
        lifeline,
    })
}

/// Ask the operator for the session's `[[db_branches]]`: the variables
/// that point the process at them.
fn db_branches(
    config: &Config,
    backend: &Backend,
    lifeline: &mut TcpStream,
    target: &str,
    reporter: &mut dyn Reporter,
) -> Result<BTreeMap<String, String>> {
    let failed = |reason: String| Error::Env {
        target: target.to_owned(),
        reason,
    };
    if !matches!(
        backend,
        Backend::Operator { .. } | Backend::KubeOperator { .. }
    ) {
        return Err(failed(
            "db_branches are made by the operator: set `operator` (or --operator / \
             REMORA_OPERATOR)"
                .into(),
        ));
    }
    reporter.step("making database branches");
    let (vars, notes) = crate::db_cmd::make_branches(lifeline, crate::db_cmd::specs(config))
        .map_err(|reason| failed(format!("database branches: {reason}")))?;
    for note in notes {
        eprintln!("remora: {note}");
    }
    Ok(vars)
}

/// How long `remora run` waits for a queue split's rollout.
const SPLIT_PREPARE_WAIT: Duration = Duration::from_secs(330);

/// Ask the operator for the session's `split_queues`: the variables that
/// name the session's own temporary queues. Its share ends with the session.
fn split_queues(
    config: &Config,
    backend: &Backend,
    lifeline: &mut TcpStream,
    target: &str,
    reporter: &mut dyn Reporter,
) -> Result<BTreeMap<String, String>> {
    let failed = |reason: String| Error::Env {
        target: target.to_owned(),
        reason,
    };
    if !matches!(
        backend,
        Backend::Operator { .. } | Backend::KubeOperator { .. }
    ) {
        return Err(failed(
            "queues are split by the operator: set `operator` (or --operator / \
             REMORA_OPERATOR)"
                .into(),
        ));
    }
    reporter.step("joining queue splits");
    let wanted = config
        .split_queues
        .iter()
        .map(|(id, q)| QueueWanted {
            id: id.clone(),
            broker: match q.kind {
                remora_config::QueueType::Rabbitmq => "rabbitmq",
                remora_config::QueueType::Sqs => "sqs",
                remora_config::QueueType::Kafka => "kafka",
            }
            .to_owned(),
            filter: q.message_filter.clone(),
        })
        .collect();
    // The first session of a split waits for the workload's rollout.
    let reply = crate::db_cmd::ask_over_lifeline(
        lifeline,
        Request::Queues(QueueRequest::Split(wanted)),
        Duration::from_secs(600),
    )
    .map_err(|reason| failed(format!("queue splits: {reason}")))?;
    match reply {
        Response::Queues(QueueReply::Split { env }) => Ok(env),
        other => Err(failed(format!("queue splits: unexpected reply {other:?}"))),
    }
}

/// A random hex token.
pub fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| Error::Io(format!("generating a token: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// What the intproxy connects to.
#[derive(Debug)]
enum Backend {
    /// Start this agent binary with this token.
    Agent {
        bin: PathBuf,
        token: String,
        /// Where its local fast path listens (`None`: turned off).
        fd_broker: Option<PathBuf>,
    },
    /// Go through the operator at this address with its token.
    Operator { addr: SocketAddr, token: String },
    /// Go through the operator installed in the cluster (the intproxy
    /// relays through port-forwards) with the kubeconfig user's token.
    KubeOperator {
        launch: Box<crate::kube_operator::OperatorLaunch>,
        token: String,
        /// The target's namespace, which the operator is told.
        namespace: String,
    },
    /// Start the agent in a Kubernetes cluster (the intproxy does, and
    /// reaches it through port-forward with a per-run token).
    Kube(Box<crate::kube::KubeLaunch>),
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

/// Environment variable turning the local fast path off (`0`, `off`,
/// `false`, `no`): file reads and outgoing TCP then take the proxied path, as
/// on Kubernetes (benchmarks compare both).
pub const FAST_PATH_ENV: &str = "REMORA_LOCAL_FAST_PATH";

/// Where this run's agent serves the local fast path (see
/// `remora_agent::broker`): a fresh abstract socket name (`@remora-fd-…`),
/// or `None` when [`FAST_PATH_ENV`] turns it off.
fn fd_broker_path() -> Result<Option<PathBuf>> {
    if let Ok(value) = std::env::var(FAST_PATH_ENV)
        && remora_protocol::broker::turned_off(&value)
    {
        return Ok(None);
    }
    let token = random_token()?;
    // An abstract name: no file, so nothing is left behind when the agent
    // or the intproxy is killed (see `remora_protocol::broker::socket_addr`).
    Ok(Some(PathBuf::from(format!(
        "@remora-fd-{}",
        &token[..token.len().min(16)]
    ))))
}

/// The operator's token, from [`remora_operator::token::OPERATOR_TOKEN_ENV`].
pub fn operator_token() -> Result<String> {
    std::env::var(remora_operator::token::OPERATOR_TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty())
        .ok_or(Error::OperatorToken)
}

/// glibc's allocator settings for the intproxy (`GLIBC_TUNABLES`, read when
/// it starts; other C libraries ignore the variable). Its data path allocates
/// a buffer per chunk of a stream and frees it on another task; with glibc's
/// dynamic trim threshold the top of the heap went back to the kernel
/// (`madvise`) and was faulted in again over and over: about 11,000 page
/// faults and a third of the intproxy's CPU per 100 MB downloaded
/// (docs/benchmarks.md). A fixed trim threshold of 8 MiB keeps that memory;
/// a fixed one turns off the dynamic mmap threshold too, so the mmap
/// threshold is raised with it (1 MiB), keeping the chunk and read buffers
/// (up to 256 KiB) on the heap.
const INTPROXY_MALLOC_TUNABLES: &str =
    "glibc.malloc.trim_threshold=8388608:glibc.malloc.mmap_threshold=1048576";

/// The intproxy's `GLIBC_TUNABLES`: ours first, then the user's own (glibc
/// keeps the last value of a key, so the user's settings win).
fn intproxy_tunables(inherited: Option<&std::ffi::OsStr>) -> std::ffi::OsString {
    let mut tunables = std::ffi::OsString::from(INTPROXY_MALLOC_TUNABLES);
    if let Some(own) = inherited.filter(|own| !own.is_empty()) {
        tunables.push(":");
        tunables.push(own);
    }
    tunables
}

#[derive(Debug)]
struct IntproxyLaunch<'a> {
    backend: &'a Backend,
    target: &'a str,
    layer_token: &'a str,
    program: &'a str,
    override_filter: bool,
    lifetime: &'a Lifetime,
}

fn start_intproxy(launch: &IntproxyLaunch<'_>, reporter: &mut dyn Reporter) -> Result<SocketAddr> {
    let exe = std::env::current_exe().map_err(|e| Error::Io(format!("locating remora: {e}")))?;
    let mut command = Command::new(exe);
    command
        .arg("intproxy")
        .arg("--detach")
        .env(
            "GLIBC_TUNABLES",
            intproxy_tunables(std::env::var_os("GLIBC_TUNABLES").as_deref()),
        )
        .env_remove(BROKER_PATH_ENV);
    match launch.backend {
        Backend::Agent {
            bin,
            token,
            fd_broker,
        } => {
            command
                .arg("--agent-bin")
                .arg(bin)
                .env(AGENT_TOKEN_ENV, token);
            match fd_broker {
                Some(path) => command.env(BROKER_PATH_ENV, path),
                None => command.env_remove(BROKER_PATH_ENV),
            };
        }
        Backend::Operator { addr, token } => {
            command
                .arg("--agent")
                .arg(addr.to_string())
                .env(AGENT_TOKEN_ENV, token);
        }
        Backend::KubeOperator { launch, token, .. } => {
            command
                .arg("--kube-operator")
                .env(
                    crate::kube_operator::OPERATOR_LAUNCH_ENV,
                    launch.to_env_value(),
                )
                .env(AGENT_TOKEN_ENV, token);
        }
        Backend::Kube(kube) => {
            command
                .arg("--kube")
                .env(crate::kube::KUBE_LAUNCH_ENV, kube.to_env_value())
                .env_remove(AGENT_TOKEN_ENV);
        }
    }
    if launch.override_filter {
        command.arg("--override-filter");
    }
    let lifetime = launch.lifetime;
    command
        .arg("--first-connect-timeout")
        .arg(lifetime.first_connect.as_secs().max(1).to_string());
    if lifetime.setup_session {
        command.args(["--setup-sessions", "1"]);
    }
    match &lifetime.log {
        Log::Inherit => {}
        Log::Null => {
            command.stderr(Stdio::null());
        }
        Log::File(path) => {
            command.stderr(open_log(path)?);
        }
    }
    // The operator serves several namespaces: it is told the target's.
    let target = match launch.backend {
        Backend::KubeOperator { namespace, .. } => {
            remora_kube::namespaced::qualify(namespace, launch.target)
        }
        _ => launch.target.to_owned(),
    };
    let mut child = command
        .args(["--target", &target])
        .env(LAYER_TOKEN_ENV, launch.layer_token)
        .env("REMORA_PROGRAM", launch.program)
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
    let timeout = match launch.backend {
        Backend::Kube(kube) => kube.start_timeout(),
        _ => INTPROXY_START_TIMEOUT,
    };
    let deadline = std::time::Instant::now() + timeout;
    let lines = local::lines(stdout);
    let failed = |reason: String| match launch.backend {
        Backend::Kube(_) => Error::KubeStart {
            target: launch.target.to_owned(),
            reason,
        },
        _ => Error::IntproxyStart { reason },
    };
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                if let Some(addr) = local::parse_ready(&line, remora_intproxy::READY_PREFIX) {
                    return Ok(addr);
                } else if let Some(step) = line.strip_prefix(crate::kube::PROGRESS_PREFIX) {
                    reporter.step(step.trim());
                } else if let Some(reason) = line.strip_prefix(FAILED_PREFIX) {
                    return Err(failed(reason.trim().to_string()));
                } else {
                    return Err(Error::IntproxyStart {
                        reason: format!("unexpected output {line:?}"),
                    });
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(failed("it exited without a word".into()));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                return Err(failed(format!(
                    "no answer within {}s (the last step shown is what it was doing)",
                    timeout.as_secs()
                )));
            }
        }
    }
}

/// Open (append) the intproxy's log file.
fn open_log(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::Io(format!("opening the log {}: {e}", path.display())))
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

#[cfg(test)]
mod tests;
