//! The incoming task: the agent's one owner of subscriptions, listeners and
//! redirect rules (see the [module docs](super) for its guarantees).

use super::filter::CompiledFilter;
use super::listener::PortTask;
use super::redirect::{ListenerPort, RedirectApi, RedirectError};
use super::{IncomingCommand, IncomingSettings, Subscriber};
use crate::net::NetApi;
use remora_protocol::incoming::{HttpFilter, IncomingMode, IncomingServer, RemotePort};
use remora_protocol::{ErrorCode, RemoteError, RemoteResult, ServerMessage, SessionId};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::{CancellationToken, DropGuard};

/// One subscribed port.
#[derive(Debug)]
struct Subscription {
    session: SessionId,
    user: String,
    mode: IncomingMode,
    listener: ListenerPort,
    /// Stops the port's listener task when the subscription is dropped.
    _stop: DropGuard,
}

/// Owns every subscription of the agent.
pub(super) struct IncomingTask {
    /// clients --subscription commands--> this task
    cmd_rx: mpsc::Receiver<IncomingCommand>,
    net: NetApi,
    redirect: RedirectApi,
    settings: IncomingSettings,
    shutdown: CancellationToken,
    ports: BTreeMap<RemotePort, Subscription>,
    /// Sessions with a watcher in `watchers`.
    watched: HashSet<SessionId>,
    /// One task per subscribing session, ending when its session ends.
    watchers: JoinSet<SessionId>,
    /// Ids of incoming connections, unique in this agent.
    conn_ids: Arc<AtomicU64>,
}

fn mode_word(mode: IncomingMode) -> &'static str {
    match mode {
        IncomingMode::Steal => "stolen",
        IncomingMode::Mirror => "mirrored",
    }
}

impl IncomingTask {
    pub(super) fn new(
        cmd_rx: mpsc::Receiver<IncomingCommand>,
        net: NetApi,
        redirect: RedirectApi,
        settings: IncomingSettings,
        shutdown: CancellationToken,
    ) -> Self {
        IncomingTask {
            cmd_rx,
            net,
            redirect,
            settings,
            shutdown,
            ports: BTreeMap::new(),
            watched: HashSet::new(),
            watchers: JoinSet::new(),
            conn_ids: Arc::default(),
        }
    }

    pub(super) async fn run(mut self) {
        match self.redirect.remove_stale().await {
            Ok(removed) if removed.is_empty() => {}
            Ok(removed) => tracing::info!(?removed, "removed rules left by dead agents"),
            Err(e) => tracing::warn!(error = %e, "cannot look for rules left by dead agents"),
        }
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                Some(joined) = self.watchers.join_next(), if !self.watchers.is_empty() => {
                    if let Ok(session) = joined {
                        self.session_ended(session).await;
                    }
                }
                command = self.cmd_rx.recv() => match command {
                    Some(command) => self.handle(command).await,
                    None => break,
                },
            }
        }
        let held = self.ports.len();
        // Stops every listener.
        self.ports.clear();
        match self.redirect.remove_all().await {
            Ok(()) => tracing::debug!(ports = held, "incoming traffic: every rule removed"),
            Err(e) => tracing::warn!(error = %e, "cannot remove the incoming traffic rules"),
        }
    }

    async fn handle(&mut self, command: IncomingCommand) {
        match command {
            IncomingCommand::Subscribe {
                subscriber,
                port,
                mode,
                filter,
            } => {
                if let Err(error) = self.subscribe(&subscriber, port, mode, filter).await {
                    tracing::info!(port = port.0, %error, "subscription refused");
                    let reply = IncomingServer::Subscribed {
                        port,
                        result: Err(error),
                    };
                    // Never wait on one client's link here: it would hold up
                    // every other client's subscriptions.
                    let out_tx = subscriber.out_tx.clone();
                    let token = subscriber.token.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = token.cancelled() => {}
                            _ = out_tx.send(ServerMessage::Incoming(reply)) => {}
                        }
                    });
                }
            }
            IncomingCommand::Unsubscribe { session, port } => {
                if self.ports.get(&port).is_some_and(|s| s.session == session) {
                    self.release(port).await;
                } else {
                    tracing::debug!(%session, port = port.0, "unsubscribe from a port not held");
                }
            }
        }
    }

    /// Set up a subscription; on success its listener task sends the
    /// `Subscribed` answer before it accepts anything.
    async fn subscribe(
        &mut self,
        subscriber: &Subscriber,
        port: RemotePort,
        mode: IncomingMode,
        filter: Option<HttpFilter>,
    ) -> RemoteResult<()> {
        let target = &self.settings.target;
        let filter = match (filter, mode) {
            (None, _) => None,
            (Some(_), IncomingMode::Mirror) => {
                return Err(RemoteError::new(
                    ErrorCode::Unsupported,
                    "HTTP filters apply to steal; mirror the whole port instead",
                ));
            }
            (Some(filter), IncomingMode::Steal) => Some(Arc::new(
                CompiledFilter::compile(&filter)
                    .map_err(|e| RemoteError::new(ErrorCode::InvalidInput, e))?,
            )),
        };
        if let Some(held) = self.ports.get(&port) {
            let whose = if held.session == subscriber.session {
                "this session".to_owned()
            } else {
                format!("session {} ({})", held.session, held.user)
            };
            return Err(RemoteError::new(
                ErrorCode::AlreadyExists,
                format!(
                    "port {} of {target} is already {} by {whose}; one session per port \
                     (unsubscribe it first, or pick another port)",
                    port.0,
                    mode_word(held.mode),
                ),
            ));
        }
        if subscriber.token.is_cancelled() {
            return Err(RemoteError::new(
                ErrorCode::Unavailable,
                "the session is ending",
            ));
        }
        let listener = self
            .net
            .listen_tcp(self.settings.listen_ip)
            .await
            .and_then(|listener| Ok((listener.local_addr()?, listener)))
            .map_err(|e| {
                RemoteError::from_io(
                    format!("cannot listen inside {target} for port {}", port.0),
                    &e,
                )
            })?;
        let (listener_addr, listener) = listener;
        let listener_port = ListenerPort(listener_addr.port());
        if let Err(e) = self.redirect.add(port, listener_port).await {
            if self.ports.is_empty() {
                // Leave nothing behind, not even an empty table.
                let _ = self.redirect.remove_all().await;
            }
            return Err(redirect_failed(port, target, &e));
        }
        let stop = CancellationToken::new();
        let task = PortTask {
            listener,
            listener_port,
            port,
            mode,
            filter,
            subscriber: subscriber.clone(),
            net: self.net.clone(),
            mark: self.settings.mark,
            stop: stop.clone(),
            shutdown: self.shutdown.clone(),
            conn_ids: self.conn_ids.clone(),
        };
        tokio::spawn(task.run());
        tracing::info!(
            port = port.0,
            listener = listener_port.0,
            ?mode,
            session = %subscriber.session,
            "port subscribed"
        );
        self.ports.insert(
            port,
            Subscription {
                session: subscriber.session,
                user: subscriber.user.clone(),
                mode,
                listener: listener_port,
                _stop: stop.drop_guard(),
            },
        );
        self.watch(subscriber);
        Ok(())
    }

    /// Notice when the subscriber's session ends (once per session).
    fn watch(&mut self, subscriber: &Subscriber) {
        if self.watched.insert(subscriber.session) {
            let (token, session) = (subscriber.token.clone(), subscriber.session);
            self.watchers.spawn(async move {
                token.cancelled().await;
                session
            });
        }
    }

    async fn session_ended(&mut self, session: SessionId) {
        self.watched.remove(&session);
        let held: Vec<RemotePort> = self
            .ports
            .iter()
            .filter(|(_, s)| s.session == session)
            .map(|(port, _)| *port)
            .collect();
        for port in held {
            self.release(port).await;
        }
    }

    /// End the subscription of `port`: its listener stops, its rule goes,
    /// and with the last port the whole table.
    async fn release(&mut self, port: RemotePort) {
        let Some(subscription) = self.ports.remove(&port) else {
            return;
        };
        if let Err(e) = self.redirect.remove(port).await {
            tracing::warn!(port = port.0, error = %e, "cannot remove the rule of a port");
        }
        if self.ports.is_empty()
            && let Err(e) = self.redirect.remove_all().await
        {
            tracing::warn!(error = %e, "cannot remove the incoming traffic rules");
        }
        tracing::info!(
            port = port.0,
            listener = subscription.listener.0,
            session = %subscription.session,
            "port unsubscribed"
        );
    }
}

fn redirect_failed(port: RemotePort, target: &str, e: &RedirectError) -> RemoteError {
    let code = match e {
        RedirectError::NoBackend => ErrorCode::Unsupported,
        RedirectError::Gone | RedirectError::Exited { .. } => ErrorCode::Unavailable,
        RedirectError::Timeout { .. } => ErrorCode::TimedOut,
        RedirectError::Spawn { .. } | RedirectError::Command { .. } => ErrorCode::Other(libc::EIO),
    };
    RemoteError::new(
        code,
        format!(
            "cannot redirect port {} of {target} to the agent: {e}",
            port.0
        ),
    )
}
