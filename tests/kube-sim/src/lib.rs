//! remora-kube-sim: a one-process Kubernetes API server (plus controllers and a node agent)
//! for remora's tests and demo. Test infrastructure, not a product feature: see
//! docs/kube-sim.md for what it implements and what not.

pub mod aggregator;
pub mod api;
pub mod controllers;
pub mod dns;
pub mod error;
pub mod exec;
pub mod fields;
pub mod http;
pub mod kubelet;
pub mod paging;
pub mod patch;
pub mod portforward;
pub mod protobuf;
pub mod proxy;
pub mod rbac;
pub mod resources;
pub mod selector;
pub mod store;
pub mod table;
pub mod time;
pub mod tls;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use hyper::service::service_fn;
use hyper_util::{rt::TokioExecutor, server::conn::auto};
use tokio::net::TcpListener;

/// Prefix of the per-run state directories under the temp dir; a leftover whose pid is dead is swept.
const STATE_DIR_PREFIX: &str = "remora-kube-sim-";

/// Command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "remora-kube-sim",
    about = "A one-process Kubernetes API server for tests"
)]
pub enum Cli {
    /// Serves the API until SIGTERM/SIGINT.
    Serve(ServeArgs),
    /// Internal: a container's first process (joins the container's cgroup, then execs).
    #[command(hide = true, name = kubelet::init::SUBCOMMAND)]
    ContainerInit(kubelet::init::InitArgs),
    /// Internal: a pod's sandbox (holds its network and UTS namespaces).
    #[command(hide = true, name = kubelet::sandbox::SUBCOMMAND)]
    PodSandbox(kubelet::sandbox::SandboxArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Where to write the kubeconfig, once the server is ready.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Container runtime: `process` (alias `netns`: containers as host process groups in
    /// their pod's namespaces) or `containerd` (a private containerd + runc).
    #[arg(long, default_value = "process")]
    pub runtime: String,
    /// Also shut down (and clean up, as on SIGTERM) when the process that started the
    /// simulator dies, e.g. a test killed by a signal.
    #[arg(long)]
    pub exit_with_parent: bool,
    /// Serve HTTPS with a certificate signed by a CA made at start; the kubeconfig carries the
    /// CA, and every request must then carry a valid bearer token.
    #[arg(long)]
    pub tls: bool,
    /// A service account (`NAMESPACE:NAME`) whose token RBAC decides for, as a real API
    /// server does: its requests and SubjectAccessReviews about it are authorized by the
    /// stored Roles and bindings (subjects of kind `ServiceAccount`). Repeatable; other
    /// service accounts stay allowed everything.
    #[arg(long = "rbac-service-account", value_name = "NAMESPACE:NAME")]
    pub rbac_service_accounts: Vec<String>,
}

/// Why the simulator failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "unsupported --runtime {0:?}: \"process\" (or \"netns\") or \"containerd\" (see docs/kube-sim.md)"
    )]
    UnsupportedRuntime(String),
    #[error("creating the pod network (a bridge and 10.216.N.0/24; needs root and iproute2): {0}")]
    Network(#[source] std::io::Error),
    #[error("starting the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("making the TLS certificates: {0}")]
    Tls(String),
}

pub fn run(cli: Cli) -> Result<(), Error> {
    let cli = match cli {
        Cli::ContainerInit(args) => kubelet::init::container_init(args),
        Cli::PodSandbox(args) => kubelet::sandbox::sandbox_main(args),
        other => other,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    match cli {
        Cli::Serve(args) => {
            // Read before anything else: the parent may die at any time.
            let parent = nix::unistd::getppid();
            rt.block_on(serve(args, parent))
        }
        Cli::ContainerInit(_) | Cli::PodSandbox(_) => unreachable!("handled above"),
    }
}

/// Removes state directories of earlier runs whose process is gone.
pub fn sweep_leftovers() {
    kubelet::cgroup_sweep(STATE_DIR_PREFIX);
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(STATE_DIR_PREFIX) else {
            continue;
        };
        if pid.parse::<u32>().is_ok_and(|pid| !run_alive(pid)) {
            kubelet::kill_leftovers(&entry.path());
            kubelet::network::sweep(&entry.path());
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Whether the simulator run `pid` is still alive (a zombie, not yet reaped, is not).
pub fn run_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

fn kubeconfig(server: &str, token: &str, ca_pem: Option<&str>) -> String {
    let ca = ca_pem.map_or_else(String::new, |pem| {
        format!(
            "\n    certificate-authority-data: {}",
            store::encode_base64(pem.as_bytes())
        )
    });
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: remora-sim\n  cluster:\n    server: {server}{ca}\ncontexts:\n- name: remora-sim\n  context:\n    cluster: remora-sim\n    user: remora-sim-admin\n    namespace: default\ncurrent-context: remora-sim\nusers:\n- name: remora-sim-admin\n  user:\n    token: {token}\n"
    )
}

async fn serve(args: ServeArgs, parent: nix::unistd::Pid) -> Result<(), Error> {
    if !matches!(args.runtime.as_str(), "process" | "netns" | "containerd") {
        return Err(Error::UnsupportedRuntime(args.runtime));
    }
    // Made first: nothing to clean up if it fails.
    let front_proxy = tls::front_proxy().map_err(Error::Tls)?;
    sweep_leftovers();
    let state_dir = std::env::temp_dir().join(format!("{STATE_DIR_PREFIX}{}", std::process::id()));
    std::fs::create_dir_all(&state_dir).map_err(|source| Error::Write {
        path: state_dir.clone(),
        source,
    })?;
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: args.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: args.listen,
        source,
    })?;
    let cgroups = kubelet::Cgroups::create(&format!("{STATE_DIR_PREFIX}{}", std::process::id()))
        .map_err(Error::Runtime)?;
    let network = match kubelet::Network::create(std::process::id(), &state_dir) {
        Ok(network) => network,
        Err(e) => {
            cgroups.remove_all();
            let _ = std::fs::remove_dir_all(&state_dir);
            return Err(Error::Network(e));
        }
    };
    // Pods in their own network namespace reach the API server on the bridge's address.
    let pod_listener = TcpListener::bind((network.gateway(), addr.port()))
        .await
        .inspect_err(|e| {
            tracing::warn!(error = %e, "pods cannot reach the API server on the bridge");
        })
        .ok();
    let containerd = if args.runtime == "containerd" {
        match kubelet::containerd::Containerd::start(&state_dir, cgroups.root()) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                cgroups.remove_all();
                network.remove();
                let _ = std::fs::remove_dir_all(&state_dir);
                return Err(Error::Runtime(e));
            }
        }
    } else {
        None
    };
    let tls = if args.tls {
        let mut ips = vec![addr.ip(), std::net::IpAddr::V4(network.gateway())];
        if !addr.ip().is_loopback() {
            ips.push(std::net::Ipv4Addr::LOCALHOST.into());
        }
        match tls::make(&ips) {
            Ok(tls) => Some(tls),
            Err(e) => {
                if let Some(c) = &containerd {
                    c.stop();
                }
                cgroups.remove_all();
                network.remove();
                let _ = std::fs::remove_dir_all(&state_dir);
                return Err(Error::Tls(e));
            }
        }
    } else {
        None
    };
    let store = store::Store::new();
    if let Some(tls) = &tls {
        store.set_root_ca(&tls.ca_pem);
    }
    aggregator::publish_authentication(
        &store,
        &front_proxy,
        tls.as_ref().map(|t| t.ca_pem.as_str()),
    );
    // Cluster IPs from the run's own 10.215.N.0/24, served by the service proxy.
    store.set_service_subnet(network.index());
    let service_proxy = tokio::spawn(proxy::run(store.clone(), network.bridge()));
    let store_for_dns = store.clone();
    // The cluster DNS on the bridge's address; without it pods keep this machine's resolver.
    let dns_server = match tokio::net::UdpSocket::bind((network.gateway(), 53)).await {
        Ok(socket) => Some(tokio::spawn(dns::serve(
            socket,
            store_for_dns.clone(),
            dns::upstream(),
        ))),
        Err(e) => {
            tracing::warn!(error = %e, "no cluster DNS: binding {}:53", network.gateway());
            None
        }
    };
    // The same over TCP.
    let dns_tcp_server = match tokio::net::TcpListener::bind((network.gateway(), 53)).await {
        Ok(listener) => Some(tokio::spawn(dns::serve_tcp(
            listener,
            store_for_dns.clone(),
            dns::upstream(),
        ))),
        Err(e) => {
            tracing::warn!(error = %e, "no cluster DNS over TCP: binding {}:53", network.gateway());
            None
        }
    };
    let execs = kubelet::Execs::default();
    let token = format!("remora-sim-{}", store::name_suffix(24));
    let state = Arc::new(api::ApiState {
        store: store.clone(),
        token: token.clone(),
        logs: kubelet::Logs::new(&state_dir.join("logs")),
        cgroups: cgroups.clone(),
        execs: execs.clone(),
        require_token: tls.is_some(),
        rbac_service_accounts: args.rbac_service_accounts.clone(),
        tls: tls.clone(),
        front_proxy,
        discovered: Default::default(),
    });
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let kubelet = kubelet::Kubelet::new(
        store.clone(),
        state.logs.clone(),
        cgroups.clone(),
        network.clone(),
        dns_server.as_ref().map(|_| network.gateway()),
        execs,
        addr.port(),
        containerd.clone(),
    );
    let kubelet_task = tokio::spawn(kubelet.run(shutdown_rx));
    let controllers = tokio::spawn(controllers::run(store.clone()));
    let availability = tokio::spawn(aggregator::run_availability(state.clone()));
    let acceptor = tls.as_ref().map(|t| t.acceptor.clone());
    let server = tokio::spawn(accept(listener, state.clone(), acceptor.clone()));
    let pod_server = pod_listener.map(|l| tokio::spawn(accept(l, state.clone(), acceptor.clone())));
    // Written last, atomically: its existence means "ready".
    let tmp = args.kubeconfig.with_extension("tmp-remora-sim");
    let scheme = if tls.is_some() { "https" } else { "http" };
    let ca_pem = tls.as_ref().map(|t| t.ca_pem.as_str());
    std::fs::write(
        &tmp,
        kubeconfig(&format!("{scheme}://{addr}"), &token, ca_pem),
    )
    .and_then(|()| std::fs::rename(&tmp, &args.kubeconfig))
    .map_err(|source| Error::Write {
        path: args.kubeconfig.clone(),
        source,
    })?;
    tracing::info!(%addr, "remora-kube-sim ready");
    eprintln!("remora-kube-sim: serving on {scheme}://{addr}");
    wait_for_signal(args.exit_with_parent.then_some(parent)).await;
    server.abort();
    for d in [dns_server, dns_tcp_server].into_iter().flatten() {
        d.abort();
    }
    if let Some(s) = pod_server {
        s.abort();
    }
    controllers.abort();
    availability.abort();
    service_proxy.abort();
    let _ = shutdown_tx.send(true);
    let _ = kubelet_task.await;
    if let Some(c) = &containerd {
        c.stop();
    }
    cgroups.remove_all();
    network.remove();
    let _ = std::fs::remove_dir_all(&state_dir);
    Ok(())
}

/// Serves the API on `listener` (over TLS with `tls`) until aborted.
async fn accept(
    listener: TcpListener,
    state: Arc<api::ApiState>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // Go's net package sets TCP_NODELAY on every TCP connection, so a real API server
        // writes a port-forward's small messages at once instead of waiting for the peer's
        // (delayed) ACK.
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let (io, cert): (std::pin::Pin<Box<dyn Io>>, Option<tls::ClientCert>) = match tls {
                Some(tls) => {
                    let Ok(stream) = tls.accept(stream).await else {
                        return;
                    };
                    // A verified client certificate authenticates every request of the
                    // connection.
                    let cert = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| tls::client_identity(c));
                    (Box::pin(stream), cert)
                }
                None => (Box::pin(stream), None),
            };
            let svc = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                let state = state.clone();
                if let Some(cert) = &cert {
                    req.extensions_mut().insert(cert.clone());
                }
                async move { Ok::<_, std::convert::Infallible>(api::handle(state, req).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), svc)
                .await;
        });
    }
}

/// A served connection's byte stream (TCP, or TLS over it).
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send> Io for T {}

/// Returns on SIGTERM or SIGINT, or once `parent` is no longer this process's parent
/// (it died and this process was re-parented to init or a subreaper).
async fn wait_for_signal(parent: Option<nix::unistd::Pid>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let orphaned = async {
        match parent {
            Some(parent) => {
                while nix::unistd::getppid() == parent {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                eprintln!("remora-kube-sim: parent {parent} is gone: shutting down");
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        () = orphaned => {}
    }
}
