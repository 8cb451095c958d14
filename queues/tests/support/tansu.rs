//! A `tansu` broker (a Kafka-protocol broker with in-memory storage,
//! installed by scripts/setup.sh) for one test: started on a free loopback
//! port, killed by PID when dropped.

#![allow(dead_code)]

use remora_queues::broker::QueueName;
use remora_queues::kafka::{KafkaBroker, KafkaConfig};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A `tansu` of this test; killed by PID on drop.
pub struct Tansu {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub bootstrap: String,
}

impl Tansu {
    /// Starts one (`$TANSU` or `tansu` from `PATH`) and waits until it
    /// accepts connections.
    pub fn start() -> Self {
        let bin = std::env::var("TANSU").unwrap_or_else(|_| "tansu".into());
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&bin)
            .args(["broker", "--kafka-listener-url", &url])
            .args(["--kafka-advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e} (run scripts/setup.sh)"));
        let tansu = Self {
            child,
            bootstrap: format!("127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(&tansu.bootstrap).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {url}");
            std::thread::sleep(Duration::from_millis(50));
        }
        tansu
    }

    /// A broker for it whose split group is `group`.
    pub async fn broker(&self, group: &str) -> KafkaBroker {
        KafkaBroker::connect(KafkaConfig {
            bootstrap_servers: self.bootstrap.clone(),
            group: group.to_owned(),
            sasl: None,
        })
        .await
        .expect("connecting to tansu")
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A topic name no other test uses.
pub fn unique(tag: &str) -> QueueName {
    static N: AtomicU32 = AtomicU32::new(0);
    QueueName(format!(
        "remora-test.{tag}.{}.{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}
