//! Tests of resolver configuration and DNS error classification.

use super::*;

#[test]
fn resolv_conf_is_honoured_but_timeouts_are_capped() {
    let conf = ResolvConf::parse(
        Some(b"search svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5 timeout:9 attempts:4\n"),
        7,
    );
    assert_eq!(conf.generation, 7);
    assert_eq!(conf.opts.ndots, 5);
    assert_eq!(conf.opts.timeout, DNS_QUERY_TIMEOUT);
    assert_eq!(conf.opts.attempts, DNS_ATTEMPTS);
    assert_eq!(conf.config.search().len(), 2);
    assert_eq!(conf.config.name_servers()[0].ip.to_string(), "10.96.0.10");
}

#[test]
fn missing_or_serverless_resolv_conf_means_localhost() {
    for data in [None, Some(&b"search example.org\n"[..])] {
        let conf = ResolvConf::parse(data, 1);
        assert_eq!(conf.config.name_servers()[0].ip.to_string(), "127.0.0.1");
        assert_eq!(conf.opts.timeout, DNS_QUERY_TIMEOUT);
    }
}

#[test]
fn errors_are_classified_as_final_or_temporary() {
    let timeout = map_error("api", &NetError::Timeout);
    assert_eq!(timeout.code, ErrorCode::TemporaryNameFailure);
    assert!(timeout.message.contains("api"), "{timeout}");
    assert_eq!(not_found("api").code, ErrorCode::NameNotResolved);
}
