//! Interceptors: local sockets that stand for remote streams.
//!
//! The remote stream is opened first (so `connect` reports the target's real
//! answer, e.g. `ECONNREFUSED`), then a loopback socket is bound for the
//! layer to connect the application's socket to. One task per stream pumps
//! bytes between the two.

use crate::agent_link::{AgentApi, StreamEvent};
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
    let (conn, connected, events) = agent.connect(transport, remote).await?;
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let bound = match transport {
        Transport::Tcp => {
            let bound = TcpListener::bind(loopback).await;
            bound
                .and_then(|l| Ok((l.local_addr()?, l)))
                .map(|(addr, listener)| {
                    tokio::spawn(tcp_stream(agent.clone(), conn, listener, events));
                    addr
                })
        }
        Transport::Udp => {
            let bound = UdpSocket::bind(loopback).await;
            bound
                .and_then(|s| Ok((s.local_addr()?, s)))
                .map(|(addr, socket)| {
                    tokio::spawn(udp_stream(agent.clone(), conn, socket, events));
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
    pump_tcp(&agent, conn, stream, &mut events).await;
    let _ = agent.send(OutgoingClient::Close { conn }).await;
}

/// Copy both ways until both directions are finished or either side fails.
async fn pump_tcp(
    agent: &AgentApi,
    conn: ConnectionId,
    stream: TcpStream,
    events: &mut mpsc::Receiver<StreamEvent>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = vec![0u8; MAX_CHUNK];
    let mut local_done = false;
    let mut remote_done = false;
    while !(local_done && remote_done) {
        tokio::select! {
            n = rd.read(&mut buf), if !local_done => match n {
                Ok(0) => {
                    local_done = true;
                    if agent.send(OutgoingClient::ShutdownWrite { conn }).await.is_err() {
                        return;
                    }
                }
                Ok(n) => {
                    let data = bytes::Bytes::copy_from_slice(&buf[..n]);
                    if agent.send(OutgoingClient::Data { conn, data }).await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            },
            event = events.recv(), if !remote_done => match event {
                Some(StreamEvent::Data(data)) => {
                    if wr.write_all(&data).await.is_err() {
                        return;
                    }
                }
                Some(StreamEvent::ShutdownWrite) => {
                    remote_done = true;
                    let _ = wr.shutdown().await;
                }
                Some(StreamEvent::Closed(error)) => {
                    if let Some(e) = error {
                        tracing::debug!(%conn, "remote stream failed: {e}");
                        // Reset rather than a clean FIN so the app sees an error.
                        return;
                    }
                    let _ = wr.shutdown().await;
                    // The remote side is gone; whatever the app still sends has nowhere to go.
                    return;
                }
                None => return,
            },
        }
    }
}

async fn udp_stream(
    agent: AgentApi,
    conn: ConnectionId,
    socket: UdpSocket,
    mut events: mpsc::Receiver<StreamEvent>,
) {
    let mut peer: Option<SocketAddr> = None;
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        tokio::select! {
            got = socket.recv_from(&mut buf) => match got {
                Ok((n, from)) => {
                    peer = Some(from);
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
                }
                Some(StreamEvent::ShutdownWrite) => {}
                Some(StreamEvent::Closed(_)) | None => break,
            },
            _ = tokio::time::sleep(UDP_IDLE) => break,
        }
    }
    let _ = agent.send(OutgoingClient::Close { conn }).await;
}
