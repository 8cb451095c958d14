//! The Kafka broker against a real Kafka-protocol broker (tansu, started per
//! test on a free loopback port): topic copies, publish and consume with
//! headers and keys, commits only up to what was acked, depth as the group's
//! lag, deletes refused while the group lags.

#[path = "support/tansu.rs"]
mod tansu;

use remora_queues::broker::{
    Broker, BrokerError, Consumer, Delivery, Message, QueueName, QueueProps,
};
use remora_queues::kafka::{CONFIG_PREFIX, KafkaBroker, PARTITIONS_PROP};
use std::collections::{BTreeMap, HashMap};
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
