//! Interceptors: local sockets that stand for remote streams.
//!
//! The remote stream is opened first (so `connect` reports the target's real
//! answer, e.g. `ECONNREFUSED`), then a loopback socket is bound for the
//! layer to connect the application's socket to. One task per stream pumps
//! bytes between the two, each direction on its own following the stream's
//! credit ([`crate::flow`]): a direction waiting for credit (or for the app
//! to read) never holds up the other one, nor any other stream.

use crate::agent_link::{AgentApi, StreamEvent, StreamFlow};
use remora_protocol::codec::data::take_chunk;
use remora_protocol::messages::InterceptorAddr;
use remora_protocol::net::Transport;
use remora_protocol::outgoing::{MAX_CHUNK, OutgoingClient};
use remora_protocol::{ConnectionId, RemoteAddr, RemoteError, RemoteResult};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

/// How long an interceptor waits for the application to connect.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);
/// A UDP association with no traffic for this long is released.
const UDP_IDLE: Duration = Duration::from_secs(120);

fn local_error(context: &str, e: std::io::Error) -> RemoteError {
    RemoteError::from_io(format!("intproxy: {context}"), &e)
}

/// Open `remote` from the target and return the interceptor to connect to.
pub async fn intercept(
    agent: AgentApi,
    transport: Transport,
    remote: RemoteAddr,
) -> RemoteResult<(InterceptorAddr, Option<SocketAddr>)> {
    let (conn, connected, events, flow) = agent.connect(transport, remote).await?;
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let bound = match transport {
        Transport::Tcp => {
            let bound = TcpListener::bind(loopback).await;
            bound
                .and_then(|l| Ok((l.local_addr()?, l)))
                .map(|(addr, listener)| {
                    tokio::spawn(tcp_stream(agent.clone(), conn, listener, events, flow));
                    addr
                })
        }
        Transport::Udp => {
            let bound = UdpSocket::bind(loopback).await;
            bound
                .and_then(|s| Ok((s.local_addr()?, s)))
                .map(|(addr, socket)| {
                    tokio::spawn(udp_stream(agent.clone(), conn, socket, events, flow));
                    addr
                })
        }
    };
    match bound {
        Ok(addr) => Ok((InterceptorAddr::Ip(addr), connected.local)),
        Err(e) => {
            let _ = agent.send(OutgoingClient::Close { conn }).await;
            Err(local_error("binding an interceptor", e))
        }
    }
}

async fn tcp_stream(
    agent: AgentApi,
    conn: ConnectionId,
    listener: TcpListener,
    mut events: mpsc::Receiver<StreamEvent>,
    flow: StreamFlow,
) {
    let stream = match tokio::time::timeout(ACCEPT_TIMEOUT, listener.accept()).await {
        Ok(Ok((stream, _))) => stream,
        _ => {
            tracing::debug!(%conn, "application never connected to its interceptor");
            let _ = agent.send(OutgoingClient::Close { conn }).await;
            return;
        }
    };
    drop(listener);
    stream.set_nodelay(true).ok();
    pump_tcp(&agent, conn, stream, &mut events, flow).await;
    let _ = agent.send(OutgoingClient::Close { conn }).await;
}

/// Copy both ways until both directions are finished or either side fails.
async fn pump_tcp(
    agent: &AgentApi,
    conn: ConnectionId,
    stream: TcpStream,
    events: &mut mpsc::Receiver<StreamEvent>,
    flow: StreamFlow,
) {
    let (mut rd, mut wr) = stream.into_split();
    let StreamFlow {
        window,
        mut returner,
    } = flow;
    // app → agent; `Err` when the stream must end now.
    let upstream = async {
        // A large read is handed on in the buffer it was read into
        // ([`take_chunk`]).
        let mut buf = bytes::BytesMut::new();
        loop {
            buf.reserve(MAX_CHUNK);
            match rd
                .read_buf(&mut bytes::BufMut::limit(&mut buf, MAX_CHUNK))
                .await
            {
                Ok(0) => {
                    let shutdown = OutgoingClient::ShutdownWrite { conn };
                    return agent.send(shutdown).await.map_err(|_| ());
                }
                Ok(n) => {
                    if !window.take(n).await {
                        return Err(());
                    }
                    let data = take_chunk(&mut buf);
                    agent
                        .send(OutgoingClient::Data { conn, data })
                        .await
                        .map_err(|_| ())?;
                }
                Err(_) => return Err(()),
            }
        }
    };
    // agent → app; `Err` when the stream must end now.
    let downstream = async {
        loop {
            match events.recv().await {
                Some(StreamEvent::Data(data)) => {
                    wr.write_all(&data).await.map_err(|_| ())?;
                    if let Some(bytes) = returner.written(data.len()) {
                        let credit = OutgoingClient::Credit { conn, bytes };
                        agent.send(credit).await.map_err(|_| ())?;
                    }
                }
                Some(StreamEvent::ShutdownWrite) => {
                    let _ = wr.shutdown().await;
                    return Ok(());
                }
                Some(StreamEvent::Closed(error)) => {
                    if let Some(e) = error {
                        tracing::debug!(%conn, "remote stream failed: {e}");
                        // Reset rather than a clean FIN so the app sees an error.
                        return Err(());
                    }
                    let _ = wr.shutdown().await;
                    // The remote side is gone; whatever the app still sends has nowhere to go.
                    return Err(());
                }
                None => return Err(()),
            }
        }
    };
    both_ways(upstream, downstream).await;
}

/// Run both directions of a stream until both are done or one fails.
pub(crate) async fn both_ways(
    upstream: impl std::future::Future<Output = Result<(), ()>>,
    downstream: impl std::future::Future<Output = Result<(), ()>>,
) {
    tokio::pin!(upstream, downstream);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            done = &mut upstream, if !up_done => {
                if done.is_err() {
                    return;
                }
                up_done = true;
            }
            done = &mut downstream, if !down_done => {
                if done.is_err() {
                    return;
                }
                down_done = true;
            }
        }
    }
}

async fn udp_stream(
    agent: AgentApi,
    conn: ConnectionId,
    socket: UdpSocket,
    mut events: mpsc::Receiver<StreamEvent>,
    flow: StreamFlow,
) {
    let StreamFlow {
        window,
        mut returner,
    } = flow;
    let mut peer: Option<SocketAddr> = None;
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        tokio::select! {
            got = socket.recv_from(&mut buf) => match got {
                Ok((n, from)) => {
                    peer = Some(from);
                    if !window.take(n).await {
                        break;
                    }
                    let data = bytes::Bytes::copy_from_slice(&buf[..n]);
                    if agent.send(OutgoingClient::Data { conn, data }).await.is_err() {
                        break;
                    }
                }
                Err(_) => break,
            },
            event = events.recv() => match event {
                Some(StreamEvent::Data(data)) => {
                    if let Some(peer) = peer {
                        let _ = socket.send_to(&data, peer).await;
                    }
                    if let Some(bytes) = returner.written(data.len()) {
                        if agent.send(OutgoingClient::Credit { conn, bytes }).await.is_err() {
                            break;
                        }
                    }
                }
                Some(StreamEvent::ShutdownWrite) => {}
                Some(StreamEvent::Closed(_)) | None => break,
            },
            _ = tokio::time::sleep(UDP_IDLE) => break,
        }
    }
    let _ = agent.send(OutgoingClient::Close { conn }).await;
}
