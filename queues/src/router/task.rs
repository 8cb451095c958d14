//! The router task: one split's forwarding loop, its commands and the
//! drains of ended sessions' queues.

use super::{
    COMMAND_CAPACITY, Command, Counts, DrainReport, Owner, RouterApi, RouterConfig, RouterError,
    SessionState, SplitSessionKey, SplitState, StateStore, move_then_delete, temp_queue_name,
};
use crate::broker::{
    Acker, Broker, BrokerError, Consumer, Delivery, QueueName, Result as BrokerResult,
};
use crate::filter::MessageFilter;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One split's router: owns the split's state and forwards the original
/// queue's messages (see the module docs of `router` for the guarantees).
#[derive(Debug)]
pub struct RouterTask {
    broker: Arc<dyn Broker>,
    store: Arc<dyn StateStore>,
    config: RouterConfig,
    state: SplitState,
    /// The sessions' compiled filters, in `state.sessions` order.
    routes: Vec<Route>,
    /// api --command--> task
    cmd_rx: mpsc::Receiver<Command>,
    counts: Counts,
}

#[derive(Debug)]
struct Route {
    key: SplitSessionKey,
    filter: MessageFilter,
    queue: QueueName,
}

/// A forward in flight: publish to the destination, then ack the original
/// itself (with the consumer's [`Acker`]) or hand back the delivery for the
/// ack (or the requeue).
type Forward = Pin<Box<dyn Future<Output = Forwarded> + Send>>;

struct Forwarded {
    /// The delivery's order key.
    key: Option<String>,
    dest: QueueName,
    outcome: Outcome,
}

enum Outcome {
    /// Published; the ack is the loop's to do.
    Published(Delivery),
    /// Published, then acked (or the ack failed) by the forward itself.
    Acked(BrokerResult<()>),
    /// The publish failed: the delivery goes back.
    Failed(Delivery, BrokerError),
}

type RemoveReply = oneshot::Sender<Result<DrainReport, RouterError>>;

/// The loop's moving parts besides the split's state.
#[derive(Default)]
struct Flow {
    inflight: FuturesUnordered<Forward>,
    /// The current consumer's acker, if it has one: forwards then ack
    /// without waiting for each other.
    acker: Option<Arc<dyn Acker>>,
    /// Forwards in flight per destination: an ended session's queue is
    /// drained only once none is left.
    inflight_to: HashMap<QueueName, usize>,
    /// Per order key with a forward in flight: the deliveries of that key
    /// taken since, waiting for it (they start one at a time, in order).
    keyed: HashMap<String, VecDeque<Delivery>>,
    /// How many deliveries wait in `keyed`.
    waiting: usize,
    /// Ended sessions waiting for their last in-flight forward to finish.
    pending_drains: Vec<SessionState>,
    drains: JoinSet<(SplitSessionKey, u64)>,
    /// Which session each drain task is for (to start it again if it panicked).
    drain_ids: HashMap<tokio::task::Id, SessionState>,
    /// Callers of `remove_session` waiting for the drain.
    waiters: HashMap<SplitSessionKey, Vec<RemoveReply>>,
}

impl RouterTask {
    /// Starts splitting `original`: reads its properties
    /// ([`Broker::inspect`]) and lays `registered` over them (the
    /// registration's word wins: properties the broker cannot report),
    /// saves the state, then creates the workload's temporary queue.
    ///
    /// # Errors
    /// Broker and store errors; nothing is routed then.
    pub async fn start(
        broker: Arc<dyn Broker>,
        store: Arc<dyn StateStore>,
        original: QueueName,
        registered: BTreeMap<String, String>,
        config: RouterConfig,
    ) -> Result<(Self, RouterApi), RouterError> {
        let mut props = broker.inspect(&original).await?;
        props.props.extend(registered);
        let workload_queue = temp_queue_name(broker.kind(), &original, Owner::Workload);
        let state = SplitState {
            kind: broker.kind(),
            original,
            props,
            workload_queue,
            sessions: Vec::new(),
            draining: Vec::new(),
        };
        store.save(&state).await?;
        broker
            .create_like(&state.props, &state.workload_queue)
            .await?;
        Ok(Self::new(broker, store, state, Vec::new(), config))
    }

    /// Resumes a split from its saved `state` (after an operator restart).
    /// Sessions not in `live` have ended meanwhile: their queues are
    /// drained into the workload's queue and deleted once the task runs,
    /// like queues whose drain was interrupted. The temporary queues of the
    /// live sessions and the workload are created again if missing.
    ///
    /// # Errors
    /// Broker and store errors, and a saved filter that no longer compiles.
    pub async fn resume(
        broker: Arc<dyn Broker>,
        store: Arc<dyn StateStore>,
        mut state: SplitState,
        live: &BTreeSet<SplitSessionKey>,
        config: RouterConfig,
    ) -> Result<(Self, RouterApi), RouterError> {
        let (kept, ended): (Vec<_>, Vec<_>) = std::mem::take(&mut state.sessions)
            .into_iter()
            .partition(|s| live.contains(&s.key));
        state.sessions = kept;
        state.draining.extend(ended);
        let mut routes = Vec::new();
        for s in &state.sessions {
            routes.push(Route {
                key: s.key.clone(),
                filter: MessageFilter::new(s.filter.iter())?,
                queue: s.queue.clone(),
            });
        }
        store.save(&state).await?;
        for queue in std::iter::once(&state.workload_queue).chain(routes.iter().map(|r| &r.queue)) {
            broker.create_like(&state.props, queue).await?;
        }
        Ok(Self::new(broker, store, state, routes, config))
    }

    fn new(
        broker: Arc<dyn Broker>,
        store: Arc<dyn StateStore>,
        state: SplitState,
        routes: Vec<Route>,
        config: RouterConfig,
    ) -> (Self, RouterApi) {
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_CAPACITY);
        let api = RouterApi {
            cmd_tx,
            broker: broker.clone(),
            workload_queue: state.workload_queue.clone(),
        };
        let task = Self {
            broker,
            store,
            config,
            state,
            routes,
            cmd_rx,
            counts: Counts::default(),
        };
        (task, api)
    }

    /// Forwards until `cancel` fires, then stops taking messages, lets the
    /// forwards in flight finish (confirm and ack, so a clean stop causes no
    /// duplicate) and returns the state. Drains of ended sessions stop
    /// where they are; the returned (and saved) state still lists them, so
    /// a resumed router finishes them. Broker failures never end the loop:
    /// it pauses [`RouterConfig::retry`] and consumes again.
    pub async fn run(mut self, cancel: CancellationToken) -> SplitState {
        let mut flow = Flow::default();
        for s in self.state.draining.clone() {
            self.spawn_drain(s, &mut flow);
        }
        let mut consumer: Option<Box<dyn Consumer>> = None;
        // The consumer failed: take nothing more from it, drop it once its
        // forwards in flight are done, then consume again.
        let mut broken = false;
        // No new delivery is taken before this (after a failure).
        let mut resume_at = Instant::now();
        loop {
            if consumer.is_none()
                && flow.inflight.is_empty()
                && flow.keyed.is_empty()
                && Instant::now() >= resume_at
            {
                match self
                    .broker
                    .consume(&self.state.original, self.config.prefetch)
                    .await
                {
                    Ok(c) => {
                        flow.acker = c.acker();
                        consumer = Some(c);
                        broken = false;
                    }
                    Err(e) => {
                        tracing::warn!(queue = %self.state.original, error = %e, "cannot consume the original queue; retrying");
                        resume_at = Instant::now() + self.config.retry;
                    }
                }
            }
            let now = Instant::now();
            let can_take = consumer.is_some()
                && !broken
                && now >= resume_at
                && flow.inflight.len() + flow.waiting < usize::from(self.config.prefetch.max(1));
            let paused = resume_at > now;
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                Some(cmd) = self.cmd_rx.recv() => self.command(cmd, &mut flow).await,
                Some(done) = flow.inflight.next(), if !flow.inflight.is_empty() => {
                    self.forwarded(done, &mut consumer, &mut flow, &mut resume_at).await;
                }
                Some(joined) = flow.drains.join_next_with_id(), if !flow.drains.is_empty() => {
                    self.drained(joined, &mut flow).await;
                }
                next = next_delivery(&mut consumer), if can_take => match next {
                    Ok(Some(d)) => self.take(d, &mut flow),
                    Ok(None) => {
                        tracing::warn!(queue = %self.state.original, "the broker closed the consumer of the original queue; consuming again");
                        broken = true;
                        resume_at = Instant::now() + self.config.retry;
                    }
                    Err(e) => {
                        tracing::warn!(queue = %self.state.original, error = %e, "consuming the original queue failed; consuming again");
                        broken = true;
                        resume_at = Instant::now() + self.config.retry;
                    }
                },
                () = tokio::time::sleep_until(resume_at), if paused => {}
            }
            if broken && flow.inflight.is_empty() && flow.keyed.is_empty() {
                consumer = None;
                flow.acker = None;
            }
        }
        // Stop: give back what waits behind an order key, finish what is in
        // flight (its successors were just given back, so nothing new starts).
        let waiting: Vec<Delivery> = flow.keyed.values_mut().flat_map(|q| q.drain(..)).collect();
        flow.waiting = 0;
        for d in waiting {
            self.give_back(d, &mut consumer).await;
        }
        while let Some(done) = flow.inflight.next().await {
            self.forwarded(done, &mut consumer, &mut flow, &mut resume_at)
                .await;
        }
        self.state
    }

    /// A delivery from the original queue: forward it now, or after the
    /// forward in flight of its order key.
    fn take(&mut self, d: Delivery, flow: &mut Flow) {
        if let Some(key) = &d.message.order_key {
            if let Some(queue) = flow.keyed.get_mut(key) {
                queue.push_back(d);
                flow.waiting += 1;
                return;
            }
            flow.keyed.insert(key.clone(), VecDeque::new());
        }
        self.start_forward(d, flow);
    }

    /// Starts forwarding `d` to the first session whose filter matches it,
    /// else to the workload. The destination is chosen now, not when `d`
    /// arrived, so a delivery that waited never goes to a removed session.
    fn start_forward(&self, d: Delivery, flow: &mut Flow) {
        let dest = self
            .routes
            .iter()
            .find(|r| r.filter.matches(&d.message.headers))
            .map_or_else(|| self.state.workload_queue.clone(), |r| r.queue.clone());
        *flow.inflight_to.entry(dest.clone()).or_default() += 1;
        let broker = self.broker.clone();
        let acker = flow.acker.clone();
        flow.inflight.push(Box::pin(async move {
            let key = d.message.order_key.clone();
            let outcome = match broker.publish(&dest, &d.message).await {
                Err(e) => Outcome::Failed(d, e),
                Ok(()) => match acker {
                    Some(acker) => Outcome::Acked(acker.ack(d).await),
                    None => Outcome::Published(d),
                },
            };
            Forwarded { key, dest, outcome }
        }));
    }

    /// A forward completed: ack the original (confirmed) or give it back
    /// (failed), then start what waited behind it.
    async fn forwarded(
        &mut self,
        done: Forwarded,
        consumer: &mut Option<Box<dyn Consumer>>,
        flow: &mut Flow,
        resume_at: &mut Instant,
    ) {
        let Forwarded { key, dest, outcome } = done;
        let ok = !matches!(outcome, Outcome::Failed(..));
        let acked = match outcome {
            Outcome::Acked(acked) => Some(acked),
            Outcome::Published(delivery) => Some(match consumer.as_mut() {
                Some(c) => c.ack(delivery).await,
                None => Err(BrokerError::Operation {
                    kind: self.state.kind,
                    queue: self.state.original.clone(),
                    op: "ack",
                    message: "the consumer is gone".into(),
                }),
            }),
            Outcome::Failed(delivery, e) => {
                tracing::warn!(to = %dest, error = %e, "forward failed; the message goes back to the original queue");
                self.give_back(delivery, consumer).await;
                *resume_at = Instant::now() + self.config.retry;
                if matches!(e, BrokerError::NoQueue { .. })
                    && let Err(e) = self.broker.create_like(&self.state.props, &dest).await
                {
                    tracing::warn!(queue = %dest, error = %e, "cannot create the missing temporary queue again");
                }
                None
            }
        };
        match acked {
            Some(Ok(())) => *self.counts.routed.entry(dest.clone()).or_default() += 1,
            Some(Err(e)) => {
                // Stored at the destination, and delivered again by the
                // original: the one duplicate a failure causes.
                self.counts.ack_failures += 1;
                tracing::warn!(queue = %self.state.original, error = %e, "ack after a confirmed forward failed: the message will be forwarded twice");
            }
            None => {}
        }
        if let Some(n) = flow.inflight_to.get_mut(&dest) {
            *n -= 1;
            if *n == 0 {
                flow.inflight_to.remove(&dest);
                let (ready, still): (Vec<_>, Vec<_>) = std::mem::take(&mut flow.pending_drains)
                    .into_iter()
                    .partition(|s| s.queue == dest);
                flow.pending_drains = still;
                for s in ready {
                    self.spawn_drain(s, flow);
                }
            }
        }
        if let Some(key) = key {
            if ok {
                let next = flow.keyed.get_mut(&key).and_then(VecDeque::pop_front);
                match next {
                    Some(next) => {
                        flow.waiting -= 1;
                        self.start_forward(next, flow);
                    }
                    None => {
                        flow.keyed.remove(&key);
                    }
                }
            } else {
                // Forwarding the successors now would put them before the
                // failed one: they go back too, in order.
                let rest = flow.keyed.remove(&key).unwrap_or_default();
                flow.waiting -= rest.len();
                for d in rest {
                    self.give_back(d, consumer).await;
                }
            }
        }
    }

    /// Gives a delivery back to the original queue (best effort: a consumer
    /// that is gone gives it back by itself).
    async fn give_back(&mut self, d: Delivery, consumer: &mut Option<Box<dyn Consumer>>) {
        self.counts.requeued += 1;
        if let Some(c) = consumer.as_mut()
            && let Err(e) = c.requeue(d).await
        {
            tracing::debug!(error = %e, "requeue failed; the broker redelivers when the consumer closes");
        }
    }

    async fn command(&mut self, cmd: Command, flow: &mut Flow) {
        match cmd {
            Command::Add { key, filter, reply } => {
                let result = self.add(key, filter).await;
                let _ = reply.send(result);
            }
            Command::Remove { key, reply } => self.remove(key, reply, flow).await,
            Command::Snapshot { reply } => {
                let _ = reply.send((self.state.clone(), self.counts.clone()));
            }
        }
    }

    async fn add(
        &mut self,
        key: SplitSessionKey,
        filter: MessageFilter,
    ) -> Result<QueueName, RouterError> {
        if self.state.sessions.iter().any(|s| s.key == key) {
            return Err(RouterError::DuplicateSession(key));
        }
        if self.state.draining.iter().any(|s| s.key == key) {
            return Err(RouterError::StillDraining(key));
        }
        for r in &self.routes {
            let overlap = filter.overlap(&r.filter);
            if overlap.conflicts() {
                return Err(RouterError::Overlap {
                    filter: filter.to_string(),
                    holder: r.key.clone(),
                    holder_filter: r.filter.to_string(),
                    overlap,
                });
            }
        }
        let queue = temp_queue_name(self.state.kind, &self.state.original, Owner::Session(&key));
        self.state.sessions.push(SessionState {
            key: key.clone(),
            filter: filter
                .patterns()
                .map(|(h, p)| (h.to_owned(), p.to_owned()))
                .collect(),
            queue: queue.clone(),
        });
        // Saved before the queue exists: a queue the saved state does not
        // name never holds a message.
        if let Err(e) = self.store.save(&self.state).await {
            self.state.sessions.pop();
            return Err(e.into());
        }
        if let Err(e) = self.broker.create_like(&self.state.props, &queue).await {
            self.state.sessions.pop();
            if let Err(se) = self.store.save(&self.state).await {
                // The saved state names a session whose queue may not
                // exist: a resumed router drains nothing from it.
                tracing::warn!(error = %se, "could not save the state after a failed join");
            }
            return Err(e.into());
        }
        tracing::info!(session = %key, %filter, queue = %queue, "session joined the split");
        self.routes.push(Route {
            key,
            filter,
            queue: queue.clone(),
        });
        Ok(queue)
    }

    async fn remove(&mut self, key: SplitSessionKey, reply: RemoveReply, flow: &mut Flow) {
        if self.state.draining.iter().any(|s| s.key == key) {
            flow.waiters.entry(key).or_default().push(reply);
            return;
        }
        let Some(i) = self.state.sessions.iter().position(|s| s.key == key) else {
            let _ = reply.send(Err(RouterError::UnknownSession(key)));
            return;
        };
        let session = self.state.sessions.remove(i);
        self.routes.retain(|r| r.key != key);
        self.state.draining.push(session.clone());
        if let Err(e) = self.store.save(&self.state).await {
            // Routing already stopped; a resumed router learns that the
            // session ended from the live set and drains it then.
            tracing::warn!(session = %key, error = %e, "could not save the state of an ended session");
        }
        tracing::info!(session = %key, queue = %session.queue, "session left the split; draining its queue");
        flow.waiters.entry(key).or_default().push(reply);
        if flow.inflight_to.contains_key(&session.queue) {
            flow.pending_drains.push(session);
        } else {
            self.spawn_drain(session, flow);
        }
    }

    fn spawn_drain(&self, session: SessionState, flow: &mut Flow) {
        let broker = self.broker.clone();
        let to = self.state.workload_queue.clone();
        let config = self.config.clone();
        let s = session.clone();
        let handle = flow.drains.spawn(async move {
            let moved = move_then_delete(&*broker, &s.queue, &to, &config).await;
            (s.key, moved)
        });
        flow.drain_ids.insert(handle.id(), session);
    }

    async fn drained(
        &mut self,
        joined: Result<(tokio::task::Id, (SplitSessionKey, u64)), tokio::task::JoinError>,
        flow: &mut Flow,
    ) {
        let (key, moved) = match joined {
            Ok((id, done)) => {
                flow.drain_ids.remove(&id);
                done
            }
            Err(e) => {
                if let Some(session) = flow.drain_ids.remove(&e.id()) {
                    tracing::error!(queue = %session.queue, error = %e, "drain task failed; starting it again");
                    self.spawn_drain(session, flow);
                }
                return;
            }
        };
        self.state.draining.retain(|s| s.key != key);
        if let Err(e) = self.store.save(&self.state).await {
            // Harmless: a resumed router finds the queue gone (nothing to move).
            tracing::warn!(session = %key, error = %e, "could not save the state after a drain");
        }
        tracing::info!(session = %key, moved, "ended session's queue drained and deleted");
        for w in flow.waiters.remove(&key).unwrap_or_default() {
            let _ = w.send(Ok(DrainReport { moved }));
        }
    }
}

/// The next delivery of the consumer, if there is one (never ready
/// otherwise). Cancel-safe because [`Consumer::next`] is.
async fn next_delivery(consumer: &mut Option<Box<dyn Consumer>>) -> BrokerResult<Option<Delivery>> {
    match consumer.as_mut() {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}
