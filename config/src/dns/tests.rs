//! Tests for DNS name patterns and the DNS policy.

use super::*;
use crate::DnsFilter;

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn policy(remote: &[&str], local: &[&str]) -> DnsPolicy {
    DnsPolicy::new(&DnsConfig {
        enabled: true,
        filter: DnsFilter {
            remote: strings(remote),
            local: strings(local),
        },
    })
    .unwrap()
}

#[test]
fn everything_is_remote_by_default() {
    let p = DnsPolicy::new(&DnsConfig::default()).unwrap();
    assert_eq!(p.decide("db"), Route::Remote);
    assert_eq!(p.decide("example.com"), Route::Remote);
}

#[test]
fn disabled_is_local() {
    let p = DnsPolicy::new(&DnsConfig {
        enabled: false,
        filter: DnsFilter::default(),
    })
    .unwrap();
    assert_eq!(p.decide("db"), Route::Local);
}

#[test]
fn remote_list_selects_exact_and_suffix_names() {
    let p = policy(&["db", "*.svc.cluster.local"], &[]);
    assert_eq!(p.decide("db"), Route::Remote);
    assert_eq!(p.decide("DB."), Route::Remote);
    assert_eq!(p.decide("api.ns.svc.cluster.local"), Route::Remote);
    assert_eq!(p.decide("api.ns.SVC.cluster.local."), Route::Remote);
    assert_eq!(p.decide("svc.cluster.local"), Route::Local);
    assert_eq!(p.decide("db2"), Route::Local);
    assert_eq!(p.decide("example.com"), Route::Local);
}

#[test]
fn local_list_keeps_names_local() {
    let p = policy(&[], &["*.corp.example", "localhost"]);
    assert_eq!(p.decide("git.corp.example"), Route::Local);
    assert_eq!(p.decide("localhost"), Route::Local);
    assert_eq!(p.decide("db"), Route::Remote);
}

#[test]
fn invalid_names_and_both_lists_are_reported() {
    let err = DnsPolicy::new(&DnsConfig {
        enabled: true,
        filter: DnsFilter {
            remote: strings(&["db"]),
            local: strings(&["ok", "bad name"]),
        },
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("network.dns.filter.local[1]: invalid name \"bad name\""),
        "{err}"
    );
    assert!(
        err.contains("network.dns.filter: set either remote or local, not both"),
        "{err}"
    );
}
