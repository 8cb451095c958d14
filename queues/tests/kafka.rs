//! The Kafka broker against a real Kafka-protocol broker (tansu, started per
//! test on a free loopback port): topic copies, publish and consume with
//! headers and keys, commits only up to what was acked, depth as the group's
//! lag, deletes refused while the group lags.

#[path = "support/tansu.rs"]
mod tansu;

use bytes::Bytes;
use remora_queues::broker::{
    Broker, BrokerError, Consumer, Delivery, Message, QueueName, QueueProps,
};
use remora_queues::kafka::{
    CONFIG_PREFIX, CommitError, Generation, KafkaBroker, KafkaNative, PARTITIONS_PROP,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;
use tansu::Tansu;

const WAIT: Duration = Duration::from_secs(5);

fn q(name: &str) -> QueueName {
    QueueName(name.to_owned())
}

fn props(partitions: u32) -> QueueProps {
    QueueProps {
        name: None,
        props: BTreeMap::from([(PARTITIONS_PROP.to_owned(), partitions.to_string())]),
    }
}

/// A message from outside Kafka: text headers, keyed by `key`.
fn message(seq: u64, user: &str, key: &str) -> Message {
    Message {
        headers: BTreeMap::from([
            ("x-user".to_owned(), user.to_owned()),
            ("x-seq".to_owned(), seq.to_string()),
        ]),
        body: format!("body {seq}").into_bytes(),
        order_key: Some(key.to_owned()),
        native: Box::new(()),
    }
}

fn seq_of(d: &Delivery) -> u64 {
    d.message.headers["x-seq"].parse().unwrap()
}

/// Takes everything `consumer` delivers until it is idle for `WAIT`.
async fn take(consumer: &mut dyn Consumer, ack: bool) -> Vec<u64> {
    let mut got = Vec::new();
    while let Some(d) = consumer.next_within(WAIT).await.unwrap() {
        got.push(seq_of(&d));
        if ack {
            consumer.ack(d).await.unwrap();
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_keeps_partitions_and_topic_configs() {
    let tansu = Tansu::start();
    let broker = tansu.broker("g").await;
    let original = q("orders");
    let mut like = props(3);
    like.props
        .insert(format!("{CONFIG_PREFIX}retention.ms"), "3600000".into());
    broker.create_like(&like, &original).await.unwrap();
    // Idempotent.
    broker.create_like(&like, &original).await.unwrap();

    let read = broker.inspect(&original).await.unwrap();
    assert_eq!(read.props[PARTITIONS_PROP], "3");
    assert_eq!(
        read.props[&format!("{CONFIG_PREFIX}retention.ms")],
        "3600000"
    );
    let copy = q("orders.remora.workload");
    broker.create_like(&read, &copy).await.unwrap();
    let copied = broker.inspect(&copy).await.unwrap();
    assert_eq!(
        copied.props, read.props,
        "the copy has the original's properties"
    );

    // A different partition count under an existing name is refused.
    let err = broker.create_like(&props(5), &copy).await.unwrap_err();
    assert!(
        matches!(err, BrokerError::Operation { op: "create", .. }),
        "{err}"
    );

    assert!(matches!(
        broker.inspect(&q("missing")).await,
        Err(BrokerError::NoQueue { .. })
    ));
    for t in [&original, &copy] {
        broker.delete(t).await.unwrap();
        assert!(matches!(
            broker.inspect(t).await,
            Err(BrokerError::NoQueue { .. })
        ));
        // Deleting again is fine.
        broker.delete(t).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_consume_ack_keep_headers_keys_and_partition_order() {
    let tansu = Tansu::start();
    let broker = tansu.broker("workers").await;
    let topic = q("events");
    broker.create_like(&props(3), &topic).await.unwrap();
    let n = 60;
    for seq in 0..n {
        broker
            .publish(&topic, &message(seq, "alice", &format!("k{}", seq % 7)))
            .await
            .unwrap();
    }
    assert_eq!(broker.depth(&topic).await.unwrap().ready, n);

    let mut consumer = broker.consume(&topic, 16).await.unwrap();
    let mut by_partition: HashMap<String, Vec<u64>> = HashMap::new();
    let mut partition_of_key: HashMap<String, String> = HashMap::new();
    let mut forwarded = Vec::new();
    for _ in 0..n {
        let d = consumer
            .next_within(WAIT)
            .await
            .unwrap()
            .expect("a message");
        let seq = seq_of(&d);
        assert_eq!(d.message.body, format!("body {seq}").into_bytes());
        assert_eq!(d.message.headers["x-user"], "alice");
        let part = d.message.order_key.clone().expect("an order key");
        // One key, one partition.
        let key = format!("k{}", seq % 7);
        assert_eq!(
            partition_of_key.entry(key).or_insert_with(|| part.clone()),
            &part
        );
        by_partition.entry(part).or_default().push(seq);
        // Forward it unchanged to a copy, as the router does.
        forwarded.push(d);
    }
    for (part, seqs) in &by_partition {
        assert!(seqs.is_sorted(), "{part} in order: {seqs:?}");
    }
    let copy = q("events.copy");
    broker.create_like(&props(3), &copy).await.unwrap();
    for d in &forwarded {
        broker.publish(&copy, &d.message).await.unwrap();
    }
    // Nothing acked yet: the group still lags by everything.
    assert_eq!(broker.depth(&topic).await.unwrap().ready, n);
    let err = broker.delete(&topic).await.unwrap_err();
    assert!(
        matches!(err, BrokerError::Operation { op: "delete", .. }),
        "{err}"
    );
    for d in forwarded {
        consumer.ack(d).await.unwrap();
    }
    assert_eq!(broker.depth(&topic).await.unwrap().ready, 0);
    assert!(
        consumer
            .next_within(Duration::from_millis(300))
            .await
            .unwrap()
            .is_none()
    );
    drop(consumer);
    broker.delete(&topic).await.unwrap();

    // The copy: same partition, key, headers, body for each message.
    let mut copy_consumer = broker.consume(&copy, 16).await.unwrap();
    let mut copy_by_partition: HashMap<String, Vec<u64>> = HashMap::new();
    while let Some(d) = copy_consumer.next_within(WAIT).await.unwrap() {
        assert_eq!(d.message.headers["x-user"], "alice");
        copy_by_partition
            .entry(d.message.order_key.clone().unwrap())
            .or_default()
            .push(seq_of(&d));
        copy_consumer.ack(d).await.unwrap();
    }
    assert_eq!(
        copy_by_partition, by_partition,
        "each message in the partition of the same number, in order"
    );
    drop(copy_consumer);
    broker.delete(&copy).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_stop_at_the_first_unacked_message_and_requeues_come_back() {
    let tansu = Tansu::start();
    let broker = tansu.broker("g1").await;
    let topic = q("jobs");
    broker.create_like(&props(1), &topic).await.unwrap();
    for seq in 0..10 {
        broker
            .publish(&topic, &message(seq, "bob", "k"))
            .await
            .unwrap();
    }
    let mut consumer = broker.consume(&topic, 4).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(consumer.next_within(WAIT).await.unwrap().unwrap());
    }
    // Ack 0, 1, 3, 5; requeue 4; leave 2 unacked.
    let mut held: Vec<Option<Delivery>> = held.into_iter().map(Some).collect();
    for i in [0, 1, 3, 5] {
        consumer.ack(held[i].take().unwrap()).await.unwrap();
    }
    consumer.requeue(held[4].take().unwrap()).await.unwrap();
    let again = consumer.next_within(WAIT).await.unwrap().unwrap();
    assert_eq!(seq_of(&again), 4);
    assert!(again.redelivered);
    // Committed up to the first unacked (2): 8 left for the group.
    assert_eq!(broker.depth(&topic).await.unwrap().ready, 8);
    drop(again);
    drop(held);
    drop(consumer);

    // A new consumer of the group starts at 2: 2, 3, 4, 5 come again.
    let mut consumer = broker.consume(&topic, 4).await.unwrap();
    let got = take(consumer.as_mut(), true).await;
    assert_eq!(got, (2..10).collect::<Vec<_>>());
    assert_eq!(broker.depth(&topic).await.unwrap().ready, 0);
    drop(consumer);

    // Another group has its own offsets: it reads everything.
    let other: std::sync::Arc<KafkaBroker> = tansu.broker("g2").await;
    assert_eq!(other.depth(&topic).await.unwrap().ready, 10);
    let mut consumer = other.consume(&topic, 4).await.unwrap();
    assert_eq!(
        take(consumer.as_mut(), true).await,
        (0..10).collect::<Vec<_>>()
    );
    drop(consumer);
    broker.delete(&topic).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_stays_a_tombstone_and_binary_headers_are_forwarded_unmatched() {
    let tansu = Tansu::start();
    let broker = tansu.broker("g").await;
    let (from, to) = (q("compacted"), q("compacted.copy"));
    for t in [&from, &to] {
        broker.create_like(&props(2), t).await.unwrap();
    }
    let native = KafkaNative {
        partition: 1,
        key: Some(Bytes::from_static(b"user-7")),
        headers: vec![
            ("x-user".into(), Some(Bytes::from_static(b"alice"))),
            ("x-raw".into(), Some(Bytes::from_static(&[0xff, 0x00]))),
            ("x-none".into(), None),
        ],
        timestamp: 1_700_000_000_000,
        null_value: true,
    };
    let tombstone = Message {
        headers: BTreeMap::new(),
        body: Vec::new(),
        order_key: None,
        native: Box::new(native),
    };
    broker.publish(&from, &tombstone).await.unwrap();
    let mut consumer = broker.consume(&from, 4).await.unwrap();
    let d = consumer
        .next_within(WAIT)
        .await
        .unwrap()
        .expect("the tombstone");
    // Only the UTF-8 header is matchable; every header is forwarded.
    assert_eq!(
        d.message.headers,
        BTreeMap::from([("x-user".to_owned(), "alice".to_owned())])
    );
    assert_eq!(d.message.order_key.as_deref(), Some("p1"));
    broker.publish(&to, &d.message).await.unwrap();
    consumer.ack(d).await.unwrap();
    let mut copy = broker.consume(&to, 4).await.unwrap();
    let d = copy.next_within(WAIT).await.unwrap().expect("the copy");
    let n = d.message.native.downcast_ref::<KafkaNative>().unwrap();
    assert!(n.null_value, "still a tombstone");
    assert_eq!(n.partition, 1);
    assert_eq!(n.key.as_deref(), Some(&b"user-7"[..]));
    assert_eq!(n.timestamp, 1_700_000_000_000);
    assert_eq!(n.headers.len(), 3, "{:?}", n.headers);
    assert_eq!(n.headers[1].1.as_deref(), Some(&[0xff, 0x00][..]));
    assert_eq!(n.headers[2].1, None);
    copy.ack(d).await.unwrap();
    drop((consumer, copy));
    for t in [&from, &to] {
        broker.delete(t).await.unwrap();
    }
}

/// Waits (at most a minute) until DescribeGroups shows `want` as the
/// group's members, and the group stable (a consumer group).
async fn members_become(broker: &KafkaBroker, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|m| (*m).to_owned()).collect();
    let start = std::time::Instant::now();
    loop {
        let group = broker.describe_group().await.unwrap();
        let ids: BTreeSet<String> = group.members.iter().map(|(id, _)| id.clone()).collect();
        let settled =
            want.is_empty() || (group.state == "Stable" && group.protocol_type == "consumer");
        if ids == want && settled {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the group: {group:?}, not members {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn partitions(g: &Generation) -> Vec<i32> {
    g.partitions.iter().copied().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_are_group_members_and_commit_with_their_generation() {
    let tansu = Tansu::start();
    let broker = tansu.broker("members").await;
    let (orders, copy) = (q("orders"), q("orders.copy"));
    broker.create_like(&props(3), &orders).await.unwrap();
    broker.create_like(&props(2), &copy).await.unwrap();
    for seq in 0..12 {
        broker
            .publish(&orders, &message(seq, "bob", &format!("k{seq}")))
            .await
            .unwrap();
    }
    // A consumer is a member of the group (DescribeGroups lists it),
    // assigned (SyncGroup) every partition of its topic: it was the
    // leader, and the only subscriber.
    let mut on_orders = broker.consumer(&orders, 16).await.unwrap();
    let first = on_orders.generation();
    assert_eq!(partitions(&first), [0, 1, 2]);
    members_become(&broker, &[&first.member_id]).await;

    // A second member on another topic: the group rebalances, the first
    // rejoins and keeps its partitions, the second gets its topic's.
    let on_copy = broker.consumer(&copy, 16).await.unwrap();
    let second = on_copy.generation();
    assert_eq!(partitions(&second), [0, 1]);
    members_become(&broker, &[&first.member_id, &second.member_id]).await;

    // The first's acks commit in the generation it rejoined in: nothing
    // left for the group.
    let got = take(&mut on_orders, true).await;
    assert_eq!(got.len(), 12);
    assert_eq!(broker.depth(&orders).await.unwrap().ready, 0);
    let now = on_orders.generation();
    assert!(now.id > first.id, "rejoined: {now:?} after {first:?}");
    assert_eq!(now.member_id, first.member_id);
    assert_eq!(partitions(&now), [0, 1, 2]);

    // A member's commit with its generation is taken; one with a
    // generation that is not the group's is refused.
    // (On the empty copy: offset 0 leaves nothing to read.)
    let offsets = BTreeMap::from([(0, 0)]);
    broker
        .commit_as(&copy, &offsets, now.id, &now.member_id)
        .await
        .unwrap();
    let stale = broker
        .commit_as(&copy, &offsets, now.id + 5, &now.member_id)
        .await
        .unwrap_err();
    assert!(matches!(stale, CommitError::Stale(_)), "{stale}");
    // As Apache Kafka, tansu refuses a commit from outside the group
    // (generation -1, no member id) while the group has members, and one
    // naming a member it does not know: UNKNOWN_MEMBER_ID (25).
    for (generation, member) in [(-1, ""), (now.id, "someone-else")] {
        let refused = broker
            .commit_as(&copy, &offsets, generation, member)
            .await
            .unwrap_err();
        assert!(matches!(refused, CommitError::Stale(25)), "{refused}");
    }

    // Dropped consumers leave the group.
    drop(on_copy);
    members_become(&broker, &[&first.member_id]).await;
    drop(on_orders);
    members_become(&broker, &[]).await;
    for t in [&orders, &copy] {
        broker.delete(t).await.unwrap();
    }
}
