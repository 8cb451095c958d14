//! Queue splitting of a Kafka topic driven by a `RemoraQueueSplit` on the
//! test cluster, against a real Kafka-protocol broker (tansu): the
//! registration names the bootstrap servers and the workload's consumer
//! group; the workload rolls onto its temporary topic (three partitions, as
//! the original); two sessions with header filters each get only their
//! messages, in partition order, and the workload gets the rest; when the
//! last session leaves, the workload is restored, what nobody read is back
//! on the original topic for the workload's group, and the temporary topics
//! are gone.

#[path = "support/sim.rs"]
mod sim;
#[path = "../../queues/tests/support/tansu.rs"]
mod tansu;

use remora_kube::{ClientOptions, KubeClient};
use remora_operator_kube::crd::queue_split::{QueueBroker, WorkloadKind, WorkloadRef};
use remora_operator_kube::queue_splits::controller::{Splits, Wanted};
use remora_queues::broker::{Broker, BrokerError, Message, QueueName, QueueProps};
use remora_queues::kafka::{KafkaBroker, PARTITIONS_PROP};
use remora_queues::router::{Owner, RouterConfig, temp_queue_name};
use sim::{DEADLINE, Sim, install_queue_split_crds, ok, worker_deployment, worker_says};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tansu::Tansu;

/// The workload's consumer group, as registered.
const GROUP: &str = "orders-workers";

async fn poll(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE * 3;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Message `n` for `user`, keyed by its user (one partition per user).
fn message(user: &str, n: usize) -> Message {
    Message {
        headers: BTreeMap::from([("x-user".to_owned(), user.to_owned())]),
        body: format!("{user}-{n}").into_bytes(),
        order_key: Some(format!("{user}-{}", n % 4)),
        native: Box::new(()),
    }
}

/// What the workload's group has left to read on `topic`.
async fn lag(broker: &KafkaBroker, topic: &QueueName) -> u64 {
    broker.depth(topic).await.unwrap().ready
}

/// Reads everything `broker`'s group has left on `topic`, committing it;
/// returns the bodies in the order of each partition (partitions one after
/// the other, as sorted by their order key).
async fn take_all(broker: &KafkaBroker, topic: &QueueName) -> Vec<String> {
    let mut by_partition: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut consumer = broker.consume(topic, 64).await.unwrap();
    while let Some(d) = consumer.next_within(Duration::from_secs(2)).await.unwrap() {
        by_partition
            .entry(d.message.order_key.clone().unwrap())
            .or_default()
            .push(String::from_utf8_lossy(&d.message.body).into_owned());
        consumer.ack(d).await.unwrap();
    }
    by_partition.into_values().flatten().collect()
}

/// `got` holds exactly `want`'s bodies, and each `user-n%4` key's bodies in
/// increasing `n` (a key stays in one partition, whose order is kept).
fn assert_exact_in_key_order(what: &str, got: &[String], want: &[String]) {
    let mut sorted = got.to_vec();
    sorted.sort();
    let mut want = want.to_vec();
    want.sort();
    assert_eq!(sorted, want, "{what}: exactly these, once each");
    let mut last: BTreeMap<String, usize> = BTreeMap::new();
    for body in got {
        let (user, n) = body.rsplit_once('-').unwrap();
        let n: usize = n.parse().unwrap();
        if let Some(before) = last.insert(format!("{user}-{}", n % 4), n) {
            assert!(before < n, "{what}: {user}-{before} came before {body}");
        }
    }
}

fn bodies(user: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|n| format!("{user}-{n}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_split_through_the_operator_routes_by_header_and_gives_everything_back() {
    let tansu = Tansu::start();
    let broker = tansu.broker(GROUP).await;
    let original = QueueName("orders".into());
    broker
        .create_like(
            &QueueProps {
                name: None,
                props: BTreeMap::from([(PARTITIONS_PROP.to_owned(), "3".to_owned())]),
            },
            &original,
        )
        .await
        .unwrap();
    let workload_topic = temp_queue_name(broker.kind(), &original, Owner::Workload);

    let sim = Sim::start();
    let kubeconfig = sim.kubeconfig.clone();
    install_queue_split_crds(&kubeconfig);
    let worker = worker_deployment("ORDERS_TOPIC", &original);
    let objects = format!(
        r#"
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
      type: kafka
      nameFrom: {{env: ORDERS_TOPIC}}
      brokerEndpoint:
        url: "{addr}"
        group: {GROUP}
"#,
        addr = tansu.addr
    );
    ok(&kubeconfig, &["apply", "-f", "-"], Some(&objects));
    let says_original = format!("QUEUE={original}");
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
    let want = |regex: &str| {
        BTreeMap::from([(
            "orders".to_owned(),
            Wanted {
                broker: QueueBroker::Kafka,
                filter: BTreeMap::from([("x-user".to_owned(), regex.to_owned())]),
            },
        )])
    };
    let alice_env = splits
        .join("default", &worker, "alice1", &want("^alice$"))
        .await
        .unwrap();
    let alice_topic = QueueName(alice_env["ORDERS_TOPIC"].clone());
    let bob_env = splits
        .join("default", &worker, "bob2", &want("^bob$"))
        .await
        .unwrap();
    let bob_topic = QueueName(bob_env["ORDERS_TOPIC"].clone());
    assert_ne!(alice_topic, bob_topic);
    let says_split = format!("QUEUE={workload_topic}");
    poll("the worker to roll onto its temporary topic", async || {
        worker_says(&kubeconfig).as_deref() == Some(says_split.as_str())
    })
    .await;
    // The copies have the original's partitions.
    for topic in [&alice_topic, &bob_topic, &workload_topic] {
        assert_eq!(
            broker.inspect(topic).await.unwrap().props[PARTITIONS_PROP],
            "3",
            "{topic}"
        );
    }

    for n in 0..30 {
        for user in ["alice", "bob", "carol"] {
            broker.publish(&original, &message(user, n)).await.unwrap();
        }
    }
    poll("the 90 routed", async || {
        lag(&broker, &original).await == 0
            && lag(&broker, &alice_topic).await == 30
            && lag(&broker, &bob_topic).await == 30
            && lag(&broker, &workload_topic).await == 30
    })
    .await;
    // The sessions' processes read their topics (same group: same code).
    assert_exact_in_key_order(
        "alice",
        &take_all(&broker, &alice_topic).await,
        &bodies("alice", 0..30),
    );
    assert_exact_in_key_order(
        "bob",
        &take_all(&broker, &bob_topic).await,
        &bodies("bob", 0..30),
    );
    assert_exact_in_key_order(
        "the workload",
        &take_all(&broker, &workload_topic).await,
        &bodies("carol", 0..30),
    );

    // Five more each for alice and carol that nobody reads; bob leaves,
    // then alice, the last one.
    for n in 30..35 {
        for user in ["alice", "carol"] {
            broker.publish(&original, &message(user, n)).await.unwrap();
        }
    }
    poll("the ten routed", async || {
        lag(&broker, &original).await == 0
            && lag(&broker, &alice_topic).await == 5
            && lag(&broker, &workload_topic).await == 5
    })
    .await;
    splits.leave("bob2").await;
    poll("bob's topic to be removed", async || {
        matches!(
            broker.inspect(&bob_topic).await,
            Err(BrokerError::NoQueue { .. })
        )
    })
    .await;
    splits.leave("alice1").await;
    poll(
        "the worker to roll back onto the original topic",
        async || worker_says(&kubeconfig).as_deref() == Some(says_original.as_str()),
    )
    .await;
    let phase = ok(
        &kubeconfig,
        &["get", "rqs", "orders", "-o", "jsonpath={.status.phase}"],
        None,
    );
    assert_eq!(phase, "Idle");
    let mut back = bodies("alice", 30..35);
    back.extend(bodies("carol", 30..35));
    assert_exact_in_key_order(
        "the original, for the workload's group",
        &take_all(&broker, &original).await,
        &back,
    );
    for gone in [&alice_topic, &bob_topic, &workload_topic] {
        assert!(
            matches!(broker.inspect(gone).await, Err(BrokerError::NoQueue { .. })),
            "{gone} still exists"
        );
    }
    broker.delete(&original).await.unwrap();
}
