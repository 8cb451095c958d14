//! A client's side of incoming traffic: its `IncomingClient` messages go to
//! the incoming task (subscriptions) or to its connections (data).

use super::conn::{ConnTable, Upstream};
use super::http::{RequestTable, ResponsePart};
use super::{IncomingApi, Subscriber};
use remora_protocol::incoming::{IncomingClient, IncomingMode, IncomingServer};
use remora_protocol::session::LogLevel;
use remora_protocol::{
    Capabilities, ConnectionId, ErrorCode, HttpRequestId, RemoteError, ServerMessage, SessionId,
};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

/// How long the client link waits for a full stolen-connection queue to
/// drain before that connection is given up.
pub const CONN_STALL_TIMEOUT: Duration = Duration::from_secs(2);

/// One client's incoming traffic.
#[derive(Debug)]
pub(crate) struct ClientIncoming {
    api: IncomingApi,
    subscriber: Subscriber,
    capabilities: Capabilities,
}

impl ClientIncoming {
    /// `out_tx` is the client's link; `token` is cancelled when its session
    /// ends, which ends its subscriptions and its connections.
    pub(crate) fn new(
        api: IncomingApi,
        session: SessionId,
        user: String,
        capabilities: Capabilities,
        out_tx: mpsc::Sender<ServerMessage>,
        token: CancellationToken,
    ) -> Self {
        ClientIncoming {
            api,
            subscriber: Subscriber {
                session,
                user,
                out_tx,
                token,
                conns: ConnTable::default(),
                requests: RequestTable::default(),
            },
            capabilities,
        }
    }

    /// Incoming connections of this client not finished yet.
    pub(crate) fn active(&self) -> usize {
        self.subscriber.conns.len()
    }

    /// Handle one message of the client. May wait (bounded by
    /// [`CONN_STALL_TIMEOUT`]) when a stolen connection's queue is full.
    pub(crate) async fn handle(&mut self, message: IncomingClient) {
        match message {
            IncomingClient::Subscribe { port, mode, filter } => {
                let needed = match mode {
                    IncomingMode::Steal => Capabilities::INCOMING_STEAL,
                    IncomingMode::Mirror => Capabilities::INCOMING_MIRROR,
                };
                let refused = if self.capabilities.contains(needed) {
                    let asked = self
                        .api
                        .subscribe(self.subscriber.clone(), port, mode, filter)
                        .await;
                    (!asked).then(|| {
                        RemoteError::new(ErrorCode::Unavailable, "the agent is shutting down")
                    })
                } else {
                    Some(RemoteError::new(
                        ErrorCode::Unsupported,
                        format!("{mode:?} of incoming traffic was not negotiated for this session"),
                    ))
                };
                if let Some(error) = refused {
                    let reply = IncomingServer::Subscribed {
                        port,
                        result: Err(error),
                    };
                    let _ = self.send(ServerMessage::Incoming(reply)).await;
                }
            }
            IncomingClient::Unsubscribe { port } => {
                self.api.unsubscribe(self.subscriber.session, port).await;
            }
            IncomingClient::Data { conn, data } => self.upstream(conn, Upstream::Data(data)).await,
            IncomingClient::ShutdownWrite { conn } => {
                self.upstream(conn, Upstream::ShutdownWrite).await;
            }
            IncomingClient::Close { conn } => {
                if !self.subscriber.conns.close(conn) {
                    tracing::debug!(%conn, "close of an incoming connection that is not open");
                }
            }
            IncomingClient::ResponseHead { request, head } => {
                self.respond(request, ResponsePart::Head(head)).await;
            }
            IncomingClient::ResponseBody {
                request,
                chunk,
                last,
            } => {
                self.respond(request, ResponsePart::Body { chunk, last })
                    .await
            }
            IncomingClient::ResponseFailed { request, reason } => {
                self.respond(request, ResponsePart::Failed(reason)).await;
            }
        }
    }

    async fn send(&self, message: ServerMessage) -> bool {
        tokio::select! {
            _ = self.subscriber.token.cancelled() => false,
            sent = self.subscriber.out_tx.send(message) => sent.is_ok(),
        }
    }

    /// A part of the answer to a taken request; dropped when the request
    /// is no longer waiting (answered, cancelled).
    async fn respond(&mut self, request: HttpRequestId, part: ResponsePart) {
        let Some(part_tx) = self.subscriber.requests.get(request) else {
            tracing::debug!(%request, "answer to an HTTP request that is not waiting; dropped");
            return;
        };
        let part = match part_tx.try_send(part) {
            Ok(()) | Err(TrySendError::Closed(_)) => return,
            Err(TrySendError::Full(part)) => part,
        };
        if tokio::time::timeout(CONN_STALL_TIMEOUT, part_tx.send(part))
            .await
            .is_err()
        {
            tracing::warn!(%request, "peer of a stolen HTTP request stopped reading");
            // The request's body stream ends with an error: the peer's
            // connection is aborted.
            self.subscriber.requests.remove(request);
        }
    }

    async fn upstream(&mut self, conn: ConnectionId, item: Upstream) {
        let Some(handle) = self.subscriber.conns.get(conn) else {
            tracing::debug!(%conn, "data for an incoming connection that is not open; dropped");
            return;
        };
        // A mirrored connection: the target answers its peer, not the client.
        let Some(up_tx) = handle.up_tx else {
            return;
        };
        let item = match up_tx.try_send(item) {
            Ok(()) | Err(TrySendError::Closed(_)) => return,
            Err(TrySendError::Full(item)) => item,
        };
        if tokio::time::timeout(CONN_STALL_TIMEOUT, up_tx.send(item))
            .await
            .is_err()
        {
            tracing::warn!(%conn, "peer of a stolen connection stopped reading; closing it");
            self.subscriber.conns.close(conn);
            let warning = ServerMessage::Log {
                level: LogLevel::Warn,
                message: format!(
                    "stolen connection {conn}: the peer did not read for {}s; the agent closed \
                     the connection",
                    CONN_STALL_TIMEOUT.as_secs()
                ),
            };
            let _ = self.send(warning).await;
        }
    }
}
