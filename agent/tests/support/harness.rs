//! Shared harness of the agent's integration tests: target processes, agent
//! configuration and a small protocol client. Each test crate uses part of it.
#![allow(dead_code)]

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use remora_agent::{Agent, AgentConfig, TargetPid};
use remora_protocol::codec::FrameCodec;
use remora_protocol::dns::{AddrFamily, LookupRequest, SockType};
use remora_protocol::fs::{FsReply, FsRequest, OpenOptions, OpenReply};
use remora_protocol::net::{RemoteAddr, Transport};
use remora_protocol::outgoing::{MAX_CHUNK, OutgoingClient, OutgoingServer};
use remora_protocol::{
    Capabilities, ClientIdentity, ClientMessage, ConnectionId, Hello, HelloReply, PROTOCOL_VERSION,
    ProtocolVersion, RemoteResult, Request, RequestId, Response, ServerMessage, SessionToken,
};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

pub const TOKEN: &str = "test-token-5b1d";
pub const STEP: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- targets

/// A process we started; killed and reaped when dropped.
pub struct Target(pub Child);

impl Target {
    pub fn sleep(env: &[(&str, &str)]) -> Target {
        let child = Command::new("sleep")
            .arg("60")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        Target(child)
    }

    pub fn pid(&self) -> TargetPid {
        TargetPid(self.0.id())
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn config(target: TargetPid) -> AgentConfig {
    let mut config = AgentConfig::new(target, SessionToken(TOKEN.into()));
    config.idle_timeout = None;
    config.linger = None;
    config
}

pub async fn agent_for(target: &Target) -> Agent {
    Agent::bind(config(target.pid()))
        .await
        .expect("agent starts")
}

// ---------------------------------------------------------------- client

pub type Link = Framed<TcpStream, FrameCodec<ServerMessage, ClientMessage>>;

pub fn hello(version: u32, token: &str, user: &str) -> Hello {
    Hello {
        version: ProtocolVersion(version),
        capabilities: Capabilities::ALL,
        token: SessionToken(token.into()),
        client: ClientIdentity {
            user: user.into(),
            hostname: "test-host".into(),
            pid: std::process::id(),
            program: "agent-test".into(),
            remora_version: "0.1.0".into(),
        },
        target: None,
    }
}

pub async fn handshake(addr: SocketAddr, hello: Hello) -> (HelloReply, Link) {
    let stream = TcpStream::connect(addr).await.expect("connect to agent");
    // As the intproxy does: small frames leave at once (no Nagle delay).
    stream.set_nodelay(true).expect("TCP_NODELAY");
    let mut framed: Framed<TcpStream, FrameCodec<HelloReply, Hello>> =
        Framed::new(stream, FrameCodec::default());
    framed.send(hello).await.expect("send hello");
    let reply = tokio::time::timeout(STEP, framed.next())
        .await
        .expect("hello reply in time")
        .expect("a hello reply")
        .expect("decodable hello reply");
    (reply, framed.map_codec(|_| FrameCodec::default()))
}

pub struct Client {
    pub link: Link,
    pub last_id: u64,
    /// Messages read while waiting for something else.
    pub pending: VecDeque<ServerMessage>,
}

impl Client {
    pub async fn connect(addr: SocketAddr, user: &str) -> Client {
        let (reply, link) = handshake(addr, hello(PROTOCOL_VERSION.0, TOKEN, user)).await;
        assert!(matches!(reply, HelloReply::Accepted { .. }), "{reply:?}");
        Client {
            link,
            last_id: 0,
            pending: VecDeque::new(),
        }
    }

    pub async fn send(&mut self, message: ClientMessage) {
        self.link.send(message).await.expect("send to agent");
    }

    pub async fn read(&mut self) -> Option<ServerMessage> {
        if let Some(message) = self.pending.pop_front() {
            return Some(message);
        }
        tokio::time::timeout(STEP, self.link.next())
            .await
            .expect("agent answers in time")
            .map(|frame| frame.expect("decodable frame"))
    }

    pub async fn request(&mut self, request: Request) -> RemoteResult<Response> {
        self.last_id += 1;
        let id = RequestId(self.last_id);
        self.send(ClientMessage::Request { id, request }).await;
        let mut others = VecDeque::new();
        let result = loop {
            let message = tokio::time::timeout(STEP, self.link.next())
                .await
                .expect("response in time")
                .expect("connection open")
                .expect("decodable frame");
            match message {
                ServerMessage::Response { id: got, result } if got == id => break result,
                other => others.push_back(other),
            }
        };
        self.pending.extend(others);
        result
    }

    pub async fn fs(&mut self, request: FsRequest) -> RemoteResult<FsReply> {
        match self.request(Request::Fs(request)).await? {
            Response::Fs(reply) => Ok(reply),
            other => panic!("not a file reply: {other:?}"),
        }
    }

    /// The next outgoing message other than credit.
    pub async fn outgoing(&mut self) -> OutgoingServer {
        loop {
            match self.read().await.expect("connection open") {
                ServerMessage::Outgoing(OutgoingServer::Credit { .. }) => {}
                ServerMessage::Outgoing(message) => return message,
                other => panic!("expected an outgoing message, got {other:?}"),
            }
        }
    }

    pub async fn connect_out(&mut self, conn: u64, transport: Transport, remote: RemoteAddr) {
        let conn = ConnectionId(conn);
        self.send(ClientMessage::Outgoing(OutgoingClient::Connect {
            conn,
            transport,
            remote,
        }))
        .await;
    }

    pub async fn data(&mut self, conn: u64, data: &[u8]) {
        let data = Bytes::copy_from_slice(data);
        let conn = ConnectionId(conn);
        self.send(ClientMessage::Outgoing(OutgoingClient::Data { conn, data }))
            .await;
    }

    pub async fn shutdown_write(&mut self, conn: u64) {
        let conn = ConnectionId(conn);
        self.send(ClientMessage::Outgoing(OutgoingClient::ShutdownWrite {
            conn,
        }))
        .await;
    }

    /// Collect data of `conn` until the remote half-closes, then expect `Closed`.
    pub async fn drain_until_closed(&mut self, conn: u64) -> Vec<u8> {
        let conn = ConnectionId(conn);
        let mut received = Vec::new();
        let mut half_closed = false;
        loop {
            match self.outgoing().await {
                OutgoingServer::Data { conn: c, data } if c == conn => {
                    assert!(data.len() <= MAX_CHUNK, "chunk of {} bytes", data.len());
                    assert!(!half_closed, "data after the remote half-close");
                    received.extend_from_slice(&data);
                    // Passed on: the agent may send as much again.
                    let bytes = remora_protocol::flow::credit_cost(data.len());
                    self.send(ClientMessage::Outgoing(OutgoingClient::Credit {
                        conn,
                        bytes,
                    }))
                    .await;
                }
                OutgoingServer::ShutdownWrite { conn: c } if c == conn => half_closed = true,
                OutgoingServer::Closed { conn: c, error } if c == conn => {
                    assert_eq!(error, None);
                    assert!(half_closed, "closed without the remote half-close");
                    return received;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

pub fn path(p: &Path) -> String {
    p.to_str().expect("utf-8 temp path").to_owned()
}

pub fn opened(reply: RemoteResult<FsReply>) -> OpenReply {
    match reply.expect("open works") {
        FsReply::Opened(opened) => opened,
        other => panic!("not an open reply: {other:?}"),
    }
}

pub fn read_only() -> OpenOptions {
    OpenOptions {
        read: true,
        ..OpenOptions::default()
    }
}

pub fn lookup(name: &str, family: AddrFamily) -> Request {
    Request::Lookup(LookupRequest {
        name: name.into(),
        family,
        socktype: SockType::Stream,
        flags: 0,
    })
}
