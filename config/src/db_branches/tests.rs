use super::*;

#[test]
fn ttls_parse_with_units() {
    assert_eq!(parse_ttl("90s"), Ok(90));
    assert_eq!(parse_ttl("30m"), Ok(1800));
    assert_eq!(parse_ttl("2h"), Ok(7200));
    assert_eq!(parse_ttl("1d"), Ok(86400));
    assert_eq!(parse_ttl("45"), Ok(45));
    assert!(parse_ttl("0s").is_err());
    assert!(parse_ttl("3w").unwrap_err().contains("unit"));
    assert!(parse_ttl("soon").is_err());
}

#[test]
fn bad_entries_are_named_by_key() {
    let config: crate::Config = toml::from_str(
        r#"
        [[db_branches]]
        type = "postgres"
        name = "shop"
        ttl = "3w"
        connection = { url = { env = "DATABASE-URL" } }
        copy = { mode = "empty", tables = { users = { filter = "WHERE id = 1" } } }

        [[db_branches]]
        type = "mysql"
        name = "shop"
        connection = { params = { host = { env = "DB_HOST" } } }
        "#,
    )
    .unwrap();
    let message = config.validate().unwrap_err().to_string();
    for needle in [
        "db_branches[0].ttl",
        "db_branches[0].connection.url.env",
        "db_branches[0].copy.tables.users.filter",
        "db_branches[1].connection.params.database",
    ] {
        assert!(message.contains(needle), "{needle} missing in {message}");
    }
}

#[test]
fn a_good_entry_validates() {
    let config: crate::Config = toml::from_str(
        r#"
        [[db_branches]]
        type = "postgres"
        name = "shop"
        connection = { url = { env = "DATABASE_URL" } }
        copy = { mode = "schema", tables = { users = { filter = "WHERE org_id = 7" } } }
        ttl = "30m"
        id = "alice-migration"
        "#,
    )
    .unwrap();
    config.validate().unwrap();
    assert_eq!(config.db_branches[0].ttl_secs(), 1800);
}
