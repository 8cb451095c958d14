//! Database branches: private copies of a target's databases, made on the
//! source's own server (or a configured branch server of the same version)
//! when a session starts, reused by id, and dropped at
//! their TTL, also across operator restarts (state in `db-branches.json`
//! under `--state-dir`).
//!
//! * [`source`]: the connection read from the target's environment, and the
//!   session's variables rewritten to the branch.
//! * [`engine`]: the server clients that create, fill and drop databases.
//! * [`my_parallel`]: MariaDB `all` branches by `mydumper` + `myloader`, a
//!   parallel dump and restore from one snapshot.
//! * `golden`: PostgreSQL golden copies, made in the background after a
//!   source's first `all` branch, cloned by the next ones.
//! * [`settings`]: the operator's `--db-config`: branch servers for sources
//!   whose credentials may not create databases, read-only roles.
//! * [`store`]: the registry kept elsewhere than `--state-dir` (on
//!   Kubernetes: `RemoraDbBranch` objects and their Secrets).

pub mod engine;
mod golden;
pub mod instance;
pub mod my_parallel;
pub mod pg_clients;
pub mod pods;
pub mod settings;
pub mod source;
pub mod store;

use crate::platform::{Platform, ResolvedTarget};
use remora_protocol::db::{
    BranchInfo, BranchMade, BranchSpec, CopyMode, DbKind, DbReply, DbRequest,
};
use remora_protocol::{ErrorCode, RemoteError};
use serde::{Deserialize, Serialize};
use settings::DbSettings;
use source::Server;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// The state file's name in the state directory.
pub const STATE_FILE: &str = "db-branches.json";
/// How often expired branches are looked for.
pub const REAP_INTERVAL: Duration = Duration::from_secs(1);
/// How often branch pods no branch names are looked for (and once at start).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// How long a golden copy serves `all` branches before it is made again.
pub const GOLDEN_TTL_SECS: u64 = 10 * 60;

/// One database the operator made and must drop.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    info: BranchInfo,
    server: Server,
    /// The session's variables pointing at the branch.
    env: BTreeMap<String, String>,
    /// A golden copy (not listed, never handed to a session).
    golden: bool,
    /// A golden copy is ready to be cloned (false while it is being made).
    #[serde(default = "yes")]
    ready: bool,
    /// The MariaDB fast path: the branch's own datadir (served by its own
    /// `mariadbd`) or the golden copy's directory; dropping removes it.
    #[serde(default)]
    dir: Option<PathBuf>,
    /// Kubernetes: the branch's own pod ([`pods::PodMade::handle`]);
    /// dropping deletes it.
    #[serde(default)]
    pod: Option<String>,
}

impl Entry {
    /// The entry as a [`store::BranchStore`] keeps it.
    fn stored(&self) -> store::StoredBranch {
        store::StoredBranch {
            key: store::key(&self.info.branch, &self.server),
            record: store::BranchRecord {
                info: self.info.clone(),
                golden: self.golden,
                ready: self.ready,
                dir: self.dir.clone(),
                pod: self.pod.clone(),
                server: format!("{}:{}", self.server.host, self.server.port),
            },
            secret: store::BranchSecret {
                server: self.server.clone(),
                env: self.env.clone(),
            },
        }
    }

    /// The entry a [`store::BranchStore`] kept.
    fn from_stored(stored: store::StoredBranch) -> Entry {
        Entry {
            info: stored.record.info,
            server: stored.secret.server,
            env: stored.secret.env,
            golden: stored.record.golden,
            ready: stored.record.ready,
            dir: stored.record.dir,
            pod: stored.record.pod,
        }
    }

    /// Drop what this entry made. Blocking.
    fn drop_blocking(&self, dial: engine::Dial<'_>) -> Result<(), String> {
        match &self.dir {
            Some(dir) => {
                instance::remove(dir);
                Ok(())
            }
            None => engine::drop_database(dial, &self.server, &self.info.branch),
        }
    }
}

fn yes() -> bool {
    true
}

/// The key of a golden copy in [`Branches::building`].
fn golden_key(golden: &str, at: &Server) -> String {
    format!("{golden}@{}:{}", at.host, at.port)
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    entries: Vec<Entry>,
    /// With a [`store::BranchStore`]: each entry's record as last stored
    /// (JSON), by key.
    #[serde(skip)]
    stored: BTreeMap<String, String>,
}

/// Where a branch request comes from: the session's target, and the
/// target's environment as its agent read it (the target process's own
/// environment, on every platform: on Kubernetes the kubelet's rendering of
/// `env`, `envFrom`, ConfigMap and Secret references, without the operator
/// reading Secrets).
#[derive(Debug, Clone, Copy)]
pub struct SessionTarget<'a> {
    /// The session's target.
    pub target: &'a ResolvedTarget,
    /// Its environment.
    pub env: &'a BTreeMap<String, String>,
}

/// The branch registry; cheap to clone.
#[derive(Debug, Clone)]
pub struct Branches {
    platform: Arc<dyn Platform>,
    state_file: Option<PathBuf>,
    /// Where the registry is kept instead of `state_file` (Kubernetes).
    store: Option<Arc<dyn store::BranchStore>>,
    /// Who makes branch pods (Kubernetes).
    pods: Option<Arc<dyn pods::BranchPods>>,
    /// Extra directories with PostgreSQL clients (`--pg-bindir`).
    pg_bindirs: Vec<PathBuf>,
    /// Branch servers and read-only roles (`--db-config`).
    settings: Arc<DbSettings>,
    /// One database operation at a time: creating a branch from a golden
    /// copy must not race its refresh, and the state file has one writer.
    state: Arc<tokio::sync::Mutex<State>>,
    /// Golden copies being made in the background ([`golden_key`]).
    building: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn random_id() -> String {
    let mut bytes = [0u8; 4];
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `remora_<source>_<id>`, lowercased, only `[a-z0-9_]`, at most 63 bytes.
pub fn branch_name(source: &str, id: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    let mut name = format!("remora_{}_{}", clean(source), clean(id));
    name.truncate(63);
    name
}

/// The golden copy of `source` for `all` branches.
pub fn golden_name(source: &str) -> String {
    branch_name(source, "golden")
}

fn error(code: ErrorCode, message: impl Into<String>) -> RemoteError {
    RemoteError::new(code, message)
}

impl Branches {
    /// Load the state from `store` and start the reaper, which stops with
    /// `cancel`: the registry is kept there instead of a state file.
    ///
    /// # Errors
    /// The stored entries cannot be read (the operator must not start: it
    /// would never drop them).
    pub async fn start_stored(
        platform: Arc<dyn Platform>,
        store: Arc<dyn store::BranchStore>,
        pods: Option<Arc<dyn pods::BranchPods>>,
        pg_bindirs: Vec<PathBuf>,
        settings: DbSettings,
        cancel: CancellationToken,
    ) -> Result<Branches, String> {
        let loaded = store.load().await?;
        let mut state = State::default();
        for stored in loaded {
            let record = serde_json::to_string(&stored.record).unwrap_or_default();
            state.stored.insert(stored.key.clone(), record);
            state.entries.push(Entry::from_stored(stored));
        }
        if !state.entries.is_empty() {
            tracing::info!(
                entries = state.entries.len(),
                "db branches (and golden copies) a previous operator made: dropped at their TTL"
            );
        }
        Ok(Self::launch(
            platform,
            None,
            Some(store),
            pods,
            state,
            pg_bindirs,
            settings,
            cancel,
        ))
    }

    /// Load the state (if any) and start the reaper, which stops with `cancel`.
    pub fn start(
        platform: Arc<dyn Platform>,
        state_dir: Option<PathBuf>,
        pg_bindirs: Vec<PathBuf>,
        settings: DbSettings,
        cancel: CancellationToken,
    ) -> Branches {
        let state_file = state_dir.map(|dir| dir.join(STATE_FILE));
        let state = state_file
            .as_ref()
            .and_then(|path| std::fs::read(path).ok())
            .and_then(|bytes| match serde_json::from_slice::<State>(&bytes) {
                Ok(state) => Some(state),
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring an unreadable db-branches state file");
                    None
                }
            })
            .unwrap_or_default();
        Self::launch(
            platform, state_file, None, None, state, pg_bindirs, settings, cancel,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn launch(
        platform: Arc<dyn Platform>,
        state_file: Option<PathBuf>,
        store: Option<Arc<dyn store::BranchStore>>,
        pods: Option<Arc<dyn pods::BranchPods>>,
        state: State,
        pg_bindirs: Vec<PathBuf>,
        settings: DbSettings,
        cancel: CancellationToken,
    ) -> Branches {
        let branches = Branches {
            platform,
            state_file,
            store,
            pods,
            pg_bindirs,
            settings: Arc::new(settings),
            state: Arc::new(tokio::sync::Mutex::new(state)),
            building: Arc::default(),
        };
        let reaper = branches.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REAP_INTERVAL);
            let mut swept: Option<std::time::Instant> = None;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {
                        if swept.is_none_or(|at| at.elapsed() >= SWEEP_INTERVAL) {
                            reaper.sweep_pods().await;
                            swept = Some(std::time::Instant::now());
                        }
                        reaper.reap().await;
                    }
                }
            }
        });
        branches
    }

    /// Keep the registry: in the store (only what changed since the last
    /// save; what fails is written again at the next), or in the state file.
    async fn save(&self, state: &mut State) {
        if let Some(store) = &self.store {
            let mut keys = std::collections::BTreeSet::new();
            for entry in &state.entries {
                let stored = entry.stored();
                keys.insert(stored.key.clone());
                let record = serde_json::to_string(&stored.record).unwrap_or_default();
                let before = state.stored.get(&stored.key);
                if before == Some(&record) {
                    continue;
                }
                let key = stored.key.clone();
                match store.put(stored, before.is_none()).await {
                    Ok(()) => {
                        state.stored.insert(key, record);
                    }
                    Err(e) => {
                        tracing::warn!(%key, error = %e, "cannot store a db branch; retrying")
                    }
                }
            }
            let gone: Vec<String> = state
                .stored
                .keys()
                .filter(|k| !keys.contains(*k))
                .cloned()
                .collect();
            for key in gone {
                match store.remove(key.clone()).await {
                    Ok(()) => {
                        state.stored.remove(&key);
                    }
                    Err(e) => {
                        tracing::warn!(%key, error = %e, "cannot forget a dropped db branch; retrying")
                    }
                }
            }
            return;
        }
        let Some(path) = &self.state_file else { return };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension("json.tmp");
            {
                use std::os::unix::fs::OpenOptionsExt;
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                let json = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
                std::io::Write::write_all(&mut file, &json)?;
            }
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            tracing::warn!(path = %path.display(), error = %e, "cannot save the db-branches state");
        }
    }

    fn dialer(
        &self,
        target: String,
    ) -> impl Fn(&str) -> std::process::Command + Send + Sync + 'static {
        let platform = self.platform.clone();
        move |program: &str| platform.dial(&target, program)
    }

    /// Drop what `entry` made: its pod, or its database (blocking, on a
    /// thread).
    async fn drop_entry(&self, entry: Entry) -> Result<(), String> {
        if let Some(handle) = entry.pod.clone() {
            let Some(pods) = &self.pods else {
                return Err(format!(
                    "{} is in the pod {handle}, and this operator makes no pods",
                    entry.info.branch
                ));
            };
            return pods.delete(handle).await;
        }
        let dial = self.dialer(entry.info.target.clone());
        tokio::task::spawn_blocking(move || entry.drop_blocking(&dial))
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
    }

    /// Delete the branch pod `handle` of a branch that failed.
    async fn delete_pod(&self, handle: Option<&str>) {
        if let (Some(handle), Some(pods)) = (handle, &self.pods)
            && let Err(e) = pods.delete(handle.to_owned()).await
        {
            tracing::warn!(%handle, error = %e, "cannot delete the pod of a failed db branch");
        }
    }

    /// Delete the branch pods no entry names (at start, and every
    /// [`SWEEP_INTERVAL`]): an operator stopped after creating a branch's
    /// pod and before recording the branch leaves one. Holding the registry,
    /// so no branch is being made meanwhile.
    async fn sweep_pods(&self) {
        let Some(pods) = &self.pods else { return };
        let state = self.state.lock().await;
        let keep = state.entries.iter().filter_map(|e| e.pod.clone()).collect();
        match pods.sweep(keep).await {
            Ok(gone) => {
                for handle in gone {
                    tracing::warn!(pod = %handle, "deleted a branch pod no db branch names (left by an operator stopped while making it)");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot look for orphaned branch pods; retrying"),
        }
    }

    fn building_now(&self) -> std::collections::HashSet<String> {
        self.building
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Drop every expired branch (and golden copy), except golden copies
    /// being made.
    async fn reap(&self) {
        let mut state = self.state.lock().await;
        let t = now();
        let building = self.building_now();
        let expired: Vec<Entry> = state
            .entries
            .iter()
            .filter(|e| e.info.expires_at <= t)
            .filter(|e| !building.contains(&golden_key(&e.info.branch, &e.server)))
            .cloned()
            .collect();
        if expired.is_empty() {
            if self.store.is_some() {
                // Writes that failed before are tried again.
                self.save(&mut state).await;
            }
            return;
        }
        for entry in expired {
            match self.drop_entry(entry.clone()).await {
                Ok(()) => {
                    tracing::info!(id = %entry.info.id, branch = %entry.info.branch, "db branch expired and dropped");
                    state
                        .entries
                        .retain(|e| e.info.branch != entry.info.branch || e.server != entry.server);
                }
                Err(e) => {
                    tracing::warn!(branch = %entry.info.branch, error = %e, "cannot drop an expired db branch; retrying")
                }
            }
        }
        self.save(&mut state).await;
    }

    /// Answer a [`DbRequest`] from `user`; `session` is where a `Branch`
    /// request comes from (none on a control connection).
    ///
    /// # Errors
    /// A user-facing [`RemoteError`].
    pub async fn handle(
        &self,
        request: DbRequest,
        user: &str,
        session: Option<SessionTarget<'_>>,
    ) -> Result<DbReply, RemoteError> {
        match request {
            DbRequest::Branch(specs) => {
                let session = session.ok_or_else(|| {
                    error(
                        ErrorCode::Unsupported,
                        "database branches need a session with a target",
                    )
                })?;
                self.branch(specs, user, session.target, session.env).await
            }
            DbRequest::List => {
                let state = self.state.lock().await;
                Ok(DbReply::Branches(
                    state
                        .entries
                        .iter()
                        .filter(|e| !e.golden)
                        .map(|e| e.info.clone())
                        .collect(),
                ))
            }
            DbRequest::Url { id } => {
                let state = self.state.lock().await;
                let entry = state
                    .entries
                    .iter()
                    .find(|e| !e.golden && e.info.id == id)
                    .ok_or_else(|| {
                        error(
                            ErrorCode::NotFound,
                            format!("no db branch {id:?} (see remora db ls)"),
                        )
                    })?;
                Ok(DbReply::Url(source::url_for(
                    &entry.server,
                    &entry.info.branch,
                )))
            }
            DbRequest::Remove { id } => {
                let mut state = self.state.lock().await;
                let entry = state
                    .entries
                    .iter()
                    .find(|e| !e.golden && e.info.id == id)
                    .cloned()
                    .ok_or_else(|| {
                        error(
                            ErrorCode::NotFound,
                            format!("no db branch {id:?} (see remora db ls)"),
                        )
                    })?;
                self.drop_entry(entry)
                    .await
                    .map_err(|e| error(ErrorCode::Unavailable, e))?;
                state.entries.retain(|e| e.info.id != id || e.golden);
                self.save(&mut state).await;
                Ok(DbReply::Removed)
            }
        }
    }

    async fn branch(
        &self,
        specs: Vec<BranchSpec>,
        user: &str,
        target: &ResolvedTarget,
        env: &BTreeMap<String, String>,
    ) -> Result<DbReply, RemoteError> {
        let mut state = self.state.lock().await;
        let mut made = Vec::new();
        let mut session_env = BTreeMap::new();
        for spec in specs {
            let src = source::resolve(&spec, env).map_err(|e| error(ErrorCode::InvalidInput, e))?;
            let t = now();
            let reuse = spec.id.as_ref().and_then(|id| {
                state
                    .entries
                    .iter_mut()
                    .find(|e| !e.golden && &e.info.id == id && e.info.expires_at > t)
            });
            if let Some(entry) = reuse {
                entry.info.expires_at = entry.info.expires_at.max(t + spec.ttl_secs);
                session_env.extend(entry.env.clone());
                made.push(BranchMade {
                    info: entry.info.clone(),
                    reused: true,
                    millis: 0,
                });
                continue;
            }
            let id = spec.id.clone().unwrap_or_else(random_id);
            let branch = branch_name(&spec.name, &id);
            let failed = |e: String| {
                error(
                    ErrorCode::Unavailable,
                    format!("db branch of {}: {e}", spec.name),
                )
            };
            let started = std::time::Instant::now();
            if spec.mode == CopyMode::All
                && spec.filters.is_empty()
                && let Some(fast) = self.settings.mariadb_backup(&src.server).cloned()
            {
                let (entry, vars) = self
                    .mariadb_backup_branch(
                        &mut state,
                        &fast,
                        &src,
                        id,
                        user,
                        target,
                        t,
                        spec.ttl_secs,
                    )
                    .await
                    .map_err(failed)?;
                let millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                tracing::info!(id = %entry.info.id, millis, method = %entry.info.method, "db branch made");
                session_env.extend(vars);
                made.push(BranchMade {
                    info: entry.info.clone(),
                    reused: false,
                    millis,
                });
                state.entries.push(entry);
                self.save(&mut state).await;
                continue;
            }
            // Where: reachable, versions, the right to create databases.
            let dial = self.dialer(target.name.clone());
            let (settings, pg_bindirs) = (self.settings.clone(), self.pg_bindirs.clone());
            let (server, source_db, branch_db) =
                (src.server.clone(), src.database.clone(), branch.clone());
            let mode = spec.mode;
            let pod_settings = self
                .pods
                .as_ref()
                .and_then(|_| self.settings.branch_pod(spec.kind).cloned());
            let pod = pod_settings.clone();
            let chosen = tokio::task::spawn_blocking(move || {
                choose_place(
                    &dial,
                    &settings,
                    &pg_bindirs,
                    &server,
                    &source_db,
                    &branch_db,
                    mode,
                    pod.as_ref(),
                )
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
            .map_err(failed)?;
            let (place, pod) = match chosen {
                Chosen::At(place) => (place, None),
                Chosen::Pod(plan) => {
                    let settings = pod_settings
                        .clone()
                        .ok_or_else(|| failed("no branch_pod".into()))?;
                    let (place, handle) = self
                        .branch_pod(plan, settings, &src, &branch, target)
                        .await
                        .map_err(failed)?;
                    (place, Some(handle))
                }
            };
            let vars = match source::rewritten(&src, &place.at, &branch) {
                Ok(vars) => vars,
                Err(e) => {
                    self.delete_pod(pod.as_deref()).await;
                    return Err(error(ErrorCode::InvalidInput, e));
                }
            };
            let golden = (spec.kind == DbKind::Postgres
                && spec.mode == CopyMode::All
                && spec.filters.is_empty()
                && pod.is_none())
            .then(|| {
                if place.at == src.server {
                    golden_name(&src.database)
                } else {
                    // One branch server may hold copies of several sources.
                    let from = format!("{}_{}_{}", src.database, src.server.host, src.server.port);
                    golden_name(&from)
                }
            });
            // A golden copy that is ready is cloned; without one, the
            // branch is filled directly (as fast as `pg_dump | psql`) and
            // the golden copy is made in the background for the next ones.
            let ready = golden.as_ref().is_some_and(|g| {
                state.entries.iter().any(|e| {
                    e.golden
                        && e.ready
                        && &e.info.branch == g
                        && e.server == place.at
                        && e.info.expires_at > t
                })
            });
            // The intent first: a branch recorded as expiring when it was
            // made, so that an operator stopped while it is being made
            // (after `CREATE DATABASE`, before the record below) leaves a
            // record its successor drops at once, not a leaked database.
            // A branch that fails keeps it too: the reaper drops what is
            // left at its next round (nothing, usually: `engine::create`
            // drops a half-made branch itself).
            let mut info = BranchInfo {
                id,
                kind: spec.kind,
                source: src.database.clone(),
                branch: branch.clone(),
                mode: spec.mode,
                owner: user.to_owned(),
                target: target.name.clone(),
                created_at: t,
                expires_at: t,
                method: "being made".to_owned(),
            };
            state.entries.push(Entry {
                info: info.clone(),
                server: place.at.clone(),
                env: vars.clone(),
                golden: false,
                ready: true,
                dir: None,
                pod: pod.clone(),
            });
            self.save(&mut state).await;
            let dial = self.dialer(target.name.clone());
            let (reader, at) = (place.reader.clone(), place.at.clone());
            let (source_db, branch_db, golden_db, mode, filters) = (
                src.database.clone(),
                branch.clone(),
                golden.clone().filter(|_| ready),
                spec.mode,
                spec.filters.clone(),
            );
            let (clients, jobs) = (place.clients.clone(), self.settings.jobs);
            let method = tokio::task::spawn_blocking(move || {
                let dial = |program: &str| match &clients {
                    Some(c) => dial(&c.program(program).to_string_lossy()),
                    None => dial(program),
                };
                let plan = engine::Plan {
                    reader: &reader,
                    source: &source_db,
                    at: &at,
                    branch: &branch_db,
                    mode,
                    filters: &filters,
                    golden: golden_db.as_deref(),
                    jobs,
                };
                engine::create(&dial, &plan)
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            let method = match method {
                Ok(method) => method,
                Err(e) => {
                    self.delete_pod(pod.as_deref()).await;
                    return Err(failed(e));
                }
            };
            let method = format!("{method}{}", place.note);
            let millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let method = match golden.filter(|_| !ready) {
                Some(g) => {
                    let made = golden::GoldenSource {
                        reader: place.reader.clone(),
                        source: src.database.clone(),
                        at: place.at.clone(),
                        clients: place.clients.clone(),
                        target: target.name.clone(),
                    };
                    self.make_golden_later(&mut state, g, made, t).await;
                    format!("{method} (the golden copy for the next branches is being made)")
                }
                None => method,
            };
            info.expires_at = t + spec.ttl_secs;
            info.method = method;
            session_env.extend(vars);
            tracing::info!(id = %info.id, branch = %info.branch, millis, method = %info.method, "db branch made");
            if let Some(entry) = state
                .entries
                .iter_mut()
                .rev()
                .find(|e| !e.golden && e.info.branch == info.branch && e.server == place.at)
            {
                entry.info = info.clone();
            }
            self.save(&mut state).await;
            made.push(BranchMade {
                info,
                reused: false,
                millis,
            });
        }
        self.save(&mut state).await;
        Ok(DbReply::Branched {
            branches: made,
            env: session_env,
        })
    }
}

impl Branches {
    /// Start a branch pod for `branch` and check its server's version: the
    /// place to fill, and the pod's handle. The pod is deleted again when
    /// the version does not match.
    async fn branch_pod(
        &self,
        plan: PodPlan,
        settings: settings::BranchPod,
        src: &source::Source,
        branch: &str,
        target: &ResolvedTarget,
    ) -> Result<(Place, String), String> {
        let pods = self
            .pods
            .clone()
            .ok_or("this operator makes no branch pods")?;
        let password = crate::token::random_token()?;
        let image = settings.image.clone();
        let kind = settings.kind;
        let made = pods
            .create(pods::PodRequest {
                name: store::key(branch, &src.server),
                branch: branch.to_owned(),
                settings,
                password: password.clone(),
            })
            .await?;
        let at = Server {
            kind,
            host: made.host.clone(),
            port: made.port,
            user: pods::superuser(kind).to_owned(),
            password: Some(password),
        };
        let dial = self.dialer(target.name.clone());
        let (source, at_check, clients) = (src.server.clone(), at.clone(), plan.clients.clone());
        let source_version = plan.source_version.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let dial = |program: &str| match &clients {
                Some(c) => dial(&c.program(program).to_string_lossy()),
                None => dial(program),
            };
            // Ready, but its Service may route to it a moment later.
            let mut tries = 0;
            let (version, _) = loop {
                match engine::version(&dial, &at_check, None) {
                    Ok(v) => break v,
                    Err(e) if tries >= 20 => return Err(format!("the branch pod: {e}")),
                    Err(_) => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(500));
                    }
                }
            };
            engine::check_versions(&source, &source_version, &at_check, &version)
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(e) = checked {
            let _ = pods.delete(made.handle.clone()).await;
            return Err(e);
        }
        Ok((
            Place {
                reader: plan.reader,
                at,
                clients: plan.clients,
                note: format!(", in its own pod {} (image {image})", made.handle),
            },
            made.handle,
        ))
    }

    /// The MariaDB fast path: a `mariadb-backup` golden copy of the source
    /// in `fast.workdir` (made again when older than [`GOLDEN_TTL_SECS`]),
    /// and the branch its reflinked copy served by its own `mariadbd`. The
    /// session's variables point at that server; the database keeps its name.
    #[allow(clippy::too_many_arguments)]
    async fn mariadb_backup_branch(
        &self,
        state: &mut State,
        fast: &settings::MariadbBackup,
        src: &source::Source,
        id: String,
        user: &str,
        target: &ResolvedTarget,
        t: u64,
        ttl_secs: u64,
    ) -> Result<(Entry, BTreeMap<String, String>), String> {
        let golden_name = golden_name(&format!(
            "{}_{}_{}",
            src.database, src.server.host, src.server.port
        ));
        let golden_dir = instance::path(&fast.workdir, &golden_name);
        let fresh = state
            .entries
            .iter()
            .any(|e| e.golden && e.dir.as_ref() == Some(&golden_dir) && e.info.expires_at > t);
        let branch_dir = instance::path(&fast.workdir, &branch_name(&src.database, &id));
        // The intent first (as in `branch`): what an operator stopped
        // meanwhile half made (the golden copy's and the branch's
        // directories, the branch's server) is removed by its successor,
        // and by the reaper when this fails.
        let intent = |golden: bool, dir: &std::path::Path| Entry {
            info: BranchInfo {
                id: if golden {
                    format!("golden:{golden_name}")
                } else {
                    id.clone()
                },
                kind: DbKind::Mysql,
                source: src.database.clone(),
                branch: if golden {
                    golden_name.clone()
                } else {
                    src.database.clone()
                },
                mode: CopyMode::All,
                owner: user.to_owned(),
                target: target.name.clone(),
                created_at: t,
                expires_at: t,
                method: "being made".to_owned(),
            },
            server: src.server.clone(),
            env: BTreeMap::new(),
            golden,
            ready: false,
            dir: Some(dir.to_path_buf()),
            pod: None,
        };
        if !fresh {
            state.entries.push(intent(true, &golden_dir));
        }
        state.entries.push(intent(false, &branch_dir));
        self.save(state).await;
        let dial = self.dialer(target.name.clone());
        let reader = self.settings.reader(&src.server);
        let (login, db) = (src.server.clone(), src.database.clone());
        let (g, b) = (golden_dir.clone(), branch_dir.clone());
        let port = tokio::task::spawn_blocking(move || {
            if !fresh {
                engine::version(&dial, &reader, Some(&db))?;
                std::fs::create_dir_all(g.parent().unwrap_or(&g))
                    .map_err(|e| format!("{}: {e}", g.display()))?;
                instance::backup(&dial, &reader, &db, &g)?;
            }
            instance::start(&dial, &g, &b, &login)
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()))?;
        // Made: the branch's intent is replaced by its entry (the caller's).
        state
            .entries
            .retain(|e| e.golden || e.dir.as_ref() != Some(&branch_dir));
        if !fresh {
            state
                .entries
                .retain(|e| !(e.golden && e.dir.as_ref() == Some(&golden_dir)));
            state.entries.push(Entry {
                info: BranchInfo {
                    id: format!("golden:{golden_name}"),
                    kind: DbKind::Mysql,
                    source: src.database.clone(),
                    branch: golden_name.clone(),
                    mode: CopyMode::All,
                    owner: "remora-operator".into(),
                    target: target.name.clone(),
                    created_at: t,
                    expires_at: t + GOLDEN_TTL_SECS,
                    method: "mariadb-backup".into(),
                },
                server: src.server.clone(),
                env: BTreeMap::new(),
                golden: true,
                ready: true,
                dir: Some(golden_dir.clone()),
                pod: None,
            });
        }
        let at = Server {
            host: "127.0.0.1".into(),
            port,
            ..src.server.clone()
        };
        let vars = match source::rewritten(src, &at, &src.database) {
            Ok(vars) => vars,
            Err(e) => {
                let dir = branch_dir.clone();
                let _ = tokio::task::spawn_blocking(move || instance::remove(&dir)).await;
                return Err(e);
            }
        };
        let refreshed = if fresh {
            ""
        } else {
            " (golden copy refreshed by mariadb-backup first)"
        };
        let info = BranchInfo {
            id,
            kind: DbKind::Mysql,
            source: src.database.clone(),
            branch: src.database.clone(),
            mode: CopyMode::All,
            owner: user.to_owned(),
            target: target.name.clone(),
            created_at: t,
            expires_at: t + ttl_secs,
            method: format!(
                "mariadb-backup golden copy, cp --reflink, own mariadbd on 127.0.0.1:{port}{refreshed}"
            ),
        };
        Ok((
            Entry {
                info,
                server: at,
                env: vars.clone(),
                golden: false,
                ready: true,
                dir: Some(branch_dir),
                pod: None,
            },
            vars,
        ))
    }
}

/// Where a new branch goes, and how the source is read.
#[derive(Debug, Clone)]
struct Place {
    /// The source's server with the credentials it is read with.
    reader: Server,
    /// The server the branch is made on.
    at: Server,
    /// PostgreSQL clients new enough for the source (none: the defaults).
    clients: Option<pg_clients::PgClients>,
    /// Said after the method when the branch is not on the source's server.
    note: String,
}

/// A branch goes to a server, or to a pod of its own.
#[derive(Debug)]
enum Chosen {
    At(Place),
    Pod(PodPlan),
}

/// A branch pod's source, read as [`Place::reader`] says.
#[derive(Debug)]
struct PodPlan {
    reader: Server,
    clients: Option<pg_clients::PgClients>,
    source_version: String,
}

/// Decide where the branch `branch` of `source_db` on `source` goes: the
/// source's own server when its credentials may create databases, else
/// the configured branch server of the same version, else a branch pod
/// (`pod`: configured, and this platform makes them; with `always`, a pod
/// in any case). Blocking.
#[allow(clippy::too_many_arguments)]
fn choose_place(
    dial: engine::Dial<'_>,
    settings: &DbSettings,
    pg_bindirs: &[PathBuf],
    source: &Server,
    source_db: &str,
    branch: &str,
    mode: CopyMode,
    pod: Option<&settings::BranchPod>,
) -> Result<Chosen, String> {
    let reader = settings.reader(source);
    let (source_version, major) = engine::version(dial, &reader, Some(source_db))?;
    // PostgreSQL: the dump and restore clients must be at least the
    // server's version (an empty branch needs no dump).
    let clients = match major {
        Some(major) if mode != CopyMode::Empty => {
            Some(pg_clients::find(pg_bindirs, major, &source_version)?)
        }
        _ => None,
    };
    let dial_clients = |program: &str| match &clients {
        Some(c) => dial(&c.program(program).to_string_lossy()),
        None => dial(program),
    };
    let to_pod = |reader: Server, clients: Option<pg_clients::PgClients>| {
        Ok(Chosen::Pod(PodPlan {
            reader,
            clients,
            source_version: source_version.clone(),
        }))
    };
    if pod.is_some_and(|p| p.always) {
        return to_pod(reader, clients);
    }
    if engine::can_create(&dial_clients, source, source_db, branch)? {
        return Ok(Chosen::At(Place {
            reader,
            at: source.clone(),
            clients,
            note: String::new(),
        }));
    }
    if settings.branch_server(source.kind).is_none() && pod.is_some() {
        return to_pod(reader, clients);
    }
    let Some(at) = settings.branch_server(source.kind) else {
        return Err(format!(
            "{} may not create databases on {}:{} (grant it CREATEDB, or configure a \
             branch_server in the operator's --db-config)",
            source.user, source.host, source.port
        ));
    };
    let (branch_version, _) =
        engine::version(&dial_clients, at, None).map_err(|e| format!("the branch server: {e}"))?;
    engine::check_versions(source, &source_version, at, &branch_version)?;
    Ok(Chosen::At(Place {
        reader,
        at: at.clone(),
        clients,
        note: format!(
            ", on the branch server {}:{} ({} may not create databases on the source's server)",
            at.host, at.port, source.user
        ),
    }))
}

#[cfg(test)]
mod tests;
