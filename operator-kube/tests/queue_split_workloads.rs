//! A queue split's edits of a real workload on the test cluster, through the
//! real API calls: the queue name is read from a ConfigMap key, an `envFrom`
//! ConfigMap and a plain value; pointing the workload at its temporary
//! queues rolls it (its new pod sees the temporary queue names); restoring
//! puts the pod template back exactly and rolls it again.

use remora_kube::{ClientOptions, KubeClient};
use remora_operator_kube::crd::queue_split::{QueueNameSource, WorkloadKind, WorkloadRef};
use remora_operator_kube::queue_splits::{PATCHED_ANNOTATION, Workloads};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[path = "support/sim.rs"]
mod sim;

use sim::{DEADLINE, Sim, ok, worker_says};

fn poll(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

const OBJECTS: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: queues}
data: {EVENTS_QUEUE: events, orders: orders}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: worker}
spec:
  selector: {matchLabels: {app: worker}}
  template:
    metadata: {labels: {app: worker}}
    spec:
      containers:
      - name: worker
        image: busybox
        command: [sh, -c, "echo ORDERS=$ORDERS_QUEUE EVENTS=$EVENTS_QUEUE JOBS=$JOBS_QUEUE; exec sleep 300"]
        env:
        - {name: ORDERS_QUEUE, valueFrom: {configMapKeyRef: {name: queues, key: orders}}}
        - {name: JOBS_QUEUE, value: jobs}
        envFrom:
        - configMapRef: {name: queues}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_points_the_workload_at_its_temporary_queues_and_restores_it_exactly() {
    let sim = Sim::start();
    let kubeconfig = sim.kubeconfig.clone();
    ok(&kubeconfig, &["apply", "-f", "-"], Some(OBJECTS));
    poll("the worker's first pod", || {
        worker_says(&kubeconfig).as_deref() == Some("ORDERS=orders EVENTS=events JOBS=jobs")
    });
    let template_json = || {
        ok(
            &kubeconfig,
            &[
                "get",
                "deployment",
                "worker",
                "-o",
                "jsonpath={.spec.template}",
            ],
            None,
        )
    };
    let original = template_json();

    let kube = KubeClient::connect(&ClientOptions {
        kubeconfig: Some(kubeconfig.clone()),
        context: None,
        namespace: Some("default".into()),
    })
    .await
    .unwrap();
    let workloads = Workloads::new(kube.client.clone(), "default");
    let worker = WorkloadRef {
        kind: WorkloadKind::Deployment,
        name: "worker".into(),
    };
    let source = |env: &str| QueueNameSource {
        env: env.into(),
        container: None,
    };
    assert_eq!(
        workloads
            .queue_name(&worker, &source("ORDERS_QUEUE"))
            .await
            .unwrap(),
        "orders"
    );
    assert_eq!(
        workloads
            .queue_name(&worker, &source("EVENTS_QUEUE"))
            .await
            .unwrap(),
        "events"
    );
    assert_eq!(
        workloads
            .queue_name(&worker, &source("JOBS_QUEUE"))
            .await
            .unwrap(),
        "jobs"
    );
    let missing = workloads
        .queue_name(&worker, &source("NOPE"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("worker") && missing.contains("NOPE"),
        "{missing}"
    );

    let mut saved = BTreeMap::new();
    let targets = [
        (source("ORDERS_QUEUE"), "orders.remora.workload".to_owned()),
        (source("EVENTS_QUEUE"), "events.remora.workload".to_owned()),
    ];
    workloads
        .point_at("orders-split", &worker, &targets, &mut saved)
        .await
        .unwrap();
    assert_eq!(saved.len(), 2, "{saved:?}");
    poll("the rolled pod to see the temporary queues", || {
        worker_says(&kubeconfig).as_deref()
            == Some("ORDERS=orders.remora.workload EVENTS=events.remora.workload JOBS=jobs")
    });
    let annotation = ok(
        &kubeconfig,
        &[
            "get",
            "deployment",
            "worker",
            "-o",
            "jsonpath={.metadata.annotations.remora\\.dev/queue-split}",
        ],
        None,
    );
    assert_eq!(annotation, "orders-split", "{PATCHED_ANNOTATION}");
    // What the workload reads now is the temporary queue; a resumed split
    // pointing again keeps the originals it saved.
    let before = saved.clone();
    workloads
        .point_at("orders-split", &worker, &targets, &mut saved)
        .await
        .unwrap();
    assert_eq!(saved, before);

    workloads.restore(&worker, &saved).await.unwrap();
    assert_eq!(template_json(), original, "the template is back exactly");
    poll("the restored pod", || {
        worker_says(&kubeconfig).as_deref() == Some("ORDERS=orders EVENTS=events JOBS=jobs")
    });
}
