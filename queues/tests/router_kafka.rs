//! The router on Kafka (a real tansu broker): a three-partition topic split
//! between two sessions and the workload while a producer sends to it; one
//! session's process consumes part of its topic and is killed midway, then
//! the session is removed. Exact counts on every side, each partition's
//! order kept, the temporary topics gone at the end.

#[path = "support/tansu.rs"]
mod tansu;

use remora_queues::broker::{
    Broker, BrokerError, Consumer, Delivery, Message, QueueName, QueueProps,
};
use remora_queues::filter::MessageFilter;
use remora_queues::kafka::{KafkaBroker, PARTITIONS_PROP};
use remora_queues::router::{MemoryStore, RouterApi, RouterConfig, RouterTask, SplitSessionKey};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tansu::Tansu;
use tokio_util::sync::CancellationToken;

/// How long anything may take before the test gives up (generous: the CI
/// machine is loaded).
const DEADLINE: Duration = Duration::from_secs(300);

/// The workload's consumer group: the router commits on the original in it.
const GROUP: &str = "orders-workers";

fn q(name: &str) -> QueueName {
    QueueName(name.to_owned())
}

fn key(k: &str) -> SplitSessionKey {
    SplitSessionKey::new(k).unwrap()
}

fn filter(user_regex: &str) -> MessageFilter {
    MessageFilter::new([("x-user", user_regex)]).unwrap()
}

/// Who message `seq` is for.
fn user(seq: u64) -> &'static str {
    ["alice", "bob", "carol"][(seq % 3) as usize]
}

fn seq_of(d: &Delivery) -> u64 {
    d.message.headers["x-seq"].parse().unwrap()
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn produce(broker: &KafkaBroker, topic: &QueueName, range: std::ops::Range<u64>) {
    for seq in range {
        let m = Message {
            headers: BTreeMap::from([
                ("x-user".to_owned(), user(seq).to_owned()),
                ("x-seq".to_owned(), seq.to_string()),
            ]),
            body: seq.to_string().into_bytes(),
            order_key: Some(format!("key{}", seq % 11)),
            native: Box::new(()),
        };
        broker.publish(topic, &m).await.unwrap();
    }
}

/// Reads `topic` from its start in a group of its own until idle: each
/// message's sequence number and partition, in partition order.
async fn read_all(tansu: &Tansu, topic: &QueueName, group: &str) -> Vec<(u64, String)> {
    let reader = tansu.broker(group).await;
    let mut consumer = reader.consume(topic, 64).await.unwrap();
    let mut got = Vec::new();
    while let Some(d) = consumer.next_within(Duration::from_secs(3)).await.unwrap() {
        assert_eq!(d.message.headers["x-user"], user(seq_of(&d)));
        assert_eq!(d.message.body, seq_of(&d).to_string().into_bytes());
        got.push((seq_of(&d), d.message.order_key.clone().unwrap()));
        consumer.ack(d).await.unwrap();
    }
    got
}

async fn routed_total(api: &RouterApi) -> u64 {
    let stats = api.stats().await.unwrap();
    stats.workload.routed
        + stats.sessions.iter().map(|s| s.queue.routed).sum::<u64>()
        + stats.draining.iter().map(|s| s.queue.routed).sum::<u64>()
}

/// Within each partition, sequence numbers increase (the producer sends in
/// order, and a key's messages share a partition).
fn assert_partition_order(what: &str, got: &[(u64, String)]) {
    let mut last: HashMap<&str, u64> = HashMap::new();
    for (seq, part) in got {
        if let Some(before) = last.insert(part, *seq) {
            assert!(
                before < *seq,
                "{what}: {before} came before {seq} in {part}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_topic_delivers_exactly_once_with_a_session_killed_midway() {
    let n: u64 = std::env::var("REMORA_KAFKA_MESSAGES").map_or(10_000, |v| v.parse().unwrap());
    let tansu = Tansu::start();
    let broker = tansu.broker(GROUP).await;
    let original = q("orders");
    let props = QueueProps {
        name: None,
        props: BTreeMap::from([(PARTITIONS_PROP.to_owned(), "3".to_owned())]),
    };
    broker.create_like(&props, &original).await.unwrap();

    let store = Arc::new(MemoryStore::default());
    let (task, api) = RouterTask::start(
        broker.clone(),
        store.clone(),
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
    assert_eq!(alice_q, q("orders.remora.alice"));
    let workload_q = api.workload_queue().clone();
    for tmp in [&alice_q, &bob_q, &workload_q] {
        let copied = broker.inspect(tmp).await.unwrap();
        assert_eq!(copied.props[PARTITIONS_PROP], "3", "{tmp}");
    }
    // The router reads the original as a member of the workload's group
    // (the only member yet).
    eventually("the router to join the group", || async {
        let group = broker.describe_group().await.unwrap();
        group.members.len() == 1 && group.state == "Stable" && group.protocol_type == "consumer"
    })
    .await;
    let router_member = broker.describe_group().await.unwrap().members[0].0.clone();
    // An overlapping filter is refused.
    assert!(
        api.add_session(key("mallory"), filter("^(alice|mallory)$"))
            .await
            .is_err()
    );

    let start = Instant::now();
    let producer = {
        let broker = broker.clone();
        let original = original.clone();
        tokio::spawn(async move { produce(&broker, &original, 0..n).await })
    };

    // Midway, alice's process (same group as the workload: same code) acks
    // ten messages, holds five unacked and is killed.
    eventually("a third to be routed", || async {
        routed_total(&api).await >= n / 3
    })
    .await;
    let mut alice_consumer = broker.consumer(&alice_q, 16).await.unwrap();
    // Alice's process joined the group too (the group rebalanced; the
    // router rejoined, as the same member).
    let alice_member = alice_consumer.generation();
    assert_eq!(alice_member.partitions.len(), 3, "{alice_member:?}");
    eventually("alice and the router to be the group's members", || async {
        let group = broker.describe_group().await.unwrap();
        let mut ids: Vec<String> = group.members.into_iter().map(|(id, _)| id).collect();
        ids.sort();
        let mut want = vec![router_member.clone(), alice_member.member_id.clone()];
        want.sort();
        ids == want && group.state == "Stable"
    })
    .await;
    let mut alice_acked = Vec::new();
    let mut held = Vec::new();
    for i in 0..15 {
        let d = alice_consumer
            .next_within(Duration::from_secs(10))
            .await
            .unwrap()
            .expect("alice's topic has messages");
        assert_eq!(d.message.headers["x-user"], "alice");
        if i < 10 {
            alice_acked.push(seq_of(&d));
            alice_consumer.ack(d).await.unwrap();
        } else {
            held.push(d);
        }
    }
    drop(held);
    drop(alice_consumer);
    let report = api.remove_session(&alice).await.unwrap();
    assert!(report.moved >= 5, "{report:?}: the five unacked moved");
    assert!(matches!(
        broker.inspect(&alice_q).await,
        Err(BrokerError::NoQueue { .. })
    ));

    producer.await.unwrap();
    eventually("every message to be routed", || async {
        broker.depth(&original).await.unwrap().ready == 0
    })
    .await;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let stats = api.stats().await.unwrap();
    assert_eq!((stats.requeued, stats.ack_failures), (0, 0), "{stats:?}");
    cancel.cancel();
    let state = running.await.unwrap();
    assert_eq!(state.sessions.len(), 1);
    assert!(state.draining.is_empty());

    let got_bob = read_all(&tansu, &bob_q, "reader-bob").await;
    let got_workload = read_all(&tansu, &workload_q, "reader-workload").await;
    eprintln!(
        "routed {n} messages on tansu: {rate:.0} messages/s; bob {}, workload {} ({} moved from alice, {} consumed by her)",
        got_bob.len(),
        got_workload.len(),
        report.moved,
        alice_acked.len()
    );
    let mut sorted_bob: Vec<u64> = got_bob.iter().map(|(s, _)| *s).collect();
    sorted_bob.sort_unstable();
    let want_bob: Vec<u64> = (0..n).filter(|s| user(*s) == "bob").collect();
    assert_eq!(
        sorted_bob, want_bob,
        "bob got exactly his messages, once each"
    );
    // Bob's session lived throughout: each partition's order is kept.
    assert_partition_order("bob", &got_bob);
    let mut sorted_workload: Vec<u64> = got_workload.iter().map(|(s, _)| *s).collect();
    sorted_workload.extend(&alice_acked);
    sorted_workload.sort_unstable();
    let want_workload: Vec<u64> = (0..n).filter(|s| user(*s) != "bob").collect();
    assert_eq!(
        sorted_workload, want_workload,
        "the workload got everything else (alice's unconsumed too), once each"
    );
    // Carol's messages never went through a session: their order is kept.
    let carol: Vec<(u64, String)> = got_workload
        .iter()
        .filter(|(s, _)| user(*s) == "carol")
        .cloned()
        .collect();
    assert_partition_order("workload (carol)", &carol);

    // The readers consumed everything: the topics can go.
    for (name, group) in [
        (&bob_q, "reader-bob"),
        (&workload_q, "reader-workload"),
        (&original, GROUP),
    ] {
        tansu.broker(group).await.delete(name).await.unwrap();
    }
}

/// The operator SIGKILLed midway, on Kafka: a router with its own broker
/// connections is aborted while records wait, and a router resumed from
/// the saved state (bob's session having ended meanwhile) finishes the
/// split. Nothing is lost: every record reaches alice's topic or the
/// workload's (bob's with his session); records read twice are at most
/// what the killed router held uncommitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_killed_midway_resumes_from_its_saved_state() {
    const N: u64 = 1_500;
    let config = RouterConfig::default();
    let tansu = Tansu::start();
    let setup = tansu.broker(GROUP).await;
    let original = q("payments");
    let props = QueueProps {
        name: None,
        props: BTreeMap::from([(PARTITIONS_PROP.to_owned(), "3".to_owned())]),
    };
    setup.create_like(&props, &original).await.unwrap();
    produce(&setup, &original, 0..N).await;
    let store = Arc::new(MemoryStore::default());
    let (alice, bob) = (key("alice"), key("bob"));
    let (alice_q, bob_q) = {
        // The first operator: its own connections, gone with its task.
        let broker = tansu.broker(GROUP).await;
        let (task, api) = RouterTask::start(
            broker.clone(),
            store.clone(),
            original.clone(),
            BTreeMap::new(),
            config.clone(),
        )
        .await
        .unwrap();
        let running = tokio::spawn(task.run(CancellationToken::new()));
        let alice_q = api
            .add_session(alice.clone(), filter("^alice$"))
            .await
            .unwrap();
        let bob_q = api.add_session(bob.clone(), filter("^bob$")).await.unwrap();
        eventually("the router to be midway", || async {
            routed_total(&api).await >= N / 4
        })
        .await;
        running.abort();
        assert!(running.await.unwrap_err().is_cancelled());
        (alice_q, bob_q)
    };
    let saved = store.load().expect("the router saved its state");
    assert_eq!(saved.sessions.len(), 2);

    // The restarted operator: bob's session ended while it was down.
    let broker = tansu.broker(GROUP).await;
    let live = std::collections::BTreeSet::from([alice.clone()]);
    let (task, api) =
        RouterTask::resume(broker.clone(), store.clone(), saved, &live, config.clone())
            .await
            .unwrap();
    let cancel = CancellationToken::new();
    let running = tokio::spawn(task.run(cancel.clone()));
    eventually(
        "the original read to its end and bob's topic drained",
        || async {
            let state = api.state().await.unwrap();
            broker.depth(&original).await.unwrap().ready == 0 && state.draining.is_empty()
        },
    )
    .await;
    assert!(matches!(
        broker.inspect(&bob_q).await,
        Err(BrokerError::NoQueue { .. })
    ));
    cancel.cancel();
    let state = running.await.unwrap();
    assert_eq!(
        state.sessions.iter().map(|s| &s.key).collect::<Vec<_>>(),
        [&alice]
    );

    let got_alice = read_all(&tansu, &alice_q, "reader-alice").await;
    let got_workload = read_all(&tansu, api.workload_queue(), "reader-workload").await;
    let distinct = |got: &[(u64, String)]| {
        got.iter()
            .map(|(s, _)| *s)
            .collect::<std::collections::BTreeSet<u64>>()
    };
    let want = |pred: &dyn Fn(u64) -> bool| -> std::collections::BTreeSet<u64> {
        (0..N).filter(|s| pred(*s)).collect()
    };
    assert_eq!(distinct(&got_alice), want(&|s| user(s) == "alice"));
    assert_eq!(
        distinct(&got_workload),
        want(&|s| user(s) != "alice"),
        "the workload got everything else (bob's with his session)"
    );
    let duplicates = got_alice.len() + got_workload.len() - N as usize;
    eprintln!("{duplicates} records read twice after the router's crash");
    // The killed router's forwards not yet committed: at most its prefetch,
    // plus one per topic being drained.
    assert!(
        duplicates <= usize::from(config.prefetch) + 1,
        "{duplicates} duplicates after one crash, more than the prefetch of {}",
        config.prefetch
    );
    // (tansu keeps its topics in memory and goes with the test.)
}
