//! Queue splitting of an SQS FIFO queue driven by a `RemoraQueueSplit` on
//! the test cluster, against a real `moto_server`: the registration names
//! the endpoint (`urlFrom`) and the access key (`usernameFrom`,
//! `passwordFrom`) in Secrets, and the workload's variable holds the queue
//! URL, so the workload and the session are handed queue URLs too. Messages
//! go to the session whose filter matches, the rest to the workload, once
//! each and in order per message group; when the last session leaves, the
//! workload is restored, the messages nobody took are back on the original
//! queue and the temporary queues are gone.

#[path = "../../queues/tests/support/moto.rs"]
mod moto;
#[path = "support/sim.rs"]
mod sim;

use moto::Moto;
use remora_kube::{ClientOptions, KubeClient};
use remora_operator_kube::crd::queue_split::{QueueBroker, WorkloadKind, WorkloadRef};
use remora_operator_kube::queue_splits::controller::{Splits, Wanted};
use remora_queues::broker::{Broker, Message, QueueName, QueueProps};
use remora_queues::router::{Owner, RouterConfig, temp_queue_name};
use remora_queues::sqs::SqsBroker;
use sim::{DEADLINE, Sim, install_queue_split_crds, ok, worker_deployment, worker_says};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

async fn poll(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE * 3;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Message `n` for `user`, in the FIFO group of its user.
fn message(user: &str, n: usize) -> Message {
    Message {
        headers: BTreeMap::from([("x-user".to_owned(), user.to_owned())]),
        body: format!("{user}-{n}").into_bytes(),
        order_key: Some(user.to_owned()),
        native: Box::new(()),
    }
}

/// Ready plus in-flight messages of `queue`.
async fn held(broker: &SqsBroker, queue: &QueueName) -> u64 {
    let d = broker.depth(queue).await.unwrap();
    d.ready + d.unacked.unwrap_or(0)
}

/// Takes every message `queue` holds (deleting them); returns the bodies.
async fn take_all(broker: &SqsBroker, queue: &QueueName) -> Vec<String> {
    let mut bodies = Vec::new();
    let mut consumer = broker.consume(queue, 10).await.unwrap();
    while let Some(d) = consumer.next_within(Duration::from_secs(2)).await.unwrap() {
        bodies.push(String::from_utf8_lossy(&d.message.body).into_owned());
        consumer.ack(d).await.unwrap();
    }
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sqs_fifo_split_through_the_operator_routes_by_attribute_and_gives_everything_back() {
    let moto = Moto::start();
    let broker = moto.broker();
    let original = QueueName(format!("orders-{}.fifo", std::process::id()));
    broker
        .create_like(
            &QueueProps {
                name: None,
                props: BTreeMap::from([("FifoQueue".to_owned(), "true".to_owned())]),
            },
            &original,
        )
        .await
        .unwrap();
    let original_url = broker.queue_url(&original).await.unwrap();
    let url_prefix = original_url
        .trim_end_matches(original.0.as_str())
        .to_owned();
    let workload_queue = temp_queue_name(broker.kind(), &original, Owner::Workload);

    let sim = Sim::start();
    let kubeconfig = sim.kubeconfig.clone();
    install_queue_split_crds(&kubeconfig);
    let worker = worker_deployment("ORDERS_QUEUE", &original_url);
    // moto takes any key; the operator must still read it from the Secret.
    let objects = format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: sqs}}
stringData: {{endpoint: "{endpoint}", id: "AKIDREMORA", secret: "remora-secret"}}
---
{worker}
---
apiVersion: remora.dev/v1alpha1
kind: RemoraQueueSplit
metadata: {{name: orders}}
spec:
  workload: {{kind: Deployment, name: worker}}
  drainTimeout: 1s
  queues:
    orders:
      type: sqs
      nameFrom: {{env: ORDERS_QUEUE}}
      brokerEndpoint:
        urlFrom: {{name: sqs, key: endpoint}}
        region: us-east-1
        usernameFrom: {{name: sqs, key: id}}
        passwordFrom: {{name: sqs, key: secret}}
"#,
        endpoint = moto.url
    );
    ok(&kubeconfig, &["apply", "-f", "-"], Some(&objects));
    let says_original = format!("QUEUE={original_url}");
    poll("the worker's first pod", async || {
        worker_says(&kubeconfig).as_deref() == Some(says_original.as_str())
    })
    .await;

    let kube = KubeClient::connect(&ClientOptions {
        kubeconfig: Some(kubeconfig.clone()),
        context: None,
        namespace: Some("default".into()),
    })
    .await
    .unwrap();
    let splits = Splits::new(kube.client.clone(), RouterConfig::default());
    let worker = WorkloadRef {
        kind: WorkloadKind::Deployment,
        name: "worker".into(),
    };
    let want = BTreeMap::from([(
        "orders".to_owned(),
        Wanted {
            broker: QueueBroker::Sqs,
            filter: BTreeMap::from([("x-user".to_owned(), "^alice$".to_owned())]),
        },
    )]);
    let alice_env = splits
        .join("default", &worker, "alice1", &want)
        .await
        .unwrap();
    let alice_url = &alice_env["ORDERS_QUEUE"];
    let alice_queue = QueueName(
        alice_url
            .strip_prefix(&url_prefix)
            .unwrap_or_else(|| panic!("{alice_url} is not a queue URL like {original_url}"))
            .to_owned(),
    );
    assert!(alice_queue.0.ends_with(".fifo"), "{alice_queue}");
    assert_eq!(broker.queue_url(&alice_queue).await.unwrap(), *alice_url);
    let says_split = format!("QUEUE={url_prefix}{workload_queue}");
    poll(
        "the worker to roll onto its temporary queue URL",
        async || worker_says(&kubeconfig).as_deref() == Some(says_split.as_str()),
    )
    .await;
    // Copies of a FIFO queue are FIFO queues.
    assert_eq!(
        broker.inspect(&workload_queue).await.unwrap().props["FifoQueue"],
        "true"
    );

    // 30 messages each for alice and bob, sent while the router routes.
    for n in 0..30 {
        broker
            .publish(&original, &message("alice", n))
            .await
            .unwrap();
        broker.publish(&original, &message("bob", n)).await.unwrap();
    }
    poll("alice's 30 and bob's 30 routed", async || {
        held(&broker, &alice_queue).await == 30 && held(&broker, &workload_queue).await == 30
    })
    .await;
    let expect = |user: &str, range: std::ops::Range<usize>| {
        range.map(|n| format!("{user}-{n}")).collect::<Vec<_>>()
    };
    assert_eq!(
        take_all(&broker, &alice_queue).await,
        expect("alice", 0..30),
        "alice's own, in order, once each"
    );
    assert_eq!(
        take_all(&broker, &workload_queue).await,
        expect("bob", 0..30)
    );

    // Five more for alice that she never takes; then she leaves, the last one.
    for n in 30..35 {
        broker
            .publish(&original, &message("alice", n))
            .await
            .unwrap();
    }
    poll("the five to reach alice's queue", async || {
        held(&broker, &alice_queue).await == 5 && held(&broker, &original).await == 0
    })
    .await;
    splits.leave("alice1").await;
    poll(
        "the worker to roll back onto the original queue URL",
        async || worker_says(&kubeconfig).as_deref() == Some(says_original.as_str()),
    )
    .await;
    let phase = ok(
        &kubeconfig,
        &["get", "rqs", "orders", "-o", "jsonpath={.status.phase}"],
        None,
    );
    assert_eq!(phase, "Idle");
    assert_eq!(
        take_all(&broker, &original).await,
        expect("alice", 30..35),
        "nothing lost: the five are back on the original queue"
    );
    for gone in [&alice_queue, &workload_queue] {
        assert!(broker.depth(gone).await.is_err(), "{gone} still exists");
    }
}
