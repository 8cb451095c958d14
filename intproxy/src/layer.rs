//! Layer sessions: one connection per process of the run's tree.

use crate::IntProxyConfig;
use crate::agent_link::AgentApi;
use crate::file_stream::{self, WriteStreams};
use crate::incoming::Incoming;
use crate::outgoing;
use futures::{SinkExt, StreamExt};
use remora_protocol::RemoteResult;
use remora_protocol::codec::FrameCodec;
use remora_protocol::handshake::PROTOCOL_VERSION;
use remora_protocol::incoming::RemotePort;
use remora_protocol::messages::{
    LayerHello, LayerHelloReply, LayerMessage, LayerRequest, LayerResponse, ProxyMessage,
};
use remora_protocol::session::LogLevel;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    loop {
        let idle_for = if sessions.ever.load(Ordering::SeqCst) == 0 {
            config.first_connect_timeout
        } else {
            config.linger
        };
        let idle = async {
            loop {
                if sessions.live.load(Ordering::SeqCst) == 0 {
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
                    sessions.ever.fetch_add(1, Ordering::SeqCst);
                    let guard = SessionGuard(sessions.clone());
                    let agent = agent.clone();
                    let config = config.clone();
                    let shared = Shared { streams: streams.clone(), incoming: incoming.clone() };
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
    let Some(hello) = hs.next().await.transpose()? else {
        return Ok(());
    };
    if hello.token != config.layer_token {
        let reason = "invalid layer token".to_string();
        hs.send(LayerHelloReply::Rejected { reason }).await?;
        return Ok(());
    }
    if let Err(reason) = remora_protocol::handshake::negotiate(hello.version) {
        hs.send(LayerHelloReply::Rejected { reason }).await?;
        return Ok(());
    }
    hs.send(LayerHelloReply::Accepted {
        version: PROTOCOL_VERSION,
    })
    .await?;
    tracing::debug!(pid = hello.pid, program = %hello.program, "layer connected");
    let mut framed = hs.map_codec(|_| FrameCodec::<LayerMessage, ProxyMessage>::default());
    let mut warned_lost = false;
    let mut listening: Vec<RemotePort> = Vec::new();
    let outcome = serve_session(
        &mut framed,
        &agent,
        &shared,
        &mut listening,
        &mut warned_lost,
    )
    .await;
    // A process that exits stops receiving its ports' traffic at once.
    for port in listening {
        let _ = shared.incoming.unlisten(&agent, port).await;
    }
    outcome
}

/// State shared by every layer session of the run.
#[derive(Debug, Clone)]
struct Shared {
    streams: WriteStreams,
    incoming: Incoming,
}

type LayerFramed = Framed<TcpStream, FrameCodec<LayerMessage, ProxyMessage>>;

async fn serve_session(
    framed: &mut LayerFramed,
    agent: &AgentApi,
    shared: &Shared,
    listening: &mut Vec<RemotePort>,
    warned_lost: &mut bool,
) -> Result<(), remora_protocol::CodecError> {
    while let Some(msg) = framed.next().await {
        let LayerMessage::Request { id, request } = msg?;
        let listens = match &request {
            LayerRequest::Listen { remote, .. } => Some(*remote),
            LayerRequest::Unlisten { remote } => {
                listening.retain(|p| p != remote);
                None
            }
            _ => None,
        };
        let result = handle(agent, shared, request).await;
        if let (Some(port), Ok(_)) = (listens, &result) {
            listening.push(port);
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
