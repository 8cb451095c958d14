use super::*;
use serde_json::json;

fn pod(name: &str, created: &str, phase: &str, ready: bool, waiting: Option<&str>) -> Pod {
    let mut statuses = vec![];
    if let Some(reason) = waiting {
        statuses.push(
            json!({"name": "app", "image": "shop/api:1", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"waiting": {"reason": reason}}}),
        );
    } else {
        statuses.push(
            json!({"name": "app", "image": "shop/api:1", "imageID": "", "ready": ready,
            "restartCount": 0, "containerID": "containerd://abc123", "state": {"running": {}}}),
        );
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop", "creationTimestamp": created,
                      "labels": {"app": "api", "tier": "web"}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "istio-proxy"}, {"name": "app"}]},
        "status": {"phase": phase, "podIP": "10.0.0.7",
                   "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}],
                   "containerStatuses": statuses}
    }))
    .unwrap()
}

fn app_selector() -> LabelSelector {
    serde_json::from_value(json!({"matchLabels": {"app": "api"}})).unwrap()
}

#[test]
fn the_oldest_ready_pod_is_picked_whatever_the_list_order() {
    let pods = vec![
        pod("api-c", "2026-01-03T00:00:00Z", "Running", true, None),
        pod(
            "api-a",
            "2026-01-01T00:00:00Z",
            "Pending",
            false,
            Some("ContainerCreating"),
        ),
        pod("api-b", "2026-01-02T00:00:00Z", "Running", true, None),
    ];
    let picked = pick_ready_pod("deployment/api", "shop", &app_selector(), &pods).unwrap();
    assert_eq!(picked.metadata.name.as_deref(), Some("api-b"));
    let mut reversed = pods.clone();
    reversed.reverse();
    let picked = pick_ready_pod("deployment/api", "shop", &app_selector(), &reversed).unwrap();
    assert_eq!(picked.metadata.name.as_deref(), Some("api-b"));
}

#[test]
fn no_ready_pod_says_what_was_found() {
    let pods = vec![pod(
        "api-7f9c",
        "2026-01-01T00:00:00Z",
        "Pending",
        false,
        Some("ImagePullBackOff"),
    )];
    let err = pick_ready_pod("deployment/api", "shop", &app_selector(), &pods).unwrap_err();
    assert_eq!(
        err.to_string(),
        "deployment/api in namespace shop has no ready pod: api-7f9c (Pending: ImagePullBackOff)"
    );
    let err = pick_ready_pod("deployment/api", "shop", &app_selector(), &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "deployment/api in namespace shop has no ready pod: no pod matches its selector app=api"
    );
}

#[test]
fn terminating_and_unready_running_pods_are_not_targets() {
    let mut p = pod("api-1", "2026-01-01T00:00:00Z", "Running", true, None);
    assert!(pod_is_ready(&p));
    p.metadata.deletion_timestamp = p.metadata.creation_timestamp.clone();
    assert!(!pod_is_ready(&p));
    assert_eq!(pod_state(&p), "Terminating");
    let p = pod("api-2", "2026-01-01T00:00:00Z", "Running", false, None);
    assert!(!pod_is_ready(&p));
    let err = check_pod("pod/api-2", "shop", &p).unwrap_err().to_string();
    assert_eq!(
        err,
        "pod/api-2 in namespace shop has no ready pod: api-2 (Running, not ready)"
    );
    let p = pod(
        "api-3",
        "2026-01-01T00:00:00Z",
        "Running",
        false,
        Some("CrashLoopBackOff"),
    );
    assert_eq!(pod_state(&p), "Running, not ready: CrashLoopBackOff");
}

#[test]
fn selectors_match_labels_and_expressions() {
    let labels: BTreeMap<String, String> = [("app", "api"), ("tier", "web")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let sel = |v: serde_json::Value| serde_json::from_value::<LabelSelector>(v).unwrap();
    assert!(selector_matches(
        &sel(json!({"matchLabels": {"app": "api"}})),
        &labels
    ));
    assert!(!selector_matches(
        &sel(json!({"matchLabels": {"app": "db"}})),
        &labels
    ));
    assert!(selector_matches(
        &sel(
            json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "edge"]},
                                         {"key": "canary", "operator": "DoesNotExist"}]})
        ),
        &labels
    ));
    assert!(!selector_matches(
        &sel(
            json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["web"]}]})
        ),
        &labels
    ));
    assert!(
        !selector_matches(&sel(json!({})), &labels),
        "an empty selector targets nothing"
    );
    assert_eq!(
        selector_string(&sel(json!({"matchLabels": {"app": "api"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "edge"]},
                                 {"key": "canary", "operator": "DoesNotExist"}]}))),
        "app=api,tier in (web,edge),!canary"
    );
}

#[test]
fn the_container_is_explicit_else_annotated_else_the_first_non_sidecar() {
    let mut p = pod("api-1", "2026-01-01T00:00:00Z", "Running", true, None);
    assert_eq!(
        pick_container(&p, None).unwrap(),
        "app",
        "istio-proxy is skipped"
    );
    assert_eq!(
        pick_container(&p, Some("istio-proxy")).unwrap(),
        "istio-proxy"
    );
    let err = pick_container(&p, Some("worker")).unwrap_err().to_string();
    assert_eq!(
        err,
        "pod api-1 has no container `worker` (named in the target); its containers: istio-proxy, app"
    );
    p.metadata.annotations = Some(
        [(
            DEFAULT_CONTAINER_ANNOTATION.to_owned(),
            "istio-proxy".to_owned(),
        )]
        .into_iter()
        .collect(),
    );
    assert_eq!(pick_container(&p, None).unwrap(), "istio-proxy");
    p.metadata.annotations = Some(
        [(DEFAULT_CONTAINER_ANNOTATION.to_owned(), "gone".to_owned())]
            .into_iter()
            .collect(),
    );
    assert!(
        pick_container(&p, None)
            .unwrap_err()
            .to_string()
            .contains(DEFAULT_CONTAINER_ANNOTATION)
    );
}

#[test]
fn the_resolved_pod_carries_node_ip_and_runtime_container_id() {
    let p = pod("api-1", "2026-01-01T00:00:00Z", "Running", true, None);
    let r = resolved(&p, "app".to_owned());
    assert_eq!(r.node.as_deref(), Some("node-1"));
    assert_eq!(r.pod_ip.as_deref(), Some("10.0.0.7"));
    assert_eq!(r.runtime.as_deref(), Some("containerd"));
    assert_eq!(r.container_id.as_deref(), Some("abc123"));
}

#[test]
fn owners_give_their_selectors() {
    let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "api"},
        "spec": {"selector": {"matchLabels": {"app": "api"}}, "template": {}}}))
    .unwrap();
    assert_eq!(deployment_selector(&d), Some(app_selector()));
    let s: Service = serde_json::from_value(
        json!({"metadata": {"name": "api"}, "spec": {"selector": {"app": "api"}}}),
    )
    .unwrap();
    assert_eq!(service_selector(&s), Some(app_selector()));
    let s: Service =
        serde_json::from_value(json!({"metadata": {"name": "ext"}, "spec": {}})).unwrap();
    assert_eq!(service_selector(&s), None);
}

#[test]
fn a_cronjob_resolves_through_its_newest_job() {
    let cj: CronJob = serde_json::from_value(json!({"metadata": {"name": "report", "uid": "u1"},
        "spec": {"schedule": "* * * * *", "jobTemplate": {}}}))
    .unwrap();
    let job = |name: &str, created: &str, owner: &str| -> Job {
        serde_json::from_value(json!({"metadata": {"name": name, "creationTimestamp": created,
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "x", "uid": owner}]}}))
        .unwrap()
    };
    let jobs = vec![
        job("report-1", "2026-01-01T00:00:00Z", "u1"),
        job("report-3", "2026-01-03T00:00:00Z", "other"),
        job("report-2", "2026-01-02T00:00:00Z", "u1"),
    ];
    assert_eq!(
        cronjob_newest_job(&cj, &jobs)
            .unwrap()
            .metadata
            .name
            .as_deref(),
        Some("report-2")
    );
    assert!(cronjob_newest_job(&cj, &jobs[1..2]).is_none());
}

#[test]
fn a_rollout_uses_its_selector_or_its_workload_ref() {
    let r = json!({"spec": {"selector": {"matchLabels": {"app": "api"}}}});
    assert_eq!(
        rollout_pods("rollout/api", &r).unwrap(),
        RolloutPods::Selector(app_selector())
    );
    let r = json!({"spec": {"workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api-base"}}});
    assert_eq!(
        rollout_pods("rollout/api", &r).unwrap(),
        RolloutPods::WorkloadRef {
            kind: "Deployment".to_owned(),
            name: "api-base".to_owned()
        }
    );
    let err = rollout_pods("rollout/api", &json!({"spec": {}}))
        .unwrap_err()
        .to_string();
    assert_eq!(err, "rollout/api has no pod selector");
}

fn owned(mut value: serde_json::Value, owner_uid: &str) -> serde_json::Value {
    value["metadata"]["ownerReferences"] =
        json!([{"apiVersion": "v1", "kind": "Owner", "name": "o", "uid": owner_uid}]);
    value
}

fn replicaset(name: &str, uid: &str, hash: &str, created: &str, owner: &str) -> ReplicaSet {
    serde_json::from_value(owned(
        json!({"metadata": {"name": name, "uid": uid, "creationTimestamp": created,
                            "labels": {"app": "api", ROLLOUT_HASH_LABEL: hash}},
               "spec": {"selector": {"matchLabels": {"app": "api"}}}}),
        owner,
    ))
    .unwrap()
}

fn pod_of(name: &str, created: &str, ready: bool, owner: &str) -> Pod {
    let phase = if ready { "Running" } else { "Pending" };
    let p = pod(
        name,
        created,
        phase,
        ready,
        (!ready).then_some("ImagePullBackOff"),
    );
    serde_json::from_value(owned(serde_json::to_value(p).unwrap(), owner)).unwrap()
}

#[test]
fn a_rollouts_pod_comes_from_its_stable_replicaset_not_from_pods_its_selector_also_matches() {
    let rollout = json!({"metadata": {"name": "api", "uid": "ro-1"},
                         "status": {"stableRS": "bbb"}});
    let sets = vec![
        replicaset("api-aaa", "rs-a", "aaa", "2026-01-01T00:00:00Z", "ro-1"),
        replicaset(
            "api-base-1",
            "rs-d",
            "x",
            "2025-12-01T00:00:00Z",
            "deploy-1",
        ),
        replicaset("api-bbb", "rs-b", "bbb", "2026-01-02T00:00:00Z", "ro-1"),
    ];
    let owned = rollout_replicasets(&rollout, &sets);
    let names: Vec<_> = owned.iter().map(|r| r.metadata.name.as_deref()).collect();
    assert_eq!(names, [Some("api-bbb"), Some("api-aaa")]);
    let pods = vec![
        pod_of("api-base-1-x", "2025-12-01T00:00:00Z", true, "rs-d"),
        pod_of("api-aaa-1", "2026-01-01T00:00:00Z", true, "rs-a"),
        pod_of("api-bbb-2", "2026-01-02T00:00:02Z", true, "rs-b"),
        pod_of("api-bbb-1", "2026-01-02T00:00:01Z", true, "rs-b"),
    ];
    let picked = pick_rollout_pod("rollout/api", "shop", &owned, &pods).unwrap();
    assert_eq!(picked.metadata.name.as_deref(), Some("api-bbb-1"));
    // No stable one known: the oldest set's pods first.
    let rollout = json!({"metadata": {"name": "api", "uid": "ro-1"}});
    let owned = rollout_replicasets(&rollout, &sets);
    let picked = pick_rollout_pod("rollout/api", "shop", &owned, &pods).unwrap();
    assert_eq!(picked.metadata.name.as_deref(), Some("api-aaa-1"));
    // A rollout with no ReplicaSet of its own (no Argo controller yet).
    let other = json!({"metadata": {"name": "api", "uid": "ro-2"}});
    assert!(rollout_replicasets(&other, &sets).is_empty());
}

#[test]
fn a_rollout_without_a_ready_pod_lists_its_own_pods() {
    let rollout = json!({"metadata": {"name": "api", "uid": "ro-1"}});
    let sets = vec![replicaset(
        "api-aaa",
        "rs-a",
        "aaa",
        "2026-01-01T00:00:00Z",
        "ro-1",
    )];
    let owned = rollout_replicasets(&rollout, &sets);
    let pods = vec![
        pod_of("api-aaa-1", "2026-01-01T00:00:00Z", false, "rs-a"),
        pod_of("other", "2026-01-01T00:00:00Z", true, "rs-z"),
    ];
    let err = pick_rollout_pod("rollout/api", "shop", &owned, &pods)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "rollout/api in namespace shop has no ready pod: api-aaa-1 (Pending: ImagePullBackOff)"
    );
    let err = pick_rollout_pod("rollout/api", "shop", &owned, &[])
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "rollout/api in namespace shop has no ready pod: its replica sets api-aaa have no pods"
    );
}

#[test]
fn a_deployments_pod_comes_from_its_own_replicasets_not_from_another_owner_with_the_same_labels() {
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "api", "uid": "deploy-1"},
        "spec": {"selector": {"matchLabels": {"app": "api"}}, "template": {}}
    }))
    .unwrap();
    let sets = vec![
        replicaset("api-old", "rs-old", "x", "2026-01-01T00:00:00Z", "deploy-1"),
        replicaset("api-ro", "rs-ro", "y", "2025-12-01T00:00:00Z", "rollout-1"),
        replicaset("api-new", "rs-new", "z", "2026-01-02T00:00:00Z", "deploy-1"),
    ];
    let own = deployment_replicasets(&deployment, &sets);
    let names: Vec<_> = own.iter().map(|r| r.metadata.name.as_deref()).collect();
    assert_eq!(names, [Some("api-old"), Some("api-new")]);
    let uids: Vec<&str> = own
        .iter()
        .filter_map(|r| r.metadata.uid.as_deref())
        .collect();
    // The rollout's pod is older, so selector order alone would pick it.
    let pods = vec![
        pod_of("api-new-1", "2026-01-02T00:00:01Z", true, "rs-new"),
        pod_of("api-ro-1", "2025-12-01T00:00:01Z", true, "rs-ro"),
        pod_of("api-old-1", "2026-01-01T00:00:01Z", false, "rs-old"),
    ];
    let picked = pick_ready_pod("deployment/api", "shop", &app_selector(), &pods).unwrap();
    assert_eq!(picked.metadata.name.as_deref(), Some("api-ro-1"));
    let picked = pick_owned_pod(
        "deployment/api",
        "shop",
        &app_selector(),
        Owners::Uids(&uids),
        &pods,
    )
    .unwrap();
    assert_eq!(picked.metadata.name.as_deref(), Some("api-new-1"));
    // Only another owner's pods: the error names them as such.
    let err = pick_owned_pod(
        "deployment/api",
        "shop",
        &app_selector(),
        Owners::Uids(&uids),
        &pods[1..2],
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "deployment/api in namespace shop has no ready pod: none of the pods its selector \
         app=api matches is its own: api-ro-1 (Running)"
    );
    // The owner's own pods, none ready.
    let err = pick_owned_pod(
        "statefulset/api",
        "shop",
        &app_selector(),
        Owners::Uids(&["rs-old"]),
        &pods,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "statefulset/api in namespace shop has no ready pod: api-old-1 (Pending: ImagePullBackOff)"
    );
}
