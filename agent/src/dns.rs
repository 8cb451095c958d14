//! Name resolution as the target resolves names: its own `/etc/hosts` first
//! (read inside its mount namespace), then the DNS servers of its
//! `/etc/resolv.conf`, queried from its network namespace.

pub mod hosts;
pub mod raw;
pub mod resolver;

use crate::net::NetApi;
use crate::pool::NsPool;
use hosts::HostsFile;
use remora_protocol::dns::{
    AddrFamily, DnsAnswer, DnsQueryRequest, LookupReply, LookupRequest, ReverseReply,
    ReverseRequest,
};
use remora_protocol::{ErrorCode, RemoteError, RemoteResult};
use resolver::ResolvConf;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the parsed hosts and resolver files are trusted before their
/// modification stamps are checked again.
pub const DNS_FILES_RECHECK: Duration = Duration::from_secs(1);

/// Upper bound of one lookup through DNS, whatever the search list makes of it.
pub const DNS_DEADLINE: Duration = Duration::from_secs(5);

const HOSTS_PATH: &str = "/etc/hosts";
const RESOLV_PATH: &str = "/etc/resolv.conf";

/// Resolves names for every client of the agent. Cheap to clone; all clones
/// share the cache of the target's hosts and resolver files.
#[derive(Debug, Clone)]
pub struct DnsApi {
    pool: NsPool,
    net: NetApi,
    files: Arc<tokio::sync::Mutex<FilesCache>>,
}

impl DnsApi {
    pub fn new(pool: NsPool, net: NetApi) -> Self {
        DnsApi {
            pool,
            net,
            files: Arc::default(),
        }
    }

    /// `getaddrinfo` as the target would run it.
    pub async fn lookup(&self, request: LookupRequest) -> RemoteResult<LookupReply> {
        let name = request.name.trim();
        if name.is_empty() {
            return Err(resolver::not_found("an empty name"));
        }
        if let Ok(ip) = name.parse::<IpAddr>() {
            return numeric(ip, request.family, name);
        }
        let (hosts, resolv) = self.files().await?;
        if let Some(hit) = hosts.lookup(name, request.family) {
            return Ok(LookupReply {
                canonical_name: Some(hit.canonical_name),
                addresses: hit.addresses,
            });
        }
        if let Some(reply) = localhost(name, request.family) {
            return Ok(reply);
        }
        let query = self.net.lookup(name.to_owned(), request.family, resolv);
        tokio::time::timeout(DNS_DEADLINE, query)
            .await
            .unwrap_or_else(|_| Err(deadline(name)))
    }

    /// `getnameinfo` as the target would run it.
    pub async fn reverse(&self, request: ReverseRequest) -> RemoteResult<ReverseReply> {
        let (hosts, resolv) = self.files().await?;
        let names = hosts.reverse(request.address);
        if !names.is_empty() {
            return Ok(ReverseReply { names });
        }
        let query = self.net.reverse(request.address, resolv);
        let names = tokio::time::timeout(DNS_DEADLINE, query)
            .await
            .unwrap_or_else(|_| Err(deadline(&request.address.to_string())))?;
        Ok(ReverseReply { names })
    }

    /// `res_query`/`res_search` as the target would run them: the first
    /// reply with answers, else the last reply received (its header says
    /// why: NXDOMAIN, no data, a server failure).
    pub async fn query(&self, request: DnsQueryRequest) -> RemoteResult<DnsAnswer> {
        let (_, resolv) = self.files().await?;
        let names = raw::candidates(request.name.trim(), request.search, &resolv);
        let servers = raw::servers(&resolv);
        let timeout = resolv.opts.timeout;
        let work = async {
            let mut last: Option<bytes::Bytes> = None;
            let mut failure = None;
            for name in &names {
                match self.ask(name, &request, &servers, timeout).await {
                    Ok(reply) => {
                        let (_, rcode, answers) = raw::header(&reply).unwrap_or((0, 2, 0));
                        if rcode == 0 && answers > 0 {
                            return Ok(DnsAnswer { message: reply });
                        }
                        // Keep trying the search list on NXDOMAIN and empty
                        // answers, as glibc does; a failing server ends it.
                        let keep_going = rcode == raw::NXDOMAIN || rcode == 0;
                        last = Some(reply);
                        if !keep_going {
                            break;
                        }
                    }
                    Err(e) => failure = Some(e),
                }
            }
            match (last, failure) {
                (Some(message), _) => Ok(DnsAnswer { message }),
                (None, Some(e)) => Err(e),
                (None, None) => Err(resolver::not_found(&request.name)),
            }
        };
        tokio::time::timeout(DNS_DEADLINE, work)
            .await
            .unwrap_or_else(|_| Err(deadline(&request.name)))
    }

    /// One name to each server in turn (UDP, from the target's network
    /// namespace) until one replies.
    async fn ask(
        &self,
        name: &str,
        request: &DnsQueryRequest,
        servers: &[std::net::SocketAddr],
        timeout: Duration,
    ) -> RemoteResult<bytes::Bytes> {
        let id = rand_id();
        let query = raw::build_query(id, name, request.class, request.rtype).ok_or_else(|| {
            RemoteError::new(
                ErrorCode::InvalidInput,
                format!("{name} is not a valid DNS name"),
            )
        })?;
        let mut failure = RemoteError::new(
            ErrorCode::TemporaryNameFailure,
            "the target has no nameserver".to_owned(),
        );
        for server in servers {
            let attempt = async {
                let socket = self.net.connect_udp(*server).await?;
                socket.send(&query).await?;
                let mut buf = vec![0u8; raw::MAX_REPLY];
                loop {
                    let n = socket.recv(&mut buf).await?;
                    if raw::header(&buf[..n]).is_some_and(|(got, _, _)| got == id) {
                        return Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(&buf[..n]));
                    }
                }
            };
            match tokio::time::timeout(timeout, attempt).await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(e)) => {
                    failure = RemoteError::new(
                        ErrorCode::TemporaryNameFailure,
                        format!("asking {server} for {name} from the target: {e}"),
                    );
                }
                Err(_) => {
                    failure = RemoteError::new(
                        ErrorCode::TemporaryNameFailure,
                        format!("{server} did not answer for {name} within {timeout:?}"),
                    );
                }
            }
        }
        Err(failure)
    }

    /// The target's current hosts and resolver files, re-read when their
    /// stamps changed, checked at most every [`DNS_FILES_RECHECK`].
    async fn files(&self) -> RemoteResult<(Arc<HostsFile>, Arc<ResolvConf>)> {
        let mut cache = self.files.lock().await;
        let fresh = cache
            .checked_at
            .is_some_and(|at| at.elapsed() < DNS_FILES_RECHECK);
        if !fresh {
            let hosts_stamp = cache.hosts.as_ref().map(|c| c.stamp);
            let resolv_stamp = cache.resolv.as_ref().map(|c| c.stamp);
            let (hosts, resolv) = self
                .pool
                .run(move || {
                    (
                        reload(HOSTS_PATH, hosts_stamp),
                        reload(RESOLV_PATH, resolv_stamp),
                    )
                })
                .await
                .map_err(|e| RemoteError::new(ErrorCode::Unavailable, e.to_string()))?;
            if let Some((stamp, data)) = hosts {
                let text = data.map(|d| String::from_utf8_lossy(&d).into_owned());
                cache.hosts = Some(Cached {
                    stamp,
                    value: Arc::new(HostsFile::parse(text.as_deref().unwrap_or_default())),
                });
            }
            if let Some((stamp, data)) = resolv {
                cache.generation += 1;
                let generation = cache.generation;
                cache.resolv = Some(Cached {
                    stamp,
                    value: Arc::new(ResolvConf::parse(data.as_deref(), generation)),
                });
            }
            cache.checked_at = Some(Instant::now());
        }
        match (&cache.hosts, &cache.resolv) {
            (Some(hosts), Some(resolv)) => Ok((hosts.value.clone(), resolv.value.clone())),
            // Both were loaded above on the first call.
            _ => Err(RemoteError::new(
                ErrorCode::Unavailable,
                "the target's resolver files could not be loaded",
            )),
        }
    }
}

/// What identifies a version of a file: `None` when it does not exist.
type Stamp = Option<(u64, u64, u64, i64, i64)>;

#[derive(Debug)]
struct Cached<T> {
    stamp: Stamp,
    value: Arc<T>,
}

#[derive(Debug, Default)]
struct FilesCache {
    checked_at: Option<Instant>,
    hosts: Option<Cached<HostsFile>>,
    resolv: Option<Cached<ResolvConf>>,
    generation: u64,
}

/// Runs on a namespace worker: `None` when the file still has `old` as its
/// stamp, else its new stamp and content (`None` content when missing or
/// unreadable, which the callers treat like an empty file).
fn reload(path: &str, old: Option<Stamp>) -> Option<(Stamp, Option<Vec<u8>>)> {
    let stamp: Stamp = std::fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()));
    if old == Some(stamp) {
        return None;
    }
    let data = std::fs::read(path)
        .inspect_err(|e| tracing::debug!(path, error = %e, "cannot read the target's file"))
        .ok();
    Some((stamp, data))
}

fn numeric(ip: IpAddr, family: AddrFamily, name: &str) -> RemoteResult<LookupReply> {
    let fits = match family {
        AddrFamily::Any => true,
        AddrFamily::V4 => ip.is_ipv4(),
        AddrFamily::V6 => ip.is_ipv6(),
    };
    if !fits {
        return Err(RemoteError::new(
            ErrorCode::NameNotResolved,
            format!("{name} is not an address of the requested family"),
        ));
    }
    Ok(LookupReply {
        canonical_name: Some(name.to_owned()),
        addresses: vec![ip],
    })
}

/// `localhost` and `*.localhost` always mean loopback (RFC 6761), even when the
/// target's hosts file forgot them, as with glibc's `myhostname` module.
fn localhost(name: &str, family: AddrFamily) -> Option<LookupReply> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if name != "localhost" && !name.ends_with(".localhost") {
        return None;
    }
    let addresses = match family {
        AddrFamily::Any => vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()],
        AddrFamily::V4 => vec![Ipv4Addr::LOCALHOST.into()],
        AddrFamily::V6 => vec![Ipv6Addr::LOCALHOST.into()],
    };
    Some(LookupReply {
        canonical_name: Some(name),
        addresses,
    })
}

/// A query id that a stray reply is unlikely to match.
fn rand_id() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) as u16
}

fn deadline(name: &str) -> RemoteError {
    RemoteError::new(
        ErrorCode::TemporaryNameFailure,
        format!(
            "resolving {name} from the target took longer than {}s",
            DNS_DEADLINE.as_secs()
        ),
    )
}

#[cfg(test)]
mod tests;
