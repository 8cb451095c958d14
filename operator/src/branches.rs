//! Database branches: private copies of a target's databases, made on the
//! source's own server when a session starts, reused by id, and dropped at
//! their TTL, also across operator restarts (state in `db-branches.json`
//! under `--state-dir`).
//!
//! * [`source`]: the connection read from the target's environment, and the
//!   session's variables rewritten to the branch.
//! * [`engine`]: the server clients that create, fill and drop databases.

pub mod engine;
pub mod pg_clients;
pub mod source;

use crate::platform::{Platform, ResolvedTarget};
use remora_protocol::db::{
    BranchInfo, BranchMade, BranchSpec, CopyMode, DbKind, DbReply, DbRequest,
};
use remora_protocol::{ErrorCode, RemoteError};
use serde::{Deserialize, Serialize};
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
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    entries: Vec<Entry>,
}

/// The branch registry; cheap to clone.
#[derive(Debug, Clone)]
pub struct Branches {
    platform: Arc<dyn Platform>,
    state_file: Option<PathBuf>,
    /// Extra directories with PostgreSQL clients (`--pg-bindir`).
    pg_bindirs: Vec<PathBuf>,
    /// One database operation at a time: creating a branch from a golden
    /// copy must not race its refresh, and the state file has one writer.
    state: Arc<tokio::sync::Mutex<State>>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random_id() -> String {
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
            state: Arc::new(tokio::sync::Mutex::new(state)),
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

    /// Drop every expired branch (and golden copy).
    async fn reap(&self) {
        let mut state = self.state.lock().await;
        let t = now();
        let expired: Vec<Entry> = state
            .entries
            .iter()
            .filter(|e| e.info.expires_at <= t)
            .cloned()
            .collect();
        if expired.is_empty() {
            return;
        }
        for entry in expired {
            let dial = self.dialer(entry.info.target.clone());
            let server = entry.server.clone();
            let db = entry.info.branch.clone();
            let dropped =
                tokio::task::spawn_blocking(move || engine::drop_database(&dial, &server, &db))
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

    /// Answer a [`DbRequest`] from `user`; `target` is the session's (none
    /// on a control connection).
    ///
    /// # Errors
    /// A user-facing [`RemoteError`].
    pub async fn handle(
        &self,
        request: DbRequest,
        user: &str,
        target: Option<&ResolvedTarget>,
    ) -> Result<DbReply, RemoteError> {
        match request {
            DbRequest::Branch(specs) => {
                let target = target.ok_or_else(|| {
                    error(
                        ErrorCode::Unsupported,
                        "database branches need a session with a target",
                    )
                })?;
                self.branch(specs, user, target).await
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
                let (server, db) = (entry.server.clone(), entry.info.branch.clone());
                tokio::task::spawn_blocking(move || engine::drop_database(&dial, &server, &db))
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
    ) -> Result<DbReply, RemoteError> {
        let env = self
            .platform
            .target_env(target)
            .map_err(|e| error(ErrorCode::Unavailable, e.to_string()))?;
        let mut state = self.state.lock().await;
        let mut made = Vec::new();
        let mut session_env = BTreeMap::new();
        for spec in specs {
            let src =
                source::resolve(&spec, &env).map_err(|e| error(ErrorCode::InvalidInput, e))?;
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
            let golden = (spec.kind == DbKind::Postgres
                && spec.mode == CopyMode::All
                && spec.filters.is_empty())
            .then(|| golden_name(&src.database));
            let fresh = golden.as_ref().is_some_and(|g| {
                state.entries.iter().any(|e| {
                    e.golden
                        && &e.info.branch == g
                        && e.server == src.server
                        && e.info.expires_at > t
                })
            });
            let dial = self.dialer(target.name.clone());
            let server = src.server.clone();
            let (source_db, branch_db, golden_db, mode, filters) = (
                src.database.clone(),
                branch.clone(),
                golden.clone(),
                spec.mode,
                spec.filters.clone(),
            );
            let started = std::time::Instant::now();
            let pg_bindirs = self.pg_bindirs.clone();
            let method = tokio::task::spawn_blocking(move || {
                let (server_version, major) = engine::version(&dial, &server, &source_db)?;
                // PostgreSQL: the dump and restore clients must be at least
                // the server's version (an empty branch needs no dump).
                let clients = match major {
                    Some(major) if mode != CopyMode::Empty => {
                        Some(pg_clients::find(&pg_bindirs, major, &server_version)?)
                    }
                    _ => None,
                };
                let dial = |program: &str| match &clients {
                    Some(c) => dial(&c.program(program).to_string_lossy()),
                    None => dial(program),
                };
                let plan = engine::Plan {
                    source: &source_db,
                    branch: &branch_db,
                    mode,
                    filters: &filters,
                    golden: golden_db.as_deref().map(|g| (g, fresh)),
                };
                engine::create(&dial, &server, &plan)
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
            .map_err(|e| {
                error(
                    ErrorCode::Unavailable,
                    format!("db branch of {}: {e}", spec.name),
                )
            })?;
            let millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            if let Some(g) = golden.filter(|_| !fresh) {
                state
                    .entries
                    .retain(|e| !(e.golden && e.info.branch == g && e.server == src.server));
                state.entries.push(Entry {
                    info: BranchInfo {
                        id: format!("golden:{g}"),
                        kind: spec.kind,
                        source: src.database.clone(),
                        branch: g,
                        mode: CopyMode::All,
                        owner: "remora-operator".into(),
                        target: target.name.clone(),
                        created_at: t,
                        expires_at: t + GOLDEN_TTL_SECS,
                        method: "pg_dump | psql".into(),
                    },
                    server: src.server.clone(),
                    env: BTreeMap::new(),
                    golden: true,
                });
            }
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
            let vars = source::rewritten(&src.rewrite, &branch);
            session_env.extend(vars.clone());
            tracing::info!(id = %info.id, branch = %info.branch, millis, method = %info.method, "db branch made");
            state.entries.push(Entry {
                info: info.clone(),
                server: src.server.clone(),
                env: vars,
                golden: false,
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

#[cfg(test)]
mod tests;
