//! The incoming task: the agent's one owner of subscriptions, listeners and
//! redirect rules (see the [module docs](super) for its guarantees).

use super::filter::{self, Routes};
use super::listener::{PortMode, PortTask};
use super::redirect::{ListenerPort, RedirectApi, RedirectError};
use super::{IncomingCommand, IncomingSettings, Subscriber};
use crate::net::NetApi;
use remora_protocol::incoming::{HttpFilter, IncomingMode, IncomingServer, RemotePort};
use remora_protocol::{ErrorCode, RemoteError, RemoteResult, ServerMessage, SessionId};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

/// The filtered subscribers of one port, as connections see them.
pub(super) type PortRoutes = Arc<Routes<super::Subscriber>>;

/// One filtered steal held on a port.
#[derive(Debug)]
struct Held {
    subscriber: Subscriber,
    filter: HttpFilter,
}

/// Who holds a subscribed port.
#[derive(Debug)]
enum Holders {
    /// An unfiltered steal or a mirror: the whole port, one session.
    Whole {
        session: SessionId,
        user: String,
        mode: IncomingMode,
    },
    /// Filtered steals of any number of sessions, first match wins.
    Filtered {
        held: Vec<Held>,
        /// Publishes the routes to the port's connections.
        routes: watch::Sender<PortRoutes>,
    },
}

/// One subscribed port.
#[derive(Debug)]
struct Subscription {
    holders: Holders,
    listener: ListenerPort,
    /// Retires the port's listener task when the subscription is dropped.
    _stop: DropGuard,
    /// The port's listener task and connection tasks.
    conns: TaskTracker,
}

impl Subscription {
    /// Requests its connections read from now on go to the original
    /// destination (its redirect is gone; it is about to be dropped).
    fn route_nothing(&self) {
        if let Holders::Filtered { routes, .. } = &self.holders {
            match build_routes(&[]) {
                Ok(none) => {
                    routes.send_replace(none);
                }
                Err(e) => tracing::warn!(error = %e, "cannot clear the routes of a port"),
            }
        }
    }

    fn held_by(&self, session: SessionId) -> bool {
        match &self.holders {
            Holders::Whole { session: s, .. } => *s == session,
            Holders::Filtered { held, .. } => held.iter().any(|h| h.subscriber.session == session),
        }
    }
}

/// `session 7 (alice)`, or `this session`.
fn whose(session: SessionId, user: &str, asking: SessionId) -> String {
    if session == asking {
        "this session".to_owned()
    } else {
        format!("session {session} ({user})")
    }
}

/// A filter as users wrote it, for messages.
fn describe(filter: &HttpFilter) -> String {
    match filter {
        HttpFilter::Header(p) => format!("header filter '{p}'"),
        HttpFilter::Path(p) => format!("path filter '{p}'"),
        HttpFilter::Method(m) => format!("method filter '{m}'"),
        HttpFilter::AllOf(all) => format!(
            "all_of [{}]",
            all.iter().map(describe).collect::<Vec<_>>().join(", ")
        ),
        HttpFilter::AnyOf(any) => format!(
            "any_of [{}]",
            any.iter().map(describe).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn build_routes(held: &[Held]) -> Result<PortRoutes, String> {
    Routes::build(held.iter().map(|h| (&h.filter, h.subscriber.clone()))).map(Arc::new)
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
    /// Every listener task and incoming connection task, for the drain
    /// when the agent stops.
    conns: TaskTracker,
    /// One task per released port, ending once its listener and every
    /// connection it redirected are done: the table stays until then.
    draining: JoinSet<()>,
    /// The agent is stopping: no new subscriptions.
    withdrawn: bool,
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
            conns: TaskTracker::new(),
            draining: JoinSet::new(),
            withdrawn: false,
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
                Some(_) = self.draining.join_next(), if !self.draining.is_empty() => {
                    self.remove_table_if_idle().await;
                }
                command = self.cmd_rx.recv() => match command {
                    Some(command) => self.handle(command).await,
                    None => break,
                },
            }
        }
        // Normally empty already (withdrawn); the rules go before the
        // listeners either way.
        let held = self.ports.len();
        match self.redirect.remove_all().await {
            Ok(()) => tracing::debug!(ports = held, "incoming traffic: every rule removed"),
            Err(e) => tracing::warn!(error = %e, "cannot remove the incoming traffic rules"),
        }
        self.ports.clear();
    }

    /// The agent is stopping: every port is released (its redirect goes,
    /// then its listener retires, see [`super::listener`]); `done` hears once
    /// the listeners and the connections inside the agent finished, or
    /// `drain` passed. The table goes when the incoming task ends.
    async fn withdraw(&mut self, drain: std::time::Duration, done: oneshot::Sender<()>) {
        self.withdrawn = true;
        let ports: Vec<RemotePort> = self.ports.keys().copied().collect();
        for port in ports {
            // The table itself stays until the drain is over (see `release`).
            self.release(port).await;
        }
        let conns = self.conns.clone();
        tokio::spawn(async move {
            conns.close();
            let deadline = tokio::time::Instant::now() + drain + super::listener::LISTENER_LINGER;
            if tokio::time::timeout_at(deadline, conns.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    left = conns.len(),
                    "incoming connections still open when the agent stops"
                );
            }
            let _ = done.send(());
        });
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
                    subscriber.send_later(ServerMessage::Incoming(reply));
                }
            }
            IncomingCommand::Withdraw { drain, done } => self.withdraw(drain, done).await,
            IncomingCommand::Unsubscribe { session, port } => {
                if self.ports.get(&port).is_some_and(|s| s.held_by(session)) {
                    self.leave(port, session).await;
                } else {
                    tracing::debug!(%session, port = port.0, "unsubscribe from a port not held");
                }
            }
        }
    }

    /// Set up a subscription; on success the subscriber gets its
    /// `Subscribed` answer before any of its traffic.
    async fn subscribe(
        &mut self,
        subscriber: &Subscriber,
        port: RemotePort,
        mode: IncomingMode,
        filter: Option<HttpFilter>,
    ) -> RemoteResult<()> {
        let target = &self.settings.target;
        if let (Some(_), IncomingMode::Mirror) = (&filter, mode) {
            return Err(RemoteError::new(
                ErrorCode::Unsupported,
                "HTTP filters apply to steal; mirror the whole port instead",
            ));
        }
        if let Some(filter) = &filter {
            filter::validate(filter).map_err(|e| RemoteError::new(ErrorCode::InvalidInput, e))?;
        }
        if subscriber.token.is_cancelled() {
            return Err(RemoteError::new(
                ErrorCode::Unavailable,
                "the session is ending",
            ));
        }
        if self.withdrawn {
            return Err(RemoteError::new(
                ErrorCode::Unavailable,
                format!("the agent of {target} is stopping"),
            ));
        }
        if let Some(held) = self.ports.get_mut(&port) {
            join(held, subscriber, port, target, mode, filter)?;
            self.watch(subscriber);
            return Ok(());
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
        let (holders, port_mode) = match filter {
            None => (
                Holders::Whole {
                    session: subscriber.session,
                    user: subscriber.user.clone(),
                    mode,
                },
                PortMode::Whole(mode),
            ),
            Some(filter) => {
                let held = vec![Held {
                    subscriber: subscriber.clone(),
                    filter,
                }];
                let routes = build_routes(&held)
                    .map_err(|e| RemoteError::new(ErrorCode::InvalidInput, e))?;
                let (routes, routes_rx) = watch::channel(routes);
                (
                    Holders::Filtered { held, routes },
                    PortMode::Filtered(routes_rx),
                )
            }
        };
        if let Err(e) = self.redirect.add(port, listener_port).await {
            let refused = redirect_failed(port, target, &e);
            // Leave nothing behind, not even an empty table.
            self.remove_table_if_idle().await;
            return Err(refused);
        }
        let stop = CancellationToken::new();
        let port_conns = TaskTracker::new();
        let task = PortTask {
            listener,
            listener_port,
            port,
            mode: port_mode,
            subscriber: subscriber.clone(),
            net: self.net.clone(),
            mark: self.settings.mark,
            stop: stop.clone(),
            shutdown: self.shutdown.clone(),
            conn_ids: self.conn_ids.clone(),
            conns: self.conns.clone(),
            port_conns: port_conns.clone(),
        };
        self.conns.spawn(port_conns.track_future(task.run()));
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
                holders,
                listener: listener_port,
                _stop: stop.drop_guard(),
                conns: port_conns,
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
            .filter(|(_, s)| s.held_by(session))
            .map(|(port, _)| *port)
            .collect();
        for port in held {
            self.leave(port, session).await;
        }
    }

    /// `session` gives up `port`: its filter leaves the port's routes, and
    /// the port goes when nobody holds it any more.
    async fn leave(&mut self, port: RemotePort, session: SessionId) {
        let Some(subscription) = self.ports.get_mut(&port) else {
            return;
        };
        if let Holders::Filtered { held, routes } = &mut subscription.holders {
            held.retain(|h| h.subscriber.session != session);
            if !held.is_empty() {
                match build_routes(held) {
                    Ok(new) => {
                        routes.send_replace(new);
                        tracing::info!(port = port.0, %session, left = held.len(), "filter removed");
                        return;
                    }
                    // Fewer filters than before cannot exceed the limits;
                    // should it happen, release the port rather than route
                    // to a session that left.
                    Err(e) => tracing::warn!(port = port.0, error = %e, "cannot rebuild routes"),
                }
            }
        }
        self.release(port).await;
    }

    /// End every subscription of `port`: its rule goes, then its listener
    /// retires. In that order, so that no connection meets a closed
    /// listener: see the module's guarantees. The table goes with the last
    /// port, but only once the connections it redirected are done (see
    /// [`IncomingTask::remove_table_if_idle`]).
    async fn release(&mut self, port: RemotePort) {
        let Some(subscription) = self.ports.remove(&port) else {
            return;
        };
        if let Err(e) = self.redirect.remove(port).await {
            tracing::warn!(port = port.0, error = %e, "cannot remove the rule of a port");
        }
        subscription.route_nothing();
        let conns = subscription.conns.clone();
        self.draining.spawn(async move {
            conns.close();
            conns.wait().await;
        });
        tracing::info!(
            port = port.0,
            listener = subscription.listener.0,
            "port unsubscribed"
        );
    }
}

impl IncomingTask {
    /// Remove the table once no port is held and every released port's
    /// connections are done.
    ///
    /// Not sooner: the redirect of a connection lives in its conntrack entry,
    /// but the kernel translates its packets only while a NAT chain is
    /// registered in the network namespace. Deleting the table (whose chains
    /// are often the only NAT chains of a pod) while a redirected connection
    /// is open would send that connection's answer from the listener's port
    /// instead of the subscribed one, and its peer would drop it: a request
    /// taken just before its port was released went unanswered that way
    /// (curl timed out with 0 bytes) when the operator's pod was deleted.
    async fn remove_table_if_idle(&mut self) {
        if self.ports.is_empty()
            && self.draining.is_empty()
            && let Err(e) = self.redirect.remove_all().await
        {
            tracing::warn!(error = %e, "cannot remove the incoming traffic rules");
        }
    }
}

/// Add a subscription to a port already held, when it can share it: only
/// filtered steals share a port, with different filters, one per session.
fn join(
    held: &mut Subscription,
    subscriber: &Subscriber,
    port: RemotePort,
    target: &str,
    mode: IncomingMode,
    filter: Option<HttpFilter>,
) -> RemoteResult<()> {
    let taken = |message: String| Err(RemoteError::new(ErrorCode::AlreadyExists, message));
    let asking = subscriber.session;
    match (&mut held.holders, filter) {
        (
            Holders::Whole {
                session,
                user,
                mode: held_mode,
            },
            _,
        ) => taken(format!(
            "port {} of {target} is already {} by {}; a whole port has one session \
             (unsubscribe it first, or pick another port)",
            port.0,
            mode_word(*held_mode),
            whose(*session, user, asking),
        )),
        (Holders::Filtered { held, .. }, None) => {
            let first = &held[0];
            taken(format!(
                "port {} of {target} has HTTP filters held by {}{}; {} the whole port would \
                 take their traffic (steal with a filter of your own instead)",
                port.0,
                whose(first.subscriber.session, &first.subscriber.user, asking),
                match held.len() {
                    1 => String::new(),
                    n => format!(" and {} other session(s)", n - 1),
                },
                match mode {
                    IncomingMode::Steal => "stealing",
                    IncomingMode::Mirror => "mirroring",
                },
            ))
        }
        (Holders::Filtered { held, routes }, Some(filter)) => {
            if let Some(mine) = held.iter().find(|h| h.subscriber.session == asking) {
                return taken(format!(
                    "port {} of {target} is already stolen by this session with {}",
                    port.0,
                    describe(&mine.filter)
                ));
            }
            if let Some(same) = held.iter().find(|h| same_filter(&h.filter, &filter)) {
                return taken(format!(
                    "port {} of {target}: {} is held by {}",
                    port.0,
                    describe(&same.filter),
                    whose(same.subscriber.session, &same.subscriber.user, asking),
                ));
            }
            held.push(Held {
                subscriber: subscriber.clone(),
                filter,
            });
            match build_routes(held) {
                Ok(new) => {
                    routes.send_replace(new);
                }
                Err(e) => {
                    held.pop();
                    return Err(RemoteError::new(ErrorCode::InvalidInput, e));
                }
            }
            tracing::info!(
                port = port.0,
                session = %asking,
                filters = held.len(),
                "filter added to a shared port"
            );
            let answer = ServerMessage::Incoming(IncomingServer::Subscribed {
                port,
                result: Ok(()),
            });
            subscriber.send_later(answer);
            Ok(())
        }
    }
}

/// Two filters that would take the same requests by the same rule: equal,
/// with header patterns compared case-insensitively (they match that way).
fn same_filter(a: &HttpFilter, b: &HttpFilter) -> bool {
    match (a, b) {
        (HttpFilter::Header(x), HttpFilter::Header(y)) => x.trim().eq_ignore_ascii_case(y.trim()),
        (HttpFilter::Path(x), HttpFilter::Path(y)) => x.trim() == y.trim(),
        (HttpFilter::Method(x), HttpFilter::Method(y)) => x.eq_ignore_ascii_case(y),
        (HttpFilter::AllOf(x), HttpFilter::AllOf(y))
        | (HttpFilter::AnyOf(x), HttpFilter::AnyOf(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_filter(x, y))
        }
        _ => false,
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
