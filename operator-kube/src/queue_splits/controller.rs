//! The operator's side of queue splits: sessions join and leave the split
//! registered for their target's workload (a `RemoraQueueSplit`). The first
//! session starts one router per registered queue and points the workload
//! at its temporary queues (a rollout); the last one to leave stops the
//! routers, restores the workload (a second rollout), gives the workload
//! `drainTimeout` to empty its temporary queue, moves what is left back to
//! the original queue and deletes the temporary queues.
//!
//! The routers' state is kept in the object's status (written before any
//! message can reach a queue it names), so a restarted operator finds every
//! temporary queue and resumes ([`Splits::resume_all`]).
//!
//! A running split keeps the registration it started with until that
//! registration changes: [`Splits::watch`] sees the object edited or
//! deleted. An edit of `drainTimeout` or `keepWarmTtl` is taken as it is;
//! any other edit (the workload, a queue added, removed or changed), and a
//! deletion, end the split: its sessions are ended with the reason, every
//! temporary queue is emptied back into its original, the workload is
//! restored, and the next session starts the split under the new
//! registration. While a split is set up, its object carries the finalizer
//! [`FINALIZER`], so a deletion waits for that end.

use super::brokers::{self, QueueForm, Secrets};
use super::{SplitError, Workloads};
use crate::crd::queue_split::{
    QueueBroker, QueueNameSource, RemoraQueueSplit, RemoraQueueSplitStatus, SplitPhase,
    SplitQueueSpec, SplitQueueStatus, SplitSessionStatus, WorkloadRef,
};
use async_trait::async_trait;
use futures::StreamExt;
use futures::future::BoxFuture;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use remora_operator::queue_splits::QueueSplitter;
use remora_protocol::SessionId;
use remora_protocol::queues::{QueueReply, QueueRequest, SplitInfo, SplitQueueInfo, TempQueueInfo};
use remora_queues::broker::{Broker, QueueName};
use remora_queues::filter::MessageFilter;
use remora_queues::router::{
    RouterApi, RouterConfig, RouterTask, SplitSessionKey, SplitState, StateStore, StoreError,
    move_then_delete,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Default `drainTimeout`.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a prepared split waits for its first session to join.
pub const PREPARED_GRACE: Duration = Duration::from_secs(120);
/// How long a workload may take to roll onto its temporary queues.
pub const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(300);
/// On a `RemoraQueueSplit` while its split is set up (temporary queues, the
/// workload patched): deleting the object ends the split first.
pub const FINALIZER: &str = "remora.dev/queue-split";
/// How long a session that wants a split waits for the previous split of
/// the same registration to finish ending (the workload restored, its
/// temporary queues emptied).
pub const ENDING_WAIT: Duration = Duration::from_secs(600);

/// Ends a session of this operator, with the reason its client is told:
/// given the session's key (see [`session_id`]).
pub type EndSession = Arc<dyn Fn(&str, String) + Send + Sync>;

/// What a session asks for one queue id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The broker type the session expects.
    pub broker: QueueBroker,
    /// Header (attribute) name to regex.
    pub filter: BTreeMap<String, String>,
}

/// One running router.
#[derive(Debug)]
struct RunningQueue {
    broker: Arc<dyn Broker>,
    api: RouterApi,
    cancel: CancellationToken,
    task: JoinHandle<SplitState>,
    source: QueueNameSource,
    /// How the workload's variable names the queue (a temporary queue is
    /// handed out in the same form).
    form: QueueForm,
    original: QueueName,
}

/// One active split.
#[derive(Debug)]
struct Active {
    spec: crate::crd::queue_split::RemoraQueueSplitSpec,
    queues: BTreeMap<String, RunningQueue>,
    /// Session id to the queue ids it joined.
    sessions: BTreeMap<String, BTreeSet<String>>,
    /// Prepared for a session that has not joined yet (until then the
    /// split is not ended for having no sessions).
    reserved: usize,
    saved_env: BTreeMap<String, String>,
    /// The number (unique in this operator) of the keep-warm timer started
    /// when the split was last left without sessions; a timer ends the
    /// split only if it is still the latest (no session came and went
    /// since, and the split was not ended and started again).
    warm_epoch: u64,
    /// Why the split was ended while it ran (its registration changed),
    /// kept in `status.message` once it ended.
    end_note: Option<String>,
}

/// The splits this operator runs; cheap to clone.
#[derive(Clone)]
pub struct Splits {
    client: kube::Client,
    config: RouterConfig,
    /// (namespace, split name) to its active state. One lock: joins and
    /// leaves of splits are rare and each is a handful of API calls.
    active: Arc<tokio::sync::Mutex<BTreeMap<(String, String), Active>>>,
    /// Splits taken out of `active` whose end is under way: a session for
    /// one waits until it is over (changed under `active`'s lock).
    ending: Arc<std::sync::Mutex<BTreeSet<(String, String)>>>,
}

impl std::fmt::Debug for Splits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Splits").finish_non_exhaustive()
    }
}

/// The status store of one queue of one split: the router's state goes into
/// `status.queues.<id>` with a merge patch.
#[derive(Debug)]
struct StatusStore {
    api: Api<RemoraQueueSplit>,
    split: String,
    queue_id: String,
}

#[async_trait]
impl StateStore for StatusStore {
    async fn save(&self, state: &SplitState) -> Result<(), StoreError> {
        let status = SplitQueueStatus {
            original: state.original.0.clone(),
            workload_queue: Some(state.workload_queue.0.clone()),
            sessions: state
                .sessions
                .iter()
                .map(|s| SplitSessionStatus {
                    session: s.key.as_str().to_owned(),
                    user: String::new(),
                    filter: MessageFilter::new(s.filter.iter())
                        .map(|f| f.to_string())
                        .unwrap_or_default(),
                    queue: s.queue.0.clone(),
                })
                .collect(),
            router_state: Some(
                serde_json::to_string(state).map_err(|e| StoreError(e.to_string()))?,
            ),
        };
        let patch = serde_json::json!({"status": {"queues": {&self.queue_id: status}}});
        self.api
            .patch_status(&self.split, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(|e| StoreError(format!("RemoraQueueSplit {}: {e}", self.split)))
    }
}

fn api_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> SplitError {
    let what = what.into();
    move |source| SplitError::Api { what, source }
}

fn duration(text: Option<&str>, default: Duration) -> Duration {
    text.and_then(remora_config_duration).unwrap_or(default)
}

/// `90s`, `5m`, `1h` or plain seconds.
fn remora_config_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let at = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let n: u64 = text[..at].parse().ok()?;
    let factor = match &text[at..] {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return None,
    };
    Some(Duration::from_secs(n.checked_mul(factor)?))
}

impl Splits {
    /// The splits of this operator, routing with `config`.
    pub fn new(client: kube::Client, config: RouterConfig) -> Self {
        Self {
            client,
            config,
            active: Arc::default(),
            ending: Arc::default(),
        }
    }

    fn is_ending(&self, slot: &(String, String)) -> bool {
        self.ending.lock().expect("not poisoned").contains(slot)
    }

    /// Takes the split at `slot` out of `active` to be ended
    /// ([`Self::deactivate`] clears the mark).
    fn take_to_end(
        &self,
        active: &mut BTreeMap<(String, String), Active>,
        slot: &(String, String),
    ) -> Option<Active> {
        let done = active.remove(slot)?;
        self.ending
            .lock()
            .expect("not poisoned")
            .insert(slot.clone());
        Some(done)
    }

    /// The lock on the active splits once the split at `slot` is not
    /// ending any more (a previous end of the same registration finished).
    async fn lock_when_not_ending(
        &self,
        slot: &(String, String),
    ) -> Result<tokio::sync::MutexGuard<'_, BTreeMap<(String, String), Active>>, SplitError> {
        let deadline = tokio::time::Instant::now() + ENDING_WAIT;
        loop {
            let active = self.active.lock().await;
            if !self.is_ending(slot) {
                return Ok(active);
            }
            drop(active);
            if tokio::time::Instant::now() >= deadline {
                return Err(SplitError::Value(format!(
                    "RemoraQueueSplit {}/{} is still ending after {}s",
                    slot.0,
                    slot.1,
                    ENDING_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn api(&self, namespace: &str) -> Api<RemoraQueueSplit> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// The split registered for `workload` in `namespace`.
    async fn find(
        &self,
        namespace: &str,
        workload: &WorkloadRef,
    ) -> Result<RemoraQueueSplit, SplitError> {
        let list = self
            .api(namespace)
            .list(&ListParams::default())
            .await
            .map_err(api_error(format!(
                "listing RemoraQueueSplits in namespace {namespace}"
            )))?;
        let mut matching: Vec<RemoraQueueSplit> = list
            .items
            .into_iter()
            .filter(|s| s.spec.workload == *workload)
            .collect();
        match matching.len() {
            1 if matching[0].metadata.deletion_timestamp.is_some() => {
                Err(SplitError::Value(format!(
                    "RemoraQueueSplit {namespace}/{} is being deleted",
                    matching[0].metadata.name.as_deref().unwrap_or_default()
                )))
            }
            1 => Ok(matching.remove(0)),
            0 => Err(SplitError::Value(format!(
                "no RemoraQueueSplit in namespace {namespace} registers {:?} {}: a platform \
                 team registers a workload's queues once (see docs/queues.md)",
                workload.kind, workload.name
            ))),
            _ => Err(SplitError::Value(format!(
                "several RemoraQueueSplits in namespace {namespace} register {:?} {}: {}",
                workload.kind,
                workload.name,
                matching
                    .iter()
                    .filter_map(|s| s.metadata.name.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Connects to the broker of one registered queue.
    async fn broker(
        &self,
        namespace: &str,
        id: &str,
        queue: &SplitQueueSpec,
    ) -> Result<Arc<dyn Broker>, SplitError> {
        let secrets = Secrets {
            client: &self.client,
            namespace,
        };
        brokers::connect(&secrets, id, queue).await
    }

    /// Makes the split of `workload` active (if it is not) and waits until
    /// the workload has rolled onto its temporary queues, for a session
    /// that joins next; if none joins within [`PREPARED_GRACE`] and no other
    /// session holds the split, it ends.
    ///
    /// # Errors
    /// No registration, broker or API failures, a rollout that does not end.
    pub async fn prepare(&self, namespace: &str, workload: &WorkloadRef) -> Result<(), SplitError> {
        let split = self.find(namespace, workload).await?;
        let name = split.metadata.name.clone().unwrap_or_default();
        let slot = (namespace.to_owned(), name.clone());
        {
            let mut active = self.lock_when_not_ending(&slot).await?;
            if !active.contains_key(&slot) {
                let started = self.activate(namespace, &name, &split).await?;
                active.insert(slot.clone(), started);
            }
            active.get_mut(&slot).expect("inserted above").reserved += 1;
        }
        let this = self.clone();
        let grace_slot = slot.clone();
        tokio::spawn(async move {
            tokio::time::sleep(PREPARED_GRACE).await;
            this.release_reservation(grace_slot).await;
        });
        Workloads::new(self.client.clone(), namespace)
            .wait_rolled_out(workload, ROLLOUT_TIMEOUT)
            .await
    }

    /// A reservation's grace is over: end the split if nobody holds it.
    async fn release_reservation(&self, slot: (String, String)) {
        let mut active = self.active.lock().await;
        let Some(entry) = active.get_mut(&slot) else {
            return;
        };
        entry.reserved = entry.reserved.saturating_sub(1);
        if entry.reserved == 0
            && entry.sessions.is_empty()
            && let Some(done) = self.unheld(&mut active, &slot).await
        {
            drop(active);
            self.deactivate(&slot.0, &slot.1, done).await;
        }
    }

    /// The split at `slot` has no session and no reservation left: with no
    /// `keepWarmTtl`, it is taken out of `active` and returned, for the
    /// caller to end once it dropped the lock. Otherwise it stays set up
    /// (phase Warm, routers running, the workload on its temporary queues)
    /// and ends when the TTL passes without a session having joined.
    async fn unheld(
        &self,
        active: &mut BTreeMap<(String, String), Active>,
        slot: &(String, String),
    ) -> Option<Active> {
        let entry = active.get_mut(slot)?;
        let ttl = duration(entry.spec.keep_warm_ttl.as_deref(), Duration::ZERO);
        if ttl.is_zero() {
            return self.take_to_end(active, slot);
        }
        // Unique across splits and their restarts: a timer of a split that
        // ended (say, its registration changed) never matches the next
        // split of the same registration.
        static EPOCHS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        entry.warm_epoch = EPOCHS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let epoch = entry.warm_epoch;
        let (namespace, name) = slot;
        self.patch_status(
            namespace,
            name,
            serde_json::json!({
                "phase": SplitPhase::Warm,
                "sessionCount": 0,
                "idleSince": k8s_openapi::jiff::Timestamp::now().to_string(),
            }),
        )
        .await;
        let this = self.clone();
        let slot = slot.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            let mut active = this.active.lock().await;
            let still_idle = active
                .get(&slot)
                .is_some_and(|e| e.warm_epoch == epoch && e.sessions.is_empty() && e.reserved == 0);
            if still_idle {
                let done = this.take_to_end(&mut active, &slot).expect("present");
                drop(active);
                tracing::info!(split = %slot.1, "keepWarmTtl passed without a session: ending the split");
                this.deactivate(&slot.0, &slot.1, done).await;
            }
        });
        None
    }

    /// Joins `session` to the queues it asks for in the split registered for
    /// `workload`, starting the split if it is the first. Returns the
    /// session's variables: each queue's variable pointing at the session's
    /// own temporary queue. On any refusal nothing of this session stays.
    ///
    /// # Errors
    /// No registration, an unknown queue id or type, an overlapping filter
    /// (naming the holder), broker or API failures.
    pub async fn join(
        &self,
        namespace: &str,
        workload: &WorkloadRef,
        session: &str,
        wanted: &BTreeMap<String, Wanted>,
    ) -> Result<BTreeMap<String, String>, SplitError> {
        let split = self.find(namespace, workload).await?;
        let name = split.metadata.name.clone().unwrap_or_default();
        for (id, want) in wanted {
            let Some(registered) = split.spec.queues.get(id) else {
                return Err(SplitError::Value(format!(
                    "RemoraQueueSplit {name} registers no queue {id:?} (it has: {})",
                    split
                        .spec
                        .queues
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            };
            if registered.broker != want.broker {
                return Err(SplitError::Value(format!(
                    "queue {id} is a {:?} queue in RemoraQueueSplit {name}, not {:?}",
                    registered.broker, want.broker
                )));
            }
        }
        let key = SplitSessionKey::new(session).map_err(|e| SplitError::Value(e.to_string()))?;
        let slot = (namespace.to_owned(), name.clone());
        let mut active = self.lock_when_not_ending(&slot).await?;
        if !active.contains_key(&slot) {
            let started = self.activate(namespace, &name, &split).await?;
            active.insert(slot.clone(), started);
        }
        let entry = active.get_mut(&slot).expect("inserted above");
        let mut env = BTreeMap::new();
        let mut joined = BTreeSet::new();
        let mut failure = None;
        for (id, want) in wanted {
            let running = &entry.queues[id];
            let filter = match MessageFilter::new(want.filter.iter()) {
                Ok(f) => f,
                Err(e) => {
                    failure = Some(SplitError::Value(format!("queue {id}: {e}")));
                    break;
                }
            };
            match running.api.add_session(key.clone(), filter).await {
                Ok(queue) => {
                    env.insert(running.source.env.clone(), running.form.render(&queue));
                    joined.insert(id.clone());
                }
                Err(e) => {
                    failure = Some(SplitError::Value(format!("queue {id}: {e}")));
                    break;
                }
            }
        }
        if let Some(error) = failure {
            for id in &joined {
                let _ = entry.queues[id].api.remove_session(&key).await;
            }
            if entry.sessions.is_empty()
                && entry.reserved == 0
                && let Some(done) = self.unheld(&mut active, &slot).await
            {
                drop(active);
                self.deactivate(namespace, &name, done).await;
            }
            return Err(error);
        }
        entry.sessions.insert(session.to_owned(), joined);
        // The session a prepare was for has joined.
        entry.reserved = entry.reserved.saturating_sub(1);
        let count = entry.sessions.len();
        drop(active);
        self.set_phase(namespace, &name, SplitPhase::Active, count)
            .await;
        Ok(env)
    }

    /// Every active split with its queues' sessions, filters, depths and
    /// routed counts (`remora queues ls`).
    pub async fn list(&self) -> Vec<SplitInfo> {
        let active = self.active.lock().await;
        let mut out = Vec::new();
        for ((namespace, name), entry) in active.iter() {
            let mut queues = Vec::new();
            for (id, running) in &entry.queues {
                let Ok(stats) = running.api.stats().await else {
                    continue;
                };
                let temp =
                    |q: &remora_queues::router::QueueStats, owner: String, filter| TempQueueInfo {
                        queue: q.queue.0.clone(),
                        owner,
                        filter,
                        depth: q.depth.map(|d| d.ready),
                        routed: q.routed,
                    };
                let mut temps = vec![temp(&stats.workload, "workload".to_owned(), None)];
                for s in &stats.sessions {
                    temps.push(temp(
                        &s.queue,
                        s.key.as_str().to_owned(),
                        Some(s.filter.clone()),
                    ));
                }
                queues.push(SplitQueueInfo {
                    id: id.clone(),
                    broker: running.broker.kind().to_string(),
                    original: running.original.0.clone(),
                    original_depth: stats.original.depth.map(|d| d.ready),
                    queues: temps,
                });
            }
            out.push(SplitInfo {
                namespace: namespace.clone(),
                name: name.clone(),
                workload: format!(
                    "{:?}/{}",
                    entry.spec.workload.kind, entry.spec.workload.name
                ),
                queues,
            });
        }
        out
    }

    /// `session` leaves every split it joined; the last one out ends the split.
    pub async fn leave(&self, session: &str) {
        let Ok(key) = SplitSessionKey::new(session) else {
            return;
        };
        let mut active = self.active.lock().await;
        let mut ended = Vec::new();
        let mut counts = Vec::new();
        for ((namespace, name), entry) in active.iter_mut() {
            let Some(ids) = entry.sessions.remove(session) else {
                continue;
            };
            for id in ids {
                if let Err(e) = entry.queues[&id].api.remove_session(&key).await {
                    tracing::warn!(split = %name, queue = %id, error = %e, "removing a session");
                }
            }
            if entry.sessions.is_empty() && entry.reserved == 0 {
                ended.push((namespace.clone(), name.clone()));
            } else {
                counts.push((namespace.clone(), name.clone(), entry.sessions.len()));
            }
        }
        let mut to_end = Vec::new();
        for slot in ended {
            if let Some(done) = self.unheld(&mut active, &slot).await {
                to_end.push((slot, done));
            }
        }
        drop(active);
        for (namespace, name, count) in counts {
            self.set_phase(&namespace, &name, SplitPhase::Active, count)
                .await;
        }
        for ((namespace, name), done) in to_end {
            self.deactivate(&namespace, &name, done).await;
        }
    }

    /// Follows the `RemoraQueueSplit` objects until `cancel`, so that a
    /// running split does not outlive its registration: an edit of
    /// `drainTimeout` or `keepWarmTtl` is taken as it is; any other edit, or
    /// a deletion, ends the split ([`Self::end_changed`]), its sessions
    /// through `end_session`.
    pub async fn watch(self, end_session: EndSession, cancel: CancellationToken) {
        let all: Api<RemoraQueueSplit> = Api::all(self.client.clone());
        let mut events = std::pin::pin!(watcher(all, watcher::Config::default()));
        // The objects a (re)list returned: a split whose object is not
        // among them was deleted while the watch was down.
        let mut listed: Option<BTreeSet<(String, String)>> = None;
        loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => break,
                event = events.next() => event,
            };
            match event {
                Some(Ok(watcher::Event::Apply(object))) => {
                    self.registration_seen(&object, &end_session).await;
                }
                Some(Ok(watcher::Event::InitApply(object))) => {
                    if let Some(names) = &mut listed {
                        names.insert(slot_of(&object));
                    }
                    self.registration_seen(&object, &end_session).await;
                }
                Some(Ok(watcher::Event::Delete(object))) => {
                    let (namespace, name) = slot_of(&object);
                    let reason = format!("RemoraQueueSplit {namespace}/{name} was deleted");
                    self.end_in_background((namespace, name), reason, &end_session);
                }
                Some(Ok(watcher::Event::Init)) => listed = Some(BTreeSet::new()),
                Some(Ok(watcher::Event::InitDone)) => {
                    let Some(names) = listed.take() else {
                        continue;
                    };
                    let gone: Vec<(String, String)> = self
                        .active
                        .lock()
                        .await
                        .keys()
                        .filter(|slot| !names.contains(*slot))
                        .cloned()
                        .collect();
                    for slot in gone {
                        let reason = format!("RemoraQueueSplit {}/{} was deleted", slot.0, slot.1);
                        self.end_in_background(slot, reason, &end_session);
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watching RemoraQueueSplit objects (retrying)");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                None => break,
            }
        }
    }

    /// The object of a split was created or changed: compare it with the
    /// registration its running split started with.
    async fn registration_seen(&self, object: &RemoraQueueSplit, end_session: &EndSession) {
        let slot = slot_of(object);
        let reason = {
            let mut active = self.active.lock().await;
            let Some(entry) = active.get_mut(&slot) else {
                return;
            };
            if object.metadata.deletion_timestamp.is_some() {
                format!("RemoraQueueSplit {}/{} was deleted", slot.0, slot.1)
            } else {
                match spec_change(&entry.spec, &object.spec) {
                    None => {
                        // Only the timings (or nothing): taken as they are.
                        entry.spec = object.spec.clone();
                        return;
                    }
                    Some(what) => {
                        format!("RemoraQueueSplit {}/{} changed ({what})", slot.0, slot.1)
                    }
                }
            }
        };
        self.end_in_background(slot, reason, end_session);
    }

    /// [`Self::end_changed`] in a task of its own: the watch goes on (an
    /// end takes the drain timeout and more).
    fn end_in_background(&self, slot: (String, String), reason: String, end_session: &EndSession) {
        let this = self.clone();
        let end_session = end_session.clone();
        tokio::spawn(async move { this.end_changed(&slot, reason, &end_session).await });
    }

    /// Ends the split at `slot`, if it runs, because its registration
    /// changed or went: its sessions are ended with `reason`, every
    /// temporary queue is emptied back into its original, the workload is
    /// restored and the finalizer removed. Sessions that want the split
    /// meanwhile wait, then start it under the new registration.
    async fn end_changed(&self, slot: &(String, String), reason: String, end_session: &EndSession) {
        let done = {
            let mut active = self.active.lock().await;
            self.take_to_end(&mut active, slot)
        };
        let Some(done) = done else {
            return;
        };
        tracing::info!(split = %slot.1, %reason, sessions = done.sessions.len(), "ending the split");
        for session in done.sessions.keys() {
            end_session(
                session,
                format!(
                    "queue split ended: {reason}; the messages of its temporary queues go back \
                     to the original queues (start a new session to split under the current \
                     registration)"
                ),
            );
        }
        let mut done = done;
        done.end_note = Some(format!("the split was ended while it ran: {reason}"));
        self.deactivate(&slot.0, &slot.1, done).await;
    }

    /// Starts a router per registered queue and points the workload at its
    /// temporary queues.
    async fn activate(
        &self,
        namespace: &str,
        name: &str,
        split: &RemoraQueueSplit,
    ) -> Result<Active, SplitError> {
        // Before any temporary queue exists: a deletion of the object now
        // waits for the split's end.
        self.set_finalizer(namespace, name, true).await?;
        let workloads = Workloads::new(self.client.clone(), namespace);
        let mut saved_env = split
            .status
            .as_ref()
            .map(|s| s.saved_env.clone())
            .unwrap_or_default();
        let mut queues = BTreeMap::new();
        let mut targets = Vec::new();
        for (id, registered) in &split.spec.queues {
            let started = async {
                let broker = self.broker(namespace, id, registered).await?;
                let value = workloads
                    .queue_name(&split.spec.workload, &registered.name_from)
                    .await?;
                let (original, form) = QueueForm::parse(registered.broker, &value)?;
                let store = Arc::new(StatusStore {
                    api: self.api(namespace),
                    split: name.to_owned(),
                    queue_id: id.clone(),
                });
                let (task, api) = RouterTask::start(
                    broker.clone(),
                    store,
                    original.clone(),
                    BTreeMap::new(),
                    self.config.clone(),
                )
                .await
                .map_err(|e| SplitError::Value(format!("queue {id}: {e}")))?;
                let cancel = CancellationToken::new();
                let task = tokio::spawn(task.run(cancel.clone()));
                Ok::<_, SplitError>(RunningQueue {
                    broker,
                    api,
                    cancel,
                    task,
                    source: registered.name_from.clone(),
                    form,
                    original,
                })
            }
            .await;
            match started {
                Ok(running) => {
                    targets.push((
                        running.source.clone(),
                        running.form.render(running.api.workload_queue()),
                    ));
                    queues.insert(id.clone(), running);
                }
                Err(e) => {
                    let partial = Active {
                        spec: split.spec.clone(),
                        queues,
                        sessions: BTreeMap::new(),
                        reserved: 0,
                        saved_env,
                        warm_epoch: 0,
                        end_note: None,
                    };
                    self.deactivate(namespace, name, partial).await;
                    return Err(e);
                }
            }
        }
        if let Err(e) = workloads
            .point_at(name, &split.spec.workload, &targets, &mut saved_env)
            .await
        {
            let partial = Active {
                spec: split.spec.clone(),
                queues,
                sessions: BTreeMap::new(),
                reserved: 0,
                saved_env,
                warm_epoch: 0,
                end_note: None,
            };
            self.deactivate(namespace, name, partial).await;
            return Err(e);
        }
        self.patch_status(
            namespace,
            name,
            serde_json::json!({"savedEnv": saved_env, "phase": SplitPhase::Active}),
        )
        .await;
        Ok(Active {
            spec: split.spec.clone(),
            queues,
            sessions: BTreeMap::new(),
            reserved: 0,
            saved_env,
            warm_epoch: 0,
            end_note: None,
        })
    }

    /// Stops the routers, restores the workload, lets it drain its
    /// temporary queues for the drain timeout, then moves what is left back
    /// to the originals and deletes the temporary queues.
    async fn deactivate(&self, namespace: &str, name: &str, done: Active) {
        /// Clears the split's mark in `ending` however the end goes.
        struct Ended<'a>(&'a Splits, (String, String));
        impl Drop for Ended<'_> {
            fn drop(&mut self) {
                self.0.ending.lock().expect("not poisoned").remove(&self.1);
            }
        }
        let _ended = Ended(self, (namespace.to_owned(), name.to_owned()));
        self.patch_status(
            namespace,
            name,
            serde_json::json!({"phase": SplitPhase::Draining, "sessionCount": 0}),
        )
        .await;
        let mut stopped = Vec::new();
        for (id, running) in done.queues {
            running.cancel.cancel();
            let state = match running.task.await {
                Ok(state) => state,
                Err(e) => {
                    tracing::warn!(split = %name, queue = %id, error = %e, "router task failed");
                    continue;
                }
            };
            stopped.push((id, running.broker, running.original, state));
        }
        if !done.saved_env.is_empty() {
            let workloads = Workloads::new(self.client.clone(), namespace);
            if let Err(e) = workloads
                .restore(&done.spec.workload, &done.saved_env)
                .await
            {
                tracing::warn!(split = %name, error = %e, "restoring the workload");
                self.patch_status(
                    namespace,
                    name,
                    serde_json::json!({"message": e.to_string()}),
                )
                .await;
                return;
            }
        }
        let drain = duration(done.spec.drain_timeout.as_deref(), DEFAULT_DRAIN_TIMEOUT);
        let deadline = tokio::time::Instant::now() + drain;
        for (_, broker, original, state) in &stopped {
            // The workload's old pods consume their temporary queue until they
            // are replaced; give them the drain timeout, then move the rest.
            while tokio::time::Instant::now() < deadline {
                match broker.depth(&state.workload_queue).await {
                    Ok(d) if d.ready == 0 && d.unacked.unwrap_or(0) == 0 => break,
                    Ok(_) => {}
                    Err(_) => break,
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            for queue in state.temp_queues() {
                move_then_delete(broker.as_ref(), queue, original, &self.config).await;
            }
        }
        self.patch_status(
            namespace,
            name,
            serde_json::json!({"phase": SplitPhase::Idle, "queues": null, "savedEnv": null, "message": done.end_note, "idleSince": null}),
        )
        .await;
        if let Err(e) = self.set_finalizer(namespace, name, false).await {
            tracing::warn!(split = %name, error = %e, "removing the finalizer");
        }
    }

    /// Adds (`on`) or removes [`FINALIZER`] on the object `namespace/name`;
    /// an object already gone needs neither.
    async fn set_finalizer(&self, namespace: &str, name: &str, on: bool) -> Result<(), SplitError> {
        let api = self.api(namespace);
        let what = || format!("the finalizer of RemoraQueueSplit {namespace}/{name}");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(object) = api.get_opt(name).await.map_err(api_error(what()))? else {
                return Ok(());
            };
            let mut finalizers = object.metadata.finalizers.unwrap_or_default();
            let has = finalizers.iter().any(|f| f == FINALIZER);
            if has == on {
                return Ok(());
            }
            if on {
                finalizers.push(FINALIZER.to_owned());
            } else {
                finalizers.retain(|f| f != FINALIZER);
            }
            // The resourceVersion makes a concurrent change of the list a
            // conflict (retried from a fresh read) rather than a lost update.
            let patch = serde_json::json!({"metadata": {
                "finalizers": finalizers,
                "resourceVersion": object.metadata.resource_version,
            }});
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
                Err(kube::Error::Api(status))
                    if status.code == 409 && attempt < super::CONFLICT_RETRIES => {}
                Err(e) => return Err(api_error(what())(e)),
            }
        }
    }

    async fn set_phase(&self, namespace: &str, name: &str, phase: SplitPhase, sessions: usize) {
        self.patch_status(
            namespace,
            name,
            serde_json::json!({"phase": phase, "sessionCount": sessions, "idleSince": null}),
        )
        .await;
    }

    async fn patch_status(&self, namespace: &str, name: &str, status: serde_json::Value) {
        let patch = serde_json::json!({ "status": status });
        if let Err(e) = self
            .api(namespace)
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(split = %name, error = %e, "updating the status");
        }
    }

    /// After an operator restart: every split left active (its status
    /// names temporary queues) has lost its sessions with the old operator,
    /// so each is ended as a last session leaving would end it: the routers
    /// resume from the saved state (draining the sessions' queues into the
    /// workload's), the workload is restored, and the temporary queues are
    /// emptied back into the originals.
    ///
    /// Returns once the splits are listed and marked as ending; their ends
    /// run in the background (a drain waits as long as a consumer holds a
    /// queue), and a session for one of them waits until its end is over.
    ///
    /// # Errors
    /// Listing the splits failed.
    pub async fn resume_all(&self) -> Result<usize, SplitError> {
        let all: Api<RemoraQueueSplit> = Api::all(self.client.clone());
        let list = all
            .list(&ListParams::default())
            .await
            .map_err(api_error("listing RemoraQueueSplits"))?;
        let mut resumed = 0;
        for split in list.items {
            let namespace = split.metadata.namespace.clone().unwrap_or_default();
            let name = split.metadata.name.clone().unwrap_or_default();
            let status = split.status.clone().unwrap_or_default();
            if status.phase == SplitPhase::Idle && status.queues.is_empty() {
                // Ended, but the previous operator stopped before it took
                // its finalizer off.
                if let Err(e) = self.set_finalizer(&namespace, &name, false).await {
                    tracing::warn!(split = %name, error = %e, "removing the finalizer");
                }
                continue;
            }
            self.ending
                .lock()
                .expect("not poisoned")
                .insert((namespace.clone(), name.clone()));
            let this = self.clone();
            tokio::spawn(async move {
                let done = this.resume_one(&namespace, &name, &split, &status).await;
                this.deactivate(&namespace, &name, done).await;
            });
            resumed += 1;
        }
        Ok(resumed)
    }

    async fn resume_one(
        &self,
        namespace: &str,
        name: &str,
        split: &RemoraQueueSplit,
        status: &RemoraQueueSplitStatus,
    ) -> Active {
        let mut queues = BTreeMap::new();
        for (id, queue_status) in &status.queues {
            let Some(state) = queue_status
                .router_state
                .as_deref()
                .and_then(|s| serde_json::from_str::<SplitState>(s).ok())
            else {
                continue;
            };
            let Some(registered) = split.spec.queues.get(id) else {
                tracing::warn!(split = %name, queue = %id, "no longer registered; its temporary queues are left for a later resume");
                continue;
            };
            let broker = match self.broker(namespace, id, registered).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(split = %name, queue = %id, error = %e, "cannot resume");
                    continue;
                }
            };
            let store = Arc::new(StatusStore {
                api: self.api(namespace),
                split: name.to_owned(),
                queue_id: id.clone(),
            });
            let original = state.original.clone();
            match RouterTask::resume(
                broker.clone(),
                store,
                state,
                &BTreeSet::new(),
                self.config.clone(),
            )
            .await
            {
                Ok((task, api)) => {
                    let cancel = CancellationToken::new();
                    let task = tokio::spawn(task.run(cancel.clone()));
                    // The ended sessions' queues are being drained into the
                    // workload's: let those drains finish before the split
                    // ends (a router stopped mid-drain leaves the drain's
                    // consumer, and the messages it held, to the broker).
                    loop {
                        match api.state().await {
                            Ok(state) if state.draining.is_empty() => break,
                            Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                            Err(e) => {
                                tracing::warn!(split = %name, queue = %id, error = %e, "the resumed router stopped");
                                break;
                            }
                        }
                    }
                    queues.insert(
                        id.clone(),
                        RunningQueue {
                            broker,
                            api,
                            cancel,
                            task,
                            source: registered.name_from.clone(),
                            // Only ended after a resume: no variable is
                            // handed out in it.
                            form: QueueForm::Name,
                            original,
                        },
                    );
                }
                Err(e) => tracing::warn!(split = %name, queue = %id, error = %e, "cannot resume"),
            }
        }
        Active {
            spec: split.spec.clone(),
            queues,
            sessions: BTreeMap::new(),
            reserved: 0,
            saved_env: status.saved_env.clone(),
            warm_epoch: 0,
            end_note: None,
        }
    }
}

/// The operator's [`QueueSplitter`]: sessions on `deployment/`,
/// `statefulset/` and `rollout/` targets in the operator's namespace join
/// the split registered for that workload.
#[derive(Debug, Clone)]
pub struct KubeQueueSplitter {
    /// The splits.
    pub splits: Splits,
    /// The namespace the operator serves.
    pub namespace: String,
}

/// The workload a canonical target names, if splits can serve it.
fn workload_of(target: &str) -> Result<WorkloadRef, String> {
    let mut parts = target.split('/');
    let kind = match parts.next() {
        Some("deployment") => crate::crd::queue_split::WorkloadKind::Deployment,
        Some("statefulset") => crate::crd::queue_split::WorkloadKind::StatefulSet,
        Some("rollout") => crate::crd::queue_split::WorkloadKind::Rollout,
        _ => {
            return Err(format!(
                "split_queues need a deployment/, statefulset/ or rollout/ target (the workload \
                 a RemoraQueueSplit registers), not {target}"
            ));
        }
    };
    let name = parts.next().unwrap_or_default().to_owned();
    Ok(WorkloadRef { kind, name })
}

impl QueueSplitter for KubeQueueSplitter {
    fn handle(
        &self,
        target: String,
        session: SessionId,
        _user: String,
        request: QueueRequest,
    ) -> BoxFuture<'static, Result<QueueReply, String>> {
        let this = self.clone();
        Box::pin(async move {
            let workload = workload_of(&target)?;
            let queues = match request {
                QueueRequest::Split(queues) => queues,
                QueueRequest::Prepare { .. } | QueueRequest::List => {
                    return Err("this request goes on a control connection (no target)".to_owned());
                }
            };
            let mut wanted = BTreeMap::new();
            for q in queues {
                let broker = match q.broker.as_str() {
                    "rabbitmq" => QueueBroker::Rabbitmq,
                    "sqs" => QueueBroker::Sqs,
                    "kafka" => QueueBroker::Kafka,
                    "pubsub" => QueueBroker::Pubsub,
                    other => return Err(format!("queue {}: unknown type {other:?}", q.id)),
                };
                wanted.insert(
                    q.id,
                    Wanted {
                        broker,
                        filter: q.filter,
                    },
                );
            }
            let env = this
                .splits
                .join(&this.namespace, &workload, &session_key(session), &wanted)
                .await
                .map_err(|e| e.to_string())?;
            Ok(QueueReply::Split { env })
        })
    }

    fn prepare(&self, target: String) -> BoxFuture<'static, Result<(), String>> {
        let this = self.clone();
        Box::pin(async move {
            let workload = workload_of(&target)?;
            this.splits
                .prepare(&this.namespace, &workload)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn list(&self) -> BoxFuture<'static, Result<QueueReply, String>> {
        let splits = self.splits.clone();
        Box::pin(async move { Ok(QueueReply::List(splits.list().await)) })
    }

    fn leave(&self, session: SessionId) -> BoxFuture<'static, ()> {
        let splits = self.splits.clone();
        Box::pin(async move { splits.leave(&session_key(session)).await })
    }
}

/// The router's name for a session: its id in hex.
fn session_key(session: SessionId) -> String {
    format!("s{:x}", session.0)
}

/// The session a router's key names (the inverse of the key this operator
/// gives its sessions), for [`Splits::watch`]'s `end_session`.
pub fn session_id(key: &str) -> Option<SessionId> {
    let hex = key.strip_prefix('s')?;
    u64::from_str_radix(hex, 16).ok().map(SessionId)
}

fn slot_of(object: &RemoraQueueSplit) -> (String, String) {
    (
        object.metadata.namespace.clone().unwrap_or_default(),
        object.metadata.name.clone().unwrap_or_default(),
    )
}

/// What changed between a running split's registration and the object's,
/// other than the timings (`drainTimeout`, `keepWarmTtl`), which a running
/// split takes as they are; `None` when nothing else did.
fn spec_change(
    running: &crate::crd::queue_split::RemoraQueueSplitSpec,
    now: &crate::crd::queue_split::RemoraQueueSplitSpec,
) -> Option<String> {
    let mut what = Vec::new();
    if running.workload != now.workload {
        what.push(format!(
            "the workload is {:?} {}",
            now.workload.kind, now.workload.name
        ));
    }
    for (id, queue) in &running.queues {
        match now.queues.get(id) {
            None => what.push(format!("queue {id} removed")),
            Some(q) if q != queue => what.push(format!("queue {id} changed")),
            Some(_) => {}
        }
    }
    for id in now.queues.keys() {
        if !running.queues.contains_key(id) {
            what.push(format!("queue {id} added"));
        }
    }
    (!what.is_empty()).then(|| what.join(", "))
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_take_units() {
        use std::time::Duration;
        assert_eq!(
            super::remora_config_duration("90s"),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            super::remora_config_duration("5m"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            super::remora_config_duration("2"),
            Some(Duration::from_secs(2))
        );
        assert_eq!(super::remora_config_duration("soon"), None);
    }

    #[test]
    fn session_keys_name_their_sessions() {
        let id = remora_protocol::SessionId(0x7f3a);
        assert_eq!(super::session_id(&super::session_key(id)), Some(id));
        assert_eq!(super::session_id("alice1"), None);
    }

    #[test]
    fn only_timings_change_a_running_split() {
        use crate::crd::queue_split::RemoraQueueSplitSpec;
        let spec: RemoraQueueSplitSpec = serde_json::from_value(serde_json::json!({
            "workload": {"kind": "Deployment", "name": "worker"},
            "queues": {"orders": {
                "type": "rabbitmq",
                "nameFrom": {"env": "ORDERS_QUEUE"},
                "brokerEndpoint": {"url": "amqp://rabbit:5672/%2f"},
            }},
        }))
        .unwrap();
        let mut timings = spec.clone();
        timings.drain_timeout = Some("5m".into());
        timings.keep_warm_ttl = Some("10m".into());
        assert_eq!(super::spec_change(&spec, &timings), None);

        let mut renamed = spec.clone();
        renamed.queues.get_mut("orders").unwrap().name_from.env = "QUEUE".into();
        let mut added = spec.clone();
        added
            .queues
            .insert("payments".into(), spec.queues["orders"].clone());
        assert_eq!(
            super::spec_change(&spec, &renamed).as_deref(),
            Some("queue orders changed")
        );
        assert_eq!(
            super::spec_change(&spec, &added).as_deref(),
            Some("queue payments added")
        );
        assert_eq!(
            super::spec_change(&added, &spec).as_deref(),
            Some("queue payments removed")
        );
    }
}
