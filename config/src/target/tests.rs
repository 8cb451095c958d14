//! Tests for target parsing and canonical display.

use super::*;

fn err(s: &str) -> String {
    s.parse::<Target>().expect_err(s).to_string()
}

#[test]
fn valid_targets_parse_and_print_back() {
    let cases = [
        ("pid/4242", Target::Pid(4242)),
        ("targetless", Target::Targetless),
        (
            "pod/api-7f9c",
            Target::Pod {
                name: "api-7f9c".into(),
                container: None,
            },
        ),
        (
            "pod/api/container/app",
            Target::Pod {
                name: "api".into(),
                container: Some("app".into()),
            },
        ),
        (
            "deployment/api",
            Target::Deployment {
                name: "api".into(),
                container: None,
            },
        ),
        (
            "deployment/api/container/app",
            Target::Deployment {
                name: "api".into(),
                container: Some("app".into()),
            },
        ),
        (
            "statefulset/db.v2",
            Target::StatefulSet {
                name: "db.v2".into(),
                container: None,
            },
        ),
        (
            "job/migrate/container/main",
            Target::Job {
                name: "migrate".into(),
                container: Some("main".into()),
            },
        ),
        (
            "rollout/web",
            Target::Rollout {
                name: "web".into(),
                container: None,
            },
        ),
        (
            "replicaset/web-5d8f",
            Target::ReplicaSet {
                name: "web-5d8f".into(),
                container: None,
            },
        ),
        (
            "cronjob/nightly/container/main",
            Target::CronJob {
                name: "nightly".into(),
                container: Some("main".into()),
            },
        ),
        (
            "service/web",
            Target::Service {
                name: "web".into(),
                container: None,
            },
        ),
    ];
    for (text, want) in cases {
        let got: Target = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(got, want, "{text}");
        assert_eq!(got.to_string(), text);
    }
}

#[test]
fn unknown_kind_lists_the_forms() {
    let msg = err("pode/x");
    assert!(
        msg.starts_with("target: unknown target kind \"pode\""),
        "{msg}"
    );
    assert!(
        msg.contains("pid/<PID>") && msg.contains("targetless"),
        "{msg}"
    );
}

#[test]
fn invalid_forms_say_what_is_wrong() {
    let cases = [
        ("", "empty target"),
        ("pid/abc", "invalid PID \"abc\""),
        ("pid/0", "invalid PID \"0\""),
        ("pid/-1", "invalid PID"),
        ("pid/1/container/x", "expected pid/<PID>"),
        ("pod", "expected pod/<name>[/container/<c>]"),
        ("pod/", "the name is empty"),
        ("pod/api/container", "expected pod/<name>[/container/<c>]"),
        ("pod/api/sidecar/x", "expected pod/<name>[/container/<c>]"),
        ("deployment/API", "invalid deployment name \"API\""),
        ("deployment/-api", "must start and end"),
        (
            "deployment/a..b",
            "each dot-separated part must start and end",
        ),
        (
            "statefulset/a.-b",
            "each dot-separated part must start and end",
        ),
        ("pod/api/container/a.b", "invalid container name \"a.b\""),
        ("targetless/x", "takes no name"),
        ("Pod/api", "unknown target kind \"Pod\""),
    ];
    for (text, want) in cases {
        let msg = err(text);
        assert!(msg.starts_with("target: "), "{text}: {msg}");
        assert!(msg.contains(want), "{text}: {msg}");
    }
}

#[test]
fn serde_uses_the_canonical_string() {
    let target = Target::Deployment {
        name: "api".into(),
        container: Some("app".into()),
    };
    let json = serde_json::to_string(&target).unwrap();
    assert_eq!(json, "\"deployment/api/container/app\"");
    assert_eq!(serde_json::from_str::<Target>(&json).unwrap(), target);
    assert!(serde_json::from_str::<Target>("\"pode/x\"").is_err());
}

#[test]
fn unset_target_is_targetless() {
    assert_eq!(Config::default().target().unwrap(), Target::Targetless);
}

#[test]
fn kubectl_short_and_plural_names_print_back_canonically() {
    for (given, canonical) in [
        ("deploy/api", "deployment/api"),
        ("pods/api-1/container/app", "pod/api-1/container/app"),
        ("sts/db", "statefulset/db"),
        ("rs/web-5d8f", "replicaset/web-5d8f"),
        ("cj/nightly", "cronjob/nightly"),
        ("svc/web", "service/web"),
        ("ro/canary", "rollout/canary"),
    ] {
        let target: Target = given.parse().unwrap_or_else(|e| panic!("{given}: {e}"));
        assert_eq!(target.to_string(), canonical);
        assert!(target.is_kubernetes());
    }
    assert!(!Target::Pid(1).is_kubernetes());
}
