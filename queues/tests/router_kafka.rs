//! Kafka (a real `tansu` broker): topics copied with their partitions, a
//! queue's depth as the split group's lag, and the router splitting a
//! keyed topic between two sessions and the workload with exact counts and
//! per-key order; a session that dies with messages unacknowledged has
//! them moved to the workload's topic, none lost, none twice.

#[path = "support/tansu.rs"]
mod tansu;

use remora_queues::broker::{Broker, BrokerError, Message, QueueName, QueueProps};
use remora_queues::filter::MessageFilter;
use remora_queues::kafka::{KafkaBroker, PARTITIONS_PROP};
use remora_queues::router::{MemoryStore, RouterApi, RouterConfig, RouterTask, SplitSessionKey};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tansu::{Tansu, unique};
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(180);
const KEYS: u64 = 16;

/// Message `seq`: for alice, bob or carol in turn, key `k<seq % KEYS>`.
fn message(seq: u64) -> Message {
    Message {
        headers: BTreeMap::from([
            ("x-user".to_owned(), user(seq).to_owned()),
            ("x-seq".to_owned(), seq.to_string()),
        ]),
        body: format!("m{seq}").into_bytes(),
        order_key: Some(format!("k{}", seq % KEYS)),
        native: Box::new(()),
    }
}

fn user(seq: u64) -> &'static str {
    ["alice", "bob", "carol"][(seq % 3) as usize]
}

fn key(k: &str) -> SplitSessionKey {
    SplitSessionKey::new(k).unwrap()
}

fn filter(user_regex: &str) -> MessageFilter {
    MessageFilter::new([("x-user", user_regex)]).unwrap()
}

async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A topic with `partitions` partitions.
async fn topic(broker: &KafkaBroker, tag: &str, partitions: u32) -> QueueName {
    let name = unique(tag);
    let props = QueueProps {
        name: None,
        props: BTreeMap::from([(PARTITIONS_PROP.to_owned(), partitions.to_string())]),
    };
    broker.create_like(&props, &name).await.unwrap();
    name
}

/// Takes (and acks) up to `max` messages of `topic` in the split group;
/// returns their sequence numbers and keys in the order read.
async fn take(broker: &KafkaBroker, topic: &QueueName, max: usize) -> Vec<(u64, String)> {
    let mut consumer = broker.consume(topic, 64).await.unwrap();
    let mut got = Vec::new();
    while got.len() < max {
        let Some(d) = consumer.next_within(Duration::from_secs(1)).await.unwrap() else {
            break;
        };
        got.push((
            d.message.headers["x-seq"].parse().unwrap(),
            d.message.order_key.clone().unwrap(),
        ));
        consumer.ack(d).await.unwrap();
    }
    got
}

/// Each key's messages came in increasing sequence.
fn assert_key_order(what: &str, got: &[(u64, String)]) {
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    for (seq, key) in got {
        if let Some(prev) = last.insert(key, *seq) {
            assert!(prev < *seq, "{what}: key {key}: {prev} came before {seq}");
        }
    }
}

fn seqs(got: &[(u64, String)]) -> Vec<u64> {
    let mut s: Vec<u64> = got.iter().map(|(seq, _)| *seq).collect();
    s.sort_unstable();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs tansu (REMORA_SETUP_KAFKA=1 scripts/setup.sh); not yet run against a broker"]
async fn a_topic_copy_keeps_its_partitions_and_depth_is_the_groups_lag() {
    let tansu = Tansu::start();
    let broker = tansu.broker("remora-test-depth").await;
    let original = topic(&broker, "depth", 3).await;
    let props = broker.inspect(&original).await.unwrap();
    assert_eq!(props.props[PARTITIONS_PROP], "3");
    let copy = QueueName(format!("{original}.copy"));
    broker.create_like(&props, &copy).await.unwrap();
    assert_eq!(
        broker.inspect(&copy).await.unwrap().props[PARTITIONS_PROP],
        "3"
    );
    // Idempotent.
    broker.create_like(&props, &copy).await.unwrap();

    for seq in 0..30 {
        broker.publish(&copy, &message(seq)).await.unwrap();
    }
    assert_eq!(broker.depth(&copy).await.unwrap().ready, 30);
    let first = take(&broker, &copy, 10).await;
    assert_eq!(first.len(), 10);
    assert_eq!(broker.depth(&copy).await.unwrap().ready, 20);
    // Not deleted while the group has not taken everything.
    let err = broker.delete(&copy).await.unwrap_err();
    assert!(err.to_string().contains("has not taken 20"), "{err}");
    let rest = take(&broker, &copy, usize::MAX).await;
    let all: Vec<u64> = seqs(&[first, rest].concat());
    assert_eq!(all, (0..30).collect::<Vec<_>>(), "each once");
    broker.delete(&copy).await.unwrap();
    assert!(matches!(
        broker.depth(&copy).await,
        Err(BrokerError::NoQueue { .. })
    ));
    assert!(matches!(
        broker.inspect(&QueueName("remora-test.never".into())).await,
        Err(BrokerError::NoQueue { .. })
    ));
}

async fn routed(api: &RouterApi) -> u64 {
    let stats = api.stats().await.unwrap();
    stats.workload.routed + stats.sessions.iter().map(|s| s.queue.routed).sum::<u64>()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs tansu (REMORA_SETUP_KAFKA=1 scripts/setup.sh); not yet run against a broker"]
async fn a_kafka_split_routes_each_message_once_in_key_order_and_a_dead_sessions_rest_moves() {
    let n: u64 = std::env::var("REMORA_KAFKA_SPLIT_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    let tansu = Tansu::start();
    let group = "remora-test-split";
    let broker = Arc::new(tansu.broker(group).await);
    let original = topic(&broker, "split", 4).await;
    let (task, api) = RouterTask::start(
        broker.clone(),
        Arc::new(MemoryStore::default()),
        original.clone(),
        BTreeMap::new(),
        RouterConfig::default(),
    )
    .await
    .unwrap();
    let cancel = CancellationToken::new();
    let running = tokio::spawn(task.run(cancel.clone()));
    let (alice, bob) = (key("alice"), key("bob"));
    let alice_q = api
        .add_session(alice.clone(), filter("^alice$"))
        .await
        .unwrap();
    let bob_q = api.add_session(bob.clone(), filter("^bob$")).await.unwrap();
    assert_eq!(
        broker.inspect(&alice_q).await.unwrap().props[PARTITIONS_PROP],
        "4",
        "a session's topic copies the partitions"
    );

    for seq in 0..n {
        broker.publish(&original, &message(seq)).await.unwrap();
    }
    eventually("every message routed", async || {
        routed(&api).await == n && broker.depth(&original).await.unwrap().ready == 0
    })
    .await;
    let stats = api.stats().await.unwrap();
    assert_eq!((stats.requeued, stats.ack_failures), (0, 0));

    let got_bob = take(&broker, &bob_q, usize::MAX).await;
    let got_workload = take(&broker, api.workload_queue(), usize::MAX).await;
    // Alice's process takes 100, holds 20 unacknowledged and dies.
    let alice_acked = {
        let mut c = broker.consume(&alice_q, 64).await.unwrap();
        let mut acked = Vec::new();
        while acked.len() < 100 {
            let d = c.next().await.unwrap().unwrap();
            acked.push((
                d.message.headers["x-seq"].parse::<u64>().unwrap(),
                d.message.order_key.clone().unwrap(),
            ));
            c.ack(d).await.unwrap();
        }
        let mut held = Vec::new();
        for _ in 0..20 {
            held.push(c.next().await.unwrap().unwrap());
        }
        drop(held);
        acked
    };
    let of = |who: &str| (0..n).filter(|s| user(*s) == who).collect::<Vec<_>>();
    assert_eq!(seqs(&got_bob), of("bob"), "bob's, each once");
    assert_eq!(seqs(&got_workload), of("carol"), "the rest, each once");
    assert_key_order("bob", &got_bob);
    assert_key_order("workload", &got_workload);
    assert_key_order("alice", &alice_acked);

    let report = api.remove_session(&alice).await.unwrap();
    assert_eq!(report.moved, of("alice").len() as u64 - 100);
    assert!(matches!(
        broker.depth(&alice_q).await,
        Err(BrokerError::NoQueue { .. })
    ));
    let moved = take(&broker, api.workload_queue(), usize::MAX).await;
    assert_key_order("moved", &moved);
    let mut alice_all = seqs(&[alice_acked, moved].concat());
    alice_all.sort_unstable();
    assert_eq!(alice_all, of("alice"), "alice's: taken or moved, each once");
    cancel.cancel();
    running.await.unwrap();
}
