//! `sendmmsg`/`recvmmsg`: the batched forms of `sendmsg`/`recvmsg`. Each
//! message's destination goes through the same routing as `sendto` (a
//! remote one becomes its interceptor), and each received message's source
//! is rewritten back to the remote peer, as `recvfrom` does. One batch
//! stays one system call.

use super::fix_source;
use crate::error::{HookError, fail};
use crate::guard::DetourGuard;
use crate::real::real;
use crate::sockaddr as sa;
use crate::socket::ops;
use libc::{c_int, c_uint, mmsghdr, sockaddr, timespec};

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendmmsg(
    fd: c_int,
    msgvec: *mut mmsghdr,
    vlen: c_uint,
    flags: c_int,
) -> c_int {
    let real = real!(sendmmsg: fn(c_int, *mut mmsghdr, c_uint, c_int) -> c_int);
    if msgvec.is_null() || vlen == 0 {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real(fd, msgvec, vlen, flags) };
    }
    let Some(_g) = DetourGuard::enter() else {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real(fd, msgvec, vlen, flags) };
    };
    // SAFETY: sendmmsg(2) contract: msgvec holds vlen messages.
    let messages = unsafe { std::slice::from_raw_parts_mut(msgvec, vlen as usize) };
    // Rewritten copies, made only once a destination is remote (a batch of
    // local datagrams allocates nothing); the caller's array is never
    // changed (only its msg_len fields, by the kernel).
    let mut copies: Vec<mmsghdr> = Vec::new();
    // One slot per message, allocated once: pointers into it stay valid.
    let mut names: Vec<libc::sockaddr_storage> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let m = message.msg_hdr;
        // SAFETY: msg_name has msg_namelen bytes when non-null.
        let Some(remote) = (unsafe { sa::read(m.msg_name.cast::<sockaddr>(), m.msg_namelen) })
        else {
            continue;
        };
        match ops::sendto_target(fd, remote) {
            Ok(target) => {
                if copies.is_empty() {
                    copies = messages.to_vec();
                    names = Vec::with_capacity(messages.len());
                }
                names.push(target.storage);
                if let Some(storage) = names.last_mut() {
                    copies[i].msg_hdr.msg_name = (storage as *mut libc::sockaddr_storage).cast();
                    copies[i].msg_hdr.msg_namelen = target.len;
                }
            }
            Err(HookError::Bypass(_)) => {}
            Err(e) => return fail(&e),
        }
    }
    if copies.is_empty() {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real(fd, msgvec, vlen, flags) };
    }
    // SAFETY: `copies` is a valid array of vlen messages whose names point
    // into `names`, alive for the call.
    let sent = unsafe { real(fd, copies.as_mut_ptr(), vlen, flags) };
    if sent > 0 {
        for (mine, theirs) in copies.iter().zip(messages.iter_mut()).take(sent as usize) {
            theirs.msg_len = mine.msg_len;
        }
    }
    sent
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvmmsg(
    fd: c_int,
    msgvec: *mut mmsghdr,
    vlen: c_uint,
    flags: c_int,
    timeout: *mut timespec,
) -> c_int {
    let real = real!(recvmmsg: fn(c_int, *mut mmsghdr, c_uint, c_int, *mut timespec) -> c_int);
    // Only sockets with remote destinations have sources to rewrite: the
    // others (every local UDP socket) go straight to libc.
    let routed =
        !msgvec.is_null() && DetourGuard::enter().is_some_and(|_g| ops::has_udp_routes(fd));
    if !routed {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real(fd, msgvec, vlen, flags, timeout) };
    }
    // SAFETY: recvmmsg(2) contract: msgvec holds vlen messages.
    let caps: Vec<libc::socklen_t> = unsafe { std::slice::from_raw_parts(msgvec, vlen as usize) }
        .iter()
        .map(|m| m.msg_hdr.msg_namelen)
        .collect();
    // SAFETY: forwarding the caller's arguments unchanged.
    let got = unsafe { real(fd, msgvec, vlen, flags, timeout) };
    if got > 0 {
        // SAFETY: the kernel filled the first `got` messages.
        let messages = unsafe { std::slice::from_raw_parts_mut(msgvec, got as usize) };
        for (m, cap) in messages.iter_mut().zip(caps) {
            let name = m.msg_hdr.msg_name.cast::<sockaddr>();
            // SAFETY: msg_name/msg_namelen hold this message's source.
            unsafe { fix_source(fd, name, &mut m.msg_hdr.msg_namelen, cap) };
        }
    }
    got
}
