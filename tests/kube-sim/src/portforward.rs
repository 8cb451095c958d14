//! `pods/<name>/portforward`, in the three ways clients ask for it:
//!
//! * WebSocket `v4.channel.k8s.io` (kube-rs `Api::<Pod>::portforward`, which offers
//!   `v5.channel.k8s.io, v4.channel.k8s.io`), or no subprotocol at all (the same binary
//!   channels);
//! * WebSocket `SPDY/3.1+portforward.k8s.io`: SPDY tunnelled in binary WebSocket messages
//!   (kubectl ≥ 1.31 by default);
//! * a plain `Upgrade: SPDY/3.1` with `X-Stream-Protocol-Version: portforward.k8s.io`
//!   (kubectl's fallback, or `KUBECTL_PORT_FORWARD_WEBSOCKETS=false`).
//!
//! Each forwarded connection is a TCP connection to `localhost:<port>` made inside the pod's
//! network namespace (`setns` on a short-lived thread to the namespace of a process of the
//! pod), as a kubelet does.

mod spdy;
mod websocket;

use std::{
    io,
    net::{Ipv6Addr, SocketAddr},
    time::Duration,
};

use hyper::{Request, Response, body::Incoming, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{handshake::derive_accept_key, protocol::Role},
};

use crate::{
    error::{ApiError, Result},
    http::{Body, Query, full},
    kubelet::Cgroups,
};

/// kube-rs' channel protocol.
const V4: &str = "v4.channel.k8s.io";
/// The same channels in base64 text messages: a kubelet speaks it, this sim does not (no
/// client here offers it), and says so.
const V4_BASE64: &str = "v4.base64.channel.k8s.io";
/// kubectl's SPDY-in-WebSocket tunnel.
const SPDY_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";
/// The SPDY port-forward protocol.
const PORTFORWARD: &str = "portforward.k8s.io";
/// How long a connection to the pod's port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The pod a forward goes to.
#[derive(Debug, Clone)]
pub struct PodTarget {
    name: String,
    uid: String,
    cgroups: Cgroups,
}

impl PodTarget {
    /// Connects to `port` inside the pod's network namespace.
    pub async fn connect(&self, port: u16) -> io::Result<TcpStream> {
        let pid = self
            .cgroups
            .pod_pids(&self.uid)
            .into_iter()
            .next()
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "the pod has no running container")
            })?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        // setns changes the calling thread only: a thread of its own, gone after connecting.
        std::thread::Builder::new()
            .name("portforward-netns".into())
            .spawn(move || {
                let _ = tx.send(connect_in_netns(pid, port));
            })?;
        let stream = rx
            .await
            .map_err(|_| io::Error::other("the connecting thread died"))??;
        stream.set_nonblocking(true)?;
        // As a kubelet's (Go) connection to the pod's port: no Nagle delay.
        stream.set_nodelay(true)?;
        TcpStream::from_std(stream)
    }

    /// The message a kubelet writes to the error stream.
    fn error_message(&self, port: u16, err: &io::Error) -> String {
        format!(
            "error forwarding port {port} to pod {}, uid {}: failed to connect to localhost:{port} inside the pod's network namespace: {err}",
            self.name, self.uid
        )
    }
}

fn connect_in_netns(pid: u32, port: u16) -> io::Result<std::net::TcpStream> {
    let netns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    let v4 = SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT).or_else(|e| {
        std::net::TcpStream::connect_timeout(
            &SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
            CONNECT_TIMEOUT,
        )
        .map_err(|_| e)
    })
}

pub(crate) fn header_str(req: &Request<Incoming>, name: header::HeaderName) -> Vec<&str> {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect()
}

/// The WebSocket subprotocol a Kubernetes API server and kubelet pick from the client's
/// `offered` list, or `""` for none.
///
/// The API server tunnels SPDY when any offered protocol is `SPDY/3.1+…k8s.io`
/// (`PortForwardWebsockets`, on by default since 1.31; `IsWebSocketRequestWithTunnelingProtocol`
/// in apiserver's `streamtunnel.go`); anything else is proxied to the kubelet, whose
/// port-forward (`pkg/kubelet/cri/streaming/portforward/websocket.go`) accepts `""`,
/// `v4.channel.k8s.io` and `v4.base64.channel.k8s.io`, and `wsstream`'s handshake takes the
/// first of the client's protocols it accepts (no header counts as `""`). So kube-rs' offer
/// `v5.channel.k8s.io, v4.channel.k8s.io` gets v4: no Kubernetes version speaks v5 (the
/// close signal of KEP-4006) for port-forward, only for exec and attach; a v5-only offer is a
/// 400 `requested protocol(s) are not supported`.
fn negotiate(offered: &[&str]) -> Result<&'static str> {
    if offered
        .iter()
        .any(|p| p.starts_with("SPDY/3.1+") && p.ends_with(".k8s.io"))
    {
        return if offered.contains(&SPDY_TUNNEL) {
            Ok(SPDY_TUNNEL)
        } else {
            Err(ApiError::bad_request(format!(
                "requested protocol(s) are not supported: {offered:?}; supports [{SPDY_TUNNEL}]"
            )))
        };
    }
    let offered = if offered.is_empty() {
        &[""][..]
    } else {
        offered
    };
    match offered.iter().find(|p| ["", V4, V4_BASE64].contains(p)) {
        Some(&V4_BASE64) => Err(ApiError::bad_request(format!(
            "{V4_BASE64} is what a kubelet would pick here; remora-kube-sim does not speak it \
             (offer {V4})"
        ))),
        Some(&V4) => Ok(V4),
        Some(_) => Ok(""),
        None => Err(ApiError::bad_request(format!(
            "requested protocol(s) are not supported: {offered:?}; supports [\"\" {V4} {V4_BASE64}]"
        ))),
    }
}

/// The ports a v4 client asks for: `ports=80,8080` (or the parameter repeated).
fn requested_ports(query: &Query) -> Result<Vec<u16>> {
    query
        .all("ports")
        .into_iter()
        .flat_map(|v| v.split(','))
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| ApiError::bad_request(format!("invalid port {p:?}")))
        })
        .collect()
}

/// Answers a port-forward upgrade request and serves the connection once upgraded.
pub fn handle(cgroups: &Cgroups, pod: &Value, req: Request<Incoming>) -> Result<Response<Body>> {
    let target = PodTarget {
        name: pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        uid: pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        cgroups: cgroups.clone(),
    };
    let upgrade = header_str(&req, header::UPGRADE);
    if upgrade.iter().any(|u| u.eq_ignore_ascii_case("websocket")) {
        let key = req
            .headers()
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or_else(|| ApiError::bad_request("missing Sec-WebSocket-Key"))?;
        let accept = derive_accept_key(key.as_bytes());
        let offered = header_str(&req, header::SEC_WEBSOCKET_PROTOCOL);
        let protocol = negotiate(&offered)?;
        let ports = if protocol != SPDY_TUNNEL {
            let ports = requested_ports(&Query::parse(req.uri().query()))?;
            if ports.is_empty() {
                return Err(ApiError::bad_request(
                    "query parameter \"ports\" is required",
                ));
            }
            ports
        } else {
            Vec::new()
        };
        let on_upgrade = hyper::upgrade::on(req);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            if protocol != SPDY_TUNNEL {
                websocket::serve_v4(ws, ports, target).await;
            } else {
                let (input, output) = websocket::byte_pipe(ws);
                if let Err(e) = spdy::serve(input, output, target).await {
                    tracing::warn!(error = %e, "port-forward SPDY session");
                }
            }
        });
        let mut headers = vec![
            (header::UPGRADE.as_str(), "websocket"),
            (header::SEC_WEBSOCKET_ACCEPT.as_str(), accept.as_str()),
        ];
        if !protocol.is_empty() {
            headers.push((header::SEC_WEBSOCKET_PROTOCOL.as_str(), protocol));
        }
        return Ok(switching(&headers));
    }
    if upgrade.iter().any(|u| u.eq_ignore_ascii_case("SPDY/3.1")) {
        let versions = header_str(
            &req,
            header::HeaderName::from_static("x-stream-protocol-version"),
        );
        if !versions.contains(&PORTFORWARD) {
            return Err(ApiError::bad_request(format!(
                "unable to negotiate a stream protocol from {versions:?}: this server speaks {PORTFORWARD}"
            )));
        }
        let on_upgrade = hyper::upgrade::on(req);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let (input, output) = websocket::io_pipe(TokioIo::new(upgraded));
            if let Err(e) = spdy::serve(input, output, target).await {
                tracing::warn!(error = %e, "port-forward SPDY session");
            }
        });
        return Ok(switching(&[
            (header::UPGRADE.as_str(), "SPDY/3.1"),
            ("x-stream-protocol-version", PORTFORWARD),
        ]));
    }
    Err(ApiError::bad_request(
        "Upgrade request required: port forwarding needs a WebSocket (v4.channel.k8s.io or SPDY/3.1+portforward.k8s.io) or SPDY/3.1 upgrade",
    ))
}

pub(crate) fn switching(headers: &[(&str, &str)]) -> Response<Body> {
    let mut resp = Response::builder()
        .status(101)
        .header(header::CONNECTION, "Upgrade");
    for (k, v) in headers {
        resp = resp.header(*k, *v);
    }
    resp.body(full(bytes::Bytes::new())).expect("response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subprotocol_is_the_first_offered_one_a_kubelet_accepts() {
        // kube-rs 5.0's offer: v5 first, which no kubelet speaks for port-forward.
        assert_eq!(negotiate(&["v5.channel.k8s.io", V4]).unwrap(), V4);
        assert_eq!(negotiate(&[V4]).unwrap(), V4);
        // No header (or an empty one): binary channels, no protocol in the answer.
        assert_eq!(negotiate(&[]).unwrap(), "");
        assert_eq!(negotiate(&[""]).unwrap(), "");
        // kubectl's tunnel, whatever else it offers.
        assert_eq!(negotiate(&[SPDY_TUNNEL]).unwrap(), SPDY_TUNNEL);
        assert_eq!(negotiate(&[V4, SPDY_TUNNEL]).unwrap(), SPDY_TUNNEL);
    }

    #[test]
    fn an_offer_without_a_port_forward_protocol_is_refused() {
        for offered in [
            &["v5.channel.k8s.io"][..],
            &["channel.k8s.io"],
            &["SPDY/3.1+remotecommand.k8s.io"],
            &[V4_BASE64, V4],
        ] {
            let e = negotiate(offered).unwrap_err();
            assert_eq!(e.code, 400, "{offered:?}");
            assert!(e.message.contains("not"), "{offered:?}: {}", e.message);
        }
    }
}
