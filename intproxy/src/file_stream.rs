//! Write streams: a write-only remote file exposed to the application as a
//! local socket.
//!
//! Programs write files in ways the layer cannot hook (glibc's stdio writes
//! through internal symbols; a shell redirects a file to an exec'd child, whose
//! new image knows nothing of the parent's bookkeeping). A kernel socket works
//! for all of them: the intproxy reads what arrives and writes it to the remote
//! file in order, closing it when every copy of the socket is closed.
//!
//! # Consistency
//! A later request naming the same path (an `open`, `stat`...) waits until the
//! stream is drained (at most [`DRAIN_WAIT`]), so `echo x > f; cat f` reads
//! what was written.

use crate::agent_link::AgentApi;
use registry::Registry;
use remora_protocol::fs::{FsReply, FsRequest};
use remora_protocol::messages::InterceptorAddr;
use remora_protocol::{RemoteFd, RemoteResult, Request, Response};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// Largest write sent to the agent in one request.
const WRITE_CHUNK: usize = 1024 * 1024;
/// How long a request naming a path waits for that path's streams to drain.
pub const DRAIN_WAIT: Duration = Duration::from_secs(2);
/// How long the stream waits for the layer to connect.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);

mod registry {
    //! Paths with streams in flight, and a wake-up when one finishes.
    use std::collections::HashMap;
    use std::sync::Mutex;
    use tokio::sync::Notify;

    #[derive(Debug, Default)]
    pub struct Registry {
        active: Mutex<HashMap<String, usize>>,
        finished: Notify,
    }

    impl Registry {
        pub fn start(&self, path: &str) {
            if let Ok(mut a) = self.active.lock() {
                *a.entry(path.to_string()).or_default() += 1;
            }
        }

        pub fn finish(&self, path: &str) {
            if let Ok(mut a) = self.active.lock() {
                if let Some(n) = a.get_mut(path) {
                    *n -= 1;
                    if *n == 0 {
                        a.remove(path);
                    }
                }
            }
            self.finished.notify_waiters();
        }

        pub fn busy(&self, path: &str) -> bool {
            self.active
                .lock()
                .map(|a| a.contains_key(path))
                .unwrap_or(false)
        }

        pub async fn changed(&self) {
            self.finished.notified().await;
        }
    }
}

/// Every write stream of this intproxy.
#[derive(Debug, Clone, Default)]
pub struct WriteStreams {
    registry: Arc<Registry>,
}

impl WriteStreams {
    /// Start a stream to remote `fd` and return where the layer connects.
    pub async fn start(
        &self,
        agent: AgentApi,
        fd: RemoteFd,
        path: String,
    ) -> RemoteResult<InterceptorAddr> {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .map_err(|e| remora_protocol::RemoteError::from_io("intproxy: binding", &e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| remora_protocol::RemoteError::from_io("intproxy: binding", &e))?;
        self.registry.start(&path);
        let registry = self.registry.clone();
        tokio::spawn(async move {
            if let Err(e) = pump(&agent, fd, listener).await {
                // The app's next write on the stream fails (the socket is
                // closed); this says why.
                tracing::warn!("writing {path} in the target failed: {e}");
            }
            let _ = agent.request(Request::Fs(FsRequest::Close { fd })).await;
            registry.finish(&path);
        });
        Ok(InterceptorAddr::Ip(addr))
    }

    /// Wait (bounded) until no stream writes to `path`.
    pub async fn drained(&self, path: &str) {
        let wait = async {
            while self.registry.busy(path) {
                let changed = self.registry.changed();
                if !self.registry.busy(path) {
                    break;
                }
                changed.await;
            }
        };
        let _ = tokio::time::timeout(DRAIN_WAIT, wait).await;
    }
}

/// Copy the app's stream into remote `fd`, every byte: a short `Written(n)`
/// sends the rest again, and an error ends the stream with that error.
async fn pump(agent: &AgentApi, fd: RemoteFd, listener: TcpListener) -> Result<(), String> {
    let Ok(Ok((mut stream, _))) = tokio::time::timeout(ACCEPT_TIMEOUT, listener.accept()).await
    else {
        return Ok(());
    };
    drop(listener);
    let mut buf = vec![0u8; WRITE_CHUNK];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => n,
        };
        let mut data = bytes::Bytes::copy_from_slice(&buf[..n]);
        while !data.is_empty() {
            let request = Request::Fs(FsRequest::Write {
                fd,
                data: data.clone(),
            });
            match agent.request(request).await {
                Ok(Response::Fs(FsReply::Written(w))) if w > 0 => {
                    let w = usize::try_from(w).unwrap_or(usize::MAX).min(data.len());
                    let _ = data.split_to(w);
                }
                Ok(Response::Fs(FsReply::Written(_))) => {
                    return Err("the target wrote nothing (is its disk full?)".into());
                }
                Ok(other) => return Err(format!("unexpected reply {other:?}")),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// The path a file-system request names, if any (for [`WriteStreams::drained`]).
pub fn path_of(request: &Request) -> Option<&str> {
    let Request::Fs(fs) = request else {
        return None;
    };
    fs.paths().first().copied()
}
