//! The local fast path for the supervisor (see [`remora_protocol::broker`]):
//! when the agent shares this machine, a read-only open of the target's
//! regular file is answered with the target's file itself, opened by the
//! agent inside the target's mount namespace and received here with
//! `SCM_RIGHTS`; the supervisor installs it in the program with
//! `SECCOMP_IOCTL_NOTIF_ADDFD`. No copy, no intproxy round trip, and the
//! program reads the file as it is now, as a program with the layer does.
//!
//! One blocking connection (the supervisor answers one notification at a
//! time). Without [`BROKER_PATH_ENV`] (a Kubernetes target, an operator, the
//! fast path turned off) or once the broker refused or broke, every open
//! takes the proxied path (a snapshot in a `memfd`).

use remora_protocol::broker::{
    BROKER_PATH_ENV, BROKER_VERSION, BrokerHello, BrokerHelloReply, BrokerReply, BrokerRequest,
};
use remora_protocol::{SessionToken, codec};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
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

/// The supervisor's connection to the agent's fd broker.
#[derive(Debug)]
pub struct Broker {
    /// Socket path and the run's layer token, when offered.
    endpoint: Option<(PathBuf, String)>,
    conn: Option<UnixStream>,
    disabled: bool,
}

impl Broker {
    /// The broker of the session's `env` ([`BROKER_PATH_ENV`]; the layer
    /// token is `token`), connected at the first use.
    pub fn from_env(env: &BTreeMap<String, String>, token: &str) -> Broker {
        let endpoint = env
            .get(BROKER_PATH_ENV)
            .filter(|p| !p.is_empty())
            .map(|p| (PathBuf::from(p), token.to_owned()));
        Broker {
            endpoint,
            conn: None,
            disabled: false,
        }
    }

    /// No fast path at all (tests, and the proxied case).
    pub fn none() -> Broker {
        Broker {
            endpoint: None,
            conn: None,
            disabled: true,
        }
    }

    /// Whether an open may try the broker.
    pub fn available(&self) -> bool {
        !self.disabled && self.endpoint.is_some()
    }

    /// Open the target's `path` read-only (`nofollow`: `O_NOFOLLOW`).
    pub fn open_read(&mut self, path: &str, nofollow: bool) -> OpenRead {
        if !self.available() {
            return OpenRead::Unavailable(None);
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

    fn disable(&mut self, reason: String) -> OpenRead {
        self.disabled = true;
        self.conn = None;
        OpenRead::Unavailable(Some(format!(
            "the local fast path broke ({reason}); the supervisor copies the target's files \
             from now on"
        )))
    }

    fn connect(&mut self) -> Result<&UnixStream, String> {
        if self.conn.is_none() {
            let Some((path, token)) = &self.endpoint else {
                return Err("no fast path".into());
            };
            let stream = UnixStream::connect(path)
                .map_err(|e| format!("connecting to {}: {e}", path.display()))?;
            stream.set_read_timeout(Some(REPLY_TIMEOUT)).ok();
            let hello = BrokerHello {
                version: BROKER_VERSION,
                token: SessionToken(token.clone()),
            };
            codec::write_frame(&mut &stream, &hello).map_err(|e| e.to_string())?;
            match codec::read_frame::<_, BrokerHelloReply>(&mut &stream) {
                Ok(BrokerHelloReply::Accepted) => {}
                Ok(BrokerHelloReply::Rejected { reason }) => {
                    return Err(format!("refused: {reason}"));
                }
                Err(e) => return Err(format!("handshake: {e}")),
            }
            self.conn = Some(stream);
        }
        self.conn.as_ref().ok_or_else(|| "no connection".into())
    }

    fn roundtrip(
        &mut self,
        request: &BrokerRequest,
    ) -> Result<(BrokerReply, Option<OwnedFd>), String> {
        let stream = self.connect()?;
        codec::write_frame(&mut &*stream, request).map_err(|e| e.to_string())?;
        let mut header = [0u8; codec::HEADER_LEN];
        let (got, fd) = recv_with_fd(stream.as_raw_fd(), &mut header)?;
        if got == 0 {
            return Err("the broker closed the connection".into());
        }
        (&*stream)
            .read_exact(&mut header[got..])
            .map_err(|e| e.to_string())?;
        let len = codec::frame_len(header).map_err(|e| e.to_string())?;
        let mut payload = vec![0u8; len];
        (&*stream)
            .read_exact(&mut payload)
            .map_err(|e| e.to_string())?;
        let reply = codec::decode::<BrokerReply>(&payload).map_err(|e| e.to_string())?;
        Ok((reply, fd))
    }
}

/// `recvmsg` into `buf` (close-on-exec), taking at most one descriptor
/// from `SCM_RIGHTS` (any other is closed).
fn recv_with_fd(sock: RawFd, buf: &mut [u8]) -> Result<(usize, Option<OwnedFd>), String> {
    let mut control = [0u64; 8];
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: `msg` points at valid buffers for the duration of the call.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("recvmsg: {err}"));
        }
        let mut received = None;
        // SAFETY: walking the control buffer the kernel filled, with the
        // CMSG_* macros and within msg_controllen; every fd taken is ours.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                    let count = ((*cmsg).cmsg_len as usize - (data as usize - cmsg as usize))
                        / std::mem::size_of::<libc::c_int>();
                    for i in 0..count {
                        let fd = OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i)));
                        if received.is_none() {
                            received = Some(fd);
                        }
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 && received.is_none() {
            return Err("a descriptor was lost (control data truncated)".into());
        }
        return Ok((n as usize, received));
    }
}
