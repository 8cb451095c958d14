//! A client's side of incoming traffic: its `IncomingClient` messages go to
//! the incoming task (subscriptions) or to its connections (data).

use super::conn::{ConnTable, Upstream};
use super::http::{RequestTable, ResponsePart};
use super::{IncomingApi, Subscriber};
use crate::flow::Admit;
use crate::pump::queue_upstream;
use remora_protocol::incoming::{IncomingClient, IncomingMode, IncomingServer};
use remora_protocol::session::LogLevel;
use remora_protocol::{
    Capabilities, ConnectionId, ErrorCode, HttpRequestId, RemoteError, ServerMessage, SessionId,
};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

/// How long the link of a client without HTTP body credit (before v4) waits
/// for room in a stolen HTTP request's response queue before that request is
/// given up: this bounds how long one peer that does not read can hold such
/// a client's link. With credit the queue holds a whole window and nothing
/// waits.
pub const HTTP_RESPONSE_STALL_TIMEOUT: Duration = Duration::from_secs(2);

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
                flow_control: capabilities.contains(Capabilities::FLOW_CONTROL),
                http_flow_control: capabilities.contains(Capabilities::HTTP_FLOW_CONTROL),
            },
            capabilities,
        }
    }

    /// Incoming connections of this client not finished yet.
    pub(crate) fn active(&self) -> usize {
        self.subscriber.conns.len()
    }

    /// Handle one message of the client. Waits only for a client without
    /// credit: before v4 when a stolen HTTP request's response queue is full
    /// (bounded by [`HTTP_RESPONSE_STALL_TIMEOUT`]), before v3 when a stolen
    /// connection's queue is.
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
            IncomingClient::Credit { conn, bytes } => {
                if let Some(handle) = self.subscriber.conns.get(conn) {
                    handle.window.grant(bytes);
                }
            }
            IncomingClient::RequestCredit { request, bytes } => {
                if let Some(entry) = self.subscriber.requests.get(request) {
                    entry.window.grant(bytes);
                }
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
        let Some(entry) = self.subscriber.requests.get(request) else {
            tracing::debug!(%request, "answer to an HTTP request that is not waiting; dropped");
            return;
        };
        let part_tx = entry.parts;
        if self.subscriber.http_flow_control {
            // Within the window the queue has room: nothing waits here.
            let within = match &part {
                ResponsePart::Body { chunk, .. } => {
                    entry.inbound.admit(chunk.len()) != Admit::Violation
                }
                _ => true,
            };
            let queued = within
                && matches!(
                    part_tx.try_send(part),
                    Ok(()) | Err(TrySendError::Closed(_))
                );
            if !queued {
                tracing::warn!(%request, "the client answered beyond its credit; request aborted");
                self.subscriber.requests.remove(request);
                let warning = ServerMessage::Log {
                    level: LogLevel::Warn,
                    message: format!(
                        "stolen HTTP request {request}: the client sent more than its window; \
                         the agent aborted the answer (a client bug: upgrade remora)"
                    ),
                };
                let _ = self.send(warning).await;
            }
            return;
        }
        let part = match part_tx.try_send(part) {
            Ok(()) | Err(TrySendError::Closed(_)) => return,
            Err(TrySendError::Full(part)) => part,
        };
        if tokio::time::timeout(HTTP_RESPONSE_STALL_TIMEOUT, part_tx.send(part))
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
        // A mirrored connection: the target answers its peer, not the
        // client, whose bytes are dropped (and credited back at once).
        let Some(up_tx) = handle.up_tx else {
            if let (Upstream::Data(data), true) = (&item, self.subscriber.flow_control) {
                let bytes = remora_protocol::flow::credit_cost(data.len());
                let credit = IncomingServer::Credit { conn, bytes };
                let _ = self.send(ServerMessage::Incoming(credit)).await;
            }
            return;
        };
        if !queue_upstream(&up_tx, &handle.inbound, item).await {
            tracing::warn!(%conn, "the client sent beyond its credit; closing the connection");
            self.subscriber.conns.close(conn);
            let warning = ServerMessage::Log {
                level: LogLevel::Warn,
                message: format!(
                    "stolen connection {conn}: the client sent more than its window; the agent \
                     closed the connection (a client bug: upgrade remora)"
                ),
            };
            let _ = self.send(warning).await;
        }
    }
}
