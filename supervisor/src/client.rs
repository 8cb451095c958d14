//! The supervisor's one blocking connection to the intproxy: the same
//! protocol and handshake as the layer's (`layer/src/session.rs`), one
//! request at a time, replies matched by id.

use remora_protocol::codec;
use remora_protocol::messages::{
    LayerHello, LayerHelloReply, LayerMessage, LayerRequest, LayerResponse, ProxyMessage,
};
use remora_protocol::session::LogLevel;
use remora_protocol::{PROTOCOL_VERSION, RemoteError, Request, RequestId, Response, SessionToken};
use std::io::BufReader;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// No remote call may block longer than this (the intproxy answers failures
/// itself long before).
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// What went wrong talking to the intproxy.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("intproxy connection: {0}")]
    Link(String),
    #[error("{0}")]
    Remote(RemoteError),
    #[error("unexpected reply from the intproxy: {0}")]
    Unexpected(String),
}

impl ClientError {
    /// The errno the program gets for this failure.
    pub fn errno(&self) -> i32 {
        match self {
            ClientError::Remote(e) => e.code.to_linux_errno(),
            ClientError::Link(_) | ClientError::Unexpected(_) => libc::EIO,
        }
    }
}

/// A connected, handshaken intproxy session.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<TcpStream>,
    next_id: u64,
}

impl Client {
    /// Connect and introduce ourselves as `program`'s process `pid`.
    pub fn connect(
        addr: SocketAddr,
        token: &str,
        pid: u32,
        program: &str,
    ) -> Result<Client, ClientError> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| ClientError::Link(format!("connecting to {addr}: {e}")))?;
        stream.set_nodelay(true).ok();
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).ok();
        let mut client = Client {
            reader: BufReader::new(stream),
            next_id: 1,
        };
        let hello = LayerHello {
            version: PROTOCOL_VERSION,
            token: SessionToken(token.to_owned()),
            pid,
            parent_pid: std::process::id(),
            program: program.to_owned(),
        };
        codec::write_frame(&mut client.reader.get_ref(), &hello)
            .map_err(|e| ClientError::Link(e.to_string()))?;
        match codec::read_frame::<_, LayerHelloReply>(&mut client.reader) {
            Ok(LayerHelloReply::Accepted { .. }) => Ok(client),
            Ok(LayerHelloReply::Rejected { reason }) => {
                Err(ClientError::Link(format!("intproxy refused: {reason}")))
            }
            Err(e) => Err(ClientError::Link(format!("handshake with intproxy: {e}"))),
        }
    }

    /// The connection's fd number (kept open across a fork).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.reader.get_ref().as_raw_fd()
    }

    /// The connection itself (closing it ends this session's process).
    pub fn into_fd(self) -> std::os::fd::OwnedFd {
        std::os::fd::OwnedFd::from(self.reader.into_inner())
    }

    /// Send one request and wait for its reply.
    pub fn request(&mut self, request: LayerRequest) -> Result<LayerResponse, ClientError> {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        codec::write_frame(
            &mut self.reader.get_ref(),
            &LayerMessage::Request { id, request },
        )
        .map_err(|e| ClientError::Link(e.to_string()))?;
        loop {
            match codec::read_frame::<_, ProxyMessage>(&mut self.reader) {
                Ok(ProxyMessage::Response { id: got, result }) if got == id => {
                    return result.map_err(ClientError::Remote);
                }
                Ok(ProxyMessage::Response { id: got, .. }) => {
                    return Err(ClientError::Link(format!(
                        "reply {got} does not match request {id}"
                    )));
                }
                Ok(ProxyMessage::Log { level, message }) => {
                    let prefix = match level {
                        LogLevel::Info => "",
                        LogLevel::Warn => "warning: ",
                        LogLevel::Error => "error: ",
                    };
                    eprintln!("remora: {prefix}{message}");
                }
                Err(e) => return Err(ClientError::Link(e.to_string())),
            }
        }
    }

    /// Convenience for `LayerRequest::Remote`.
    pub fn remote(&mut self, request: Request) -> Result<Response, ClientError> {
        match self.request(LayerRequest::Remote(request))? {
            LayerResponse::Remote(resp) => Ok(resp),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }
}
