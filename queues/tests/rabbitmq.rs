//! The RabbitMQ broker against the real RabbitMQ (`scripts/setup.sh` starts
//! it): what `inspect` learns, what `create_like` copies, and that a message
//! goes through `publish` and a consumer unchanged.

#[path = "support/rabbit.rs"]
mod support;

use lapin::types::{AMQPValue, FieldArray, FieldTable};
use remora_queues::broker::{Broker, BrokerError, QueueName};
use remora_queues::rabbitmq::{self, RabbitBroker, RabbitNative, RabbitProperties};
use std::time::Duration;
use support::{Cleanup, connect, declare, unique};

fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn props_without_name(p: &remora_queues::broker::QueueProps) -> Vec<(String, String)> {
    p.props.clone().into_iter().collect()
}

#[tokio::test]
async fn a_quorum_queue_with_dead_lettering_is_read_and_copied() {
    let mut cleanup = Cleanup::default();
    let original = unique("quorum");
    let copy = QueueName(format!("{original}.copy"));
    cleanup.add(&original);
    cleanup.add(&copy);
    let conn = connect().await;
    declare(
        &conn,
        &original,
        true,
        table(&[
            ("x-queue-type", AMQPValue::LongString("quorum".into())),
            (
                "x-dead-letter-exchange",
                AMQPValue::LongString("dlx".into()),
            ),
            (
                "x-dead-letter-routing-key",
                AMQPValue::LongString("dead".into()),
            ),
            ("x-max-length", AMQPValue::LongInt(1000)),
            ("x-delivery-limit", AMQPValue::ShortShortUInt(5)),
        ]),
    )
    .await;
    let broker = RabbitBroker::connect(&support::url()).await.unwrap();
    let props = broker.inspect(&original).await.unwrap();
    let expected = [
        ("auto_delete", "false"),
        ("durable", "true"),
        ("x-dead-letter-exchange", "dlx"),
        ("x-dead-letter-routing-key", "dead"),
        ("x-delivery-limit", "5"),
        ("x-max-length", "1000"),
        ("x-queue-type", "quorum"),
    ];
    assert_eq!(
        props_without_name(&props),
        expected.map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
    broker.create_like(&props, &copy).await.unwrap();
    // Idempotent.
    broker.create_like(&props, &copy).await.unwrap();
    let copied = broker.inspect(&copy).await.unwrap();
    assert_eq!(props_without_name(&copied), props_without_name(&props));
}

#[tokio::test]
async fn a_transient_classic_queue_is_copied_without_its_expiry() {
    let mut cleanup = Cleanup::default();
    let original = unique("classic");
    let copy = QueueName(format!("{original}.copy"));
    cleanup.add(&original);
    cleanup.add(&copy);
    let conn = connect().await;
    declare(
        &conn,
        &original,
        false,
        table(&[
            ("x-message-ttl", AMQPValue::LongInt(60_000)),
            ("x-max-priority", AMQPValue::ShortShortUInt(5)),
            ("x-expires", AMQPValue::LongInt(3_600_000)),
        ]),
    )
    .await;
    let broker = RabbitBroker::connect(&support::url()).await.unwrap();
    let props = broker.inspect(&original).await.unwrap();
    assert_eq!(
        props.props.get("durable").map(String::as_str),
        Some("false")
    );
    assert_eq!(
        props.props.get("x-message-ttl").map(String::as_str),
        Some("60000")
    );
    assert_eq!(
        props.props.get("x-max-priority").map(String::as_str),
        Some("5")
    );
    assert_eq!(
        props.props.get("x-expires").map(String::as_str),
        Some("3600000")
    );
    assert_eq!(props.props.get("x-queue-type"), None);
    broker.create_like(&props, &copy).await.unwrap();
    let copied = broker.inspect(&copy).await.unwrap();
    let mut without_expiry = props.props.clone();
    without_expiry.remove("x-expires");
    assert_eq!(copied.props, without_expiry);
}

#[tokio::test]
async fn missing_queues_are_reported_and_deleting_one_is_fine() {
    let broker = RabbitBroker::connect(&support::url()).await.unwrap();
    let missing = unique("missing");
    assert!(matches!(
        broker.inspect(&missing).await,
        Err(BrokerError::NoQueue { .. })
    ));
    assert!(matches!(
        broker.depth(&missing).await,
        Err(BrokerError::NoQueue { .. })
    ));
    let m = rabbitmq::message(b"x".to_vec(), RabbitProperties::default());
    // `mandatory`: a publish to no queue is an error, not a silent drop.
    assert!(matches!(
        broker.publish(&missing, &m).await,
        Err(BrokerError::NoQueue { .. })
    ));
    broker.delete(&missing).await.unwrap();
    // The broker handle still works after the refusals closed their channels.
    assert!(broker.consume(&missing, 1).await.is_err());
}

#[tokio::test]
async fn messages_keep_typed_headers_and_properties_and_delete_waits_for_empty() {
    let mut cleanup = Cleanup::default();
    let q = unique("roundtrip");
    cleanup.add(&q);
    let conn = connect().await;
    declare(&conn, &q, true, FieldTable::default()).await;
    let broker = RabbitBroker::connect(&support::url()).await.unwrap();
    let headers = table(&[
        ("x-user", AMQPValue::LongString("alice".into())),
        ("x-n", AMQPValue::LongInt(-7)),
        ("x-flag", AMQPValue::Boolean(true)),
        (
            "x-nested",
            AMQPValue::FieldTable(table(&[("a", AMQPValue::LongInt(1))])),
        ),
        (
            "x-list",
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString("a".into())])),
        ),
    ]);
    let properties = RabbitProperties::default()
        .with_headers(headers)
        .with_content_type("application/json".into())
        .with_message_id("m-1".into())
        .with_correlation_id("c-1".into())
        .with_priority(3)
        .with_delivery_mode(2)
        .with_timestamp(1_700_000_000);
    let sent = rabbitmq::message(b"{\"n\":1}".to_vec(), properties.clone());
    broker.publish(&q, &sent).await.unwrap();
    assert_eq!(broker.depth(&q).await.unwrap().ready, 1);
    // Not empty: refused, nothing lost.
    assert!(matches!(
        broker.delete(&q).await,
        Err(BrokerError::Operation { op: "delete", .. })
    ));

    let mut consumer = broker.consume(&q, 10).await.unwrap();
    let d = consumer
        .next_within(Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the message");
    assert_eq!(d.message.body, b"{\"n\":1}");
    let pairs: Vec<(&str, &str)> = d
        .message
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [("x-flag", "true"), ("x-n", "-7"), ("x-user", "alice")]
    );
    let native = d.message.native.downcast_ref::<RabbitNative>().unwrap();
    assert_eq!(native.properties, properties);
    // Requeued, it comes back (marked redelivered); acked, it is gone.
    consumer.requeue(d).await.unwrap();
    let d = consumer
        .next_within(Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the requeued message");
    assert!(d.redelivered);
    consumer.ack(d).await.unwrap();
    assert!(
        consumer
            .next_within(Duration::from_millis(100))
            .await
            .unwrap()
            .is_none()
    );
    // A consumer is attached: still refused.
    assert!(broker.delete(&q).await.is_err());
    drop(consumer);
    support::eventually(Duration::from_secs(30), "the consumer to go", || async {
        broker.delete(&q).await.ok()
    })
    .await;
    assert!(matches!(
        broker.depth(&q).await,
        Err(BrokerError::NoQueue { .. })
    ));
}
