use super::*;
use std::net::SocketAddr;

const ISSUE_EXAMPLE: &str = r#"
[[policy]]
targets = ["pid/*", "deployment/payments*"]
block = ["steal-without-filter"]
require_header_filter = "^x-user: .+$"
env_exclude = ["DB_PASSWORD", "AWS_*"]
fs_not_found = ["^/var/run/secrets/"]
outgoing_block = ["10.0.0.0/8:5432"]

[[policy]]
targets = ["pid/7"]
block = ["mirror", "override", "outgoing"]
"#;

fn parse(text: &str) -> Policies {
    Policies::parse(text, Path::new("/etc/remora/policy.toml")).unwrap()
}

fn steal<'a>(target: &'a str, filter: Option<&'a HttpFilter>) -> SubscribeCheck<'a> {
    SubscribeCheck {
        target,
        port: 8080,
        mode: IncomingMode::Steal,
        filter,
        take_over: false,
    }
}

#[test]
fn the_issue_example_parses() {
    let p = parse(ISSUE_EXAMPLE);
    assert_eq!(p.len(), 2);
}

#[test]
fn unknown_keys_and_bad_values_are_refused_with_the_policy_index() {
    let path = Path::new("p.toml");
    let err = Policies::parse("[[policy]]\ntargets=[\"*\"]\nblok=[]\n", path).unwrap_err();
    assert!(err.contains("blok"), "{err}");
    let err = Policies::parse("[[policy]]\ntargets=[\"*\"]\nblock=[\"fly\"]\n", path).unwrap_err();
    assert!(err.contains("fly"), "{err}");
    let text = "[[policy]]\ntargets=[\"*\"]\n[[policy]]\ntargets=[\"*\"]\nfs_not_found=[\"(\"]\n";
    let err = Policies::parse(text, path).unwrap_err();
    assert!(
        err.starts_with("policy #2 in p.toml: fs_not_found"),
        "{err}"
    );
    let err = Policies::parse("[[policy]]\ntargets=[]\n", path).unwrap_err();
    assert!(err.contains("targets is empty"), "{err}");
    let err = Policies::parse(
        "[[policy]]\ntargets=[\"*\"]\noutgoing_block=[\"db:99999\"]\n",
        path,
    )
    .unwrap_err();
    assert!(err.contains("invalid port"), "{err}");
}

#[test]
fn blocks_name_the_policy_and_what_they_refused() {
    let p = parse(ISSUE_EXAMPLE);
    let err = p.check_subscribe(&steal("pid/42", None)).unwrap_err();
    assert_eq!(
        err,
        "stealing port 8080 on pid/42 without an HTTP filter is blocked by policy #1 in \
         /etc/remora/policy.toml (block = [\"steal-without-filter\"])"
    );
    let mirror = SubscribeCheck {
        mode: IncomingMode::Mirror,
        filter: Some(&HttpFilter::Header("^x-user: a$".into())),
        ..steal("pid/7", None)
    };
    let err = p.check_subscribe(&mirror).unwrap_err();
    assert!(
        err.contains("policy #2") && err.contains("\"mirror\""),
        "{err}"
    );
    // Targets no policy names are free.
    assert!(p.check_subscribe(&steal("deployment/api", None)).is_ok());
}

#[test]
fn override_can_be_forbidden() {
    let p = parse(ISSUE_EXAMPLE);
    let filter = HttpFilter::Header("^x-user: bob$".into());
    let mut check = steal("pid/7", Some(&filter));
    assert!(p.check_subscribe(&check).is_ok());
    check.take_over = true;
    let err = p.check_subscribe(&check).unwrap_err();
    assert!(
        err.contains("taking over port 8080 on pid/7") && err.contains("override"),
        "{err}"
    );
}

#[test]
fn require_header_filter_strips_anchors_and_ignores_case() {
    let p = parse(ISSUE_EXAMPLE);
    let ok = |f: HttpFilter| p.check_subscribe(&steal("pid/42", Some(&f))).is_ok();
    assert!(ok(HttpFilter::Header("^x-user: alice$".into())));
    assert!(ok(HttpFilter::Header("X-User: alice".into())));
    assert!(ok(HttpFilter::AllOf(vec![
        HttpFilter::Path("^/api".into()),
        HttpFilter::Header("^x-user: bob$".into()),
    ])));
    assert!(!ok(HttpFilter::Header("^x-team: payments$".into())));
    assert!(!ok(HttpFilter::Path("^/api".into())));
    // An any_of could take requests without the header: not enough.
    assert!(!ok(HttpFilter::AnyOf(vec![
        HttpFilter::Header("^x-user: bob$".into()),
        HttpFilter::Path("/".into()),
    ])));
    let err = p
        .check_subscribe(&steal("pid/42", Some(&HttpFilter::Path("/".into()))))
        .unwrap_err();
    assert!(
        err.contains("needs a header filter matching \"^x-user: .+$\"")
            && err.contains("require_header_filter of policy #1"),
        "{err}"
    );
}

#[test]
fn outgoing_blocks_match_cidr_and_port() {
    let p = parse(ISSUE_EXAMPLE);
    let ip = |s: &str| RemoteAddr::Ip(s.parse::<SocketAddr>().unwrap());
    let err = p
        .check_outgoing("pid/42", &ip("10.1.2.3:5432"), &[])
        .unwrap_err();
    assert!(
        err.contains("10.1.2.3:5432")
            && err.contains("policy #1")
            && err.contains("10.0.0.0/8:5432"),
        "{err}"
    );
    assert!(p.check_outgoing("pid/42", &ip("10.1.2.3:80"), &[]).is_ok());
    assert!(
        p.check_outgoing("pid/42", &ip("11.1.2.3:5432"), &[])
            .is_ok()
    );
    // IPv4-mapped IPv6 is the same destination.
    assert!(
        p.check_outgoing("pid/42", &ip("[::ffff:10.0.0.1]:5432"), &[])
            .is_err()
    );
    // block = ["outgoing"] refuses everything.
    let err = p
        .check_outgoing("pid/7", &ip("127.0.0.1:80"), &[])
        .unwrap_err();
    assert!(err.contains("\"outgoing\""), "{err}");
}

#[test]
fn host_names_block_what_they_resolved_to() {
    let p = parse("[[policy]]\ntargets=[\"*\"]\noutgoing_block=[\"*.internal:5432\", \"db\"]\n");
    assert!(p.blocked_name("pid/1", "example.com").is_empty());
    let hits = p.blocked_name("pid/1", "pg.staging.INTERNAL.");
    assert_eq!(hits.len(), 1);
    let (label, dest) = hits.into_iter().next().unwrap();
    let learned = vec![LearnedBlock {
        ip: "10.9.9.9".parse().unwrap(),
        name: "pg.staging.internal".to_owned(),
        dest,
        label,
    }];
    let at = |s: &str| RemoteAddr::Ip(s.parse().unwrap());
    let err = p
        .check_outgoing("pid/1", &at("10.9.9.9:5432"), &learned)
        .unwrap_err();
    assert!(
        err.contains("(pg.staging.internal)") && err.contains("policy #1"),
        "{err}"
    );
    assert!(
        p.check_outgoing("pid/1", &at("10.9.9.9:80"), &learned)
            .is_ok()
    );
    assert_eq!(p.blocked_name("pid/1", "db").len(), 1);
    assert!(p.blocked_name("pid/1", "db2").is_empty());
}

#[test]
fn destinations_parse() {
    for ok in [
        "10.0.0.0/8",
        "10.0.0.1:80",
        "[fd00::/8]:5432",
        "fd00::1",
        "db",
        "*.svc:53",
    ] {
        Destination::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for bad in ["", "a b", "[fd00::1", "db:0", "*."] {
        assert!(Destination::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn env_and_files_are_hidden_by_glob_and_regex() {
    let p = parse(ISSUE_EXAMPLE);
    assert!(p.env_excluded("pid/1", "DB_PASSWORD").is_some());
    assert!(p.env_excluded("pid/1", "AWS_SECRET_ACCESS_KEY").is_some());
    assert!(p.env_excluded("pid/1", "DB_HOST").is_none());
    assert!(p.env_excluded("deployment/api", "DB_PASSWORD").is_none());
    let (label, pattern) = p.fs_hidden("pid/1", "/var/run/secrets/token").unwrap();
    assert!(label.starts_with("policy #1"));
    assert_eq!(pattern, "^/var/run/secrets/");
    assert!(p.fs_hidden("pid/1", "/etc/var/run/secrets/x").is_none());
}

#[tokio::test]
async fn a_changed_file_is_reloaded_and_a_broken_one_keeps_the_old_policies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, "[[policy]]\ntargets=[\"*\"]\nblock=[\"mirror\"]\n").unwrap();
    let store = PolicyStore::load(&path).unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let watcher = tokio::spawn(
        store
            .clone()
            .watch(Duration::from_millis(20), cancel.clone()),
    );
    assert_eq!(store.current().len(), 1);

    std::fs::write(
        &path,
        "[[policy]]\ntargets=[\"*\"]\n[[policy]]\ntargets=[\"x\"]\n",
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.current().len() != 2 {
        assert!(tokio::time::Instant::now() < deadline, "not reloaded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    std::fs::write(&path, "[[policy]]\ntargets=[\"*\"]\nblock=[\"nonsense\"]\n").unwrap();
    // Give the watcher several rounds to (wrongly) replace the policies.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        store.current().len(),
        2,
        "a broken file must not replace the policies"
    );

    std::fs::write(&path, "").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !store.current().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not reloaded after the fix"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
    watcher.await.unwrap();
}

#[test]
fn a_wide_filter_text_is_narrowed_by_the_required_header_not_compared() {
    let p = parse("[[policy]]\ntargets = [\"pid/*\"]\nrequire_header_filter = \"^x-user: .+$\"\n");
    let wide = HttpFilter::Header("x-user: a|.*".into());
    // The text check alone let it through (the bypass)...
    assert!(p.check_subscribe(&steal("pid/42", Some(&wide))).is_ok());
    // ...so what the agent gets is the requirement AND the session's filter.
    assert_eq!(
        p.constrain_filter("pid/42", Some(wide.clone())),
        Some(HttpFilter::AllOf(vec![
            HttpFilter::Header("^x-user: .+$".into()),
            wide.clone(),
        ]))
    );
    assert_eq!(
        p.constrain_filter("deployment/api", Some(wide.clone())),
        Some(wide)
    );
}

#[test]
fn the_session_policy_carries_file_rules_and_hides_environments_with_env_exclude() {
    let p = parse(
        "[[policy]]\ntargets = [\"pid/*\"]\nfs_not_found = [\"^/srv/secrets/\"]\n\n\
         [[policy]]\ntargets = [\"pid/1\"]\nenv_exclude = [\"DB_*\"]\n",
    );
    let one = p.session_policy("pid/1");
    assert_eq!(one.fs_not_found.len(), 1);
    assert_eq!(one.fs_not_found[0].pattern, "^/srv/secrets/");
    assert!(one.fs_not_found[0].label.starts_with("policy #1 in "));
    assert!(one.hide_process_env.unwrap().starts_with("policy #2 in "));
    assert_eq!(p.session_policy("pid/2").hide_process_env, None);
    assert_eq!(p.session_policy("deployment/x"), SessionPolicy::default());
}

#[test]
fn policies_from_objects_apply_to_the_users_and_groups_they_name() {
    let spec = |users: &[&str], groups: &[&str]| PolicySpec {
        targets: vec!["deployment/api*".into()],
        users: users.iter().map(|s| (*s).to_owned()).collect(),
        groups: groups.iter().map(|s| (*s).to_owned()).collect(),
        block: vec![Block::Steal],
        ..PolicySpec::default()
    };
    let (policies, errors) = Policies::from_specs(vec![
        ("RemoraPolicy shop/alice".into(), spec(&["alice"], &[])),
        ("RemoraPolicy shop/ci".into(), spec(&[], &["ci"])),
        (
            "RemoraPolicy shop/broken".into(),
            PolicySpec {
                targets: vec!["*".into()],
                fs_not_found: vec!["(".into()],
                ..PolicySpec::default()
            },
        ),
    ]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("RemoraPolicy shop/broken: fs_not_found"));
    let store = PolicyStore::fixed(policies);
    let check = |subject: Subject| {
        store
            .for_subject(subject)
            .current()
            .check_subscribe(&steal("deployment/api", None))
    };
    let alice = check(Subject {
        user: Some("alice".into()),
        groups: vec![],
        ..Subject::default()
    });
    assert_eq!(
        alice.unwrap_err(),
        "stealing port 8080 on deployment/api is blocked by RemoraPolicy shop/alice \
         (block = [\"steal\"])"
    );
    let runner = check(Subject {
        user: Some("runner".into()),
        groups: vec!["ci".into()],
        ..Subject::default()
    });
    assert!(runner.unwrap_err().contains("RemoraPolicy shop/ci"));
    assert!(
        check(Subject {
            user: Some("bob".into()),
            groups: vec!["dev".into()],
            ..Subject::default()
        })
        .is_ok()
    );
    // The unfiltered store sees every policy; a replacement is seen at once.
    assert_eq!(store.current().len(), 2);
    store.replace(Policies::default());
    assert!(
        check(Subject {
            user: Some("alice".into()),
            groups: vec![],
            ..Subject::default()
        })
        .is_ok()
    );
}
