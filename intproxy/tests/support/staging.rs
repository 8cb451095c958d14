//! The scripted target of the layer suite, a "staging pod": its DNS names,
//! hostname, a small read-only file tree, and a network where a few remote
//! addresses lead to local services (HTTP, UDP echo), one refuses connections
//! and one is answered by the target itself.

use super::fake_agent::{ConnectPlan, Script};
use super::harness::Harness;
use super::http::HttpServer;
use super::udp::UdpEcho;
use bytes::Bytes;
use remora_config::Config;
use remora_protocol::dns::{LookupReply, ReverseReply};
use remora_protocol::fs::{DirEntry, FileType, FsReply, FsRequest, Metadata, OpenReply, Timestamp};
use remora_protocol::{
    ErrorCode, RemoteAddr, RemoteError, RemoteFd, RemoteResult, Request, Response,
};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

pub const BACKEND: &str = "backend.staging.internal";
pub const BACKEND_IP: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 3);
pub const CHILD_NAME: &str = "child.staging.internal";
pub const CHILD_IP: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 4);
/// What [`super::fake_agent::HELD_NAME`] resolves to, once released.
pub const HELD_IP: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 5);
pub const UNKNOWN_NAME: &str = "nosuch.staging.internal";
pub const POD_HOSTNAME: &str = "orders-7f9c4-xk2lp";

/// Remote address of a service the fake agent maps to the local HTTP server.
pub const HTTP_REMOTE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9)), 80);
/// [`BACKEND`]'s HTTP port, also mapped to the local HTTP server.
pub const BACKEND_HTTP: SocketAddr = SocketAddr::new(IpAddr::V4(BACKEND_IP), 80);
/// Remote UDP service the fake agent maps to the local echo service.
pub const UDP_REMOTE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 9, 9, 12)), 9999);
/// Remote address whose connects the target refuses.
pub const REFUSED_REMOTE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 9, 9, 10)), 80);
/// Remote address where the target itself answers with fixed bytes.
pub const CANNED_REMOTE: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 9, 9, 11)), 7000);
pub const CANNED_GREETING: &str = "hello from the pod\n";

pub const HELLO_PATH: &str = "/hello.txt";
pub const HELLO_BODY: &str = "hello from the staging backend\n";

pub const REMOTE_CONFIG: &str = "/etc/remora-fake/config.yaml";
pub const REMOTE_CONFIG_BODY: &str = "database:\n  host: db.staging.internal\n  port: 5432\n";
pub const REMOTE_MISSING: &str = "/etc/remora-fake/missing.yaml";
pub const REMOTE_DIR: &str = "/srv/fake";
pub const REMOTE_DIR_ENTRIES: &[(&str, FileType)] = &[
    ("alpha.txt", FileType::Regular),
    ("beta.log", FileType::Regular),
    ("gamma", FileType::Directory),
];

pub const S_IFREG: u32 = 0o100_000;
pub const S_IFDIR: u32 = 0o040_000;

fn metadata(mode: u32, size: u64, ino: u64) -> Metadata {
    let time = Timestamp {
        secs: 1_700_000_000,
        nanos: 0,
    };
    Metadata {
        dev: 0x42,
        ino,
        mode,
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        size,
        blksize: 4096,
        blocks: size.div_ceil(512),
        atime: time,
        mtime: time,
        ctime: time,
    }
}

fn config_metadata() -> Metadata {
    metadata(S_IFREG | 0o644, REMOTE_CONFIG_BODY.len() as u64, 1001)
}

fn dir_metadata() -> Metadata {
    metadata(S_IFDIR | 0o755, 4096, 1002)
}

fn not_found(what: &str) -> RemoteError {
    RemoteError::new(
        ErrorCode::NotFound,
        format!("{what}: no such file or directory"),
    )
}

/// Handles the fake target's file system hands out.
#[derive(Debug, Default)]
struct FakeFs {
    next_fd: AtomicU64,
    /// Open directory handles and whether their entries were listed already.
    dirs: Mutex<HashMap<RemoteFd, bool>>,
    /// Open file handles and their read positions.
    files: Mutex<HashMap<RemoteFd, usize>>,
}

impl FakeFs {
    fn fd(&self) -> RemoteFd {
        RemoteFd(100 + self.next_fd.fetch_add(1, Ordering::SeqCst))
    }

    fn handle(&self, request: &FsRequest) -> RemoteResult<FsReply> {
        let body = REMOTE_CONFIG_BODY.as_bytes();
        match request {
            FsRequest::Stat { path, .. } | FsRequest::Access { path, .. } => {
                let meta = match path.as_str() {
                    REMOTE_CONFIG => config_metadata(),
                    REMOTE_DIR => dir_metadata(),
                    other => return Err(not_found(other)),
                };
                Ok(match request {
                    FsRequest::Stat { .. } => FsReply::Metadata(meta),
                    _ => FsReply::Done,
                })
            }
            FsRequest::Open(open) => match open.path.as_str() {
                REMOTE_CONFIG if open.options.write => Err(RemoteError::new(
                    ErrorCode::PermissionDenied,
                    "read-only file system",
                )),
                REMOTE_CONFIG => {
                    let fd = self.fd();
                    let inline = open.snapshot_limit >= body.len() as u64;
                    if !inline {
                        self.files.lock().unwrap().insert(fd, 0);
                    }
                    Ok(FsReply::Opened(OpenReply {
                        fd,
                        metadata: config_metadata(),
                        snapshot: inline.then(|| Bytes::from_static(body)),
                    }))
                }
                REMOTE_DIR => Ok(FsReply::Opened(OpenReply {
                    fd: self.fd(),
                    metadata: dir_metadata(),
                    snapshot: None,
                })),
                other => Err(not_found(other)),
            },
            FsRequest::OpenDir { path } if path == REMOTE_DIR => {
                let fd = self.fd();
                self.dirs.lock().unwrap().insert(fd, false);
                Ok(FsReply::Opened(OpenReply {
                    fd,
                    metadata: dir_metadata(),
                    snapshot: None,
                }))
            }
            FsRequest::OpenDir { path } => Err(not_found(path)),
            FsRequest::ReadDirBatch { fd, .. } => {
                let mut dirs = self.dirs.lock().unwrap();
                let listed = dirs
                    .get_mut(fd)
                    .ok_or_else(|| RemoteError::new(ErrorCode::BadHandle, "unknown handle"))?;
                if std::mem::replace(listed, true) {
                    return Ok(FsReply::DirEntries(Vec::new()));
                }
                let entries = REMOTE_DIR_ENTRIES
                    .iter()
                    .enumerate()
                    .map(|(i, (name, file_type))| DirEntry {
                        name: (*name).to_string(),
                        ino: 2000 + i as u64,
                        file_type: *file_type,
                    })
                    .collect();
                Ok(FsReply::DirEntries(entries))
            }
            FsRequest::Read { fd, len } => {
                let mut files = self.files.lock().unwrap();
                let pos = files
                    .get_mut(fd)
                    .ok_or_else(|| RemoteError::new(ErrorCode::BadHandle, "unknown handle"))?;
                let start = (*pos).min(body.len());
                let end = (start + *len as usize).min(body.len());
                *pos = end;
                Ok(FsReply::Data(Bytes::copy_from_slice(&body[start..end])))
            }
            FsRequest::Pread { fd, offset, len } => {
                if !self.files.lock().unwrap().contains_key(fd) {
                    return Err(RemoteError::new(ErrorCode::BadHandle, "unknown handle"));
                }
                let start = (*offset as usize).min(body.len());
                let end = (start + *len as usize).min(body.len());
                Ok(FsReply::Data(Bytes::copy_from_slice(&body[start..end])))
            }
            FsRequest::Fstat { fd } => {
                if self.dirs.lock().unwrap().contains_key(fd) {
                    Ok(FsReply::Metadata(dir_metadata()))
                } else if self.files.lock().unwrap().contains_key(fd) {
                    Ok(FsReply::Metadata(config_metadata()))
                } else {
                    Err(RemoteError::new(ErrorCode::BadHandle, "unknown handle"))
                }
            }
            FsRequest::Close { fd } => {
                self.dirs.lock().unwrap().remove(fd);
                self.files.lock().unwrap().remove(fd);
                Ok(FsReply::Done)
            }
            FsRequest::Canonicalize { path } => match path.as_str() {
                REMOTE_CONFIG | REMOTE_DIR => Ok(FsReply::Path(path.clone())),
                other => Err(not_found(other)),
            },
            FsRequest::ReadLink { path } => match path.as_str() {
                REMOTE_CONFIG | REMOTE_DIR => Err(RemoteError::new(
                    ErrorCode::InvalidInput,
                    "not a symbolic link",
                )),
                other => Err(not_found(other)),
            },
            _ => Err(RemoteError::new(
                ErrorCode::PermissionDenied,
                "the fake target is read-only",
            )),
        }
    }
}

fn lookup(name: &str) -> RemoteResult<Response> {
    let ip = match name.trim_end_matches('.') {
        BACKEND => BACKEND_IP,
        CHILD_NAME => CHILD_IP,
        super::fake_agent::HELD_NAME => HELD_IP,
        _ => {
            return Err(RemoteError::new(
                ErrorCode::NameNotResolved,
                format!("{name}: name or service not known"),
            ));
        }
    };
    Ok(Response::Lookup(LookupReply {
        canonical_name: Some(name.to_string()),
        addresses: vec![IpAddr::V4(ip)],
    }))
}

/// The staging pod: its DNS, hostname, files, and a network where
/// [`HTTP_REMOTE`] and [`BACKEND_HTTP`] are the local `http` server and
/// [`UDP_REMOTE`] the local `udp` echo service.
pub fn staging(http: SocketAddr, udp: SocketAddr) -> Script {
    let fs = FakeFs::default();
    Script::new(
        move |request| match request {
            Request::Lookup(l) => lookup(&l.name),
            Request::Reverse(_) => Ok(Response::Reverse(ReverseReply { names: Vec::new() })),
            Request::Hostname => Ok(Response::Hostname(POD_HOSTNAME.into())),
            Request::Fs(fs_request) => fs.handle(fs_request).map(Response::Fs),
            Request::Ping => Ok(Response::Pong),
            Request::Env(_)
            | Request::Session(_)
            | Request::Db(_)
            | Request::Queues(_)
            | Request::DnsQuery(_) => Err(RemoteError::new(
                ErrorCode::Unsupported,
                "not scripted in the fake agent",
            )),
        },
        move |remote| match remote {
            RemoteAddr::Ip(addr) if *addr == HTTP_REMOTE || *addr == BACKEND_HTTP => {
                ConnectPlan::Forward(http)
            }
            RemoteAddr::Ip(addr) if *addr == UDP_REMOTE => ConnectPlan::Forward(udp),
            RemoteAddr::Ip(addr) if *addr == REFUSED_REMOTE => {
                ConnectPlan::Refuse(ErrorCode::ConnectionRefused)
            }
            RemoteAddr::Ip(addr) if *addr == CANNED_REMOTE => {
                ConnectPlan::Canned(Bytes::from_static(CANNED_GREETING.as_bytes()))
            }
            _ => ConnectPlan::Refuse(ErrorCode::NetworkUnreachable),
        },
    )
}

/// A harness against the staging pod, with the local services behind it.
#[derive(Debug)]
pub struct Staging {
    pub harness: Harness,
    pub http: HttpServer,
    pub udp: UdpEcho,
}

impl std::ops::Deref for Staging {
    type Target = Harness;

    fn deref(&self) -> &Harness {
        &self.harness
    }
}

/// The staging pod with `config` handed to the layer; its HTTP service
/// serves [`HELLO_PATH`] and `extra_files`.
pub async fn staging_harness_with(config: Config, extra_files: &[(&str, &str)]) -> Staging {
    let mut files = vec![(HELLO_PATH, HELLO_BODY)];
    files.extend_from_slice(extra_files);
    let http = HttpServer::start(&files).await;
    let udp = UdpEcho::start().await;
    let harness = Harness::start(staging(http.addr(), udp.addr()), config).await;
    Staging { harness, http, udp }
}

/// The staging pod with the default config and these intproxy lifetime settings.
pub async fn staging_harness_lifetime(life: crate::support::harness::Lifetime) -> Staging {
    let http = HttpServer::start(&[(HELLO_PATH, HELLO_BODY)]).await;
    let udp = UdpEcho::start().await;
    let harness =
        Harness::start_with_lifetime(staging(http.addr(), udp.addr()), Config::default(), life)
            .await;
    Staging { harness, http, udp }
}

pub async fn staging_harness(config: Config) -> Staging {
    staging_harness_with(config, &[]).await
}

pub async fn default_harness() -> Staging {
    staging_harness(Config::default()).await
}
