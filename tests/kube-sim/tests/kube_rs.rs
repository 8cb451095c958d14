//! The simulator held to kube-rs (the client remora's Kubernetes platform uses): typed CRUD,
//! patches, server-side apply, a watcher/reflector, and 410 Gone for a too-old resourceVersion.

mod common;

use std::time::Duration;

use common::{DEADLINE, Sim};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::{
    Api, Client, Config,
    api::{ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, reflector, watcher},
};
use serde_json::json;

async fn client(sim: &Sim) -> Client {
    let kubeconfig = Kubeconfig::read_from(&sim.kubeconfig).expect("reading the kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(config).expect("client")
}

fn cm(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "kube-rs"}},
        "data": {"key": value},
    }))
    .unwrap()
}

#[tokio::test]
async fn crud_patch_and_apply() {
    let sim = Sim::start();
    let client = client(&sim).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let created = cms
        .create(&PostParams::default(), &cm("a", "1"))
        .await
        .unwrap();
    assert!(created.metadata.resource_version.is_some());
    let patched = cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"key": "2"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap()["key"], "2");
    // A stale replace is a 409.
    let mut stale = created.clone();
    stale.data = Some([("key".to_owned(), "3".to_owned())].into());
    let err = cms
        .replace("a", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err:?}"
    );
    // Server-side apply creates, then merges.
    let pp = PatchParams::apply("remora-test").force();
    cms.patch(
        "b",
        &pp,
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "b"}, "data": {"x": "1"}})),
    )
    .await
    .unwrap();
    let b = cms
        .patch(
            "b",
            &pp,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "b"}, "data": {"y": "2"}})),
        )
        .await
        .unwrap();
    assert_eq!(b.data.unwrap()["y"], "2");
    let listed = cms
        .list(&ListParams::default().labels("app=kube-rs"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    cms.delete("a", &Default::default()).await.unwrap();
    assert!(cms.get_opt("a").await.unwrap().is_none());
    // Pods get a containerID from the kubelet.
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["sleep", "1000"]}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let ready = kube::runtime::wait::await_condition(
        pods.clone(),
        "p",
        kube::runtime::conditions::is_pod_running(),
    );
    tokio::time::timeout(DEADLINE, ready)
        .await
        .unwrap()
        .unwrap();
    let p = pods.get("p").await.unwrap();
    let id = p.status.unwrap().container_statuses.unwrap()[0]
        .container_id
        .clone()
        .unwrap();
    assert!(id.starts_with("remora-sim://"), "{id}");
}

#[tokio::test]
async fn watcher_and_reflector_follow_changes() {
    let sim = Sim::start();
    let client = client(&sim).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let (reader, writer) = reflector::store::<ConfigMap>();
    let stream = reflector(
        writer,
        watcher(
            cms.clone(),
            watcher::Config::default().labels("app=kube-rs"),
        ),
    )
    .applied_objects()
    .boxed();
    let task = tokio::spawn(async move {
        let mut stream = stream;
        while stream.try_next().await.is_ok_and(|e| e.is_some()) {}
    });
    for i in 0..5 {
        cms.create(&PostParams::default(), &cm(&format!("w{i}"), "v"))
            .await
            .unwrap();
    }
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "other"}})).unwrap(),
    )
    .await
    .unwrap();
    cms.delete("w0", &Default::default()).await.unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut names: Vec<String> = reader
            .state()
            .iter()
            .map(|c| c.metadata.name.clone().unwrap())
            .collect();
        names.sort();
        if names == ["w1", "w2", "w3", "w4"] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reflector state {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
}

#[tokio::test]
async fn watch_from_a_compacted_version_is_gone() {
    let sim = Sim::start();
    let client = client(&sim).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let first = cms
        .create(&PostParams::default(), &cm("c1", "1"))
        .await
        .unwrap();
    let rv = first.metadata.resource_version.unwrap();
    // Resuming from a known version replays what came after it.
    cms.create(&PostParams::default(), &cm("c2", "1"))
        .await
        .unwrap();
    let mut events = cms
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    match events.try_next().await.unwrap() {
        Some(WatchEvent::Added(c)) => assert_eq!(c.metadata.name.as_deref(), Some("c2")),
        other => panic!("expected ADDED c2, got {other:?}"),
    }
    // After compaction the same version is too old.
    let req = http::Request::post("/remora-sim/compact")
        .body(Vec::new())
        .unwrap();
    client.request_text(req).await.unwrap();
    let mut events = cms
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    match events.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
    // Bookmarks when asked.
    let list = cms.list(&ListParams::default()).await.unwrap();
    let wp = WatchParams {
        bookmarks: true,
        ..WatchParams::default().timeout(15)
    };
    let mut events = cms
        .watch(&wp, &list.metadata.resource_version.unwrap())
        .await
        .unwrap()
        .boxed();
    match events.try_next().await.unwrap() {
        Some(WatchEvent::Bookmark(_)) => {}
        other => panic!("expected a BOOKMARK, got {other:?}"),
    }
}

/// Paged lists: `ListParams::limit` with the continue tokens, and a watcher whose initial
/// list comes in pages, both see every object.
#[tokio::test]
async fn paged_lists_and_a_paging_watcher() {
    let sim = Sim::start();
    let client = client(&sim).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for i in 0..5 {
        cms.create(&PostParams::default(), &cm(&format!("p{i}"), "v"))
            .await
            .unwrap();
    }
    let mut names = Vec::new();
    let mut pages = 0;
    let mut params = ListParams::default().labels("app=kube-rs").limit(2);
    loop {
        let page = cms.list(&params).await.unwrap();
        pages += 1;
        names.extend(page.items.iter().map(|c| c.metadata.name.clone().unwrap()));
        match page.metadata.continue_.filter(|t| !t.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names, ["p0", "p1", "p2", "p3", "p4"]);

    let (reader, writer) = reflector::store::<ConfigMap>();
    let stream = reflector(
        writer,
        watcher(
            cms.clone(),
            watcher::Config::default()
                .labels("app=kube-rs")
                .page_size(2),
        ),
    )
    .applied_objects()
    .boxed();
    let task = tokio::spawn(async move {
        let mut stream = stream;
        while stream.try_next().await.is_ok_and(|e| e.is_some()) {}
    });
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut seen: Vec<String> = reader
            .state()
            .iter()
            .map(|c| c.metadata.name.clone().unwrap())
            .collect();
        seen.sort();
        if seen == names {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reflector state {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
}
