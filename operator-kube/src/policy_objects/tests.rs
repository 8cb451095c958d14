use super::*;
use remora_operator::policy::{Subject, SubscribeCheck};
use remora_protocol::incoming::IncomingMode;

fn namespaced(yaml: &str) -> RemoraPolicy {
    serde_yaml_ng::from_str(yaml).unwrap()
}

fn cluster(yaml: &str) -> RemoraClusterPolicy {
    serde_yaml_ng::from_str(yaml).unwrap()
}

fn steal(target: &str) -> SubscribeCheck<'_> {
    SubscribeCheck {
        target,
        port: 8080,
        mode: IncomingMode::Steal,
        filter: None,
        take_over: false,
    }
}

#[test]
fn selectors_become_globs_over_kind_name_and_containers() {
    let policy = namespaced(
        "apiVersion: remora.dev/v1alpha1\nkind: RemoraPolicy\nmetadata: {name: p, namespace: shop}\n\
         spec:\n  targets: [{kind: deployment, name: \"payments-*\"}]\n  block: [steal]\n",
    );
    let spec = spec_of(&policy.spec.rules);
    assert_eq!(
        spec.targets,
        ["deployment/payments-*", "deployment/payments-*/container/*"]
    );
    let (policies, errors) = policies_of(&[policy], &[], "shop");
    assert!(errors.is_empty(), "{errors:?}");
    for target in [
        "deployment/payments-eu",
        "deployment/payments-eu/container/app",
    ] {
        let refused = policies.check_subscribe(&steal(target)).unwrap_err();
        assert!(
            refused.contains("blocked by RemoraPolicy shop/p"),
            "{refused}"
        );
    }
    for target in [
        "deployment/api",
        "statefulset/payments-eu",
        "pod/payments-eu",
    ] {
        assert!(policies.check_subscribe(&steal(target)).is_ok(), "{target}");
    }
}

#[test]
fn a_selector_without_kind_selects_every_kind() {
    let policy = namespaced(
        "apiVersion: remora.dev/v1alpha1\nkind: RemoraPolicy\nmetadata: {name: p, namespace: shop}\n\
         spec:\n  targets: [{name: api}]\n  block: [steal]\n",
    );
    let (policies, _) = policies_of(&[policy], &[], "shop");
    for target in ["deployment/api", "pod/api/container/app", "service/api"] {
        assert!(
            policies.check_subscribe(&steal(target)).is_err(),
            "{target}"
        );
    }
    assert!(policies.check_subscribe(&steal("deployment/api2")).is_ok());
}

#[test]
fn cluster_policies_apply_to_their_namespaces_and_namespaced_ones_to_theirs() {
    let everywhere = cluster(
        "apiVersion: remora.dev/v1alpha1\nkind: RemoraClusterPolicy\nmetadata: {name: all}\n\
         spec:\n  targets: [{}]\n  block: [override]\n",
    );
    let payments = cluster(
        "apiVersion: remora.dev/v1alpha1\nkind: RemoraClusterPolicy\nmetadata: {name: pay}\n\
         spec:\n  namespaces: [\"payments-*\"]\n  targets: [{}]\n  block: [steal]\n",
    );
    let other_ns = namespaced(
        "apiVersion: remora.dev/v1alpha1\nkind: RemoraPolicy\nmetadata: {name: p, namespace: other}\n\
         spec:\n  targets: [{}]\n  block: [mirror]\n",
    );
    let (shop, errors) = policies_of(
        std::slice::from_ref(&other_ns),
        &[everywhere.clone(), payments.clone()],
        "shop",
    );
    assert!(errors.is_empty(), "{errors:?}");
    let mirror = |target| SubscribeCheck {
        mode: IncomingMode::Mirror,
        ..steal(target)
    };
    let take_over = |target| SubscribeCheck {
        take_over: true,
        ..steal(target)
    };
    // shop is the default namespace: its targets are named without one.
    assert!(shop.check_subscribe(&steal("deployment/api")).is_ok());
    assert!(shop.check_subscribe(&mirror("deployment/api")).is_ok());
    let refused = |policies: &Policies, check: &SubscribeCheck<'_>| {
        policies.check_subscribe(check).unwrap_err()
    };
    assert!(refused(&shop, &take_over("deployment/api")).contains("RemoraClusterPolicy all"));
    // Targets of other namespaces: their own RemoraPolicy objects, and the
    // cluster policies whose namespaces admit them.
    let other = "namespace/other/deployment/api";
    assert!(refused(&shop, &mirror(other)).contains("RemoraPolicy other/p"));
    assert!(shop.check_subscribe(&steal(other)).is_ok());
    assert!(refused(&shop, &take_over(other)).contains("RemoraClusterPolicy all"));
    let eu = "namespace/payments-eu/deployment/api";
    assert!(refused(&shop, &steal(eu)).contains("RemoraClusterPolicy pay"));
    assert!(shop.check_subscribe(&mirror(eu)).is_ok());
    // payments-eu as the default namespace.
    let (pay, _) = policies_of(&[other_ns], &[everywhere, payments], "payments-eu");
    let refused = pay.check_subscribe(&steal("deployment/api")).unwrap_err();
    assert!(refused.contains("RemoraClusterPolicy pay"), "{refused}");
    assert!(pay.check_subscribe(&steal("namespace/shop/pod/x")).is_ok());
}

#[test]
fn users_groups_and_rules_carry_over() {
    let policy = namespaced(
        "apiVersion: remora.dev/v1alpha1\nkind: RemoraPolicy\nmetadata: {name: ci, namespace: shop}\n\
         spec:\n  targets: [{kind: deployment, matchLabels: {team: x}}]\n\
         \x20 groups: [\"system:serviceaccounts:ci\"]\n  block: [steal-without-filter]\n\
         \x20 requireHeaderFilter: \"^x-user: .+$\"\n  envExclude: [DB_*]\n\
         \x20 fsNotFound: [\"^/secrets/\"]\n  outgoingBlock: [\"10.0.0.0/8:5432\"]\n",
    );
    let spec = spec_of(&policy.spec.rules);
    assert_eq!(spec.groups, ["system:serviceaccounts:ci"]);
    assert_eq!(spec.block, [Block::StealWithoutFilter]);
    assert_eq!(spec.require_header_filter.as_deref(), Some("^x-user: .+$"));
    assert_eq!(spec.env_exclude, ["DB_*"]);
    assert_eq!(spec.fs_not_found, ["^/secrets/"]);
    assert_eq!(spec.outgoing_block, ["10.0.0.0/8:5432"]);
    // A selector with labels selects by name and labels together.
    assert!(spec.targets.is_empty(), "{:?}", spec.targets);
    assert_eq!(spec.labelled_targets.len(), 1);
    assert_eq!(
        spec.labelled_targets[0].globs,
        ["deployment/*", "deployment/*/container/*"]
    );
    assert_eq!(
        spec.labelled_targets[0].labels.match_labels,
        std::collections::BTreeMap::from([("team".to_owned(), "x".to_owned())])
    );
    let (policies, errors) = policies_of(&[policy], &[], "shop");
    assert!(errors.is_empty(), "{errors:?}");
    let store = PolicyStore::fixed(policies);
    let ci = Subject {
        user: Some("system:serviceaccount:ci:runner".into()),
        groups: vec!["system:serviceaccounts:ci".into()],
        ..Subject::default()
    };
    let dev = Subject {
        user: Some("jane".into()),
        groups: vec!["dev".into()],
        ..Subject::default()
    };
    assert!(
        store
            .for_subject(ci)
            .current()
            .check_subscribe(&steal("deployment/api"))
            .is_err()
    );
    assert!(
        store
            .for_subject(dev)
            .current()
            .check_subscribe(&steal("deployment/api"))
            .is_ok()
    );
}

#[test]
fn an_invalid_object_is_left_out_and_named() {
    let bad = namespaced(
        "apiVersion: remora.dev/v1alpha1\nkind: RemoraPolicy\nmetadata: {name: bad, namespace: shop}\n\
         spec:\n  targets: [{}]\n  fsNotFound: [\"(\"]\n",
    );
    let (policies, errors) = policies_of(&[bad], &[], "shop");
    assert!(policies.is_empty());
    assert!(
        errors[0].starts_with("RemoraPolicy shop/bad: fs_not_found"),
        "{errors:?}"
    );
}

#[test]
fn label_selectors_apply_to_targets_whose_pod_labels_match_and_to_unknown_labels() {
    let policy = namespaced(
        "apiVersion: remora.dev/v1alpha1\nkind: RemoraPolicy\nmetadata: {name: pci, namespace: shop}\n\
         spec:\n  targets:\n  - {kind: deployment, matchLabels: {tier: payments},\n\
         \x20    matchExpressions: [{key: env, operator: NotIn, values: [dev]}]}\n\
         \x20 - {kind: pod, name: \"debug-*\"}\n  block: [steal]\n",
    );
    let (policies, errors) = policies_of(&[policy], &[], "shop");
    assert!(errors.is_empty(), "{errors:?}");
    let store = PolicyStore::fixed(policies);
    let check = |target: &str, labels: Option<&[(&str, &str)]>| {
        let subject = Subject {
            target_labels: labels.map(|l| {
                l.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect()
            }),
            ..Subject::default()
        };
        store
            .for_subject(subject)
            .current()
            .check_subscribe(&steal(target))
    };
    let refused = check("deployment/api", Some(&[("tier", "payments")])).unwrap_err();
    assert!(refused.contains("RemoraPolicy shop/pci"), "{refused}");
    assert!(check("deployment/api", Some(&[("tier", "web")])).is_ok());
    assert!(
        check(
            "deployment/api",
            Some(&[("tier", "payments"), ("env", "dev")])
        )
        .is_ok()
    );
    assert!(check("deployment/api", Some(&[])).is_ok());
    // Labels that could not be read: the selector applies.
    assert!(check("deployment/api", None).is_err());
    // The selector without labels applies whatever the labels.
    assert!(check("pod/debug-1", Some(&[("tier", "web")])).is_err());
    assert!(check("pod/web-1", Some(&[("tier", "payments")])).is_ok());
}
