//! The session table as `RemoraSession` objects: one per session, created
//! when it starts, its status kept equal to its subscriptions, deleted when
//! it ends; and the other way round, a session whose object is deleted
//! (`kubectl delete remorasession ID`) is ended.
//!
//! One actor ([`SessionObjectsTask`]) owns the cluster side: it reconciles
//! the latest table (handed over by [`SessionObjects`], the operator's
//! [`SessionObserver`]) and watches the objects, in one `select!`.

use crate::crd::{
    RemoraSession, RemoraSessionSpec, RemoraSessionStatus, SessionSubscription, SubscriptionMode,
};
use futures::StreamExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use remora_operator::access::{SessionObserver, SessionRecord};
use remora_operator::sessions::Sessions;
use remora_protocol::SessionId;
use remora_protocol::incoming::{HttpFilter, IncomingMode};
use std::collections::{BTreeMap, BTreeSet};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Label on every object the operator creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "remora-operator");

/// The operator's [`SessionObserver`]: hands the latest table to the task
/// (a watch channel keeps only the newest, so a burst of changes costs one
/// reconcile).
#[derive(Debug)]
pub struct SessionObjects {
    /// operator --session table--> [`SessionObjectsTask`]
    table_tx: watch::Sender<Vec<SessionRecord>>,
}

impl SessionObserver for SessionObjects {
    fn sessions_changed(&self, sessions: Vec<SessionRecord>) {
        self.table_tx.send_replace(sessions);
    }
}

/// Owns the operator's `RemoraSession` objects, each in its target's
/// namespace.
pub struct SessionObjectsTask {
    client: kube::Client,
    /// Every namespace's objects (the watch, the sweep).
    all: Api<RemoraSession>,
    /// Where objects of targets named without a namespace go.
    namespace: String,
    /// operator --session table--> this task
    table_rx: watch::Receiver<Vec<SessionRecord>>,
    /// What each object was last written as, and its namespace.
    written: BTreeMap<SessionId, (String, RemoraSessionStatus)>,
}

impl std::fmt::Debug for SessionObjectsTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionObjectsTask")
            .field("namespace", &self.namespace)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

/// The observer and its task; run the task with [`SessionObjectsTask::run`]
/// once the operator's [`Sessions`] exist.
pub fn session_objects(
    client: kube::Client,
    namespace: &str,
) -> (SessionObjects, SessionObjectsTask) {
    let (table_tx, table_rx) = watch::channel(Vec::new());
    (
        SessionObjects { table_tx },
        SessionObjectsTask {
            all: Api::all(client.clone()),
            client,
            namespace: namespace.to_owned(),
            table_rx,
            written: BTreeMap::new(),
        },
    )
}

/// The object's name for a session: its id, as `remora session ls` prints it.
pub fn object_name(id: SessionId) -> String {
    id.to_string()
}

fn mode(mode: IncomingMode) -> SubscriptionMode {
    match mode {
        IncomingMode::Steal => SubscriptionMode::Steal,
        IncomingMode::Mirror => SubscriptionMode::Mirror,
    }
}

/// A filter in one line, as `remora session ls` prints it (`header:^x-user: a$`,
/// `all_of(header:x, path:/y)`).
pub fn describe_filter(filter: &HttpFilter) -> String {
    let list = |name: &str, list: &[HttpFilter]| {
        let inner: Vec<String> = list.iter().map(describe_filter).collect();
        format!("{name}({})", inner.join(", "))
    };
    match filter {
        HttpFilter::Header(p) => format!("header:{p}"),
        HttpFilter::Path(p) => format!("path:{p}"),
        HttpFilter::Method(m) => format!("method:{m}"),
        HttpFilter::AllOf(l) => list("all_of", l),
        HttpFilter::AnyOf(l) => list("any_of", l),
    }
}

/// The namespace of a session's object: its target's (`namespace/<ns>/...`),
/// else `default`; and the target as the object names it (without the
/// namespace).
pub fn placement<'a>(record: &'a SessionRecord, default: &'a str) -> (&'a str, &'a str) {
    let (namespace, target) = remora_kube::namespaced::split(&record.info.target);
    (namespace.unwrap_or(default), target)
}

/// The object for a session (pure); `namespace` is the default one.
pub fn session_object(record: &SessionRecord, namespace: &str) -> RemoraSession {
    let info = &record.info;
    let (namespace, target) = placement(record, namespace);
    let started = i64::try_from(info.started_at)
        .ok()
        .and_then(|s| k8s_openapi::jiff::Timestamp::from_second(s).ok())
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    let mut object = RemoraSession::new(
        &object_name(info.id),
        RemoraSessionSpec {
            id: info.id.to_string(),
            user: info.user.clone(),
            identity: record.identity.clone(),
            target: target.to_owned(),
            started_at: started.to_string(),
        },
    );
    object.metadata.namespace = Some(namespace.to_owned());
    object.metadata.labels = Some(BTreeMap::from([(
        MANAGED_BY.0.to_owned(),
        MANAGED_BY.1.to_owned(),
    )]));
    object.status = Some(session_status(record));
    object
}

/// The status for a session's subscriptions (pure).
pub fn session_status(record: &SessionRecord) -> RemoraSessionStatus {
    RemoraSessionStatus::new(
        record
            .info
            .subscriptions
            .iter()
            .map(|s| SessionSubscription {
                port: s.port.0,
                mode: mode(s.mode),
                filter: s.filter.as_ref().map(describe_filter),
            })
            .collect(),
    )
}

impl SessionObjectsTask {
    /// Remove objects left by an operator that is gone (its sessions died
    /// with it), then reconcile and watch until `cancel`.
    pub async fn run(mut self, sessions: Sessions, cancel: CancellationToken) {
        self.sweep_leftovers().await;
        let config =
            watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
        let mut events = std::pin::pin!(watcher(self.all.clone(), config));
        let mut listed: Option<BTreeSet<(String, String)>> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                changed = self.table_rx.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let table = self.table_rx.borrow_and_update().clone();
                    self.reconcile(&table).await;
                }
                event = events.next() => match event {
                    Some(Ok(watcher::Event::Delete(object))) => {
                        let meta = object.metadata;
                        self.deleted(
                            meta.namespace.as_deref().unwrap_or_default(),
                            meta.name.as_deref().unwrap_or_default(),
                            &sessions,
                        );
                    }
                    Some(Ok(watcher::Event::Init)) => listed = Some(BTreeSet::new()),
                    Some(Ok(watcher::Event::InitApply(object))) => {
                        if let Some(names) = &mut listed {
                            let meta = object.metadata;
                            names.insert((
                                meta.namespace.unwrap_or_default(),
                                meta.name.unwrap_or_default(),
                            ));
                        }
                    }
                    Some(Ok(watcher::Event::InitDone)) => {
                        // A delete missed while the watch was down.
                        if let Some(names) = listed.take() {
                            let gone: Vec<(String, String)> = self
                                .written
                                .iter()
                                .map(|(id, (ns, _))| (ns.clone(), object_name(*id)))
                                .filter(|key| !names.contains(key))
                                .collect();
                            for (ns, name) in gone {
                                self.deleted(&ns, &name, &sessions);
                            }
                        }
                    }
                    Some(Ok(watcher::Event::Apply(_))) => {}
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "watching RemoraSession objects (retrying)");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                    None => break,
                },
            }
        }
        // The operator is stopping: its sessions end, so do their objects.
        self.reconcile(&[]).await;
    }

    async fn sweep_leftovers(&self) {
        let params = ListParams::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
        match self.all.list(&params).await {
            Ok(list) => {
                for object in list.items {
                    let name = object.metadata.name.unwrap_or_default();
                    let namespace = object.metadata.namespace.unwrap_or_default();
                    tracing::info!(%namespace, %name, "removing a RemoraSession left by a previous operator");
                    let _ = self
                        .api(&namespace)
                        .delete(&name, &DeleteParams::default())
                        .await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list RemoraSession objects"),
        }
    }

    fn api(&self, namespace: &str) -> Api<RemoraSession> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Object `namespace/name` was deleted: end its session if it still runs.
    fn deleted(&mut self, namespace: &str, name: &str, sessions: &Sessions) {
        let Some((&id, _)) = self
            .written
            .iter()
            .find(|(id, (ns, _))| object_name(**id) == name && ns == namespace)
        else {
            return;
        };
        self.written.remove(&id);
        let reason = format!("session ended: its RemoraSession {namespace}/{name} was deleted");
        tracing::info!(session = %id, "{reason}");
        let _ = sessions.kill(id, reason);
    }

    /// Make the objects match `table`.
    async fn reconcile(&mut self, table: &[SessionRecord]) {
        let live: BTreeSet<SessionId> = table.iter().map(|r| r.info.id).collect();
        let ended: Vec<SessionId> = self
            .written
            .keys()
            .filter(|id| !live.contains(id))
            .copied()
            .collect();
        for id in ended {
            let Some((namespace, _)) = self.written.remove(&id) else {
                continue;
            };
            match self
                .api(&namespace)
                .delete(&object_name(id), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => {
                    tracing::warn!(session = %id, error = %e, "cannot delete its RemoraSession")
                }
            }
        }
        for record in table {
            let id = record.info.id;
            let status = session_status(record);
            let namespace = placement(record, &self.namespace).0.to_owned();
            let api = self.api(&namespace);
            match self.written.get(&id) {
                Some((_, written)) if *written == status => {}
                Some(_) => {
                    let patch = serde_json::json!({"status": status});
                    match api
                        .patch_status(
                            &object_name(id),
                            &PatchParams::default(),
                            &Patch::Merge(&patch),
                        )
                        .await
                    {
                        Ok(_) => {
                            self.written.insert(id, (namespace, status));
                        }
                        Err(e) => {
                            tracing::warn!(session = %id, error = %e, "cannot update its RemoraSession status")
                        }
                    }
                }
                None => {
                    let object = session_object(record, &self.namespace);
                    match api.create(&PostParams::default(), &object).await {
                        Ok(_) => {
                            // The status subresource ignores status on create.
                            let patch = serde_json::json!({"status": status});
                            let _ = api
                                .patch_status(
                                    &object_name(id),
                                    &PatchParams::default(),
                                    &Patch::Merge(&patch),
                                )
                                .await;
                            self.written.insert(id, (namespace, status));
                        }
                        Err(e) => {
                            tracing::warn!(session = %id, error = %e, "cannot create its RemoraSession")
                        }
                    }
                }
            }
        }
    }
}

/// Every RemoraSession object, in `namespace` or in all of them (what
/// `remora session ls --kubernetes` shows).
///
/// # Errors
/// The API server's.
pub async fn list(
    client: kube::Client,
    namespace: Option<&str>,
) -> kube::Result<Vec<RemoraSession>> {
    let api: Api<RemoraSession> = match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let mut items = api.list(&ListParams::default()).await?.items;
    items.sort_by(|a, b| (&a.spec.started_at, &a.spec.id).cmp(&(&b.spec.started_at, &b.spec.id)));
    Ok(items)
}

/// Delete session `id`'s object in `namespace`: its operator ends the
/// session. `false` when there is no such object.
///
/// # Errors
/// The API server's (403 when the caller may not delete it).
pub async fn delete(client: kube::Client, namespace: &str, id: &str) -> kube::Result<bool> {
    let api: Api<RemoraSession> = Api::namespaced(client, namespace);
    match api.delete(id, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests;
