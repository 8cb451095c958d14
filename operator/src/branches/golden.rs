//! PostgreSQL golden copies made in the background: after the first `all`
//! branch of a source (filled directly), a full copy that later `all`
//! branches clone with `CREATE DATABASE … TEMPLATE … STRATEGY FILE_COPY`.

use super::{
    Branches, CopyMode, DbKind, Entry, GOLDEN_TTL_SECS, Server, State, engine, golden_key, now,
    pg_clients,
};
use remora_protocol::db::BranchInfo;
use std::collections::BTreeMap;

/// What a PostgreSQL golden copy is made from, and where.
#[derive(Debug, Clone)]
pub(super) struct GoldenSource {
    /// The source's server, with the credentials it is read with.
    pub(super) reader: Server,
    /// The source database.
    pub(super) source: String,
    /// Where the golden copy goes (where the branches are made).
    pub(super) at: Server,
    /// PostgreSQL clients new enough for the source.
    pub(super) clients: Option<pg_clients::PgClients>,
    /// The target whose network the clients run from.
    pub(super) target: String,
}

impl Branches {
    /// Make the golden copy `golden` of `from` in the background (unless it
    /// is being made already): registered at once as not ready (so that it
    /// is dropped at its TTL even if this operator stops meanwhile), ready
    /// once filled. `all` branches clone it from then on.
    pub(super) async fn make_golden_later(
        &self,
        state: &mut State,
        golden: String,
        from: GoldenSource,
        t: u64,
    ) {
        let key = golden_key(&golden, &from.at);
        if !self
            .building
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone())
        {
            return;
        }
        state
            .entries
            .retain(|e| !(e.golden && e.info.branch == golden && e.server == from.at));
        state.entries.push(Entry {
            info: BranchInfo {
                id: format!("golden:{golden}"),
                kind: DbKind::Postgres,
                source: from.source.clone(),
                branch: golden.clone(),
                mode: CopyMode::All,
                owner: "remora-operator".into(),
                target: from.target.clone(),
                created_at: t,
                expires_at: t + GOLDEN_TTL_SECS,
                method: "being made".into(),
            },
            server: from.at.clone(),
            env: BTreeMap::new(),
            golden: true,
            ready: false,
            dir: None,
            pod: None,
        });
        self.save(state).await;
        let this = self.clone();
        tokio::spawn(async move {
            let dial = this.dialer(from.target.clone());
            let (g, f, jobs) = (golden.clone(), from.clone(), this.settings.jobs);
            let started = std::time::Instant::now();
            let made = tokio::task::spawn_blocking(move || {
                let dial = |program: &str| match &f.clients {
                    Some(c) => dial(&c.program(program).to_string_lossy()),
                    None => dial(program),
                };
                let plan = engine::Plan {
                    reader: &f.reader,
                    source: &f.source,
                    at: &f.at,
                    branch: &g,
                    mode: CopyMode::All,
                    filters: &BTreeMap::new(),
                    golden: None,
                    jobs,
                };
                engine::make_golden(&dial, &plan, &g)
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            let mut state = this.state.lock().await;
            let mine = |e: &Entry| e.golden && e.info.branch == golden && e.server == from.at;
            match made {
                Ok(method) => {
                    let millis = started.elapsed().as_millis();
                    tracing::info!(%golden, millis, %method, "golden copy ready");
                    if let Some(entry) = state.entries.iter_mut().find(|e| mine(e)) {
                        entry.ready = true;
                        entry.info.expires_at = now() + GOLDEN_TTL_SECS;
                        entry.info.method = method;
                    }
                }
                Err(e) => {
                    tracing::warn!(%golden, error = %e, "cannot make the golden copy; branches are filled directly");
                    state.entries.retain(|e| !mine(e));
                }
            }
            this.building
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            this.save(&mut state).await;
        });
    }
}
