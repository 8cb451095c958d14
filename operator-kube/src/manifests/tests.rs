use super::*;
use std::path::PathBuf;

/// Compare `text` with `tests/golden/<name>`; `REMORA_BLESS=1` rewrites it.
fn golden(name: &str, text: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("REMORA_BLESS").is_some() {
        std::fs::write(&path, text).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (REMORA_BLESS=1 writes it)", path.display()));
    assert!(
        expected == text,
        "{} differs: REMORA_BLESS=1 rewrites it; review the diff",
        path.display()
    );
}

#[test]
fn default_manifests_match_golden() {
    golden("manifests-default.yaml", &yaml(&ManifestOptions::default()));
}

#[test]
fn namespace_and_image_are_used_everywhere() {
    let options = ManifestOptions {
        namespace: "tools".into(),
        image: "registry.example/remora-operator:dev".into(),
        ..ManifestOptions::default()
    };
    let text = yaml(&options);
    golden("manifests-tools.yaml", &text);
    assert!(!text.contains("namespace: remora\n"), "{text}");
    let all = all(&options);
    for object in &all {
        let kind = object["kind"].as_str().unwrap();
        let namespaced = !matches!(
            kind,
            "CustomResourceDefinition"
                | "Namespace"
                | "ClusterRole"
                | "ClusterRoleBinding"
                | "APIService"
        );
        let expected = if object["roleRef"]["name"] == AUTH_READER_ROLE {
            // The front proxy's trust is read where it lives.
            Some("kube-system")
        } else {
            namespaced.then_some("tools")
        };
        assert_eq!(object["metadata"]["namespace"].as_str(), expected, "{kind}");
    }
    let deployment = deployment(&options);
    let pod = deployment.spec.template.spec.unwrap();
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("registry.example/remora-operator:dev")
    );
    assert_eq!(pod.service_account_name.as_deref(), Some(NAME));
    let bound = cluster_role_binding(&options).subjects.unwrap();
    assert_eq!(bound[0].namespace.as_deref(), Some("tools"));
    let reader = auth_reader_binding(&options).subjects.unwrap();
    assert_eq!(reader[0].namespace.as_deref(), Some("tools"));
    let backing = api_service(&options).spec.unwrap().service.unwrap();
    assert_eq!(backing.namespace.as_deref(), Some("tools"));
}

#[test]
fn queue_split_namespaces_get_the_split_role_bound_to_the_operator() {
    let options = ManifestOptions {
        namespace: "tools".into(),
        // Named twice: emitted once.
        queue_split_namespaces: vec!["shop".into(), "billing".into(), "shop".into()],
        ..ManifestOptions::default()
    };
    let text = yaml(&options);
    golden("manifests-queue-splits.yaml", &text);
    let all = all(&options);
    let plain = super::all(&ManifestOptions {
        namespace: "tools".into(),
        ..ManifestOptions::default()
    });
    assert_eq!(
        all.len(),
        plain.len() + 4,
        "a Role and a RoleBinding per namespace"
    );
    for ns in ["shop", "billing"] {
        let in_ns = |kind: &str| {
            let found: Vec<_> = all
                .iter()
                .filter(|o| o["kind"] == kind && o["metadata"]["namespace"] == ns)
                .collect();
            assert_eq!(found.len(), 1, "{kind} in {ns}");
            found[0].clone()
        };
        let role = in_ns("Role");
        assert_eq!(role["metadata"]["name"], QUEUE_SPLIT_ROLE);
        let role: Role = serde_json::from_value(role).unwrap();
        assert_eq!(role.rules.unwrap(), policy_rules(QUEUE_SPLIT_RULES));
        let binding: RoleBinding = serde_json::from_value(in_ns("RoleBinding")).unwrap();
        assert_eq!(binding.role_ref.kind, "Role");
        assert_eq!(binding.role_ref.name, QUEUE_SPLIT_ROLE);
        let subjects = binding.subjects.unwrap();
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0].kind, "ServiceAccount");
        assert_eq!(subjects[0].name, NAME);
        assert_eq!(subjects[0].namespace.as_deref(), Some("tools"));
    }
    // Created after the operator's own RBAC, before its Deployment starts.
    let position = |pred: &dyn Fn(&serde_json::Value) -> bool| all.iter().position(pred).unwrap();
    let split_role = position(&|o| o["metadata"]["name"] == QUEUE_SPLIT_ROLE);
    assert!(split_role > position(&|o| o["kind"] == "ClusterRoleBinding"));
    assert!(split_role < position(&|o| o["kind"] == "Deployment"));
    // Without the option, nothing of it.
    assert!(!yaml(&ManifestOptions::default()).contains(QUEUE_SPLIT_ROLE));
}

#[test]
fn the_operator_runs_restricted() {
    let d = deployment(&ManifestOptions::default());
    let pod = d.spec.template.spec.unwrap();
    let c = &pod.containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..])
    );
    assert!(sc.privileged.is_none() && sc.capabilities.as_ref().unwrap().add.is_none());
    let psc = pod.security_context.unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
    assert!(pod.host_pid.is_none() && pod.host_network.is_none());
    assert!(c.readiness_probe.is_some() && c.liveness_probe.is_some());
    let resources = c.resources.as_ref().unwrap();
    assert!(resources.requests.is_some() && resources.limits.is_some());
}

#[test]
fn rbac_grants_no_wildcards_and_secrets_only_to_create_get_and_patch_in_its_namespace() {
    for rule in CLUSTER_RULES
        .iter()
        .chain(NAMESPACE_RULES)
        .chain(QUEUE_SPLIT_RULES)
    {
        for word in rule.resources.iter().chain(rule.verbs).chain([&rule.group]) {
            assert_ne!(*word, "*", "{rule:?}");
        }
        if QUEUE_SPLIT_RULES.contains(rule) {
            // In the namespaces a platform team names: read Secrets and
            // ConfigMaps (no list), update workloads, nothing else.
            let reads = rule.verbs == ["get"] && rule.resources == ["configmaps", "secrets"];
            let workloads = rule.verbs == ["update"]
                && rule
                    .resources
                    .iter()
                    .all(|r| ["deployments", "statefulsets", "rollouts"].contains(r));
            assert!(reads || workloads, "{rule:?}");
            continue;
        }
        if rule.resources.iter().any(|r| r.contains("secret")) {
            // Its own database-branch records, branch pods' passwords and
            // agents' tokens (patched to be owned by the agent's Job or pod).
            assert!(NAMESPACE_RULES.contains(rule), "{rule:?}");
            assert_eq!(rule.resources, ["secrets"], "{rule:?}");
            assert_eq!(rule.verbs, ["create", "get", "patch"], "{rule:?}");
        }
        assert!(
            !rule
                .verbs
                .iter()
                .any(|v| ["escalate", "bind", "impersonate"].contains(v)),
            "{rule:?}"
        );
    }
    // Writes outside the operator's namespace: sessions only.
    for rule in CLUSTER_RULES {
        let writes = rule
            .verbs
            .iter()
            .any(|v| ["create", "update", "patch", "delete"].contains(v));
        let ours = rule.group == "remora.dev"
            || rule.resources == ["tokenreviews"]
            || rule.resources == ["subjectaccessreviews"]
            // Its own APIService only.
            || rule.names == [remora_kube::operator_api::APISERVICE];
        assert!(!writes || ours, "{rule:?}");
    }
}

fn doc_row(rule: &Rule) -> String {
    let group = if rule.group.is_empty() {
        "core"
    } else {
        rule.group
    };
    let only = if rule.names.is_empty() {
        String::new()
    } else {
        format!(" (`{}` only)", rule.names.join("`, `"))
    };
    format!(
        "| `{group}` | {}{only} | {} | {} |",
        rule.resources.join(", "),
        rule.verbs.join(", "),
        rule.why
    )
}

#[test]
fn docs_justify_every_rule() {
    let docs = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/operator.md"),
    )
    .unwrap();
    let expected: Vec<String> = CLUSTER_RULES
        .iter()
        .chain(NAMESPACE_RULES)
        .chain(QUEUE_SPLIT_RULES)
        .map(doc_row)
        .collect();
    let missing: Vec<&String> = expected.iter().filter(|row| !docs.contains(*row)).collect();
    assert!(
        missing.is_empty(),
        "docs/operator.md lacks these rows of the RBAC table:\n{}",
        expected.join("\n")
    );
}
