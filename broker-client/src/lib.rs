//! The blocking client of the agent's fd broker (see
//! [`remora_protocol::broker`]), one copy for both of its users: the
//! LD_PRELOAD layer (a pool of connections, under its detour guard) and the
//! seccomp supervisor (one connection). Each keeps its own connection
//! policy; this crate speaks the link: the hello, one request and its reply
//! with the descriptor attached to the reply's first byte. [`root`] opens
//! files under the root the broker handed over, without a round trip.
//!
//! Hand-written `recvmsg`: `nix`'s safe wrapper still hands back raw fds
//! (so an `unsafe` conversion stays) and the layer, loaded into every
//! program, takes no dependency it does not need.

pub mod root;
pub mod socket;

use remora_protocol::broker::{
    BROKER_VERSION, BrokerHello, BrokerHelloReply, BrokerReply, BrokerRequest,
};
use remora_protocol::{SessionToken, codec};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Connect to the broker at `endpoint` as [`remora_protocol::broker::BROKER_PATH_ENV`]
/// names it (`@NAME`: an abstract name; else a socket file).
///
/// # Errors
/// The broker cannot be reached, as a sentence naming it.
pub fn connect(endpoint: &Path) -> Result<UnixStream, String> {
    remora_protocol::broker::socket_addr(endpoint)
        .and_then(|addr| UnixStream::connect_addr(&addr))
        .map_err(|e| format!("connecting to {}: {e}", endpoint.display()))
}

/// Introduce this run to the broker on a fresh `stream` with the run's
/// layer `token`.
///
/// # Errors
/// The broker's refusal or a broken link, as a sentence.
pub fn hello(stream: &UnixStream, token: &str) -> Result<(), String> {
    let hello = BrokerHello {
        version: BROKER_VERSION,
        token: SessionToken(token.to_owned()),
    };
    codec::write_frame(&mut &*stream, &hello).map_err(|e| e.to_string())?;
    match codec::read_frame::<_, BrokerHelloReply>(&mut &*stream) {
        Ok(BrokerHelloReply::Accepted) => Ok(()),
        Ok(BrokerHelloReply::Rejected { reason }) => Err(format!("refused: {reason}")),
        Err(e) => Err(format!("handshake: {e}")),
    }
}

/// Send `request` and read its reply with the descriptor attached to it, if
/// any (`cloexec`: received close-on-exec). A descriptor that came with a
/// reply that could not be read is closed.
///
/// # Errors
/// A broken or closed link, as a sentence: the caller stops using it.
pub fn roundtrip(
    stream: &UnixStream,
    request: &BrokerRequest,
    cloexec: bool,
) -> Result<(BrokerReply, Option<OwnedFd>), String> {
    codec::write_frame(&mut &*stream, request).map_err(|e| e.to_string())?;
    let mut header = [0u8; codec::HEADER_LEN];
    let (got, fd) = recv_with_fd(stream.as_raw_fd(), &mut header, cloexec)?;
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

/// `recvmsg` into `buf`, keeping at most one descriptor from `SCM_RIGHTS`
/// (any other is closed).
fn recv_with_fd(
    sock: RawFd,
    buf: &mut [u8],
    cloexec: bool,
) -> Result<(usize, Option<OwnedFd>), String> {
    // Room for one cmsghdr carrying a few ints, aligned as cmsghdr wants.
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
        let flags = if cloexec { libc::MSG_CMSG_CLOEXEC } else { 0 };
        // SAFETY: `msg` points at valid buffers for the duration of the call.
        let n = unsafe { libc::recvmsg(sock, &mut msg, flags) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("recvmsg: {err}"));
        }
        let mut received = None;
        // SAFETY: walking the control buffer the kernel filled, with the
        // CMSG_* macros and within msg_controllen; every fd in it is ours.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                    let count = ((*cmsg).cmsg_len as usize - (data as usize - cmsg as usize))
                        / std::mem::size_of::<libc::c_int>();
                    for i in 0..count {
                        let fd = OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i)));
                        // The first is kept; dropping any other closes it.
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A reply with a descriptor attached arrives whole, with the descriptor.
    #[test]
    fn a_reply_brings_its_descriptor() {
        let (client, server) = UnixStream::pair().unwrap();
        let file = tempfile_with(b"pod file");
        let agent = std::thread::spawn(move || {
            let _: BrokerRequest = codec::read_frame(&mut &server).unwrap();
            let mut frame = Vec::new();
            codec::write_frame(&mut frame, &BrokerReply::Opened).unwrap();
            send_with_fd(&server, &frame[..1], file.as_raw_fd());
            (&server).write_all(&frame[1..]).unwrap();
        });
        let request = BrokerRequest::OpenRead {
            path: "/etc/hostname".into(),
            nofollow: false,
        };
        let (reply, fd) = roundtrip(&client, &request, true).unwrap();
        agent.join().unwrap();
        assert_eq!(reply, BrokerReply::Opened);
        let mut text = String::new();
        std::fs::File::from(fd.expect("a descriptor"))
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "pod file");
    }

    #[test]
    fn a_closed_broker_is_an_error_not_a_hang() {
        let (client, server) = UnixStream::pair().unwrap();
        drop(server);
        let request = BrokerRequest::OpenRead {
            path: "/x".into(),
            nofollow: true,
        };
        assert!(roundtrip(&client, &request, true).is_err());
    }

    fn tempfile_with(bytes: &[u8]) -> std::fs::File {
        let path =
            std::env::temp_dir().join(format!("remora-broker-client-{}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }

    fn send_with_fd(sock: &UnixStream, bytes: &[u8], fd: RawFd) {
        let mut control = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr().cast_mut().cast(),
            iov_len: bytes.len(),
        };
        // SAFETY: as in `recv_with_fd`; one cmsghdr with one int fits in `control`.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen =
                libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as usize;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd);
            assert_eq!(
                libc::sendmsg(sock.as_raw_fd(), &msg, 0),
                bytes.len() as isize
            );
        }
    }
}
