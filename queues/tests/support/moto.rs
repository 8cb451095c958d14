//! A `moto_server` (a local SQS, installed by scripts/setup.sh) for one
//! test: started on a free loopback port, killed by PID when dropped.

// Each test binary uses a part of this.
#![allow(dead_code)]

use remora_queues::broker::{
    Broker, BrokerKind, Consumer, Delivery, Message, QueueDepth, QueueName, QueueProps, Result,
};
use remora_queues::sqs::{SqsBroker, SqsConfig};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// A `moto_server` of this test; killed by PID on drop.
pub struct Moto {
    child: Child,
    /// Its endpoint, `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Moto {
    /// Starts one (`$MOTO_SERVER` or `moto_server` from `PATH`).
    pub fn start() -> Self {
        let bin = std::env::var("MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let mut child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e} (run scripts/setup.sh)"));
        let stderr = child.stderr.take().expect("piped stderr");
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        // Reads the port from the start-up line, then keeps draining the
        // request log so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut port_tx = Some(port_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("Running on http://127.0.0.1:").nth(1)
                    && let Some(tx) = port_tx.take()
                {
                    let _ = tx.send(rest.trim().to_owned());
                }
            }
        });
        let mut moto = Self {
            child,
            url: String::new(),
        };
        let port = port_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("moto_server did not report its port");
        moto.url = format!("http://127.0.0.1:{port}");
        moto
    }

    /// A broker for it.
    pub fn broker(&self) -> Arc<SqsBroker> {
        Arc::new(SqsBroker::new(SqsConfig::local(&self.url)))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A broker that takes `writes` around the writes that remove messages or
/// queues (ack, requeue, create, delete), for tests where the router acks on
/// the original queue while the test's producer sends to it (holding the
/// same lock).
///
/// moto is not safe for concurrent writers of one queue: a DeleteMessage
/// rebuilds the queue's message list without its lock, so a message sent (or
/// deleted) meanwhile can be lost (or come back). Real SQS has no such
/// problem; serialising these writes keeps the test about the code under
/// test. Publishes only append (under moto's lock) and are not serialised:
/// the router's forwards are futures it polls only between its own awaits,
/// so a forward holding this lock while the router awaits an ack would
/// deadlock. Receives, long polls and the consumer's visibility heartbeat
/// stay concurrent (they change messages in place).
#[derive(Debug)]
pub struct Serialized {
    /// The real broker.
    pub inner: Arc<SqsBroker>,
    /// Held around each write.
    pub writes: Arc<tokio::sync::Mutex<()>>,
}

impl Serialized {
    /// Wraps `inner`.
    pub fn new(inner: Arc<SqsBroker>) -> Self {
        Self {
            inner,
            writes: Arc::default(),
        }
    }
}

#[async_trait::async_trait]
impl Broker for Serialized {
    fn kind(&self) -> BrokerKind {
        self.inner.kind()
    }

    async fn inspect(&self, queue: &QueueName) -> Result<QueueProps> {
        self.inner.inspect(queue).await
    }

    async fn create_like(&self, like: &QueueProps, name: &QueueName) -> Result<()> {
        let _write = self.writes.lock().await;
        self.inner.create_like(like, name).await
    }

    async fn delete(&self, name: &QueueName) -> Result<()> {
        let _write = self.writes.lock().await;
        self.inner.delete(name).await
    }

    async fn depth(&self, name: &QueueName) -> Result<QueueDepth> {
        self.inner.depth(name).await
    }

    async fn consume(&self, name: &QueueName, prefetch: u16) -> Result<Box<dyn Consumer>> {
        Ok(Box::new(SerializedConsumer {
            inner: self.inner.consume(name, prefetch).await?,
            writes: self.writes.clone(),
        }))
    }

    async fn publish(&self, name: &QueueName, message: &Message) -> Result<()> {
        self.inner.publish(name, message).await
    }
}

/// The consumer of a [`Serialized`] broker.
#[derive(Debug)]
struct SerializedConsumer {
    inner: Box<dyn Consumer>,
    writes: Arc<tokio::sync::Mutex<()>>,
}

#[async_trait::async_trait]
impl Consumer for SerializedConsumer {
    async fn next(&mut self) -> Result<Option<Delivery>> {
        self.inner.next().await
    }

    async fn next_within(&mut self, wait: Duration) -> Result<Option<Delivery>> {
        self.inner.next_within(wait).await
    }

    async fn ack(&mut self, delivery: Delivery) -> Result<()> {
        let _write = self.writes.lock().await;
        self.inner.ack(delivery).await
    }

    async fn requeue(&mut self, delivery: Delivery) -> Result<()> {
        let _write = self.writes.lock().await;
        self.inner.requeue(delivery).await
    }
}
