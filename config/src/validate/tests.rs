//! One test per kind of validation error: each names the key path and the fix.

use super::*;
use crate::{DnsFilter, OutgoingFilter};

fn invalid(config: &Config) -> String {
    config
        .validate()
        .expect_err("config should be invalid")
        .to_string()
}

fn assert_has(msg: &str, parts: &[&str]) {
    for part in parts {
        assert!(msg.contains(part), "missing {part:?} in:\n{msg}");
    }
}

fn with_incoming(incoming: IncomingConfig) -> Config {
    let mut config = Config::default();
    config.network.incoming = incoming;
    config
}

fn with_filter(filter: HttpFilter) -> Config {
    with_incoming(IncomingConfig {
        http_filter: Some(filter),
        ..IncomingConfig::default()
    })
}

#[test]
fn default_config_is_valid() {
    Config::default().validate().unwrap();
    let policies = Config::default().policies().unwrap();
    assert_eq!(policies.target, Target::Targetless);
}

#[test]
fn unknown_target_kind() {
    let config = Config {
        target: Some("pode/x".into()),
        ..Config::default()
    };
    assert_has(
        &invalid(&config),
        &[
            "target: unknown target kind \"pode\"",
            "expected pid/<PID>, pod/<name>",
            "targetless",
        ],
    );
}

#[test]
fn invalid_namespace() {
    let config = Config {
        namespace: Some("My_NS".into()),
        ..Config::default()
    };
    assert_has(
        &invalid(&config),
        &["namespace: invalid namespace \"My_NS\"", "RFC 1123"],
    );
}

#[test]
fn invalid_operator_address() {
    for (address, why) in [
        ("operator", "missing \":port\""),
        ("operator:0", "invalid port \"0\""),
        ("::1:8443", "in brackets"),
        ("[nope]:1", "not an IPv6 address"),
        ("bad host:1", "not a valid host name"),
    ] {
        let config = Config {
            operator: Some(address.into()),
            ..Config::default()
        };
        assert_has(
            &invalid(&config),
            &["operator: invalid address", why, "expected host:port"],
        );
    }
    for address in ["op.remora.svc:8443", "127.0.0.1:1", "[::1]:8443"] {
        let config = Config {
            operator: Some(address.into()),
            ..Config::default()
        };
        config
            .validate()
            .unwrap_or_else(|e| panic!("{address}: {e}"));
    }
}

#[test]
fn invalid_fs_regex_names_its_index() {
    let mut config = Config::default();
    config.fs.read_only = vec!["^/a".into(), "^/b".into(), "(".into()];
    assert_has(
        &invalid(&config),
        &["fs.read_only[2]: invalid regex \"(\": unclosed group"],
    );
}

#[test]
fn invalid_env_glob() {
    let mut config = Config::default();
    config.env.include = vec!["[".into()];
    assert_has(
        &invalid(&config),
        &["env.include[0]: invalid glob \"[\"", "use `*` and `?`"],
    );
}

#[test]
fn port_zero() {
    let config = with_incoming(IncomingConfig {
        ports: vec![80, 0],
        ..IncomingConfig::default()
    });
    assert_has(
        &invalid(&config),
        &["network.incoming.ports[1]: port 0 is not valid (use 1-65535)"],
    );
}

#[test]
fn port_mapping_zero_and_duplicates() {
    let config = with_incoming(IncomingConfig {
        port_mapping: vec![[0, 80], [8080, 80], [8080, 81], [9090, 80]],
        ..IncomingConfig::default()
    });
    assert_has(
        &invalid(&config),
        &[
            "network.incoming.port_mapping[0]: [0, 80]: port 0 is not valid",
            "network.incoming.port_mapping[2]: local port 8080 is already mapped by \
             port_mapping[1]",
            "network.incoming.port_mapping[3]: remote port 80 is already mapped by \
             port_mapping[1]",
        ],
    );
}

#[test]
fn http_filter_invalid_regex() {
    assert_has(
        &invalid(&with_filter(HttpFilter::header("("))),
        &["network.incoming.http_filter.header: invalid regex \"(\": unclosed group"],
    );
}

#[test]
fn http_filter_with_two_keys_at_one_level() {
    let filter = HttpFilter {
        path: Some("^/api".into()),
        ..HttpFilter::header("x-user: me")
    };
    assert_has(
        &invalid(&with_filter(filter)),
        &[
            "network.incoming.http_filter: set only one of header, path",
            "all_of",
        ],
    );
}

#[test]
fn http_filter_empty() {
    assert_has(
        &invalid(&with_filter(HttpFilter::default())),
        &["network.incoming.http_filter: empty filter (set one of header"],
    );
}

#[test]
fn http_filter_bad_method() {
    assert_has(
        &invalid(&with_filter(HttpFilter::method("GE T"))),
        &[
            "network.incoming.http_filter.method: invalid method \"GE T\"",
            "like GET or POST",
        ],
    );
}

#[test]
fn http_filter_nested_errors_name_the_path() {
    let filter = HttpFilter::any_of(vec![
        HttpFilter::method("GET"),
        HttpFilter::all_of(vec![
            HttpFilter::header("x-user: me"),
            HttpFilter::path("["),
        ]),
    ]);
    assert_has(
        &invalid(&with_filter(filter)),
        &["network.incoming.http_filter.any_of[1].all_of[1].path: invalid regex \"[\""],
    );
}

#[test]
fn outgoing_filter_both_lists() {
    let mut config = Config::default();
    config.network.outgoing.filter = OutgoingFilter {
        remote: vec!["db".into()],
        local: vec!["cache".into()],
    };
    assert_has(
        &invalid(&config),
        &["network.outgoing.filter: set either remote or local, not both"],
    );
}

#[test]
fn outgoing_filter_bad_entry() {
    let mut config = Config::default();
    config.network.outgoing.filter.local = vec!["ftp://x".into()];
    assert_has(
        &invalid(&config),
        &[
            "network.outgoing.filter.local[0]: invalid address \"ftp://x\"",
            "use tcp or udp",
        ],
    );
}

#[test]
fn dns_filter_both_lists() {
    let mut config = Config::default();
    config.network.dns.filter = DnsFilter {
        remote: vec!["db".into()],
        local: vec!["x".into()],
    };
    assert_has(
        &invalid(&config),
        &["network.dns.filter: set either remote or local, not both"],
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut config = Config {
        target: Some("nope".into()),
        ..Config::default()
    };
    config.fs.local = vec![")".into()];
    config.network.incoming.ports = vec![0];
    let msg = invalid(&config);
    assert_eq!(msg.lines().count(), 3, "{msg}");
    assert_has(
        &msg,
        &["target: ", "fs.local[0]: ", "network.incoming.ports[0]: "],
    );
}
