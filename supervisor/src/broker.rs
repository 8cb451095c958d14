//! The local fast path for the supervisor (see [`remora_protocol::broker`]):
//! when the agent shares this machine, a read-only open of the target's
//! regular file is answered with the target's file itself, opened by the
//! agent inside the target's mount namespace and received here with
//! `SCM_RIGHTS`; the supervisor installs it in the program with
//! `SECCOMP_IOCTL_NOTIF_ADDFD`. No copy, no intproxy round trip, and the
//! program reads the file as it is now, as a program with the layer does.
//! Likewise a TCP `connect` the outgoing policy sends to the target: the
//! agent connects a socket inside the target's network namespace and the
//! supervisor puts it in place of the program's socket, under the same
//! number (`ADDFD` with `SETFD`), as the layer does with `dup3`.
//!
//! A read-only open is first tried here, under the broker's root directory
//! (handed over once, [`BrokerRequest::OpenRoot`]), with no round trip:
//! [`remora_broker_client::root`] says when the broker is asked anyway.
//!
//! One blocking connection (the supervisor answers one notification at a
//! time). Without [`BROKER_PATH_ENV`] (a Kubernetes target, an operator, the
//! fast path turned off) or once the broker refused or broke, every open
//! takes the proxied path (a snapshot in a `memfd`) and every connect the
//! intproxy's interceptor.

use remora_broker_client::root::Direct;
use remora_protocol::broker::{BROKER_DIRECT_ENV, BROKER_PATH_ENV, BrokerReply, BrokerRequest};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// No broker call may block longer than this.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// What a read-only open through the broker gave.
#[derive(Debug)]
pub enum OpenRead {
    /// The target's file, opened read-only.
    File(OwnedFd),
    /// Not a regular file (a directory, a FIFO, a device): the proxied path serves it.
    NotRegular,
    /// It failed in the target with this errno (as the program sees it).
    Failed(i32),
    /// No fast path (never offered, or it refused or broke: `Some` says
    /// why, the first time only).
    Unavailable(Option<String>),
}

/// What a TCP connect through the broker gave.
#[derive(Debug)]
pub enum ConnectTcp {
    /// A socket connected to the remote from inside the target.
    Socket(OwnedFd),
    /// The connect failed in the target with this errno.
    Failed(i32),
    /// No fast path (as for [`OpenRead::Unavailable`]).
    Unavailable(Option<String>),
}

/// The supervisor's connection to the agent's fd broker.
#[derive(Debug)]
pub struct Broker {
    /// Socket path and the run's layer token, when offered.
    endpoint: Option<(PathBuf, String)>,
    conn: Option<UnixStream>,
    disabled: bool,
    /// The broker's root, once handed over ([`Broker::open_read`]).
    root: Option<OwnedFd>,
    /// No direct opens: turned off ([`BROKER_DIRECT_ENV`]), unsupported
    /// here, or the broker gave no root.
    direct_off: bool,
}

impl Broker {
    /// The broker of the session's `env` ([`BROKER_PATH_ENV`]; the layer
    /// token is `token`), connected at the first use.
    pub fn from_env(env: &BTreeMap<String, String>, token: &str) -> Broker {
        let endpoint = env
            .get(BROKER_PATH_ENV)
            .filter(|p| !p.is_empty())
            .map(|p| (PathBuf::from(p), token.to_owned()));
        let direct_off = env
            .get(BROKER_DIRECT_ENV)
            .is_some_and(|v| remora_protocol::broker::turned_off(v));
        Broker {
            endpoint,
            conn: None,
            disabled: false,
            root: None,
            direct_off,
        }
    }

    /// No fast path at all (tests, and the proxied case).
    pub fn none() -> Broker {
        Broker {
            endpoint: None,
            conn: None,
            disabled: true,
            root: None,
            direct_off: true,
        }
    }

    /// Whether an open may try the broker.
    pub fn available(&self) -> bool {
        !self.disabled && self.endpoint.is_some()
    }

    /// Open the target's `path` read-only (`nofollow`: `O_NOFOLLOW`): here
    /// under the broker's root when that gives the broker's answer, else
    /// by the broker.
    pub fn open_read(&mut self, path: &str, nofollow: bool) -> OpenRead {
        if !self.available() {
            return OpenRead::Unavailable(None);
        }
        if let Some(direct) = self.open_direct(path, nofollow) {
            return direct;
        }
        let request = BrokerRequest::OpenRead {
            path: path.to_owned(),
            nofollow,
        };
        match self.roundtrip(&request) {
            Ok((BrokerReply::Opened, Some(fd))) => OpenRead::File(fd),
            Ok((BrokerReply::NotRegular, _)) => OpenRead::NotRegular,
            Ok((BrokerReply::Failed(e), _)) => OpenRead::Failed(e.code.to_linux_errno()),
            Ok((other, _)) => self.disable(format!("unexpected reply {other:?}")),
            Err(reason) => self.disable(reason),
        }
    }

    /// Connect a TCP socket to `remote` inside the target's network
    /// namespace.
    pub fn connect_tcp(&mut self, remote: std::net::SocketAddr) -> ConnectTcp {
        if !self.available() {
            return ConnectTcp::Unavailable(None);
        }
        match self.roundtrip(&BrokerRequest::ConnectTcp { remote }) {
            Ok((BrokerReply::Connected { .. }, Some(fd))) => ConnectTcp::Socket(fd),
            Ok((BrokerReply::Failed(e), _)) => ConnectTcp::Failed(e.code.to_linux_errno()),
            Ok((other, _)) => {
                ConnectTcp::Unavailable(self.unavailable(format!("unexpected reply {other:?}")))
            }
            Err(reason) => ConnectTcp::Unavailable(self.unavailable(reason)),
        }
    }

    /// [`remora_broker_client::root::open_read`] under the broker's root
    /// (asked for at the first call); `None`: ask the broker.
    fn open_direct(&mut self, path: &str, nofollow: bool) -> Option<OpenRead> {
        if self.direct_off {
            return None;
        }
        if self.root.is_none() {
            match self.roundtrip(&BrokerRequest::OpenRoot) {
                Ok((BrokerReply::Opened, Some(fd))) => self.root = Some(fd),
                // Refused or broken: the broker's own open says which.
                _ => {
                    self.direct_off = true;
                    return None;
                }
            }
        }
        let root = self.root.as_ref()?;
        match remora_broker_client::root::open_read(root.as_fd(), path, nofollow, true) {
            Direct::File(fd) => Some(OpenRead::File(fd)),
            Direct::NotRegular => Some(OpenRead::NotRegular),
            Direct::Failed(errno) => Some(OpenRead::Failed(errno)),
            Direct::AskBroker => None,
            Direct::Unsupported => {
                self.direct_off = true;
                None
            }
        }
    }

    fn disable(&mut self, reason: String) -> OpenRead {
        OpenRead::Unavailable(self.unavailable(reason))
    }

    /// Stop using the broker; the warning to give, once.
    fn unavailable(&mut self, reason: String) -> Option<String> {
        self.disabled = true;
        self.conn = None;
        Some(format!(
            "the local fast path broke ({reason}); the supervisor copies the target's files \
             and proxies its connections from now on"
        ))
    }

    fn connect(&mut self) -> Result<&UnixStream, String> {
        if self.conn.is_none() {
            let Some((path, token)) = &self.endpoint else {
                return Err("no fast path".into());
            };
            let stream = remora_broker_client::connect(path)?;
            stream.set_read_timeout(Some(REPLY_TIMEOUT)).ok();
            remora_broker_client::hello(&stream, token)?;
            self.conn = Some(stream);
        }
        self.conn.as_ref().ok_or_else(|| "no connection".into())
    }

    fn roundtrip(
        &mut self,
        request: &BrokerRequest,
    ) -> Result<(BrokerReply, Option<OwnedFd>), String> {
        let stream = self.connect()?;
        remora_broker_client::roundtrip(stream, request, true)
    }
}
