//! Tests for what a session hands the debuggee.

use super::*;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn diff_lists_new_changed_and_imported_variables_and_the_removed_ones() {
    let prepared = Prepared {
        env: map(&[
            ("PATH", "/bin"),
            ("LANG", "C"),
            ("APP_SECRET", "s"),
            ("LD_PRELOAD", "/l.so"),
        ]),
        imported: vec!["LANG".into(), "APP_SECRET".into()],
        intproxy: "127.0.0.1:1".parse().unwrap(),
        target: "pid/1".into(),
        layer: "/l.so".into(),
        lifeline: {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            TcpStream::connect(listener.local_addr().unwrap()).unwrap()
        },
    };
    let local = map(&[("PATH", "/bin"), ("LANG", "C"), ("HOME", "/root")]);
    let (set, unset) = prepared.diff(&local);
    // LANG is unchanged but comes from the target: it is listed too.
    assert_eq!(
        set,
        map(&[("APP_SECRET", "s"), ("LANG", "C"), ("LD_PRELOAD", "/l.so")])
    );
    assert_eq!(unset, ["HOME"]);
}

#[test]
fn the_intproxy_keeps_its_heap_and_the_users_own_malloc_tunables_win() {
    assert_eq!(intproxy_tunables(None), INTPROXY_MALLOC_TUNABLES);
    assert_eq!(
        intproxy_tunables(Some(std::ffi::OsStr::new(""))),
        INTPROXY_MALLOC_TUNABLES
    );
    let own = "glibc.malloc.trim_threshold=0";
    assert_eq!(
        intproxy_tunables(Some(std::ffi::OsStr::new(own))),
        format!("{INTPROXY_MALLOC_TUNABLES}:{own}").as_str()
    );
}
