//! Layer sessions: each process of the run's tree opens a small pool of
//! connections (one per concurrent remote call, up to the layer's limit),
//! each with its own handshake. They are grouped by pid ([`Processes`]): a
//! process's listening ports belong to the process, not to the connection
//! that asked, and are released when its last connection closes; set-up
//! sessions are counted in processes.

use crate::IntProxyConfig;
use crate::agent_link::AgentApi;
use crate::file_stream::{self, WriteStreams};
use crate::incoming::Incoming;
use crate::outgoing;
use futures::{SinkExt, StreamExt};
use remora_protocol::codec::FrameCodec;
use remora_protocol::incoming::RemotePort;
use remora_protocol::messages::{
    LayerHello, LayerHelloReply, LayerMessage, LayerRequest, LayerResponse, ProxyMessage,
};
use remora_protocol::session::LogLevel;
use remora_protocol::{Capabilities, RemoteResult};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::codec::Framed;

/// Live layer sessions and a wake-up for the lifetime watcher.
#[derive(Debug, Default)]
struct Sessions {
    live: AtomicUsize,
    ever: AtomicUsize,
    changed: Notify,
}

/// The processes connected, by pid: how many connections each has open and
/// which ports it listens on.
#[derive(Debug, Default, Clone)]
struct Processes(Arc<Mutex<ProcessTable>>);

#[derive(Debug, Default)]
struct ProcessTable {
    by_pid: HashMap<u32, ProcessEntry>,
    /// Distinct processes seen so far (set-up sessions are counted in these).
    seen: usize,
}

#[derive(Debug, Default)]
struct ProcessEntry {
    connections: usize,
    listening: Vec<RemotePort>,
}

impl Processes {
    /// A connection of `pid` was accepted; returns whether the pid is new.
    fn join(&self, pid: u32) -> (bool, usize) {
        let mut table = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let entry = table.by_pid.entry(pid).or_default();
        entry.connections += 1;
        let new = entry.connections == 1;
        if new {
            table.seen += 1;
        }
        (new, table.seen)
    }

    /// A connection of `pid` closed; the ports to release when it was the last.
    fn leave(&self, pid: u32) -> Vec<RemotePort> {
        let mut table = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = table.by_pid.get_mut(&pid) else {
            return Vec::new();
        };
        entry.connections -= 1;
        if entry.connections > 0 {
            return Vec::new();
        }
        table
            .by_pid
            .remove(&pid)
            .map(|e| e.listening)
            .unwrap_or_default()
    }

    /// A connection that closed before its handshake: counted as a process.
    fn anonymous(&self) -> usize {
        let mut table = self.0.lock().unwrap_or_else(|e| e.into_inner());
        table.seen += 1;
        table.seen
    }

    fn listening(&self, pid: u32, port: RemotePort, listens: bool) {
        let mut table = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = table.by_pid.get_mut(&pid) {
            entry.listening.retain(|p| *p != port);
            if listens {
                entry.listening.push(port);
            }
        }
    }
}

/// Decrements the live count when a session task ends, however it ends.
struct SessionGuard(Arc<Sessions>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_one();
    }
}

/// Accept layers until the process tree is gone (see the crate docs).
pub async fn serve(
    listener: TcpListener,
    agent: AgentApi,
    config: Arc<IntProxyConfig>,
) -> crate::Result<()> {
    let sessions = Arc::new(Sessions::default());
    let streams = WriteStreams::default();
    let incoming = Incoming::default();
    let processes = Processes::default();
    loop {
        let idle = async {
            loop {
                if sessions.live.load(Ordering::SeqCst) == 0 {
                    // Read each time: a process is counted after its handshake.
                    let idle_for = if sessions.ever.load(Ordering::SeqCst) == 0 {
                        config.first_connect_timeout
                    } else {
                        config.linger
                    };
                    if sessions.ever.load(Ordering::SeqCst) > 0
                        && let Some(on_idle) = &config.on_idle
                    {
                        let _ = on_idle.try_send(());
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(idle_for) => return,
                        _ = sessions.changed.notified() => {}
                    }
                } else {
                    sessions.changed.notified().await;
                }
            }
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    stream.set_nodelay(true).ok();
                    sessions.live.fetch_add(1, Ordering::SeqCst);
                    let guard = SessionGuard(sessions.clone());
                    let agent = agent.clone();
                    let config = config.clone();
                    let shared = Shared {
                        streams: streams.clone(),
                        incoming: incoming.clone(),
                        processes: processes.clone(),
                        sessions: sessions.clone(),
                    };
                    tokio::spawn(async move {
                        let _guard = guard;
                        if let Err(e) = session(stream, agent, config, shared).await {
                            tracing::debug!("layer session ended: {e}");
                        }
                    });
                }
                Err(e) => tracing::warn!("accepting a layer: {e}"),
            },
            _ = idle => {
                tracing::info!("no layer session left; intproxy exits");
                return Ok(());
            }
        }
    }
}

async fn session(
    stream: TcpStream,
    agent: AgentApi,
    config: Arc<IntProxyConfig>,
    shared: Shared,
) -> Result<(), remora_protocol::CodecError> {
    let mut hs = Framed::new(stream, FrameCodec::<LayerHello, LayerHelloReply>::default());
    let hello = match hs.next().await.transpose() {
        Ok(Some(hello)) => hello,
        // A client that left before saying who it is counts as one process.
        other => {
            let seen = shared.processes.anonymous();
            if seen > config.setup_sessions {
                shared.sessions.ever.fetch_add(1, Ordering::SeqCst);
            }
            return other.map(drop);
        }
    };
    if hello.token != config.layer_token {
        let reason = "invalid layer token".to_string();
        hs.send(LayerHelloReply::Rejected { reason }).await?;
        return Ok(());
    }
    let version = match remora_protocol::handshake::negotiate(hello.version) {
        Ok(version) => version,
        Err(reason) => {
            hs.send(LayerHelloReply::Rejected { reason }).await?;
            return Ok(());
        }
    };
    hs.send(LayerHelloReply::Accepted { version }).await?;
    // This link's handshake carries no capability set: the version implies it.
    let capabilities = Capabilities::implied_by(version);
    tracing::debug!(pid = hello.pid, program = %hello.program, "layer connected");
    let pid = hello.pid;
    let (new, seen) = shared.processes.join(pid);
    if new && seen > config.setup_sessions {
        shared.sessions.ever.fetch_add(1, Ordering::SeqCst);
    }
    let mut framed = hs.map_codec(|_| FrameCodec::<LayerMessage, ProxyMessage>::default());
    let mut warned_lost = false;
    let outcome = serve_session(
        &mut framed,
        &agent,
        &shared,
        pid,
        &mut warned_lost,
        capabilities,
    )
    .await;
    // A process that exits (its last connection closes) stops receiving its
    // ports' traffic at once.
    for port in shared.processes.leave(pid) {
        let _ = shared.incoming.unlisten(&agent, port).await;
    }
    outcome
}

/// State shared by every layer session of the run.
#[derive(Debug, Clone)]
struct Shared {
    streams: WriteStreams,
    incoming: Incoming,
    processes: Processes,
    sessions: Arc<Sessions>,
}

type LayerFramed = Framed<TcpStream, FrameCodec<LayerMessage, ProxyMessage>>;

async fn serve_session(
    framed: &mut LayerFramed,
    agent: &AgentApi,
    shared: &Shared,
    pid: u32,
    warned_lost: &mut bool,
    capabilities: Capabilities,
) -> Result<(), remora_protocol::CodecError> {
    while let Some(msg) = framed.next().await {
        let LayerMessage::Request { id, request } = msg?;
        let listens = match &request {
            LayerRequest::Listen { remote, .. } => Some(*remote),
            LayerRequest::Unlisten { remote } => {
                shared.processes.listening(pid, *remote, false);
                None
            }
            _ => None,
        };
        let result = match negotiated(capabilities, &request) {
            Ok(()) => handle(agent, shared, request).await,
            Err(e) => Err(e),
        };
        if let (Some(port), Ok(_)) = (listens, &result) {
            shared.processes.listening(pid, port, true);
        }
        // The first call that fails because the agent is gone tells the
        // user why, once per process (the layer prints Log lines on stderr).
        if result.is_err() && !*warned_lost {
            if let Some(reason) = agent.lost() {
                *warned_lost = true;
                let message = format!(
                    "lost the connection to the remora agent ({reason}); remote calls now \
                     fail, local ones keep working"
                );
                framed
                    .send(ProxyMessage::Log {
                        level: LogLevel::Warn,
                        message,
                    })
                    .await?;
            }
        }
        framed.send(ProxyMessage::Response { id, result }).await?;
    }
    Ok(())
}

/// Refuse a request added after v1 from a layer that did not negotiate it.
fn negotiated(capabilities: Capabilities, request: &LayerRequest) -> RemoteResult<()> {
    let (needed, what) = match request {
        LayerRequest::StreamWrites { .. } => (Capabilities::STREAM_WRITES, "StreamWrites"),
        LayerRequest::IncomingPeer { .. } => (Capabilities::INCOMING_PEER, "IncomingPeer"),
        LayerRequest::StreamSync { .. } => (Capabilities::STREAM_SYNC, "StreamSync"),
        _ => return Ok(()),
    };
    if capabilities.contains(needed) {
        Ok(())
    } else {
        Err(remora_protocol::RemoteError::new(
            remora_protocol::ErrorCode::Unsupported,
            format!("{what} was not negotiated with this layer (its protocol is too old)"),
        ))
    }
}

async fn handle(
    agent: &AgentApi,
    shared: &Shared,
    request: LayerRequest,
) -> RemoteResult<LayerResponse> {
    let streams = &shared.streams;
    match request {
        LayerRequest::Remote(request) => {
            if let Some(path) = file_stream::path_of(&request) {
                streams.drained(path).await;
            }
            agent.request(request).await.map(LayerResponse::Remote)
        }
        LayerRequest::StreamWrites { fd, path } => {
            let interceptor = streams.start(agent.clone(), fd, path).await?;
            Ok(LayerResponse::Intercepted {
                interceptor,
                remote_local: None,
            })
        }
        LayerRequest::StreamSync { stream, sync } => {
            streams.sync(stream, sync).await?;
            Ok(LayerResponse::StreamSynced)
        }
        LayerRequest::ConnectOutgoing { transport, remote } => {
            let (interceptor, remote_local) =
                outgoing::intercept(agent.clone(), transport, remote).await?;
            Ok(LayerResponse::Intercepted {
                interceptor,
                remote_local,
            })
        }
        LayerRequest::Listen {
            local,
            remote,
            mode,
            filter,
        } => {
            shared
                .incoming
                .listen(agent.clone(), local, remote, mode, filter)
                .await?;
            Ok(LayerResponse::Listening)
        }
        LayerRequest::Unlisten { remote } => {
            shared.incoming.unlisten(agent, remote).await?;
            Ok(LayerResponse::Unlistened)
        }
        LayerRequest::IncomingPeer { dialer } => {
            let found = shared.incoming.peer_of(dialer);
            Ok(LayerResponse::Peer {
                peer: found.map(|f| f.0),
                local: found.and_then(|f| f.1),
            })
        }
    }
}
