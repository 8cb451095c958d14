//! The network thread: one OS thread inside the target's network namespace
//! with its own current-thread runtime. It creates and connects sockets and
//! runs DNS queries; a connected socket keeps the namespace it was created in,
//! so it is handed back to the main runtime, which pumps its data.

use crate::dns::resolver::{self, ResolvConf};
use crate::error::{Error, Result};
use crate::namespace::TargetNamespaces;
use hickory_resolver::TokioResolver;
use remora_protocol::dns::{AddrFamily, LookupReply};
use remora_protocol::{ErrorCode, RemoteError, RemoteResult};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Commands waiting for the network thread before senders have to wait.
pub const NET_COMMAND_CAPACITY: usize = 256;

/// How long a TCP connect from the target may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Work for the network thread; each command answers on its `reply`.
#[derive(Debug)]
enum NetCommand {
    ConnectTcp {
        addr: SocketAddr,
        /// `SO_MARK` for the socket, set before it connects.
        mark: Option<u32>,
        reply: oneshot::Sender<io::Result<std::net::TcpStream>>,
    },
    ListenTcp {
        /// `None`: every address of the namespace, IPv6 and IPv4 when it can.
        ip: Option<IpAddr>,
        reply: oneshot::Sender<io::Result<std::net::TcpListener>>,
    },
    ConnectUdp {
        addr: SocketAddr,
        reply: oneshot::Sender<io::Result<std::net::UdpSocket>>,
    },
    Lookup {
        name: String,
        family: AddrFamily,
        conf: Arc<ResolvConf>,
        reply: oneshot::Sender<RemoteResult<LookupReply>>,
    },
    Reverse {
        addr: IpAddr,
        conf: Arc<ResolvConf>,
        reply: oneshot::Sender<RemoteResult<Vec<String>>>,
    },
}

/// Handle to the network thread. Cheap to clone; the thread ends when every
/// handle is gone.
#[derive(Debug, Clone)]
pub struct NetApi {
    /// clients --command--> network thread
    cmd_tx: mpsc::Sender<NetCommand>,
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the agent's network thread is gone",
    )
}

fn dns_gone() -> RemoteError {
    RemoteError::new(ErrorCode::Unavailable, "the agent's network thread is gone")
}

impl NetApi {
    /// Start the network thread and wait until it is inside the target's
    /// network namespace.
    ///
    /// # Errors
    /// [`Error::NotPermitted`] and friends when it cannot enter.
    pub async fn start(ns: Arc<dyn TargetNamespaces>) -> Result<Self> {
        let (cmd_tx, cmd_rx) = mpsc::channel(NET_COMMAND_CAPACITY);
        let (ready_tx, ready_rx) = oneshot::channel::<Result<()>>();
        std::thread::Builder::new()
            .name("remora-net".into())
            .spawn(move || {
                if let Err(e) = ns.enter_net() {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(source) => {
                        let _ = ready_tx.send(Err(Error::Runtime {
                            what: "network",
                            source,
                        }));
                        return;
                    }
                };
                if ready_tx.send(Ok(())).is_ok() {
                    runtime.block_on(NetTask::new(cmd_rx).run());
                }
            })
            .map_err(|source| Error::SpawnThread {
                what: "network",
                source,
            })?;
        ready_rx
            .await
            .map_err(|_| Error::ThreadLost { what: "network" })??;
        Ok(NetApi { cmd_tx })
    }

    /// Connect a TCP stream to `addr` from inside the target.
    pub async fn connect_tcp(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
        self.connect_tcp_marked(addr, None).await
    }

    /// Connect a TCP stream to `addr` from inside the target, its packets
    /// carrying `mark` (`SO_MARK`, needs `CAP_NET_ADMIN`) so that netfilter
    /// rules can tell them apart.
    pub async fn connect_tcp_marked(
        &self,
        addr: SocketAddr,
        mark: Option<u32>,
    ) -> io::Result<tokio::net::TcpStream> {
        let (reply, reply_rx) = oneshot::channel();
        self.cmd_tx
            .send(NetCommand::ConnectTcp { addr, mark, reply })
            .await
            .map_err(|_| gone())?;
        let stream = reply_rx.await.map_err(|_| gone())??;
        tokio::net::TcpStream::from_std(stream)
    }

    /// A TCP listener inside the target on an ephemeral port: on `ip`, or
    /// when `None` on every address (dual-stack `[::]`, or `0.0.0.0` when the
    /// namespace has no IPv6).
    pub async fn listen_tcp(&self, ip: Option<IpAddr>) -> io::Result<tokio::net::TcpListener> {
        let (reply, reply_rx) = oneshot::channel();
        self.cmd_tx
            .send(NetCommand::ListenTcp { ip, reply })
            .await
            .map_err(|_| gone())?;
        let listener = reply_rx.await.map_err(|_| gone())??;
        tokio::net::TcpListener::from_std(listener)
    }

    /// A UDP socket inside the target, connected to `addr`.
    pub async fn connect_udp(&self, addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
        let (reply, reply_rx) = oneshot::channel();
        self.cmd_tx
            .send(NetCommand::ConnectUdp { addr, reply })
            .await
            .map_err(|_| gone())?;
        let socket = reply_rx.await.map_err(|_| gone())??;
        tokio::net::UdpSocket::from_std(socket)
    }

    /// Forward DNS lookup with the target's resolver configuration.
    pub async fn lookup(
        &self,
        name: String,
        family: AddrFamily,
        conf: Arc<ResolvConf>,
    ) -> RemoteResult<LookupReply> {
        let (reply, reply_rx) = oneshot::channel();
        self.cmd_tx
            .send(NetCommand::Lookup {
                name,
                family,
                conf,
                reply,
            })
            .await
            .map_err(|_| dns_gone())?;
        reply_rx.await.map_err(|_| dns_gone())?
    }

    /// Reverse (PTR) DNS lookup with the target's resolver configuration.
    pub async fn reverse(&self, addr: IpAddr, conf: Arc<ResolvConf>) -> RemoteResult<Vec<String>> {
        let (reply, reply_rx) = oneshot::channel();
        self.cmd_tx
            .send(NetCommand::Reverse { addr, conf, reply })
            .await
            .map_err(|_| dns_gone())?;
        reply_rx.await.map_err(|_| dns_gone())?
    }
}

/// Owns the network thread's state: its command queue and the resolver built
/// from the latest resolver configuration it was given.
struct NetTask {
    /// clients --command--> network thread
    cmd_rx: mpsc::Receiver<NetCommand>,
    resolver: Option<(u64, TokioResolver)>,
}

impl NetTask {
    fn new(cmd_rx: mpsc::Receiver<NetCommand>) -> Self {
        NetTask {
            cmd_rx,
            resolver: None,
        }
    }

    /// Serve commands until every [`NetApi`] is dropped. Every command runs as
    /// its own task on this thread's runtime, so one slow connect or query
    /// never holds up the others, and every socket is created in here.
    async fn run(mut self) {
        while let Some(cmd) = self.cmd_rx.recv().await {
            match cmd {
                NetCommand::ConnectTcp { addr, mark, reply } => {
                    tokio::spawn(async move {
                        let _ = reply.send(connect_tcp(addr, mark).await);
                    });
                }
                NetCommand::ListenTcp { ip, reply } => {
                    // Non-blocking system calls only: answered in place.
                    let _ = reply.send(listen_tcp(ip));
                }
                NetCommand::ConnectUdp { addr, reply } => {
                    tokio::spawn(async move {
                        let _ = reply.send(connect_udp(addr).await);
                    });
                }
                NetCommand::Lookup {
                    name,
                    family,
                    conf,
                    reply,
                } => match self.resolver(&conf) {
                    Ok(resolver) => {
                        tokio::spawn(async move {
                            let _ = reply.send(resolver::lookup(&resolver, &name, family).await);
                        });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                NetCommand::Reverse { addr, conf, reply } => match self.resolver(&conf) {
                    Ok(resolver) => {
                        tokio::spawn(async move {
                            let _ = reply.send(resolver::reverse(&resolver, addr).await);
                        });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
            }
        }
    }

    fn resolver(&mut self, conf: &ResolvConf) -> RemoteResult<TokioResolver> {
        match &self.resolver {
            Some((generation, resolver)) if *generation == conf.generation => Ok(resolver.clone()),
            _ => {
                let resolver = conf.build().map_err(|e| {
                    RemoteError::new(
                        ErrorCode::TemporaryNameFailure,
                        format!("cannot build a resolver from the target's resolv.conf: {e}"),
                    )
                })?;
                self.resolver = Some((conf.generation, resolver.clone()));
                Ok(resolver)
            }
        }
    }
}

async fn connect_tcp(addr: SocketAddr, mark: Option<u32>) -> io::Result<std::net::TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    if let Some(mark) = mark {
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Mark, &mark)?;
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(addr)).await {
        Ok(stream) => stream?.into_std(),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect timed out after {}s", CONNECT_TIMEOUT.as_secs()),
        )),
    }
}

/// Backlog of the listeners the agent opens inside the target.
const LISTEN_BACKLOG: i32 = 1024;

fn listen_tcp(ip: Option<IpAddr>) -> io::Result<std::net::TcpListener> {
    match ip {
        Some(ip) => listen_on((ip, 0).into(), false),
        None => listen_on((Ipv6Addr::UNSPECIFIED, 0).into(), true).or_else(|e| {
            tracing::debug!(error = %e, "no dual-stack listener; listening on IPv4 only");
            listen_on((Ipv4Addr::UNSPECIFIED, 0).into(), false)
        }),
    }
}

fn listen_on(addr: SocketAddr, dual_stack: bool) -> io::Result<std::net::TcpListener> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt,
        socket, sockopt,
    };
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    if dual_stack {
        setsockopt(&fd, sockopt::Ipv6V6Only, &false)?;
    }
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )?;
    let backlog = Backlog::new(LISTEN_BACKLOG).map_err(io::Error::from)?;
    listen(&fd, backlog)?;
    Ok(std::net::TcpListener::from(fd))
}

async fn connect_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let any: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = tokio::net::UdpSocket::bind(any).await?;
    socket.connect(addr).await?;
    socket.into_std()
}
