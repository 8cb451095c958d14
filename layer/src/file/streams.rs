//! Write streams across `exec`: a shell opens `> /pod/file` and execs the
//! command with the stream's socket as its stdout. The new image's layer
//! starts with an empty fd table, so the fds that are write streams travel
//! in [`WRITE_STREAMS_ENV`] (added by [`crate::exec`]) and are recorded
//! again at start, after checking each fd is still connected to that
//! stream. The child's `fsync`/`fclose`/`close` then report the stream's
//! remote errors like the parent's would.

use super::FileInfo;
use crate::fd::{self, Managed};
use libc::c_int;
use remora_protocol::fs::Metadata;
use std::net::SocketAddr;

/// Environment variable listing inherited write streams:
/// `fd,mode,addr,path` entries joined by `|`.
pub const WRITE_STREAMS_ENV: &str = "REMORA_WRITE_STREAMS";

/// The variable's value for an exec now: the write streams that survive it
/// (not close-on-exec); `None` when there are none.
pub fn env_value() -> Option<String> {
    let entries: Vec<String> = fd::entries()
        .into_iter()
        .filter_map(|(fd, managed)| match managed {
            Managed::File(FileInfo {
                stream: Some(addr),
                path,
                metadata,
                ..
            }) if !path.contains('|') && survives_exec(fd) => {
                Some(format!("{fd},{},{addr},{path}", metadata.mode))
            }
            _ => None,
        })
        .collect();
    (!entries.is_empty()).then(|| entries.join("|"))
}

fn survives_exec(fd: c_int) -> bool {
    // SAFETY: F_GETFD takes no argument.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    flags >= 0 && flags & libc::FD_CLOEXEC == 0
}

/// Record the write streams a parent passed (called from `state::init`).
pub fn init_from_env() {
    let Ok(value) = std::env::var(WRITE_STREAMS_ENV) else {
        return;
    };
    for entry in value.split('|') {
        if let Some((fd, stream, path, mode)) = parse(entry) {
            if peer_of(fd) == Some(stream) {
                let metadata = Metadata {
                    mode,
                    nlink: 1,
                    ..Metadata::default()
                };
                fd::insert(
                    fd,
                    Managed::File(FileInfo {
                        path: path.into(),
                        metadata,
                        remote: None,
                        stream: Some(stream),
                    }),
                );
            }
        }
    }
}

/// One `fd,mode,addr,path` entry.
pub fn parse(entry: &str) -> Option<(c_int, SocketAddr, String, u32)> {
    let mut parts = entry.splitn(4, ',');
    let fd = parts.next()?.parse().ok()?;
    let mode = parts.next()?.parse().ok()?;
    let addr = parts.next()?.parse().ok()?;
    let path = parts.next()?.to_owned();
    Some((fd, addr, path, mode))
}

/// The address socket `fd` is connected to.
fn peer_of(fd: c_int) -> Option<SocketAddr> {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage has `len` writable bytes.
    let rc = unsafe { libc::getpeername(fd, (&raw mut storage).cast(), &mut len) };
    if rc != 0 {
        return None;
    }
    // SAFETY: the kernel wrote `len` bytes of an address into storage.
    unsafe { crate::sockaddr::read((&raw const storage).cast(), len) }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn an_entry_keeps_commas_in_the_path() {
        let (fd, addr, path, mode) = parse("1,33188,127.0.0.1:4000,/srv/a,b.txt").unwrap();
        assert_eq!(
            (fd, addr.to_string(), path.as_str(), mode),
            (1, "127.0.0.1:4000".to_owned(), "/srv/a,b.txt", 0o100644)
        );
        assert!(parse("x,1,127.0.0.1:1,/a").is_none());
        assert!(parse("1,1,nonsense,/a").is_none());
    }
}
