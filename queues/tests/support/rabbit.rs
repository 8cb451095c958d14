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
