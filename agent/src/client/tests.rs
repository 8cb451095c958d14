//! The link writer: frames reach the socket whole and in order through
//! partial and vectored writes, batched, and nothing follows `Closing`.

use super::*;
use bytes::Bytes;
use remora_protocol::ConnectionId;
use remora_protocol::codec::encode_frame;
use remora_protocol::outgoing::OutgoingServer;
use remora_protocol::session::LogLevel;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// What a [`Socket`] saw.
#[derive(Debug, Default)]
struct Seen {
    bytes: Vec<u8>,
    writes: usize,
    shut_down: bool,
}

/// A socket that takes at most `step` bytes per write and, when `stall`,
/// makes every other write wait (woken at once), as a full socket does.
struct Socket {
    seen: Arc<Mutex<Seen>>,
    step: usize,
    stall: bool,
    stalled: bool,
}

impl Socket {
    fn new(step: usize, stall: bool) -> (Self, Arc<Mutex<Seen>>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let socket = Socket {
            seen: seen.clone(),
            step,
            stall,
            stalled: false,
        };
        (socket, seen)
    }

    fn take(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        if self.stall && !self.stalled {
            self.stalled = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.stalled = false;
        let mut seen = self.seen.lock().unwrap();
        seen.writes += 1;
        let mut taken = 0;
        for buf in bufs {
            let n = buf.len().min(self.step - taken);
            seen.bytes.extend_from_slice(&buf[..n]);
            taken += n;
            if taken == self.step {
                break;
            }
        }
        Poll::Ready(Ok(taken))
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().take(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().take(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.seen.lock().unwrap().shut_down = true;
        Poll::Ready(Ok(()))
    }
}

fn data(conn: u64, len: usize) -> ServerMessage {
    let data: Bytes = (0..len).map(|i| (i % 251) as u8).collect();
    ServerMessage::Outgoing(OutgoingServer::Data {
        conn: ConnectionId(conn),
        data,
    })
}

fn log(message: &str) -> ServerMessage {
    ServerMessage::Log {
        level: LogLevel::Info,
        message: message.into(),
    }
}

fn frames(messages: &[ServerMessage]) -> Vec<u8> {
    let mut out = Vec::new();
    for message in messages {
        encode_frame(message, &mut out).expect("encodes");
    }
    out
}

/// Queue `messages`, then run the writer to its end on `socket`.
async fn write_all(socket: Socket, messages: &[ServerMessage], close_queue: bool) {
    let (out_tx, out_rx) = mpsc::channel(OUTBOUND_CAPACITY);
    for message in messages {
        out_tx.send(message.clone()).await.expect("queued");
    }
    if close_queue {
        drop(out_tx);
        write_loop(socket, out_rx).await;
    } else {
        // The writer must stop at `Closing` by itself, queue still open.
        write_loop(socket, out_rx).await;
        drop(out_tx);
    }
}

#[tokio::test]
async fn frames_arrive_whole_through_partial_vectored_writes() {
    let messages = vec![
        data(1, 40_000),
        log("small between large"),
        data(2, 65_536),
        data(300, 10),
        data(70_000, 33_000),
    ];
    for (step, stall) in [(1, false), (7, true), (4096, true), (100_000, false)] {
        let (socket, seen) = Socket::new(step, stall);
        write_all(socket, &messages, true).await;
        let seen = seen.lock().unwrap();
        assert_eq!(seen.bytes, frames(&messages), "writes of {step} bytes");
        assert!(
            seen.shut_down,
            "the socket is shut down when the queue ends"
        );
    }
}

#[tokio::test]
async fn nothing_follows_closing() {
    let closing = ServerMessage::Closing {
        reason: "shutting down".into(),
    };
    let messages = vec![data(1, 50_000), closing, data(1, 50_000)];
    let (socket, seen) = Socket::new(1000, true);
    write_all(socket, &messages, false).await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.bytes, frames(&messages[..2]));
    assert!(seen.shut_down);
}

#[tokio::test]
async fn queued_frames_go_out_in_batches() {
    // Seven 40 KB chunks reach the batch size (256 KiB); the eighth is the
    // next batch.
    let messages: Vec<_> = (0..8).map(|i| data(i, 40_000)).collect();
    let (socket, seen) = Socket::new(usize::MAX, false);
    write_all(socket, &messages, true).await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.bytes, frames(&messages));
    assert_eq!(seen.writes, 2);
}
