//! Per-key order through the router when the broker may store concurrent
//! publishes out of call order (as SQS and Kafka producers can): the real
//! RabbitMQ behind a wrapper that gives each message an order key (its
//! `x-key` header) and delays each publish by a varying amount before
//! handing it to RabbitMQ. Only the router's per-key sequencing keeps each
//! key's messages in order then.

#[path = "support/rabbit.rs"]
mod support;

use async_trait::async_trait;
use lapin::types::FieldTable;
use remora_queues::broker::{
    Broker, BrokerKind, Consumer, Delivery, Message, QueueDepth, QueueName, QueueProps, Result,
};
use remora_queues::filter::MessageFilter;
use remora_queues::rabbitmq::RabbitBroker;
use remora_queues::router::{
    MemoryStore, Owner, RouterConfig, RouterTask, SplitSessionKey, temp_queue_name,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use support::{Cleanup, Sent, connect, declare, eventually, publish_range, sent, take_all, unique};
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
struct Keyed(RabbitBroker);

#[derive(Debug)]
struct KeyedConsumer(Box<dyn Consumer>);

fn keyed(d: Option<Delivery>) -> Option<Delivery> {
    d.map(|mut d| {
        d.message.order_key = d.message.headers.get("x-key").cloned();
        d
    })
}

#[async_trait]
impl Consumer for KeyedConsumer {
    async fn next(&mut self) -> Result<Option<Delivery>> {
        Ok(keyed(self.0.next().await?))
    }
    async fn next_within(&mut self, wait: Duration) -> Result<Option<Delivery>> {
        Ok(keyed(self.0.next_within(wait).await?))
    }
    async fn ack(&mut self, delivery: Delivery) -> Result<()> {
        self.0.ack(delivery).await
    }
    async fn requeue(&mut self, delivery: Delivery) -> Result<()> {
        self.0.requeue(delivery).await
    }
}

#[async_trait]
impl Broker for Keyed {
    fn kind(&self) -> BrokerKind {
        self.0.kind()
    }
    async fn inspect(&self, queue: &QueueName) -> Result<QueueProps> {
        self.0.inspect(queue).await
    }
    async fn create_like(&self, like: &QueueProps, name: &QueueName) -> Result<()> {
        self.0.create_like(like, name).await
    }
    async fn delete(&self, name: &QueueName) -> Result<()> {
        self.0.delete(name).await
    }
    async fn depth(&self, name: &QueueName) -> Result<QueueDepth> {
        self.0.depth(name).await
    }
    async fn consume(&self, name: &QueueName, prefetch: u16) -> Result<Box<dyn Consumer>> {
        Ok(Box::new(KeyedConsumer(
            self.0.consume(name, prefetch).await?,
        )))
    }
    async fn publish(&self, name: &QueueName, message: &Message) -> Result<()> {
        // 0 to 3 ms, varying from message to message: concurrent publishes
        // reach the broker in another order than they were called.
        let seq: u64 = message.headers["x-seq"].parse().unwrap();
        tokio::time::sleep(Duration::from_micros(seq.wrapping_mul(7919) % 3000)).await;
        self.0.publish(name, message).await
    }
}

#[tokio::test]
async fn messages_of_one_order_key_keep_their_order() {
    const N: u64 = 2_000;
    let mut cleanup = Cleanup::default();
    let original = unique("keys");
    let alice = SplitSessionKey::new("alice").unwrap();
    cleanup.add(&original);
    cleanup.add(&temp_queue_name(
        BrokerKind::Rabbitmq,
        &original,
        Owner::Workload,
    ));
    cleanup.add(&temp_queue_name(
        BrokerKind::Rabbitmq,
        &original,
        Owner::Session(&alice),
    ));
    let conn = connect().await;
    declare(&conn, &original, true, FieldTable::default()).await;
    publish_range(&conn, &original, 0..N).await;
    let broker = Arc::new(Keyed(RabbitBroker::connect(&support::url()).await.unwrap()));
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
    let alice_q = api
        .add_session(alice, MessageFilter::new([("x-user", "^alice$")]).unwrap())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(120),
        "every message to be routed",
        || async {
            let s = api.stats().await.unwrap();
            let routed = s.workload.routed + s.sessions[0].queue.routed;
            (routed == N && s.original.depth.is_some_and(|d| d.ready == 0)).then_some(())
        },
    )
    .await;
    cancel.cancel();
    running.await.unwrap();

    for (queue, is_alice) in [(&alice_q, true), (api.workload_queue(), false)] {
        let got = take_all(&conn, queue).await;
        let expected: BTreeSet<Sent> = (0..N)
            .map(sent)
            .filter(|m| (m.user == Some("alice")) == is_alice)
            .collect();
        assert_eq!(got.len(), expected.len(), "{queue}: no duplicates");
        assert_eq!(
            got.iter().cloned().collect::<BTreeSet<_>>(),
            expected,
            "{queue}"
        );
        let mut last: BTreeMap<u16, u64> = BTreeMap::new();
        for m in &got {
            if let Some(prev) = last.insert(m.key, m.seq) {
                assert!(
                    prev < m.seq,
                    "{queue}: key {} had {} before {}",
                    m.key,
                    prev,
                    m.seq
                );
            }
        }
    }
}
