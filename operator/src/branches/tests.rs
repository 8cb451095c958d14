use super::source::{parse_url, resolve, rewritten};
use super::*;
use remora_protocol::db::DbConnection;

fn spec(connection: DbConnection) -> BranchSpec {
    BranchSpec {
        kind: DbKind::Postgres,
        name: "shop".into(),
        connection,
        mode: CopyMode::Schema,
        filters: BTreeMap::new(),
        ttl_secs: 60,
        id: None,
    }
}

#[test]
fn urls_parse_and_rewrite_only_the_database() {
    let url = parse_url("postgres://alice:p%40ss@db.internal:6432/shop?sslmode=disable").unwrap();
    assert_eq!(url.host, "db.internal");
    assert_eq!(url.port, Some(6432));
    assert_eq!(url.user.as_deref(), Some("alice"));
    assert_eq!(url.password.as_deref(), Some("p@ss"));
    assert_eq!(url.database, "shop");
    let env = BTreeMap::from([(
        "DATABASE_URL".to_owned(),
        "postgres://alice:p%40ss@db.internal:6432/shop?sslmode=disable".to_owned(),
    )]);
    let src = resolve(
        &spec(DbConnection::Url {
            env: "DATABASE_URL".into(),
        }),
        &env,
    )
    .unwrap();
    assert_eq!(
        rewritten(&src, &src.server, "remora_shop_x").unwrap()["DATABASE_URL"],
        "postgres://alice:p%40ss@db.internal:6432/remora_shop_x?sslmode=disable"
    );
    assert!(parse_url("postgres://host:5432").is_err());
}

#[test]
fn an_unknown_variable_is_named() {
    let err = resolve(
        &spec(DbConnection::Url {
            env: "NOPE_URL".into(),
        }),
        &BTreeMap::new(),
    )
    .unwrap_err();
    assert!(err.contains("NOPE_URL"), "{err}");
}

#[test]
fn params_rewrite_the_database_variable() {
    let env = BTreeMap::from([
        ("DB_HOST".to_owned(), "10.0.0.5".to_owned()),
        ("DB_NAME".to_owned(), "shop".to_owned()),
    ]);
    let src = resolve(
        &spec(DbConnection::Params {
            host: Some("DB_HOST".into()),
            port: None,
            user: None,
            password: None,
            database: Some("DB_NAME".into()),
        }),
        &env,
    )
    .unwrap();
    assert_eq!(src.server.host, "10.0.0.5");
    assert_eq!(src.server.port, 5432);
    assert_eq!(
        rewritten(&src, &src.server, "b").unwrap(),
        BTreeMap::from([("DB_NAME".to_owned(), "b".to_owned())])
    );
}

#[test]
fn branch_names_are_safe_identifiers() {
    assert_eq!(
        branch_name("shop", "Alice-Migration"),
        "remora_shop_alice_migration"
    );
    assert!(branch_name(&"x".repeat(40), &"y".repeat(40)).len() <= 63);
}

#[test]
fn pg_client_and_server_versions_parse() {
    use super::pg_clients::{parse_client_major, parse_server_major};
    assert_eq!(parse_client_major("pg_dump (PostgreSQL) 18.6"), Some(18));
    assert_eq!(
        parse_client_major("pg_dump (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"),
        Some(15)
    );
    assert_eq!(parse_client_major("pg_dump"), None);
    assert_eq!(parse_server_major("180006"), Some(18));
    assert_eq!(parse_server_major("150014\n"), Some(15));
    assert_eq!(parse_server_major("x"), None);
}

#[test]
fn the_oldest_client_at_least_the_servers_version_is_chosen() {
    use super::pg_clients::{PgClients, choose};
    let c = |major: u32| PgClients {
        dir: format!("/pg{major}/bin").into(),
        major,
    };
    let found = [c(18), c(15), c(16)];
    assert_eq!(choose(&found, 15), Some(c(15)));
    assert_eq!(choose(&found, 16), Some(c(16)));
    assert_eq!(choose(&found, 17), Some(c(18)));
    assert_eq!(choose(&found, 19), None);
}

#[test]
fn no_client_new_enough_names_both_versions_and_the_flag() {
    let err = super::pg_clients::find(&[], 99, "99.1").unwrap_err();
    assert!(err.contains("PostgreSQL 99.1"), "{err}");
    assert!(err.contains("pg_dump 99 or newer"), "{err}");
    assert!(err.contains("--pg-bindir"), "{err}");
}

fn server(kind: DbKind, host: &str, port: u16, user: &str, password: Option<&str>) -> Server {
    Server {
        kind,
        host: host.into(),
        port,
        user: user.into(),
        password: password.map(Into::into),
    }
}

#[test]
fn a_branch_server_rewrites_the_whole_url_and_keeps_the_query() {
    let env = BTreeMap::from([(
        "DATABASE_URL".to_owned(),
        "postgres://app:secret@db.internal:5432/shop?sslmode=disable".to_owned(),
    )]);
    let src = resolve(
        &spec(DbConnection::Url {
            env: "DATABASE_URL".into(),
        }),
        &env,
    )
    .unwrap();
    let at = server(
        DbKind::Postgres,
        "10.0.0.9",
        6543,
        "brancher",
        Some("p@ss word"),
    );
    assert_eq!(
        rewritten(&src, &at, "remora_shop_x").unwrap()["DATABASE_URL"],
        "postgres://brancher:p%40ss%20word@10.0.0.9:6543/remora_shop_x?sslmode=disable"
    );
}

#[test]
fn params_without_a_host_variable_cannot_point_at_another_host() {
    let env = BTreeMap::from([
        ("DB_NAME".to_owned(), "shop".to_owned()),
        ("DB_PORT".to_owned(), "5432".to_owned()),
    ]);
    let src = resolve(
        &spec(DbConnection::Params {
            host: None,
            port: Some("DB_PORT".into()),
            user: None,
            password: None,
            database: Some("DB_NAME".into()),
        }),
        &env,
    )
    .unwrap();
    // Same host, another port: the port variable is rewritten.
    let at = server(DbKind::Postgres, "127.0.0.1", 5433, "postgres", None);
    assert_eq!(
        rewritten(&src, &at, "b").unwrap(),
        BTreeMap::from([
            ("DB_NAME".to_owned(), "b".to_owned()),
            ("DB_PORT".to_owned(), "5433".to_owned()),
        ])
    );
    let elsewhere = server(DbKind::Postgres, "10.0.0.9", 5432, "postgres", None);
    let err = rewritten(&src, &elsewhere, "b").unwrap_err();
    assert!(err.contains("no host variable"), "{err}");
}

#[test]
fn release_series_compare_major_versions() {
    use super::engine::series;
    assert_eq!(
        series(DbKind::Postgres, "15.20 (Debian 15.20-0+deb12u1)"),
        "PostgreSQL 15"
    );
    assert_eq!(series(DbKind::Postgres, "18.1"), "PostgreSQL 18");
    assert_eq!(series(DbKind::Postgres, "9.6.24"), "PostgreSQL 9.6");
    assert_eq!(
        series(DbKind::Mysql, "10.11.19-MariaDB-0+deb12u1"),
        "MariaDB 10.11"
    );
    assert_eq!(series(DbKind::Mysql, "8.0.36"), "MySQL 8.0");
}

#[test]
fn a_version_mismatch_names_both_versions() {
    use super::engine::check_versions;
    let a = server(DbKind::Postgres, "127.0.0.1", 5432, "app", None);
    let b = server(DbKind::Postgres, "127.0.0.1", 5433, "brancher", None);
    assert!(check_versions(&a, "15.20 (Debian)", &b, "15.3").is_ok());
    let err = check_versions(&a, "15.20", &b, "18.1").unwrap_err();
    assert!(
        err.contains("127.0.0.1:5432 runs PostgreSQL 15.20"),
        "{err}"
    );
    assert!(err.contains("127.0.0.1:5433 runs PostgreSQL 18.1"), "{err}");
    assert!(err.contains("branch server of PostgreSQL 15"), "{err}");
    let m = server(DbKind::Mysql, "h", 3306, "root", None);
    let err = check_versions(&m, "10.11.19-MariaDB", &m, "11.4.2-MariaDB").unwrap_err();
    assert!(err.contains("MariaDB 10.11 (10.11.19-MariaDB)"), "{err}");
    assert!(err.contains("MariaDB 11.4 (11.4.2-MariaDB)"), "{err}");
    assert!(check_versions(&m, "10.11.19-MariaDB", &m, "8.0.36").is_err());
}

#[test]
fn db_settings_parse_branch_servers_roles_and_jobs() {
    use super::settings::DbSettings;
    let text = r#"
        dump_jobs = 3
        [[branch_server]]
        type = "postgres"
        url = "postgres://brancher:pw@10.0.0.9:6543/postgres"
        [[read_only_role]]
        type = "postgres"
        server = "10.0.0.5:5432"
        user = "reader"
        password_env = "READER_PW"
    "#;
    let env = |v: &str| (v == "READER_PW").then(|| "s3cret".to_owned());
    let s = DbSettings::parse(text, env).unwrap();
    assert_eq!(s.jobs, 3);
    let at = s.branch_server(DbKind::Postgres).unwrap();
    assert_eq!(
        (at.host.as_str(), at.port, at.user.as_str()),
        ("10.0.0.9", 6543, "brancher")
    );
    assert!(s.branch_server(DbKind::Mysql).is_none());
    let source = server(DbKind::Postgres, "10.0.0.5", 5432, "app", Some("x"));
    let reader = s.reader(&source);
    assert_eq!(
        (reader.user.as_str(), reader.password.as_deref()),
        ("reader", Some("s3cret"))
    );
    let other = server(DbKind::Postgres, "10.0.0.6", 5432, "app", None);
    assert_eq!(s.reader(&other), other);
    let err = DbSettings::parse(text, |_| None).unwrap_err();
    assert!(err.contains("READER_PW"), "{err}");
    assert!(DbSettings::parse("bogus = 1", |_| None).is_err());
    assert!(DbSettings::parse("dump_jobs = 0", |_| None).is_err());
}

#[test]
fn state_files_from_before_background_golden_copies_read_their_copies_as_ready() {
    let old = r#"{"entries": [{
        "info": {"id": "golden:remora_shop_golden", "kind": "Postgres", "source": "shop",
                 "branch": "remora_shop_golden", "mode": "All", "owner": "remora-operator",
                 "target": "pid/1", "created_at": 1, "expires_at": 2, "method": "m"},
        "server": {"kind": "Postgres", "host": "127.0.0.1", "port": 5432, "user": "postgres",
                   "password": null},
        "env": {}, "golden": true}]}"#;
    let state: State = serde_json::from_str(old).unwrap();
    assert!(state.entries[0].ready);
    let key = golden_key(&state.entries[0].info.branch, &state.entries[0].server);
    assert_eq!(key, "remora_shop_golden@127.0.0.1:5432");
}

/// A platform whose clients are never run (the tests below drop pods only).
#[derive(Debug)]
struct NoPlatform;

impl crate::platform::Platform for NoPlatform {
    fn name(&self) -> &'static str {
        "none"
    }
    fn resolve(&self, target: &str) -> crate::Result<ResolvedTarget> {
        Ok(ResolvedTarget {
            name: target.to_owned(),
        })
    }
    fn start_agent(
        &self,
        _: &ResolvedTarget,
    ) -> futures::future::BoxFuture<'static, crate::Result<crate::platform::StartedAgent>> {
        Box::pin(async { Err(crate::Error::Unsupported("no agents".into())) })
    }
    fn dial(&self, _: &str, _: &str) -> std::process::Command {
        std::process::Command::new("false")
    }
}

/// A store in memory, recording what it was asked.
#[derive(Debug, Default)]
struct MemoryStore {
    entries: std::sync::Mutex<BTreeMap<String, store::StoredBranch>>,
    calls: std::sync::Mutex<Vec<String>>,
}

impl store::BranchStore for Arc<MemoryStore> {
    fn load(
        &self,
    ) -> futures::future::BoxFuture<'static, Result<Vec<store::StoredBranch>, String>> {
        let all = self.entries.lock().unwrap().values().cloned().collect();
        Box::pin(async move { Ok(all) })
    }
    fn put(
        &self,
        branch: store::StoredBranch,
        new: bool,
    ) -> futures::future::BoxFuture<'static, Result<(), String>> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("put {} new={new}", branch.key));
        self.entries
            .lock()
            .unwrap()
            .insert(branch.key.clone(), branch);
        Box::pin(async { Ok(()) })
    }
    fn remove(&self, key: String) -> futures::future::BoxFuture<'static, Result<(), String>> {
        self.calls.lock().unwrap().push(format!("remove {key}"));
        self.entries.lock().unwrap().remove(&key);
        Box::pin(async { Ok(()) })
    }
}

/// Pods that are only deleted, recorded; and the pods that exist (for the
/// sweep).
#[derive(Debug, Default)]
struct DeletedPods(std::sync::Mutex<Vec<String>>, std::sync::Mutex<Vec<String>>);

impl pods::BranchPods for Arc<DeletedPods> {
    fn create(
        &self,
        _: pods::PodRequest,
    ) -> futures::future::BoxFuture<'static, Result<pods::PodMade, String>> {
        Box::pin(async { Err("not in this test".into()) })
    }
    fn delete(&self, handle: String) -> futures::future::BoxFuture<'static, Result<(), String>> {
        self.0.lock().unwrap().push(handle);
        Box::pin(async { Ok(()) })
    }
    fn sweep(
        &self,
        keep: Vec<String>,
    ) -> futures::future::BoxFuture<'static, Result<Vec<String>, String>> {
        let mut existing = self.1.lock().unwrap();
        let gone: Vec<String> = existing
            .iter()
            .filter(|h| !keep.contains(h))
            .cloned()
            .collect();
        existing.retain(|h| keep.contains(h));
        self.0.lock().unwrap().extend(gone.iter().cloned());
        Box::pin(async move { Ok(gone) })
    }
}

fn stored_entry(id: &str, pod: &str, expires_at: u64) -> store::StoredBranch {
    let entry = Entry {
        info: BranchInfo {
            id: id.into(),
            kind: DbKind::Postgres,
            source: "shop".into(),
            branch: branch_name("shop", id),
            mode: CopyMode::Schema,
            owner: "alice".into(),
            target: "deployment/shop".into(),
            created_at: now(),
            expires_at,
            method: "pg_dump --schema-only | psql".into(),
        },
        server: server(DbKind::Postgres, pod, 5432, "postgres", Some("pw")),
        env: BTreeMap::from([("DATABASE_URL".into(), format!("postgres://{pod}/x"))]),
        golden: false,
        ready: true,
        dir: None,
        pod: Some(format!("remora/{pod}")),
    };
    entry.stored()
}

/// Wait until `done`, at most a minute (then fail naming `what`).
async fn until(what: &str, done: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(60), "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_stored_registry_is_listed_after_a_restart_and_dropped_at_its_ttl() {
    let store = Arc::new(MemoryStore::default());
    for s in [
        stored_entry("kept", "pod-kept", now() + 600),
        stored_entry("gone", "pod-gone", now() + 2),
    ] {
        store.entries.lock().unwrap().insert(s.key.clone(), s);
    }
    let pods = Arc::new(DeletedPods::default());
    let cancel = CancellationToken::new();
    let branches = Branches::start_stored(
        Arc::new(NoPlatform),
        Arc::new(store.clone()),
        Some(Arc::new(pods.clone())),
        Vec::new(),
        DbSettings::default(),
        cancel.clone(),
    )
    .await
    .unwrap();
    let DbReply::Branches(listed) = branches.handle(DbRequest::List, "bob", None).await.unwrap()
    else {
        panic!("not a list")
    };
    let mut ids: Vec<&str> = listed.iter().map(|b| b.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["gone", "kept"]);
    // Loading writes nothing back.
    assert!(store.calls.lock().unwrap().is_empty());
    // The reaper deletes the expired one's pod and forgets it in the store.
    until("the expired pod deleted", || {
        !pods.0.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(*pods.0.lock().unwrap(), ["remora/pod-gone"]);
    let gone_key = stored_entry("gone", "pod-gone", 0).key;
    until("the expired entry removed from the store", || {
        store
            .calls
            .lock()
            .unwrap()
            .contains(&format!("remove {gone_key}"))
    })
    .await;
    assert_eq!(store.calls.lock().unwrap().len(), 1, "{:?}", store.calls);
    // `remora db rm` of the other: its pod deleted, forgotten too.
    branches
        .handle(DbRequest::Remove { id: "kept".into() }, "bob", None)
        .await
        .unwrap();
    assert_eq!(
        *pods.0.lock().unwrap(),
        ["remora/pod-gone", "remora/pod-kept"]
    );
    assert!(store.entries.lock().unwrap().is_empty());
    cancel.cancel();
}

/// At start the operator deletes the branch pods no stored branch names
/// (an operator stopped between creating a pod and recording its branch),
/// and keeps the others.
#[tokio::test]
async fn branch_pods_no_branch_names_are_swept_at_start() {
    let store = Arc::new(MemoryStore::default());
    let kept = stored_entry("kept", "pod-kept", now() + 600);
    store.entries.lock().unwrap().insert(kept.key.clone(), kept);
    let pods = Arc::new(DeletedPods::default());
    *pods.1.lock().unwrap() = vec!["remora/pod-kept".into(), "remora/pod-orphan".into()];
    let cancel = CancellationToken::new();
    let _branches = Branches::start_stored(
        Arc::new(NoPlatform),
        Arc::new(store.clone()),
        Some(Arc::new(pods.clone())),
        Vec::new(),
        DbSettings::default(),
        cancel.clone(),
    )
    .await
    .unwrap();
    until("the orphaned pod deleted", || {
        !pods.0.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(*pods.0.lock().unwrap(), ["remora/pod-orphan"]);
    assert_eq!(*pods.1.lock().unwrap(), ["remora/pod-kept"]);
    assert!(store.calls.lock().unwrap().is_empty());
    cancel.cancel();
}
