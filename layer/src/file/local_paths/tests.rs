//! Unit tests of the fast local-path answer: never local where the policy is not.

use super::{LOCAL_ROOTS, LocalPaths};
use remora_config::{Config, FsDecision, FsPolicy};
use std::ffi::CString;

fn fast(paths: &LocalPaths, path: &str) -> bool {
    let c = CString::new(path).unwrap();
    // SAFETY: a NUL-terminated string.
    unsafe { paths.certainly_local(c.as_ptr()) }
}

fn policy(prefixes: &[String]) -> FsPolicy {
    Config::default()
        .policies()
        .unwrap()
        .fs
        .with_local_prefixes(prefixes.to_vec())
}

/// Paths the fast answer must get right, both ways.
const CASES: &[&str] = &[
    "/tmp",
    "/tmp/",
    "/tmp/x",
    "/tmp/remora-bench-app-1/local.bin",
    "/usr/lib/os-release",
    "/proc/self/status",
    "/sys/fs/cgroup",
    "/dev/null",
    "/lib64/ld-linux-x86-64.so.2",
    "/bin/sh",
    "/sbin/ip",
    "/tmp/.X11-unix/X0",
    "/tmp/a..b/c.",
    "/tmp/..",
    "/tmp/../etc/shadow",
    "/tmp/x/../../etc/shadow",
    "/tmp//x",
    "/tmp/./x",
    "/tmpx/y",
    "/tm",
    "/etc/hosts",
    "/etc/passwd",
    "/srv/data/file",
    "/var/tmp/x",
    "/home/dev/project/src/main.rs",
    "/home/dev/project/../secret",
    "/home/dev/projectx/a",
    "/home/dev/project",
    "/verylongname/x",
    "//tmp/x",
    "/",
    "",
    "tmp/x",
    "./x",
];

#[test]
fn every_root_is_local_for_the_policy() {
    let policy = policy(&[]);
    for root in LOCAL_ROOTS {
        let root = std::str::from_utf8(root).unwrap();
        for path in [format!("/{root}"), format!("/{root}/a/b.c")] {
            assert_eq!(policy.decide(&path, false), FsDecision::Local, "{path}");
            assert_eq!(policy.decide(&path, true), FsDecision::Local, "{path}");
        }
    }
}

#[test]
fn local_only_where_the_policy_says_local() {
    let prefixes = vec!["/home/dev/project/".to_owned()];
    let policy = policy(&prefixes);
    let paths = LocalPaths::new(&Config::default().fs, &prefixes);
    for path in CASES {
        let expected = policy.decide(path, false) == FsDecision::Local
            && policy.decide(path, true) == FsDecision::Local;
        if fast(&paths, path) {
            assert!(expected, "{path}: fast says local, the policy does not");
        }
    }
}

#[test]
fn common_local_paths_are_answered_here() {
    let paths = LocalPaths::new(&Config::default().fs, &["/home/dev/project".to_owned()]);
    for path in [
        "/tmp/remora-bench-app-1/local.bin",
        "/usr/lib/os-release",
        "/proc/self/status",
        "/tmp/a..b/c.",
        "/tmp//x",
        "/home/dev/project",
        "/home/dev/project/src/main.rs",
    ] {
        assert!(fast(&paths, path), "{path}");
    }
    for path in [
        "/tmp/..",
        "/tmp/../etc/shadow",
        "/tmp/x/../../etc/shadow",
        "/home/dev/project/../secret",
        "/home/dev/projectx/a",
        "/etc/hosts",
        "/verylongname/x",
        "/tmpx/y",
        "//tmp/x",
        "",
        "tmp/x",
    ] {
        assert!(!fast(&paths, path), "{path}");
    }
}

#[test]
fn user_patterns_turn_it_off() {
    let mut fs = Config::default().fs;
    fs.not_found.push("^/tmp/secret".to_owned());
    let paths = LocalPaths::new(&fs, &[]);
    assert!(!fast(&paths, "/tmp/secret"));
    assert!(!fast(&paths, "/usr/lib/os-release"));
}

#[test]
fn unclean_prefixes_are_left_to_the_policy() {
    let paths = LocalPaths::new(
        &Config::default().fs,
        &[
            "/srv/./app".to_owned(),
            "relative".to_owned(),
            "/".to_owned(),
        ],
    );
    assert!(!fast(&paths, "/srv/./app/x"));
    assert!(!fast(&paths, "/etc/hosts"));
}
