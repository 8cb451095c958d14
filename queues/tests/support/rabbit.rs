//! What the RabbitMQ integration tests share: the broker's address, unique
//! queue names, a guard that deletes a test's queues also when it fails, and
//! a raw publisher/consumer that sees exactly what the broker holds.

#![allow(dead_code)]

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use remora_queues::broker::QueueName;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The broker every test uses: `REMORA_RABBITMQ_URL`, else the local one
/// `scripts/setup.sh` starts.
pub fn url() -> String {
    std::env::var("REMORA_RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A queue name no other test (or run) uses: `remora-test.<tag>.<pid>.<n>`.
pub fn unique(tag: &str) -> QueueName {
    static N: AtomicU32 = AtomicU32::new(0);
    QueueName(format!(
        "remora-test.{tag}.{}.{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Deletes its queues (unconditionally, messages and all) when dropped,
/// on a thread of its own so it also works while a test panics.
#[derive(Debug, Default)]
pub struct Cleanup(pub Vec<QueueName>);

impl Cleanup {
    pub fn add(&mut self, name: &QueueName) {
        self.0.push(name.clone());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.0);
        let url = url();
        let joined = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime");
            rt.block_on(async move {
                let Ok(conn) = Connection::connect(&url, ConnectionProperties::default()).await
                else {
                    eprintln!("cleanup: cannot reach {url}; queues left: {names:?}");
                    return;
                };
                for name in names {
                    if let Ok(ch) = conn.create_channel().await {
                        let _ = ch
                            .queue_delete(name.0.as_str().into(), QueueDeleteOptions::default())
                            .await;
                    }
                }
                let _ = conn.close(200, "done".into()).await;
            });
        })
        .join();
        if joined.is_err() {
            eprintln!("cleanup thread panicked");
        }
    }
}

/// Declares `name` (as an application would, with these flags and arguments).
pub async fn declare(conn: &Connection, name: &QueueName, durable: bool, args: FieldTable) {
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        name.0.as_str().into(),
        QueueDeclareOptions {
            durable,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await
    .unwrap_or_else(|e| panic!("declaring {name}: {e}"));
}

pub async fn connect() -> Connection {
    Connection::connect(&url(), ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "RabbitMQ at {} is not reachable ({e}): run scripts/setup.sh",
                url()
            )
        })
}

/// Polls `check` every 20 ms until it returns `Some`, for at most `limit`
/// (generous: the machine may be loaded).
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One test message: its sequence number, user and order key, as headers
/// of mixed AMQP types (`x-seq` a long, `x-user` a string or absent,
/// `x-key` a short int, `x-vip` a boolean).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sent {
    pub seq: u64,
    pub user: Option<&'static str>,
    pub key: u16,
}

/// Users in rotation; `None` sends no `x-user` header at all.
pub const USERS: [Option<&str>; 5] = [
    Some("alice"),
    Some("bob"),
    Some("carol"),
    None,
    Some("alice2"),
];

pub fn sent(seq: u64) -> Sent {
    Sent {
        seq,
        user: USERS[(seq % USERS.len() as u64) as usize],
        key: (seq % 7) as u16,
    }
}

/// Publishes messages `range` to `queue` through the default exchange, all
/// confirmed before returning.
pub async fn publish_range(conn: &Connection, queue: &QueueName, range: std::ops::Range<u64>) {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::types::AMQPValue;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for seq in range {
        let m = sent(seq);
        let mut headers = FieldTable::default();
        headers.insert("x-seq".into(), AMQPValue::LongLongInt(m.seq as i64));
        headers.insert("x-key".into(), AMQPValue::ShortUInt(m.key));
        headers.insert("x-vip".into(), AMQPValue::Boolean(seq.is_multiple_of(3)));
        if let Some(user) = m.user {
            headers.insert("x-user".into(), AMQPValue::LongString(user.into()));
        }
        let props = lapin::BasicProperties::default()
            .with_headers(headers)
            .with_delivery_mode(2)
            .with_message_id(format!("m{seq}").into());
        ch.basic_publish(
            "".into(),
            queue.0.as_str().into(),
            BasicPublishOptions::default(),
            format!("body {seq}").as_bytes(),
            props,
        )
        .await
        .unwrap();
    }
    let returned = ch.wait_for_confirms().await.unwrap();
    assert!(returned.is_empty());
}

/// Everything `queue` holds, in delivery order (consumed without acks, so
/// nothing is left), as what was sent; checks each body and message id
/// still match their headers.
pub async fn take_all(conn: &Connection, queue: &QueueName) -> Vec<Sent> {
    use futures::StreamExt;
    use lapin::options::{BasicConsumeOptions, BasicQosOptions};
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(1000, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = ch
        .basic_consume(
            queue.0.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("consuming {queue}: {e}"));
    let mut out = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(500), consumer.next()).await
    {
        let d = d.unwrap();
        let headers = remora_queues::rabbitmq::props::headers_text(d.properties.headers().as_ref());
        let seq: u64 = headers["x-seq"].parse().unwrap();
        let expected = sent(seq);
        assert_eq!(headers.get("x-user").map(String::as_str), expected.user);
        assert_eq!(headers["x-key"], expected.key.to_string());
        assert_eq!(d.data, format!("body {seq}").as_bytes());
        assert_eq!(
            d.properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str().to_owned()),
            Some(format!("m{seq}"))
        );
        out.push(expected);
    }
    let _ = ch.close(200, "done".into()).await;
    out
}
