//! Incoming traffic: a client subscribes to a port of the target and the
//! agent sends that port's TCP connections to itself with netfilter rules
//! inside the target's network namespace, then either **steals** them (only
//! the client sees them) or **mirrors** them (the target still answers, the
//! client gets a copy of what the peer sent).
//!
//! # Structure
//! * [`IncomingApi`] / `task`: the **incoming task**, one per agent, owns
//!   every subscription, opens a listener per subscribed port and
//!   installs/removes the rules through [`RedirectApi`]. A port is held
//!   either whole (an unfiltered steal or a mirror: one session) or by
//!   **filtered steals of any number of sessions**, each with its own filter
//!   (identical filters are refused naming their holder; whole and filtered
//!   do not mix). It watches each subscriber's session and ends its
//!   subscriptions when the session ends; a shared port goes with its last
//!   filter.
//! * `listener`: one task per subscribed port, accepting the redirected
//!   connections and finding their original destination (`SO_ORIGINAL_DST`).
//! * `conn`: one task per connection: the stolen pump, or the mirror proxy
//!   plus the client's copy.
//! * `http` and `filter`: **filtered steals**: each HTTP/1.x request or
//!   HTTP/2 stream goes to the first session whose filter takes it (all
//!   filters of a port matched in one pass, see `filter`), the others to the
//!   original destination (HTTP/1 byte for byte); connections that are
//!   neither pass through raw.
//! * `session`: a client's side: its `IncomingClient` messages, its
//!   connections by id.
//! * [`redirect`]: the [`Redirector`] seam and the netfilter thread; the
//!   backends `nft` (nftables, preferred) and `iptables` (fallback).
//!
//! # Listening inside the target
//! Each subscribed port gets a listener created by the network thread (so it
//! lives in the target's namespace) on an ephemeral port of every address
//! (`[::]`, dual-stack). The rules redirect the subscribed port there, for
//! connections from other hosts (`prerouting`) and from the target's own
//! processes (`output`), only when the destination is a local address.
//!
//! # Guarantees
//! * No connection is lost when a port is released (unsubscribed, its
//!   session gone, the agent stopping): its redirect goes first, so new
//!   connections reach the target's own service; connections the redirect
//!   sent before still wait in the listener's queue, and the listener keeps
//!   accepting for `LISTENER_LINGER`, passing them through to
//!   the original destination; connections already being served go on
//!   (requests a session took are answered by it, later requests of a
//!   kept-alive connection go to the target). When the agent stops it
//!   waits for them ([`crate::server::INCOMING_DRAIN`] at most) before it
//!   closes its clients.
//! * A subscription's rules are removed when it is unsubscribed, when its
//!   client disconnects (or is killed), and all of them when the agent stops
//!   (idle, clients gone, target gone, `SIGTERM`, `SIGINT`): the incoming
//!   task removes them before [`crate::Agent::wait`] returns.
//! * When the agent process dies without cleaning up, `SIGKILL` included,
//!   the kernel removes the nftables table (an owned table dies with the
//!   `nft -i` child that holds it, which reads EOF when the agent is gone);
//!   with iptables a guard process does the same (see the backends).
//! * When the last port goes, the table (or chain) goes too, once the
//!   connections it redirected are closed: their packets are translated
//!   only while a NAT chain is registered in the namespace (see
//!   `IncomingTask::remove_table_if_idle`).
//! * Installing is all or nothing: a failed subscription leaves no rule and
//!   no listener, so the target is never left unreachable.
//! * At start, the agent removes tables/chains left by agents whose pid no
//!   longer runs.
//! * The agent's own pass-through connections (mirroring) are marked with
//!   [`REMORA_MARK`] and never redirected.
//! * Mirrored traffic never waits for the client: when its copy falls
//!   behind, the copy is dropped, the real connection goes on.
//!
//! # Limits
//! * Pass-through connections come from the agent, so the target's service
//!   sees the target's own address as the peer of a mirrored connection.
//! * A connection made straight to a listener's ephemeral port is treated as
//!   one to the subscribed port.
//! * Tables are named after the agent's pid: two agents with the same pid
//!   (different pid namespaces) on one target cannot both subscribe, and a
//!   leftover is only recognised as stale when no process with its pid runs
//!   in the agent's pid namespace.
//! * A filtered steal understands HTTP/1.x and HTTP/2 with prior knowledge
//!   (`h2c`); TLS and other protocols on the port pass through to the target
//!   untouched (HTTP/2 over TLS cannot be seen without the target's keys).
//! * Only identical filters are refused on a shared port; whether two
//!   different patterns can match the same request is not computed (an
//!   automaton intersection per pair). When they overlap, the earliest
//!   subscription whose filter takes a request wins.
//! * Owned nftables tables need Linux 5.12 or later; on older kernels use
//!   `--netfilter iptables`. Leftover chains are looked for only by the
//!   backend in use.

mod conn;
mod filter;
mod http;
mod iptables;
mod listener;
mod nft;
pub mod redirect;
mod session;
mod task;

pub use redirect::{
    ListenerPort, NetfilterBackend, RedirectApi, RedirectError, Redirector, RedirectorFactory,
    netfilter,
};
pub(crate) use session::ClientIncoming;

use crate::net::NetApi;
use conn::ConnTable;
use remora_protocol::incoming::{HttpFilter, IncomingMode, RemotePort};
use remora_protocol::{ServerMessage, SessionId};
use std::net::IpAddr;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// `SO_MARK` of the agent's pass-through sockets ("remo"): the rules let
/// them through instead of redirecting them back to the agent.
pub const REMORA_MARK: u32 = 0x7265_6d6f;

/// Subscription commands waiting for the incoming task.
pub const INCOMING_COMMAND_CAPACITY: usize = 64;

/// How the incoming task works.
#[derive(Debug, Clone)]
pub struct IncomingSettings {
    /// How the target is named in messages (`pid/4242`).
    pub target: String,
    /// Where listeners bind inside the target (`None`: every address).
    pub listen_ip: Option<IpAddr>,
    /// Mark of pass-through sockets; `None` only in tests that run without
    /// `CAP_NET_ADMIN` and without rules.
    pub mark: Option<u32>,
}

impl IncomingSettings {
    /// The settings of a real agent.
    pub fn new(target: String) -> Self {
        IncomingSettings {
            target,
            listen_ip: None,
            mark: Some(REMORA_MARK),
        }
    }
}

/// A client that subscribes, and how to reach it.
#[derive(Debug, Clone)]
pub(crate) struct Subscriber {
    pub session: SessionId,
    pub user: String,
    /// connections, incoming task --server messages--> the client's writer
    pub out_tx: mpsc::Sender<ServerMessage>,
    /// Cancelled when the client's session ends.
    pub token: CancellationToken,
    /// The client's incoming connections by id.
    pub conns: ConnTable,
    /// The client's taken HTTP requests waiting for answers, by id.
    pub requests: http::RequestTable,
    /// The client negotiated per-stream credit ([`crate::flow`]).
    pub flow_control: bool,
    /// ...and per-request credit for HTTP bodies (v4).
    pub http_flow_control: bool,
}

impl Subscriber {
    /// Send `message` to the client without waiting for room on its link
    /// (from `Drop`, or from the incoming task, which must not wait on one
    /// client); dropped if the session ends first.
    fn send_later(&self, message: ServerMessage) {
        let (out_tx, token) = (self.out_tx.clone(), self.token.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = out_tx.send(message) => {}
            }
        });
    }
}

/// Work for the incoming task.
#[derive(Debug)]
enum IncomingCommand {
    /// Answered with `Subscribed` on the subscriber's link.
    Subscribe {
        subscriber: Subscriber,
        port: RemotePort,
        mode: IncomingMode,
        filter: Option<HttpFilter>,
    },
    Unsubscribe {
        session: SessionId,
        port: RemotePort,
    },
    /// The agent is stopping: release every port (redirects first), refuse
    /// new subscriptions, and answer once the connections inside the agent
    /// finished or `drain` passed.
    Withdraw {
        drain: std::time::Duration,
        done: tokio::sync::oneshot::Sender<()>,
    },
}

/// Handle to the incoming task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct IncomingApi {
    /// clients --subscription commands--> incoming task
    cmd_tx: mpsc::Sender<IncomingCommand>,
}

impl IncomingApi {
    /// Start the incoming task. It first removes what dead agents left in
    /// the target, then serves subscriptions until `shutdown` is cancelled,
    /// when it removes every rule; the returned handle finishes after that.
    pub fn start(
        net: NetApi,
        redirect: RedirectApi,
        settings: IncomingSettings,
        shutdown: CancellationToken,
    ) -> (IncomingApi, JoinHandle<()>) {
        let (cmd_tx, cmd_rx) = mpsc::channel(INCOMING_COMMAND_CAPACITY);
        let task = task::IncomingTask::new(cmd_rx, net, redirect, settings, shutdown);
        (IncomingApi { cmd_tx }, tokio::spawn(task.run()))
    }

    /// Ask for a subscription; the answer goes to the subscriber's link.
    async fn subscribe(
        &self,
        subscriber: Subscriber,
        port: RemotePort,
        mode: IncomingMode,
        filter: Option<HttpFilter>,
    ) -> bool {
        let command = IncomingCommand::Subscribe {
            subscriber,
            port,
            mode,
            filter,
        };
        self.cmd_tx.send(command).await.is_ok()
    }

    /// Release every port before the agent stops: the redirects go at once,
    /// then this waits until the incoming connections already inside the
    /// agent are done, at most `drain` (plus the listeners' linger).
    pub async fn withdraw(&self, drain: std::time::Duration) {
        let (done, done_rx) = tokio::sync::oneshot::channel();
        if self
            .cmd_tx
            .send(IncomingCommand::Withdraw { drain, done })
            .await
            .is_ok()
        {
            let _ = done_rx.await;
        }
    }

    /// End a subscription of `session` (nothing when it holds none on `port`).
    async fn unsubscribe(&self, session: SessionId, port: RemotePort) {
        let _ = self
            .cmd_tx
            .send(IncomingCommand::Unsubscribe { session, port })
            .await;
    }
}

#[cfg(test)]
mod tests;
