//! Byte-stream pumping shared by outgoing streams and stolen connections: the
//! client's bytes go to the peer in order (then the half close), the peer's
//! bytes come back to the client as protocol messages, until both directions
//! end, an error, or the connection is closed. Both directions follow the
//! stream's credit ([`crate::flow`]): the peer's bytes wait for the client's
//! credit, and credit for the client's bytes goes back once they are written.

use crate::flow::{Admit, CreditReturn, Inbound, SendWindow};
use bytes::{BufMut, Bytes, BytesMut};
use remora_protocol::codec::data::take_chunk;
use remora_protocol::outgoing::MAX_CHUNK;
use remora_protocol::{ConnectionId, ServerMessage};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// What the client sends towards a connection's peer.
#[derive(Debug)]
pub(crate) enum Upstream {
    Data(Bytes),
    ShutdownWrite,
}

/// Which direction of a pump failed.
#[derive(Debug)]
pub(crate) enum PumpError {
    /// Reading from the peer.
    Read(io::Error),
    /// Writing to the peer.
    Write(io::Error),
}

impl std::fmt::Display for PumpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PumpError::Read(e) => write!(f, "reading from the peer: {e}"),
            PumpError::Write(e) => write!(f, "writing to the peer: {e}"),
        }
    }
}

/// Queue the client's `item` for a stream's writer. With flow control this
/// never waits; `false` when the client sent beyond its credit (the caller
/// ends the stream). A gone writer drops the item.
pub(crate) async fn queue_upstream(
    up_tx: &mpsc::Sender<Upstream>,
    inbound: &Inbound,
    item: Upstream,
) -> bool {
    let admit = match &item {
        Upstream::Data(data) => inbound.admit(data.len()),
        Upstream::ShutdownWrite => inbound.admit_end(),
    };
    match admit {
        Admit::Violation => false,
        Admit::Queue => !matches!(
            up_tx.try_send(item),
            Err(tokio::sync::mpsc::error::TrySendError::Full(_))
        ),
        Admit::Wait => {
            let _ = up_tx.send(item).await;
            true
        }
    }
}

/// Queue `message` for the client unless the connection is closed first;
/// `false` when it could not be sent.
pub(crate) async fn send(
    close: &CancellationToken,
    out_tx: &mpsc::Sender<ServerMessage>,
    message: ServerMessage,
) -> bool {
    tokio::select! {
        _ = close.cancelled() => false,
        sent = out_tx.send(message) => sent.is_ok(),
    }
}

/// A stream's credit, both ways.
pub(crate) struct Flow {
    /// Credit for the peer's bytes to the client.
    pub window: SendWindow,
    /// Credit owed for the client's bytes to the peer.
    pub returner: CreditReturn,
    /// The `Credit` message of this kind of stream.
    pub credit: fn(ConnectionId, u32) -> ServerMessage,
}

/// Pump `stream` both ways. `message(conn, Some(data))` wraps the peer's
/// bytes for the client, `message(conn, None)` its half close.
pub(crate) async fn pump<S>(
    stream: S,
    up_rx: mpsc::Receiver<Upstream>,
    close: &CancellationToken,
    out_tx: &mpsc::Sender<ServerMessage>,
    conn: ConnectionId,
    message: impl Fn(ConnectionId, Option<Bytes>) -> ServerMessage,
    flow: Flow,
) -> Result<(), PumpError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(stream);
    let Flow {
        window,
        returner,
        credit,
    } = flow;
    let credit_out = CreditOut {
        conn,
        returner,
        credit,
        out_tx: out_tx.clone(),
        close: close.clone(),
    };
    let mut writer =
        AbortOnDropHandle::new(tokio::spawn(write_upstream(writer, up_rx, credit_out)));
    // A full chunk of the peer's bytes is read straight into the buffer
    // its message carries (no copy on the way to the client).
    let mut buf = BytesMut::new();
    let (mut writer_done, mut reader_done) = (false, false);
    while !(writer_done && reader_done) {
        tokio::select! {
            _ = close.cancelled() => return Ok(()),
            joined = &mut writer, if !writer_done => {
                joined.map_err(|e| PumpError::Write(io::Error::other(e)))?.map_err(PumpError::Write)?;
                writer_done = true;
            }
            read = read_chunk(&mut reader, &mut buf), if !reader_done => {
                let n = read.map_err(PumpError::Read)?;
                let data = if n == 0 {
                    reader_done = true;
                    None
                } else {
                    // Only this stream waits for its client to catch up.
                    let credited = tokio::select! {
                        _ = close.cancelled() => false,
                        credited = window.take(n) => credited,
                    };
                    if !credited {
                        return Ok(());
                    }
                    Some(take_chunk(&mut buf))
                };
                if !send(close, out_tx, message(conn, data)).await {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// Read at most [`MAX_CHUNK`] of the peer's bytes into `buf` (empty on
/// entry). Cancel-safe: nothing is read when the future is dropped early.
async fn read_chunk<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut BytesMut) -> io::Result<usize> {
    // Reuses the allocation once the client's writer dropped the last
    // chunk; otherwise a fresh one, which the copy it replaces needed too.
    buf.reserve(MAX_CHUNK);
    reader.read_buf(&mut (&mut *buf).limit(MAX_CHUNK)).await
}

/// Where a stream's writer returns credit.
struct CreditOut {
    conn: ConnectionId,
    returner: CreditReturn,
    credit: fn(ConnectionId, u32) -> ServerMessage,
    out_tx: mpsc::Sender<ServerMessage>,
    close: CancellationToken,
}

/// The client's bytes to the peer, in order, then the half close.
async fn write_upstream<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut up_rx: mpsc::Receiver<Upstream>,
    mut credit: CreditOut,
) -> io::Result<()> {
    while let Some(item) = up_rx.recv().await {
        match item {
            Upstream::Data(data) => {
                writer.write_all(&data).await?;
                if let Some(bytes) = credit.returner.written(data.len()) {
                    let message = (credit.credit)(credit.conn, bytes);
                    if !send(&credit.close, &credit.out_tx, message).await {
                        return Ok(());
                    }
                }
            }
            Upstream::ShutdownWrite => {
                writer.shutdown().await?;
                return Ok(());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
