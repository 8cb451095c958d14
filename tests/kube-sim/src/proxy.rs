//! The service proxy: every TCP port of a Service whose ClusterIP is in the run's range
//! 10.215.N.0/24 is reachable at `clusterIP:port`, as kube-proxy makes it, from this machine
//! and from every pod. Like kube-proxy's old userspace mode, without a netfilter rule or a
//! sysctl: the ClusterIP is added as a /32 address to the run's bridge (so it is an address
//! of this machine, reached by pods through their default route via the bridge), the
//! simulator listens on it, and each connection is relayed to a ready endpoint (round
//! robin over the Endpoints' addresses, at the endpoint port of the same name). A service
//! with no ready endpoint resets the connection. The addresses go with the bridge.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde_json::Value;
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

use crate::{
    kubelet::network::ip,
    selector::{FieldSelector, LabelSelector},
    store::Store,
};

/// How often the proxy re-reads the services when nothing changes.
const RESYNC: Duration = Duration::from_secs(2);

/// One service port: where it is served and which endpoint port it goes to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ServicePort {
    namespace: String,
    service: String,
    /// The service port's name (the Endpoints' port of the same name); `None` if unnamed.
    port_name: Option<String>,
}

/// Serves the routed service ports until aborted.
pub async fn run(store: Store, bridge: String) {
    let mut events = store.subscribe();
    let mut listeners: BTreeMap<SocketAddrV4, (ServicePort, JoinHandle<()>)> = BTreeMap::new();
    let mut addresses: BTreeSet<Ipv4Addr> = BTreeSet::new();
    loop {
        let wanted = wanted(&store);
        listeners.retain(|addr, (port, task)| {
            let keep = wanted.get(addr) == Some(port);
            if !keep {
                task.abort();
            }
            keep
        });
        for (addr, port) in wanted {
            if listeners.contains_key(&addr) {
                continue;
            }
            if addresses.insert(*addr.ip()) {
                let (cidr, dev) = (format!("{}/32", addr.ip()), bridge.clone());
                let added = tokio::task::spawn_blocking(move || {
                    ip(&["addr", "replace", &cidr, "dev", &dev])
                })
                .await;
                if !matches!(added, Ok(Ok(()))) {
                    tracing::warn!(%addr, ?added, "cannot add a cluster IP to the bridge");
                    addresses.remove(addr.ip());
                    continue;
                }
            }
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    let task = tokio::spawn(serve(listener, store.clone(), port.clone()));
                    listeners.insert(addr, (port, task));
                }
                Err(e) => tracing::warn!(%addr, error = %e, "cannot listen on a service port"),
            }
        }
        let in_use: BTreeSet<Ipv4Addr> = listeners.keys().map(|a| *a.ip()).collect();
        for gone in addresses.difference(&in_use).copied().collect::<Vec<_>>() {
            addresses.remove(&gone);
            let (cidr, dev) = (format!("{gone}/32"), bridge.clone());
            let _ =
                tokio::task::spawn_blocking(move || ip(&["addr", "del", &cidr, "dev", &dev])).await;
        }
        // Until a service or its endpoints change (or the resync).
        let relevant = |e: &crate::store::Event| {
            e.key.0.is_empty() && matches!(e.key.1.as_str(), "services" | "endpoints")
        };
        let _ = tokio::time::timeout(RESYNC, async {
            loop {
                match events.recv().await {
                    Ok(e) if !relevant(&e) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        std::future::pending::<()>().await;
                    }
                    // A relevant change, or lagging behind (then re-read everything).
                    _ => break,
                }
            }
        })
        .await;
    }
}

/// The TCP service ports that should be served, by address.
fn wanted(store: &Store) -> BTreeMap<SocketAddrV4, ServicePort> {
    let Some(rt) = store.registry().find("", "v1", "services").cloned() else {
        return BTreeMap::new();
    };
    let (services, _) = store.list(
        &rt,
        None,
        &LabelSelector::default(),
        &FieldSelector::default(),
    );
    let mut wanted = BTreeMap::new();
    for svc in &services {
        if svc["metadata"]["deletionTimestamp"].is_string() {
            continue;
        }
        let Some(cluster_ip) = store.routed_cluster_ip(svc) else {
            continue;
        };
        for port in svc["spec"]["ports"].as_array().into_iter().flatten() {
            if port["protocol"].as_str().is_some_and(|p| p != "TCP") {
                continue;
            }
            let Some(number) = port["port"].as_u64().and_then(|n| u16::try_from(n).ok()) else {
                continue;
            };
            wanted.insert(
                SocketAddrV4::new(cluster_ip, number),
                ServicePort {
                    namespace: str_of(&svc["metadata"]["namespace"]),
                    service: str_of(&svc["metadata"]["name"]),
                    port_name: port["name"].as_str().map(str::to_owned),
                },
            );
        }
    }
    wanted
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// The ready endpoints of `port`, from its service's Endpoints object.
fn endpoints(store: &Store, port: &ServicePort) -> Vec<SocketAddrV4> {
    let Some(rt) = store.registry().find("", "v1", "endpoints").cloned() else {
        return Vec::new();
    };
    let Ok(ep) = store.get(&rt, Some(&port.namespace), &port.service) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for subset in ep["subsets"].as_array().into_iter().flatten() {
        let ports = subset["ports"].as_array().cloned().unwrap_or_default();
        let target = ports
            .iter()
            .find(|p| p["name"].as_str() == port.port_name.as_deref())
            .or_else(|| (ports.len() == 1).then(|| &ports[0]))
            .and_then(|p| p["port"].as_u64())
            .and_then(|n| u16::try_from(n).ok());
        let Some(target) = target else { continue };
        for address in subset["addresses"].as_array().into_iter().flatten() {
            if let Some(ip) = address["ip"].as_str().and_then(|ip| ip.parse().ok()) {
                out.push(SocketAddrV4::new(ip, target));
            }
        }
    }
    out
}

/// Relays each connection accepted on `listener` to an endpoint of `port`.
async fn serve(listener: TcpListener, store: Store, port: ServicePort) {
    let next = Arc::new(AtomicUsize::new(0));
    let port = Arc::new(port);
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (store, port, next) = (store.clone(), port.clone(), next.clone());
        tokio::spawn(async move {
            let endpoints = endpoints(&store, &port);
            if endpoints.is_empty() {
                // As kube-proxy rejects a service without endpoints: a reset.
                let _ = client.set_zero_linger();
                return;
            }
            let endpoint = endpoints[next.fetch_add(1, Ordering::Relaxed) % endpoints.len()];
            match TcpStream::connect(endpoint).await {
                Ok(mut upstream) => {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
                Err(_) => {
                    let _ = client.set_zero_linger();
                }
            }
        });
    }
}
