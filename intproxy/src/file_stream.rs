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
//!
//! # Errors
//! A failed remote write ends the stream with that error, kept by the
//! registry: the layer's `fsync` and `close` of the stream ask for it
//! (`LayerRequest::StreamSync`, after its bytes are all acknowledged), and
//! its `write` turns the `EPIPE` of the closed stream into it.

use crate::agent_link::AgentApi;
use registry::Registry;
use remora_protocol::fs::{FsReply, FsRequest};
use remora_protocol::messages::InterceptorAddr;
use remora_protocol::{ErrorCode, RemoteError, RemoteFd, RemoteResult, Request, Response};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// Largest write sent to the agent in one request.
const WRITE_CHUNK: usize = 1024 * 1024;
/// How long a request naming a path waits for that path's streams to drain.
pub const DRAIN_WAIT: Duration = Duration::from_secs(2);
/// How long the stream waits for the layer to connect.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);

mod registry {
    //! Paths with streams in flight, and a wake-up when one finishes; the
    //! live streams by address (for `StreamSync`) and the errors of the
    //! streams that failed, until someone asks.
    use super::{StreamError, SyncCommand};
    use std::collections::{HashMap, VecDeque};
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use tokio::sync::{Notify, mpsc};

    /// Failed streams remembered for a later `StreamSync` (oldest forgotten first).
    const FAILED_KEPT: usize = 1024;

    #[derive(Debug, Default)]
    pub struct Registry {
        active: Mutex<HashMap<String, usize>>,
        finished: Notify,
        live: Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<SyncCommand>>>,
        failed: Mutex<VecDeque<(SocketAddr, StreamError)>>,
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

        /// Register a live stream at `addr`; `false` when a live stream
        /// already has that address (a port reused while the other lives).
        pub fn register(&self, addr: SocketAddr, tx: mpsc::UnboundedSender<SyncCommand>) -> bool {
            let Ok(mut live) = self.live.lock() else {
                return false;
            };
            if live.contains_key(&addr) {
                return false;
            }
            live.insert(addr, tx);
            if let Ok(mut failed) = self.failed.lock() {
                failed.retain(|(a, _)| *a != addr);
            }
            true
        }

        /// The stream at `addr` ended, with `error` if it failed.
        pub fn ended(&self, addr: SocketAddr, error: Option<StreamError>) {
            if let Ok(mut live) = self.live.lock() {
                live.remove(&addr);
            }
            if let (Some(error), Ok(mut failed)) = (error, self.failed.lock()) {
                if failed.len() >= FAILED_KEPT {
                    failed.pop_front();
                }
                failed.push_back((addr, error));
            }
        }

        /// The live stream at `addr`, or the error it ended with.
        pub fn lookup(
            &self,
            addr: SocketAddr,
        ) -> Result<Option<mpsc::UnboundedSender<SyncCommand>>, StreamError> {
            if let Some(tx) = self.live.lock().ok().and_then(|l| l.get(&addr).cloned()) {
                return Ok(Some(tx));
            }
            let failed = self.failed.lock().ok();
            match failed.and_then(|f| f.iter().find(|(a, _)| *a == addr).map(|(_, e)| e.clone())) {
                Some(error) => Err(error),
                None => Ok(None),
            }
        }
    }
}

/// Why a stream failed: the first remote error, kept for every later
/// `StreamSync` (as a file's write error stays with its `fsync`).
pub type StreamError = RemoteError;

/// A `StreamSync` for the stream's pump: drain, optionally sync, answer.
#[derive(Debug)]
pub struct SyncCommand {
    sync: Option<bool>,
    reply: oneshot::Sender<RemoteResult<()>>,
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
        let (tx, rx) = mpsc::unbounded_channel();
        // A fresh port can equal the listening address of a stream still
        // alive (its listener is closed once accepted): take another one.
        let (listener, addr) = loop {
            let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
                .await
                .map_err(|e| RemoteError::from_io("intproxy: binding", &e))?;
            let addr = listener
                .local_addr()
                .map_err(|e| RemoteError::from_io("intproxy: binding", &e))?;
            if self.registry.register(addr, tx.clone()) {
                break (listener, addr);
            }
        };
        drop(tx);
        self.registry.start(&path);
        let registry = self.registry.clone();
        tokio::spawn(async move {
            let mut rx = rx;
            let outcome = pump(&agent, fd, listener, &mut rx).await;
            let closed = agent.request(Request::Fs(FsRequest::Close { fd })).await;
            let error = match (outcome, closed) {
                (Err(e), _) => Some(e),
                (Ok(()), Ok(Response::Fs(FsReply::Done))) => None,
                (Ok(()), Ok(other)) => Some(RemoteError::new(
                    ErrorCode::Other(EIO),
                    format!("unexpected reply {other:?}"),
                )),
                (Ok(()), Err(e)) => Some(e),
            };
            if let Some(e) = &error {
                // The program's next write, fsync or close on the stream
                // fails with this error (the layer asks); this says why.
                tracing::warn!("writing {path} in the target failed: {e}");
            }
            registry.ended(addr, error.clone());
            // Syncs that came in meanwhile get the outcome (later ones find
            // it in the registry: it is recorded before the channel closes).
            rx.close();
            while let Ok(command) = rx.try_recv() {
                let _ = command.reply.send(error.clone().map_or(Ok(()), Err));
            }
            registry.finish(&path);
        });
        Ok(InterceptorAddr::Ip(addr))
    }

    /// `LayerRequest::StreamSync`: every byte that reached the stream at
    /// `addr` is written (and with `sync`, synced) in the target, or the
    /// stream's error. An unknown address (already ended cleanly) is done.
    pub async fn sync(&self, addr: SocketAddr, sync: Option<bool>) -> RemoteResult<()> {
        let tx = match self.registry.lookup(addr)? {
            Some(tx) => tx,
            None => return Ok(()),
        };
        let (reply, answer) = oneshot::channel();
        if tx.send(SyncCommand { sync, reply }).is_err() {
            // The pump ended meanwhile: its outcome is recorded now.
            return self.registry.lookup(addr).map(|_| ());
        }
        match answer.await {
            Ok(result) => result,
            Err(_) => self.registry.lookup(addr).map(|_| ()),
        }
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

/// Linux errno numbers the streams report.
const EIO: i32 = 5;
const ENOSPC: i32 = 28;

/// Write `data` to remote `fd`, every byte: a short `Written(n)` sends the
/// rest again.
async fn write_all(agent: &AgentApi, fd: RemoteFd, mut data: bytes::Bytes) -> RemoteResult<()> {
    while !data.is_empty() {
        let request = Request::Fs(FsRequest::Write {
            fd,
            data: data.clone(),
        });
        match agent.request(request).await? {
            Response::Fs(FsReply::Written(w)) if w > 0 => {
                let w = usize::try_from(w).unwrap_or(usize::MAX).min(data.len());
                let _ = data.split_to(w);
            }
            Response::Fs(FsReply::Written(_)) => {
                // ENOSPC: a write that moves nothing.
                return Err(RemoteError::new(
                    ErrorCode::Other(ENOSPC),
                    "the target wrote nothing (is its disk full?)",
                ));
            }
            other => {
                return Err(RemoteError::new(
                    ErrorCode::Other(EIO),
                    format!("unexpected reply {other:?}"),
                ));
            }
        }
    }
    Ok(())
}

/// Answer a `StreamSync`: write what already arrived (the layer waits until
/// the kernel acknowledged all its bytes before asking, so they are all in
/// this socket's receive queue), then sync when asked.
async fn drain_and_sync(
    agent: &AgentApi,
    fd: RemoteFd,
    stream: &mut TcpStream,
    buf: &mut [u8],
    sync: Option<bool>,
) -> RemoteResult<bool> {
    let mut eof = false;
    loop {
        match stream.try_read(buf) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(n) => write_all(agent, fd, bytes::Bytes::copy_from_slice(&buf[..n])).await?,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => {
                eof = true;
                break;
            }
        }
    }
    if let Some(data_only) = sync {
        match agent
            .request(Request::Fs(FsRequest::Fsync { fd, data_only }))
            .await?
        {
            Response::Fs(FsReply::Done) => {}
            other => {
                return Err(RemoteError::new(
                    ErrorCode::Other(EIO),
                    format!("unexpected reply {other:?}"),
                ));
            }
        }
    }
    Ok(eof)
}

/// Copy the app's stream into remote `fd`, every byte, answering
/// `StreamSync`s in between; an error ends the stream with that error (the
/// app's next write gets `EPIPE`, which the layer turns into this error).
async fn pump(
    agent: &AgentApi,
    fd: RemoteFd,
    listener: TcpListener,
    syncs: &mut mpsc::UnboundedReceiver<SyncCommand>,
) -> RemoteResult<()> {
    let Ok(Ok((mut stream, _))) = tokio::time::timeout(ACCEPT_TIMEOUT, listener.accept()).await
    else {
        return Ok(());
    };
    drop(listener);
    let mut buf = vec![0u8; WRITE_CHUNK];
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => return Ok(()),
                    Ok(n) => n,
                };
                write_all(agent, fd, bytes::Bytes::copy_from_slice(&buf[..n])).await?;
            }
            Some(command) = syncs.recv() => {
                let result = drain_and_sync(agent, fd, &mut stream, &mut buf, command.sync).await;
                let (answer, end) = match result {
                    Ok(eof) => (Ok(()), if eof { Some(Ok(())) } else { None }),
                    Err(e) => (Err(e.clone()), Some(Err(e))),
                };
                let _ = command.reply.send(answer);
                if let Some(end) = end {
                    return end;
                }
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
