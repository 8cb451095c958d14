use super::template::*;
use crate::crd::queue_split::QueueNameSource;
use serde_json::json;
use std::collections::BTreeMap;

fn source(env: &str, container: Option<&str>) -> QueueNameSource {
    QueueNameSource {
        env: env.into(),
        container: container.map(str::to_owned),
    }
}

fn template() -> serde_json::Value {
    json!({
        "containers": [
            {"name": "worker", "image": "w", "env": [
                {"name": "OTHER", "value": "x"},
                {"name": "ORDERS_QUEUE", "value": "orders"},
                {"name": "EVENTS", "valueFrom": {"configMapKeyRef": {"name": "queues", "key": "events"}}},
            ]},
            {"name": "sidecar", "image": "s", "envFrom": [
                {"configMapRef": {"name": "first"}},
                {"prefix": "APP_", "secretRef": {"name": "creds"}},
                {"configMapRef": {"name": "queues"}},
            ]},
        ]
    })
}

#[test]
fn sources_follow_env_then_the_last_env_from() {
    let t = template();
    // The sidecar may set it too: only its ConfigMaps can say.
    assert_eq!(
        sources(&t, &source("ORDERS_QUEUE", None)).unwrap(),
        [
            ("worker".to_owned(), NameSource::Value("orders".into())),
            (
                "sidecar".to_owned(),
                NameSource::EnvFrom(vec![
                    KeyRef::ConfigMap {
                        name: "queues".into(),
                        key: "ORDERS_QUEUE".into()
                    },
                    KeyRef::ConfigMap {
                        name: "first".into(),
                        key: "ORDERS_QUEUE".into()
                    },
                ])
            ),
        ]
    );
    let cm = |name: &str, key: &str| KeyRef::ConfigMap {
        name: name.into(),
        key: key.into(),
    };
    assert_eq!(
        sources(&t, &source("EVENTS", Some("worker"))).unwrap(),
        [("worker".to_owned(), NameSource::Key(cm("queues", "events")))]
    );
    // Only the sidecar has envFrom; its last source is tried first, and the
    // prefixed secret applies to APP_ names only.
    assert_eq!(
        sources(&t, &source("JOBS", Some("sidecar"))).unwrap(),
        [(
            "sidecar".to_owned(),
            NameSource::EnvFrom(vec![cm("queues", "JOBS"), cm("first", "JOBS")])
        )]
    );
    let t2 = json!({"containers": [{"name": "c", "envFrom": [
        {"configMapRef": {"name": "a"}}, {"prefix": "APP_", "secretRef": {"name": "creds"}}]}]});
    assert_eq!(
        sources(&t2, &source("APP_QUEUE", None)).unwrap(),
        [(
            "c".to_owned(),
            NameSource::EnvFrom(vec![
                KeyRef::Secret {
                    name: "creds".into(),
                    key: "QUEUE".into()
                },
                cm("a", "APP_QUEUE"),
            ])
        )]
    );
}

#[test]
fn errors_name_the_container_and_variable() {
    let t = template();
    assert_eq!(
        sources(&t, &source("ORDERS_QUEUE", Some("nope"))),
        Err(TemplateError::NoContainer("nope".into()))
    );
    let err = sources(
        &json!({"containers": [{"name": "c"}]}),
        &source("Q", Some("c")),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "no container of the pod template sets Q (in env or envFrom) in container \"c\""
    );
    let field = json!({"containers": [{"name": "c", "env": [
        {"name": "Q", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}]});
    assert!(matches!(
        sources(&field, &source("Q", None)),
        Err(TemplateError::Unsupported { .. })
    ));
}

#[test]
fn pointing_and_restoring_round_trips_exactly_and_resuming_keeps_the_original() {
    let original = template();
    let mut t = original.clone();
    let mut saved = BTreeMap::new();
    let worker = ["worker".to_owned()];
    let sidecar = ["sidecar".to_owned()];
    let orders_tmp = "orders.remora.workload";
    point_at(&mut t, "ORDERS_QUEUE", &worker, orders_tmp, &mut saved).unwrap();
    point_at(&mut t, "JOBS", &sidecar, "jobs.remora.workload", &mut saved).unwrap();
    assert_eq!(
        t["containers"][0]["env"][1],
        json!({"name": "ORDERS_QUEUE", "value": orders_tmp})
    );
    assert_eq!(
        t["containers"][0]["env"][0],
        json!({"name": "OTHER", "value": "x"})
    );
    assert_eq!(
        t["containers"][1]["env"],
        json!([{"name": "JOBS", "value": "jobs.remora.workload"}])
    );
    assert_eq!(saved["sidecar/JOBS"], "null");
    // A resumed split points again: the saved originals are not overwritten.
    let before = saved.clone();
    point_at(&mut t, "ORDERS_QUEUE", &worker, orders_tmp, &mut saved).unwrap();
    assert_eq!(saved, before);
    restore(&mut t, &saved);
    assert_eq!(t, original);
}
