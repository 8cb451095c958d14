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
        rewritten(&src.rewrite, "remora_shop_x")["DATABASE_URL"],
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
        rewritten(&src.rewrite, "b"),
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
