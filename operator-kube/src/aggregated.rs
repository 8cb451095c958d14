//! The operator's aggregated API, `operator.remora.dev/v1alpha1`, served
//! over TLS (`--api-listen`): what the API server proxies a session to when
//! the CLI opens it as an upgrade request to
//! `/apis/operator.remora.dev/v1alpha1/namespaces/NS/targets/TARGET/connect`
//! with the kubeconfig's own credentials ([`remora_kube::operator_api`]).
//!
//! Trust chain: the API server authenticates the user (certificate, token,
//! exec plugin: whatever its authenticators accept) and authorises `get` on
//! `targets/connect`; it then connects here presenting its front-proxy client
//! certificate, and names the user in `X-Remote-User`, `X-Remote-Group` and
//! `X-Remote-Extra-*`. Those headers are believed only on a connection whose
//! client certificate verifies against the `requestheader-client-ca-file`
//! of `kube-system/extension-apiserver-authentication` and whose common name
//! is allowed ([`front_proxy`]); any other request (no certificate, another
//! CA, another name) is refused before a header is read. The session then
//! runs as over the operator's own listener, with the vouched user in place
//! of a TokenReview: the SubjectAccessReviews (create, steal, mirror) are
//! the same.
//!
//! The front proxy's trust follows the ConfigMap: it is watched, and a
//! changed CA or allowed name (a rotated front-proxy CA) applies to the
//! connections accepted from then on, without a restart.

pub mod front_proxy;
pub mod tls;

use bytes::Bytes;
use front_proxy::{RemoteUser, RequestHeaderConfig};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use remora_kube::operator_api::{self, CONTROL, GROUP, RESOURCE, SUBRESOURCE, VERSION};
use remora_operator::Connections;
use remora_operator::access::Vouched;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

/// Bytes buffered between an upgraded stream and its session.
const PIPE_CAPACITY: usize = 256 * 1024;
/// WebSocket subprotocols the CLI's client (kube-rs) offers; one is echoed.
const SUBPROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// What a connection is accepted with: the TLS acceptor (whose client
/// certificate verifier trusts the front proxy's CA) and the front proxy's
/// configuration.
struct Trust {
    acceptor: TlsAcceptor,
    front_proxy: Option<Arc<RequestHeaderConfig>>,
}

/// The trust in force, replaced whole when the front proxy's ConfigMap
/// changes (the serving certificate stays).
#[derive(Clone)]
struct TrustCell {
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: Arc<rustls::pki_types::PrivateKeyDer<'static>>,
    current: Arc<std::sync::RwLock<Arc<Trust>>>,
}

impl TrustCell {
    fn new(
        cert: tls::ServingCert,
        front_proxy: Option<RequestHeaderConfig>,
    ) -> Result<TrustCell, String> {
        let chain = cert.chain.clone();
        let key = Arc::new(cert.key.clone_key());
        let trust = Self::build(cert, front_proxy)?;
        Ok(TrustCell {
            chain,
            key,
            current: Arc::new(std::sync::RwLock::new(Arc::new(trust))),
        })
    }

    fn build(
        cert: tls::ServingCert,
        front_proxy: Option<RequestHeaderConfig>,
    ) -> Result<Trust, String> {
        let config = tls::server_config(cert, front_proxy.as_ref())?;
        Ok(Trust {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            front_proxy: front_proxy.map(Arc::new),
        })
    }

    fn get(&self) -> Arc<Trust> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Trust `front_proxy` from now on; false when it is what was trusted.
    fn set(&self, front_proxy: RequestHeaderConfig) -> Result<bool, String> {
        if self.get().front_proxy.as_deref() == Some(&front_proxy) {
            return Ok(false);
        }
        let cert = tls::ServingCert {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            generated_ca_pem: None,
        };
        let trust = Self::build(cert, Some(front_proxy))?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(trust);
        Ok(true)
    }
}

/// The aggregated API, set up and ready to serve.
pub struct AggregatedApi {
    listener: TcpListener,
    trust: TrustCell,
    /// The cluster whose front-proxy ConfigMap is followed (none: the trust
    /// given at construction stays).
    client: Option<kube::Client>,
}

impl std::fmt::Debug for AggregatedApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregatedApi")
            .field("listener", &self.listener)
            .field("front_proxy", &self.trust.get().front_proxy)
            .finish_non_exhaustive()
    }
}

impl AggregatedApi {
    /// Bind `listen`, read the front proxy's trust from the cluster, and
    /// take the serving certificate from `cert_files` or make one (then the
    /// APIService's caBundle is set to its CA). A cluster whose ConfigMap
    /// cannot be read is logged, and every request then refused.
    ///
    /// # Errors
    /// Binding, or an unusable serving certificate.
    pub async fn setup(
        client: kube::Client,
        listen: SocketAddr,
        cert_files: Option<(&std::path::Path, &std::path::Path)>,
        service_names: &[String],
    ) -> Result<AggregatedApi, String> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| format!("binding the aggregated API on {listen}: {e}"))?;
        let front_proxy = match read_front_proxy(client.clone()).await {
            Ok(config) => Some(config),
            Err(e) => {
                tracing::warn!(error = %e, "the aggregated API will refuse every request");
                None
            }
        };
        let cert = match cert_files {
            Some((cert, key)) => tls::load(cert, key)?,
            None => tls::generate(service_names)?,
        };
        if let Some(ca) = &cert.generated_ca_pem {
            match set_ca_bundle(client.clone(), ca).await {
                Ok(()) => tracing::info!(
                    apiservice = operator_api::APISERVICE,
                    "caBundle set to the serving certificate's CA"
                ),
                Err(e) => tracing::warn!(error = %e, "the APIService's caBundle was not set"),
            }
        }
        let mut api = Self::new(listener, cert, front_proxy)?;
        api.client = Some(client);
        Ok(api)
    }

    /// On `listener`, serving `cert`, trusting `front_proxy` (none: every
    /// request but the health check is refused).
    ///
    /// # Errors
    /// An unusable certificate or CA.
    pub fn new(
        listener: TcpListener,
        cert: tls::ServingCert,
        front_proxy: Option<RequestHeaderConfig>,
    ) -> Result<AggregatedApi, String> {
        Ok(AggregatedApi {
            listener,
            trust: TrustCell::new(cert, front_proxy)?,
            client: None,
        })
    }

    /// Where it listens.
    ///
    /// # Errors
    /// The socket's address cannot be read.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until `cancel` (and, when set up from a cluster, follow its
    /// front-proxy ConfigMap meanwhile).
    pub async fn serve(self, connections: Connections, cancel: CancellationToken) {
        if let Some(client) = self.client.clone() {
            tokio::spawn(follow_front_proxy(
                client,
                self.trust.clone(),
                cancel.clone(),
            ));
        }
        loop {
            let (stream, peer) = tokio::select! {
                () = cancel.cancelled() => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "aggregated API: cannot accept");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let current = self.trust.get();
            let acceptor = current.acceptor.clone();
            let front_proxy = current.front_proxy.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let certificate = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.as_ref().to_vec());
                let trusted = trust(front_proxy, certificate.as_deref());
                let service = hyper::service::service_fn(move |req| {
                    let trusted = trusted.clone();
                    let connections = connections.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(handle(req, trusted, connections, peer))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    }
}

/// Whether a connection's client certificate (verified by the TLS
/// handshake against the front proxy's CA, when there was one) makes it the
/// front proxy: its configuration, or why not.
fn trust(
    front_proxy: Option<Arc<RequestHeaderConfig>>,
    certificate: Option<&[u8]>,
) -> Result<Arc<RequestHeaderConfig>, String> {
    let config = front_proxy.ok_or_else(|| {
        format!(
            "the operator could not read {}/{}: it trusts no front proxy",
            front_proxy::CONFIGMAP_NAMESPACE,
            front_proxy::CONFIGMAP_NAME
        )
    })?;
    let der = certificate.ok_or_else(|| {
        "no client certificate: requests reach the operator's aggregated API only through the \
         API server's front proxy"
            .to_owned()
    })?;
    config.allow_proxy(front_proxy::subject_common_name(der).as_deref())?;
    Ok(config)
}

/// What a request asks of the aggregated API.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Health,
    GroupList,
    Group,
    Resources,
    Connect { namespace: &'a str, name: &'a str },
    Unknown,
}

fn route(path: &str) -> Route<'_> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["healthz" | "readyz" | "livez"] => Route::Health,
        ["apis"] => Route::GroupList,
        ["apis", g] if *g == GROUP => Route::Group,
        ["apis", g, v] if *g == GROUP && *v == VERSION => Route::Resources,
        ["apis", g, v, "namespaces", namespace, r, name, s]
            if *g == GROUP && *v == VERSION && *r == RESOURCE && *s == SUBRESOURCE =>
        {
            Route::Connect { namespace, name }
        }
        _ => Route::Unknown,
    }
}

fn handle(
    req: Request<Incoming>,
    trusted: Result<Arc<RequestHeaderConfig>, String>,
    connections: Connections,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let route = route(&path);
    if route == Route::Health {
        return text(StatusCode::OK, "ok");
    }
    // Nothing else, not even a header, is looked at before this.
    let config = match trusted {
        Ok(config) => config,
        Err(reason) => {
            tracing::warn!(%peer, %path, %reason, "aggregated API request refused");
            return status(StatusCode::UNAUTHORIZED, "Unauthorized", &reason);
        }
    };
    let group = json!({
        "name": GROUP,
        "versions": [{"groupVersion": format!("{GROUP}/{VERSION}"), "version": VERSION}],
        "preferredVersion": {"groupVersion": format!("{GROUP}/{VERSION}"), "version": VERSION},
    });
    match route {
        Route::GroupList => {
            object(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]}))
        }
        Route::Group => {
            let mut group = group;
            group["kind"] = json!("APIGroup");
            group["apiVersion"] = json!("v1");
            object(group)
        }
        Route::Resources => object(json!({
            "kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": format!("{GROUP}/{VERSION}"),
            "resources": [
                {"name": RESOURCE, "singularName": "target", "namespaced": true,
                 "kind": "Target", "verbs": []},
                {"name": format!("{RESOURCE}/{SUBRESOURCE}"), "singularName": "", "namespaced": true,
                 "kind": "Target", "verbs": ["get"]},
            ],
        })),
        Route::Connect { namespace, name } => {
            let user = match config.remote_user(req.headers()) {
                Ok(user) => user,
                Err(reason) => return status(StatusCode::UNAUTHORIZED, "Unauthorized", &reason),
            };
            let vouched = vouched(user, namespace, name);
            upgrade(req, vouched, connections, peer)
        }
        Route::Health | Route::Unknown => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!(
                "the operator serves no {path} (sessions connect to {})",
                operator_api::connect_path("NAMESPACE", &format!("KIND.NAME or {CONTROL}"))
            ),
        ),
    }
}

fn vouched(user: RemoteUser, namespace: &str, name: &str) -> Vouched {
    Vouched {
        username: user.username,
        groups: user.groups,
        extra: user.extra,
        namespace: namespace.to_owned(),
        target: name.to_owned(),
    }
}

/// Answer a WebSocket upgrade and run the session over it.
fn upgrade(
    mut req: Request<Incoming>,
    vouched: Vouched,
    connections: Connections,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let headers = req.headers();
    let is_websocket = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|_| is_websocket)
    else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "connect is a WebSocket upgrade (remora opens it; see docs/operator.md)",
        );
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_owned()))
        .collect();
    let protocol = SUBPROTOCOLS
        .iter()
        .find(|p| offered.iter().any(|o| o == *p))
        .copied();
    let upgrading = hyper::upgrade::on(&mut req);
    tracing::info!(%peer, user = %vouched.username, namespace = %vouched.namespace,
        target = %vouched.target, "aggregated API connect");
    tokio::spawn(async move {
        let upgraded = match upgrading.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "the connect upgrade failed");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let (bridged, session) = tokio::io::duplex(PIPE_CAPACITY);
        let bridge = tokio::spawn(operator_api::bridge(ws, bridged));
        connections.serve(session, peer, Some(vouched)).await;
        let _ = bridge.await;
    });
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(protocol) = protocol {
        response = response.header(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(protocol),
        );
    }
    response
        .body(Full::new(Bytes::new()))
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "building the upgrade"))
}

fn text(code: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = code;
    response
}

fn object(value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A `metav1.Status` failure, as API servers answer.
fn status(code: StatusCode, reason: &str, message: &str) -> Response<Full<Bytes>> {
    let mut response = object(json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    }));
    *response.status_mut() = code;
    response
}

async fn read_front_proxy(client: kube::Client) -> Result<RequestHeaderConfig, String> {
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, front_proxy::CONFIGMAP_NAMESPACE);
    let configmap = api.get(front_proxy::CONFIGMAP_NAME).await.map_err(|e| {
        format!(
            "reading configmap {}/{}: {e} (the operator's service account needs the Role \
             extension-apiserver-authentication-reader there; the install manifests bind it)",
            front_proxy::CONFIGMAP_NAMESPACE,
            front_proxy::CONFIGMAP_NAME
        )
    })?;
    front_proxy::from_configmap(&configmap.data.unwrap_or_default())
}

/// Watch `kube-system/extension-apiserver-authentication` and trust what it
/// says from each change on, as kube-apiserver's own request-header
/// authenticator does; until `cancel`. A ConfigMap that is deleted or no
/// longer parses leaves the last good trust in force.
async fn follow_front_proxy(client: kube::Client, trust: TrustCell, cancel: CancellationToken) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, front_proxy::CONFIGMAP_NAMESPACE);
    let config = watcher::Config::default()
        .fields(&format!("metadata.name={}", front_proxy::CONFIGMAP_NAME));
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    loop {
        let event = tokio::select! {
            () = cancel.cancelled() => return,
            event = events.next() => match event {
                Some(event) => event,
                None => return,
            },
        };
        let configmap = match event {
            Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => cm,
            Ok(watcher::Event::Delete(_)) => {
                tracing::warn!(
                    "{}/{} was deleted: the aggregated API keeps trusting the last front proxy",
                    front_proxy::CONFIGMAP_NAMESPACE,
                    front_proxy::CONFIGMAP_NAME
                );
                continue;
            }
            Ok(watcher::Event::Init) => continue,
            Ok(watcher::Event::InitDone) => {
                tracing::info!(
                    "following the front proxy's trust: watching {}/{}",
                    front_proxy::CONFIGMAP_NAMESPACE,
                    front_proxy::CONFIGMAP_NAME
                );
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "watching the front proxy's ConfigMap");
                continue;
            }
        };
        let changed = front_proxy::from_configmap(&configmap.data.unwrap_or_default())
            .and_then(|config| trust.set(config));
        match changed {
            Ok(true) => tracing::info!(
                "the front proxy's trust changed ({}/{}): new connections use it",
                front_proxy::CONFIGMAP_NAMESPACE,
                front_proxy::CONFIGMAP_NAME
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(
                error = %e,
                "the front proxy's ConfigMap changed but cannot be used: the last trust stays"
            ),
        }
    }
}

/// Put `ca_pem` in the APIService's caBundle (a merge patch of that field
/// alone, so an applied manifest keeps owning the rest).
async fn set_ca_bundle(client: kube::Client, ca_pem: &str) -> Result<(), String> {
    let api: kube::Api<APIService> = kube::Api::all(client);
    let bundle = serde_json::to_value(k8s_openapi::ByteString(ca_pem.as_bytes().to_vec()))
        .map_err(|e| e.to_string())?;
    let patch = json!({"spec": {"caBundle": bundle}});
    api.patch(
        operator_api::APISERVICE,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
    .map_err(|e| {
        format!(
            "patching apiservice {}: {e} (installed with `remora operator manifests`? its \
             ClusterRole allows patch on that APIService)",
            operator_api::APISERVICE
        )
    })
}

#[cfg(test)]
mod tests;
