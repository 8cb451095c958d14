//! Port forwarding over WebSocket: the `v4.channel.k8s.io` channel protocol (kube-rs), and the
//! byte pipe that carries SPDY for kubectl's `SPDY/3.1+portforward.k8s.io` tunnel.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::mpsc,
};
use tokio_tungstenite::{WebSocketStream, tungstenite::Message};

use super::PodTarget;

/// Messages queued towards the client.
const OUT_QUEUE: usize = 64;
/// Chunks queued from the client to one pod connection (v4) or to the SPDY session.
const IN_QUEUE: usize = 64;
/// Bytes read from the pod per message.
const CHUNK: usize = 32 * 1024;

/// Carries a byte stream (SPDY) in binary WebSocket messages, both ways: returns the chunks
/// received and the sender of chunks to send. Ends with the socket.
pub fn byte_pipe<S>(ws: WebSocketStream<S>) -> (mpsc::Receiver<Bytes>, mpsc::Sender<Bytes>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (in_tx, in_rx) = mpsc::channel::<Bytes>(IN_QUEUE);
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(OUT_QUEUE);
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            let sent = match msg {
                Message::Binary(b) => in_tx.send(b).await.is_ok(),
                Message::Close(_) => false,
                _ => true,
            };
            if !sent {
                return;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(b) = out_rx.recv().await {
            if sink.send(Message::Binary(b)).await.is_err() {
                return;
            }
        }
        // Starts the closing handshake, or completes the one the client started.
        let _ = sink.close().await;
    });
    (in_rx, out_tx)
}

/// Pipes a raw upgraded connection (plain SPDY) the same way as [`byte_pipe`].
pub fn io_pipe<S>(io: S) -> (mpsc::Receiver<Bytes>, mpsc::Sender<Bytes>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(io);
    let (in_tx, in_rx) = mpsc::channel::<Bytes>(IN_QUEUE);
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(OUT_QUEUE);
    tokio::spawn(async move {
        let mut buf = vec![0; CHUNK];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if in_tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    tokio::spawn(async move {
        while let Some(b) = out_rx.recv().await {
            if writer.write_all(&b).await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    });
    (in_rx, out_tx)
}

fn channel_message(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

/// Serves `v4.channel.k8s.io`: port `ports[i]` uses channel `2i` for data and `2i+1` for
/// errors; each channel starts with the port number (2 bytes, little endian). The socket is
/// closed once every pod connection has ended, or when the client closes it.
pub async fn serve_v4<S>(ws: WebSocketStream<S>, ports: Vec<u16>, target: PodTarget)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(OUT_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        // Starts the closing handshake, or completes the one the client started.
        let _ = sink.close().await;
    });
    let (done_tx, mut done_rx) = mpsc::channel::<usize>(ports.len().max(1));
    let mut to_pod: Vec<Option<mpsc::Sender<Bytes>>> = Vec::with_capacity(ports.len());
    let mut readers = Vec::new();
    for (i, &port) in ports.iter().enumerate() {
        let (data_ch, error_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        for ch in [data_ch, error_ch] {
            let _ = out_tx.send(channel_message(ch, &port.to_le_bytes())).await;
        }
        match target.connect(port).await {
            Err(e) => {
                let message = target.error_message(port, &e);
                let _ = out_tx
                    .send(channel_message(error_ch, message.as_bytes()))
                    .await;
                let _ = done_tx.send(i).await;
                to_pod.push(None);
            }
            Ok(tcp) => {
                let (mut from_pod, mut into_pod) = tcp.into_split();
                let (tx, mut rx) = mpsc::channel::<Bytes>(IN_QUEUE);
                to_pod.push(Some(tx));
                readers.push(tokio::spawn(async move {
                    while let Some(chunk) = rx.recv().await {
                        if into_pod.write_all(&chunk).await.is_err() {
                            break;
                        }
                    }
                }));
                let out = out_tx.clone();
                let done = done_tx.clone();
                readers.push(tokio::spawn(async move {
                    let mut buf = vec![0; CHUNK];
                    loop {
                        match from_pod.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if out.send(channel_message(data_ch, &buf[..n])).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = done.send(i).await;
                }));
            }
        }
    }
    let mut ended = 0;
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(b))) if b.len() > 1 => {
                    let ch = usize::from(b[0]);
                    if ch % 2 == 0
                        && let Some(Some(tx)) = to_pod.get(ch / 2)
                        && tx.send(b.slice(1..)).await.is_err()
                    {
                        to_pod[ch / 2] = None;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            Some(_) = done_rx.recv() => {
                ended += 1;
                if ended == ports.len() {
                    break;
                }
            }
        }
    }
    drop(out_tx);
    for r in readers {
        r.abort();
    }
    let _ = writer.await;
}
