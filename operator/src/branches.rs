//! Database branches: private copies of a target's databases, made on the
//! source's own server (or a configured branch server of the same version)
//! when a session starts, reused by id, and dropped at
//! their TTL, also across operator restarts (state in `db-branches.json`
//! under `--state-dir`).
//!
//! * [`source`]: the connection read from the target's environment, and the
//!   session's variables rewritten to the branch.
//! * [`engine`]: the server clients that create, fill and drop databases.
//! * `golden`: PostgreSQL golden copies, made in the background after a
//!   source's first `all` branch, cloned by the next ones.
//! * [`settings`]: the operator's `--db-config`: branch servers for sources
//!   whose credentials may not create databases, read-only roles.

pub mod engine;
mod golden;
pub mod instance;
pub mod pg_clients;
pub mod settings;
pub mod source;

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
}

impl Entry {
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
        let branches = Branches {
            platform,
            state_file,
            pg_bindirs,
            settings: Arc::new(settings),
            state: Arc::new(tokio::sync::Mutex::new(state)),
            building: Arc::default(),
        };
        let reaper = branches.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REAP_INTERVAL);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => reaper.reap().await,
                }
            }
        });
        branches
    }

    fn save(&self, state: &State) {
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
            return;
        }
        for entry in expired {
            let dial = self.dialer(entry.info.target.clone());
            let gone = entry.clone();
            let dropped = tokio::task::spawn_blocking(move || gone.drop_blocking(&dial))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            match dropped {
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
        self.save(&state);
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
                let dial = self.dialer(entry.info.target.clone());
                tokio::task::spawn_blocking(move || entry.drop_blocking(&dial))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()))
                    .map_err(|e| error(ErrorCode::Unavailable, e))?;
                state.entries.retain(|e| e.info.id != id || e.golden);
                self.save(&state);
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
                self.save(&state);
                continue;
            }
            // Where: reachable, versions, the right to create databases.
            let dial = self.dialer(target.name.clone());
            let (settings, pg_bindirs) = (self.settings.clone(), self.pg_bindirs.clone());
            let (server, source_db, branch_db) =
                (src.server.clone(), src.database.clone(), branch.clone());
            let mode = spec.mode;
            let place = tokio::task::spawn_blocking(move || {
                choose_place(
                    &dial,
                    &settings,
                    &pg_bindirs,
                    &server,
                    &source_db,
                    &branch_db,
                    mode,
                )
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
            .map_err(failed)?;
            let vars = source::rewritten(&src, &place.at, &branch)
                .map_err(|e| error(ErrorCode::InvalidInput, e))?;
            let golden = (spec.kind == DbKind::Postgres
                && spec.mode == CopyMode::All
                && spec.filters.is_empty())
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
            .unwrap_or_else(|e| Err(e.to_string()))
            .map_err(failed)?;
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
                    self.make_golden_later(&mut state, g, made, t);
                    format!("{method} (the golden copy for the next branches is being made)")
                }
                None => method,
            };
            let info = BranchInfo {
                id,
                kind: spec.kind,
                source: src.database.clone(),
                branch: branch.clone(),
                mode: spec.mode,
                owner: user.to_owned(),
                target: target.name.clone(),
                created_at: t,
                expires_at: t + spec.ttl_secs,
                method,
            };
            session_env.extend(vars.clone());
            tracing::info!(id = %info.id, branch = %info.branch, millis, method = %info.method, "db branch made");
            state.entries.push(Entry {
                info: info.clone(),
                server: place.at.clone(),
                env: vars,
                golden: false,
                ready: true,
                dir: None,
            });
            self.save(&state);
            made.push(BranchMade {
                info,
                reused: false,
                millis,
            });
        }
        self.save(&state);
        Ok(DbReply::Branched {
            branches: made,
            env: session_env,
        })
    }
}

impl Branches {
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

/// Decide where the branch `branch` of `source_db` on `source` goes: the
/// source's own server when its credentials may create databases, else
/// the configured branch server of the same version. Blocking.
fn choose_place(
    dial: engine::Dial<'_>,
    settings: &DbSettings,
    pg_bindirs: &[PathBuf],
    source: &Server,
    source_db: &str,
    branch: &str,
    mode: CopyMode,
) -> Result<Place, String> {
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
    if engine::can_create(&dial_clients, source, source_db, branch)? {
        return Ok(Place {
            reader,
            at: source.clone(),
            clients,
            note: String::new(),
        });
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
    Ok(Place {
        reader,
        at: at.clone(),
        clients,
        note: format!(
            ", on the branch server {}:{} ({} may not create databases on the source's server)",
            at.host, at.port, source.user
        ),
    })
}

#[cfg(test)]
mod tests;
