//! A `moto_server` (a local SQS, installed by scripts/setup.sh) for one
//! test: started on a free loopback port, killed by PID when dropped.
//!
//! It runs through `moto_server.py` beside this file: moto's own server and
//! SQS backend, with its requests made atomic and its per-message scans of
//! a whole queue removed (docs/queues.md, "moto, mended"). `MOTO_SERVER`
//! names a server to run as it is instead.

// Each test binary uses a part of this.
#![allow(dead_code)]

use remora_queues::sqs::{SqsBroker, SqsConfig};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// The launcher that mends moto (see its docstring).
const MENDED: &str = include_str!("moto_server.py");

/// A `moto_server` of this test; killed by PID on drop.
pub struct Moto {
    child: Child,
    /// Its endpoint, `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Moto {
    /// Starts one: `$MOTO_SERVER` as it is, else moto mended by
    /// `moto_server.py` (python3 with moto from scripts/setup.sh).
    pub fn start() -> Self {
        let (bin, mended) = match std::env::var("MOTO_SERVER") {
            Ok(bin) => (bin, None),
            Err(_) => ("python3".to_owned(), Some(MENDED)),
        };
        let mut command = Command::new(&bin);
        if let Some(script) = mended {
            command.args(["-c", script]);
        }
        let mut child = command
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
        // Before that, it keeps the last lines to say why a server that
        // ends at once (no moto installed) ended.
        std::thread::spawn(move || {
            let mut port_tx = Some(port_tx);
            let mut said = std::collections::VecDeque::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("Running on http://127.0.0.1:").nth(1)
                    && let Some(tx) = port_tx.take()
                {
                    let _ = tx.send(Ok(rest.trim().to_owned()));
                } else if port_tx.is_some() {
                    said.push_back(line);
                    if said.len() > 10 {
                        said.pop_front();
                    }
                }
            }
            if let Some(tx) = port_tx {
                let _ = tx.send(Err(Vec::from(said).join("\n")));
            }
        });
        let mut moto = Self {
            child,
            url: String::new(),
        };
        let port = match port_rx.recv_timeout(Duration::from_secs(120)) {
            Ok(Ok(port)) => port,
            Ok(Err(said)) => panic!("{bin} ended before it served (run scripts/setup.sh):\n{said}"),
            Err(e) => panic!("{bin} did not report its port: {e}"),
        };
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
