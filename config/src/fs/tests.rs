//! Tests for the file policy: built-in defaults, each user list, and their order.

use super::*;

fn policy(config: FsConfig) -> FsPolicy {
    FsPolicy::new(&config).unwrap()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

use FsDecision::{Local, NotFound, Remote, RemoteWrite};

#[test]
fn default_mode_reads_remote_and_writes_local() {
    let p = policy(FsConfig::default());
    assert_eq!(p.decide("/app/config.yaml", false), Remote);
    assert_eq!(p.decide("/app/config.yaml", true), Local);
    assert_eq!(p.decide("/etc/hosts", false), Remote);
    assert_eq!(p.decide("/etc/resolv.conf", false), Remote);
    assert_eq!(p.decide("/etc/hostname", false), Remote);
}

#[test]
fn modes_decide_unmatched_paths() {
    for (mode, read, write) in [
        (FsMode::Local, Local, Local),
        (FsMode::Read, Remote, Local),
        (FsMode::Write, Remote, RemoteWrite),
    ] {
        let p = policy(FsConfig {
            mode,
            ..FsConfig::default()
        });
        assert_eq!(p.decide("/srv/data", false), read, "{mode:?}");
        assert_eq!(p.decide("/srv/data", true), write, "{mode:?}");
    }
}

#[test]
fn built_in_paths_stay_local_even_in_write_mode() {
    let p = policy(FsConfig {
        mode: FsMode::Write,
        ..FsConfig::default()
    });
    for path in [
        "/proc/self/maps",
        "/proc",
        "/sys/fs/cgroup",
        "/dev/null",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2",
        "/opt/app/libfoo.so",
        "/opt/app/libfoo.so.1.2.3",
        "/usr/lib/python3.12/os.py",
        "/usr/lib64/libz.so",
        "/usr/local/lib/python3.11/site-packages/x.py",
        "/usr/share/zoneinfo/UTC",
        "/usr/bin/python3",
        "/bin/sh",
        "/sbin/ip",
        "/usr/sbin/nologin",
        "/usr/local/bin/node",
        "/etc/ld.so.cache",
        "/etc/ld.so.preload",
        "/etc/nsswitch.conf",
        "/etc/localtime",
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/ca-certificates/update.d",
        "/etc/alternatives/java",
        "/etc/passwd",
        "/etc/group",
        "/tmp/x.sock",
        "/var/tmp/cache",
        "/run/user/1000/bus",
        "/home/dev/.bashrc",
        "/home/dev/.cache/pip/x",
        "/root/.pyenv/versions/3.12/bin/python",
        "/srv/venv/lib/python3.12/site-packages/requests/api.py",
        "/usr/lib/python3/dist-packages/yaml/x.py",
        "/work/project/node_modules/left-pad/index.js",
        "/nix/store/abc-glibc/lib/libc.so.6",
        "/opt/homebrew/lib/x.dylib",
    ] {
        assert_eq!(p.decide(path, false), Local, "{path}");
        assert_eq!(p.decide(path, true), Local, "{path}");
    }
}

#[test]
fn built_in_patterns_are_anchored_to_whole_components() {
    let p = policy(FsConfig::default());
    for path in [
        "/procedures/x",
        "/devices",
        "/library/x",
        "/tmpfiles/x",
        "/home/dev/project/app.py",
        "/etc/passwd.d/x",
        "/app/libfoo.sox",
        "/etc/hosts",
    ] {
        assert_eq!(p.decide(path, false), Remote, "{path}");
    }
}

#[test]
fn each_user_list_applies() {
    let p = policy(FsConfig {
        mode: FsMode::Local,
        read_only: strings(&["^/app/config"]),
        read_write: strings(&["^/data/"]),
        local: strings(&[r"\.log$"]),
        not_found: strings(&["^/var/run/secrets"]),
    });
    assert_eq!(p.decide("/app/config/a.yaml", false), Remote);
    assert_eq!(p.decide("/app/config/a.yaml", true), Local);
    assert_eq!(p.decide("/data/db", false), Remote);
    assert_eq!(p.decide("/data/db", true), RemoteWrite);
    assert_eq!(p.decide("/data/app.log", true), Local);
    assert_eq!(p.decide("/var/run/secrets/token", false), NotFound);
    assert_eq!(p.decide("/var/run/secrets/token", true), NotFound);
    assert_eq!(
        p.decide("/srv/other", false),
        Local,
        "mode local for the rest"
    );
}

#[test]
fn precedence_is_not_found_local_read_write_read_only_defaults_mode() {
    let all = "^/x";
    let p = policy(FsConfig {
        not_found: strings(&["^/x/nf"]),
        local: strings(&["^/x/nf", "^/x/l"]),
        read_write: strings(&["^/x/nf", "^/x/l", "^/x/rw"]),
        read_only: strings(&[all, "^/tmp/ro"]),
        ..FsConfig::default()
    });
    assert_eq!(p.decide("/x/nf/a", true), NotFound);
    assert_eq!(p.decide("/x/l/a", true), Local);
    assert_eq!(p.decide("/x/rw/a", true), RemoteWrite);
    assert_eq!(p.decide("/x/ro/a", true), Local);
    assert_eq!(p.decide("/x/ro/a", false), Remote);
    // User lists beat the built-in default-local list.
    assert_eq!(p.decide("/tmp/ro/shared", false), Remote);
    assert_eq!(p.decide("/tmp/other", false), Local);
}

#[test]
fn runtime_local_prefixes_cover_themselves_and_below() {
    let p = policy(FsConfig {
        read_only: strings(&["^/work/app/conf"]),
        ..FsConfig::default()
    })
    .with_local_prefixes(strings(&["/work/app/", "/opt/bin"]));
    assert_eq!(p.decide("/work/app", false), Local);
    assert_eq!(p.decide("/work/app/src/main.py", false), Local);
    assert_eq!(p.decide("/opt/bin/tool", false), Local);
    assert_eq!(p.decide("/work/application", false), Remote);
    assert_eq!(p.decide("/opt/binary", false), Remote);
    // User lists still win over runtime prefixes.
    assert_eq!(p.decide("/work/app/conf/a", false), Remote);
}

#[test]
fn root_and_relative_prefixes_are_ignored() {
    let p = policy(FsConfig::default()).with_local_prefixes(strings(&["/", "//", "", "work"]));
    assert_eq!(p.decide("/app/config", false), Remote);
    assert_eq!(p.decide("/work/x", false), Remote);
}

#[test]
fn relative_paths_are_local_and_dots_are_resolved() {
    let p = policy(FsConfig::default());
    assert_eq!(p.decide("config.yaml", false), Local);
    assert_eq!(p.decide("./config.yaml", false), Local);
    assert_eq!(p.decide("/proc/../app/config", false), Remote);
    assert_eq!(p.decide("/app/../proc/self/maps", false), Local);
    assert_eq!(p.decide("//proc//self", false), Local);
    assert_eq!(p.decide("/app/./../tmp/x", false), Local);
}

#[test]
fn invalid_regexes_are_reported_with_index() {
    let err = FsPolicy::new(&FsConfig {
        read_only: strings(&["^/ok", "^/ok2", "("]),
        not_found: strings(&["[z-a]"]),
        ..FsConfig::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("fs.read_only[2]: invalid regex \"(\": unclosed group"),
        "{err}"
    );
    assert!(
        err.contains("fs.not_found[0]: invalid regex \"[z-a]\""),
        "{err}"
    );
}

#[test]
fn built_in_list_compiles() {
    for pattern in DEFAULT_LOCAL {
        regex::Regex::new(pattern).unwrap();
    }
}

mod default_local_equivalence {
    use super::super::{DEFAULT_LOCAL, default_local};
    use proptest::prelude::*;

    /// Path fragments that exercise every rule and its near misses.
    const FRAGMENTS: &[&str] = &[
        "proc",
        "sys",
        "dev",
        "lib",
        "lib64",
        "usr",
        "local",
        "share",
        "bin",
        "sbin",
        "etc",
        "ld.so.cache",
        "ld.so",
        "nsswitch.conf",
        "localtime",
        "ssl",
        "ca-certificates",
        "alternatives",
        "passwd",
        "group",
        "tmp",
        "var",
        "run",
        "user",
        "home",
        "root",
        "alice",
        ".bashrc",
        ".",
        "bash.bashrc",
        "profile",
        "profile.d",
        "inputrc",
        "environment",
        "gai.conf",
        "host.conf",
        "site-packages",
        "dist-packages",
        "node_modules",
        "nix",
        "store",
        "opt",
        "homebrew",
        "libc.so",
        "libc.so.6",
        "libfoo.so.1.2",
        "x.so.",
        "a.so.x",
        "so",
        "procx",
        "usrx",
        "checkout",
        "config.yaml",
        "srv",
        "app",
        "lib-x",
        "",
        "ld.so.",
    ];

    fn path() -> impl Strategy<Value = String> {
        proptest::collection::vec(proptest::sample::select(FRAGMENTS), 1..5)
            .prop_map(|parts| format!("/{}", parts.join("/")))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        #[test]
        fn fast_rules_agree_with_the_documented_regexes(path in path()) {
            let set = regex::RegexSet::new(DEFAULT_LOCAL).unwrap();
            prop_assert_eq!(default_local::matches(path.as_bytes()), set.is_match(&path), "{}", path);
        }
    }

    #[test]
    fn each_pattern_is_exercised() {
        for (pattern, path) in DEFAULT_LOCAL.iter().zip([
            "/proc/self/maps",
            "/sys",
            "/dev/null",
            "/x/libc.so.6",
            "/lib/x",
            "/lib64",
            "/usr/lib/x",
            "/usr/lib64",
            "/usr/local/lib/p",
            "/usr/share/zoneinfo",
            "/usr/include/x.h",
            "/bin/sh",
            "/sbin/ip",
            "/usr/bin/env",
            "/usr/sbin/x",
            "/usr/local/bin/x",
            "/etc/ld.so.cache",
            "/etc/nsswitch.conf",
            "/etc/localtime",
            "/etc/ssl/certs",
            "/etc/ca-certificates",
            "/etc/alternatives/x",
            "/etc/passwd",
            "/etc/group",
            "/tmp/x",
            "/var/tmp",
            "/run/user/0",
            "/home/alice/.bashrc",
            "/root/.cargo",
            "/home/alice",
            "/root",
            "/etc/profile",
            "/etc/profile.d/x.sh",
            "/etc/gai.conf",
            "/app/venv/lib/site-packages/x",
            "/usr/lib/python3/dist-packages",
            "/app/node_modules/x",
            "/nix/store/abc",
            "/opt/homebrew/bin",
        ]) {
            let re = regex::Regex::new(pattern).unwrap();
            assert!(re.is_match(path), "{pattern} should match {path}");
            assert!(
                default_local::matches(path.as_bytes()),
                "fast rules should match {path}"
            );
        }
    }
}

mod clean_paths {
    use super::super::is_clean;
    use proptest::prelude::*;

    /// The four substring checks the one-pass scan replaces.
    fn clean_by_substrings(path: &str) -> bool {
        !path.contains("//")
            && !path.contains("/./")
            && !path.contains("/..")
            && !path.ends_with("/.")
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        #[test]
        fn one_pass_scan_agrees_with_the_substring_checks(
            parts in proptest::collection::vec(
                proptest::sample::select(&["", ".", "..", "...", ".a", "a.", "a", "..b", "abcdefg", "x/y"][..]),
                0..9,
            ),
            lead in any::<bool>(),
        ) {
            let path = format!("{}{}", if lead { "/" } else { "" }, parts.join("/"));
            prop_assert_eq!(is_clean(path.as_bytes()), clean_by_substrings(&path), "{}", path);
        }
    }
}

#[test]
fn paths_are_decided_on_bytes_even_when_not_utf8() {
    let p = policy(FsConfig {
        not_found: strings(&[r"^/secret/"]),
        ..FsConfig::default()
    });
    // A C path need not be UTF-8: built-in rules, patterns and the mode still apply.
    assert_eq!(p.decide_bytes(b"/tmp/caf\xe9", false), Local);
    assert_eq!(p.decide_bytes(b"/secret/\xff", false), NotFound);
    assert_eq!(p.decide_bytes(b"/srv/\xff", false), Remote);
    // Dots and repeated slashes are resolved on bytes like on text.
    assert_eq!(p.decide_bytes(b"/srv/../tmp//x", true), Local);
    assert_eq!(p.decide_bytes(b"/tmp/../srv/./x", false), Remote);
    assert_eq!(p.decide_bytes(b"/tmp/..", false), Remote);
    for path in ["/app/config.yaml", "/srv//a/./b/../c", "/home/u/.x", "/"] {
        for write in [false, true] {
            assert_eq!(
                p.decide_bytes(path.as_bytes(), write),
                p.decide(path, write)
            );
        }
    }
}
