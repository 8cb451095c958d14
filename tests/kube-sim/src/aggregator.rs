//! The aggregation layer: an `APIService` (`apiregistration.k8s.io/v1`) with a `spec.service`
//! makes every request under `/apis/<group>/<version>` a proxied one, as kube-apiserver's
//! kube-aggregator does. The request is authenticated here (token or client certificate) and,
//! for an RBAC-checked user, authorized on the path's resource (`get` on `targets/connect`,
//! say); it then goes to the Service's cluster IP (through the service proxy, as from any
//! pod) over TLS, verified with the APIService's `caBundle` for `<service>.<namespace>.svc`
//! (or not verified with `insecureSkipTLSVerify`), presenting the front-proxy client
//! certificate and naming the user in `X-Remote-User` / `X-Remote-Group` (a client's own
//! `X-Remote-*` headers and its `Authorization` are dropped). Upgrade requests (WebSocket)
//! are relayed both ways once both sides switched protocols.
//!
//! The front proxy's trust is published as a real control plane does: the ConfigMap
//! `kube-system/extension-apiserver-authentication` (`requestheader-client-ca-file`,
//! `requestheader-allowed-names`, the header names) and the Role
//! `kube-system/extension-apiserver-authentication-reader` that reads it.
//!
//! The availability controller ([`run_availability`]) sets each APIService's `Available`
//! condition with kube-aggregator's reasons and messages, and keeps what the backend answered
//! to its discovery probe: `/apis` lists every APIService's group (available or not), and
//! aggregated discovery lists its version with the resources of that answer (or none after a
//! failed check). `kubectl get apiservices` prints kube-aggregator's SERVICE and AVAILABLE
//! columns.
//!
//! A request to an APIService that is not Available is answered 503 `service unavailable`
//! without reaching its service, as kube-aggregator's proxy handler does.
//!
//! Not done: local APIServices (no `spec.service`) are only marked available: nothing serves
//! them.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, header};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::{Value, json};
use tokio::net::TcpStream;

use crate::{
    api::{ApiState, Identity},
    error::{ApiError, Result},
    http::{Body, Query, full, json_response},
    rbac,
    store::Store,
    tls::FrontProxy,
};

/// The ConfigMap (in kube-system) the front proxy's trust is read from.
pub const AUTHENTICATION_CONFIGMAP: &str = "extension-apiserver-authentication";
/// The bootstrap Role that reads it.
pub const AUTHENTICATION_READER: &str = "extension-apiserver-authentication-reader";

fn unavailable(message: String) -> ApiError {
    ApiError::new(503, "ServiceUnavailable", message)
}

/// Publish the front proxy's trust: the ConfigMap and its reader Role in kube-system.
pub fn publish_authentication(store: &Store, front_proxy: &FrontProxy, client_ca: Option<&str>) {
    let registry = store.registry();
    let mut data = json!({
        "requestheader-client-ca-file": front_proxy.ca_pem,
        "requestheader-allowed-names": format!("[\"{}\"]", crate::tls::FRONT_PROXY_CN),
        "requestheader-username-headers": "[\"X-Remote-User\"]",
        "requestheader-group-headers": "[\"X-Remote-Group\"]",
        "requestheader-extra-headers-prefix": "[\"X-Remote-Extra-\"]",
    });
    if let Some(ca) = client_ca {
        data["client-ca-file"] = json!(ca);
    }
    if let Some(rt) = registry.find("", "v1", "configmaps") {
        let _ = store.create(
            rt,
            Some("kube-system"),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": AUTHENTICATION_CONFIGMAP, "namespace": "kube-system"},
                   "data": data}),
            false,
        );
    }
    if let Some(rt) = registry.find("rbac.authorization.k8s.io", "v1", "roles") {
        let _ = store.create(
            rt,
            Some("kube-system"),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                   "metadata": {"name": AUTHENTICATION_READER, "namespace": "kube-system"},
                   "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                              "resourceNames": [AUTHENTICATION_CONFIGMAP],
                              "verbs": ["get", "list", "watch"]}]}),
            false,
        );
    }
}

fn apiservices(store: &Store) -> Vec<Value> {
    let registry = store.registry();
    registry
        .find("apiregistration.k8s.io", "v1", "apiservices")
        .map(|rt| {
            store
                .list(rt, None, &Default::default(), &Default::default())
                .0
        })
        .unwrap_or_default()
}

/// Whether the APIService's `Available` condition is True.
pub fn available(apiservice: &Value) -> bool {
    apiservice["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Available" && c["status"] == "True")
}

/// The APIService serving `group`/`version` through a Service, if any.
pub fn served_by(store: &Store, group: &str, version: &str) -> Option<Value> {
    apiservices(store).into_iter().find(|s| {
        s["spec"]["group"] == group
            && s["spec"]["version"] == version
            && s["spec"]["service"].is_object()
    })
}

/// `/apis/<group>` of a group only APIServices serve.
pub fn api_group(store: &Store, group: &str) -> Option<Value> {
    let versions: Vec<Value> = apiservices(store)
        .into_iter()
        .filter(|s| s["spec"]["group"] == group)
        .filter_map(|s| s["spec"]["version"].as_str().map(str::to_owned))
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    let preferred = versions.first()?.clone();
    Some(
        json!({"kind": "APIGroup", "apiVersion": "v1", "name": group,
                "versions": versions, "preferredVersion": preferred}),
    )
}

/// `/remora-sim/client-cert?user=U&groups=G1,G2`: a client certificate signed by the CA (test
/// infrastructure: what a kubeadm admin's `client-certificate-data` is). `serve --tls` only,
/// and not for RBAC-checked users.
pub fn client_cert(state: &ApiState, req: &Request<Incoming>) -> Result<Response<Body>> {
    if req.extensions().get::<rbac::User>().is_some() {
        return Err(ApiError::new(
            403,
            "Forbidden",
            "client certificates are issued to the admin only",
        ));
    }
    let tls = state.tls.as_ref().ok_or_else(|| {
        ApiError::bad_request(
            "client certificates need `serve --tls` (a plain-http server has no CA)",
        )
    })?;
    let query = Query::parse(req.uri().query());
    let user = query
        .get("user")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ApiError::bad_request("?user=NAME is required"))?;
    let groups: Vec<String> = query
        .get("groups")
        .unwrap_or_default()
        .split(',')
        .filter(|g| !g.is_empty())
        .map(str::to_owned)
        .collect();
    let (cert, key) = tls
        .issue_client(user, &groups)
        .map_err(|e| ApiError::new(500, "InternalError", e))?;
    Ok(json_response(
        200,
        &json!({"cert": cert, "key": key, "ca": tls.ca_pem}),
    ))
}

/// Authorize an RBAC-checked user's request on the resource its path names (`namespaces/NS/
/// RESOURCE/NAME/SUB`); discovery (`/apis/<group>/<version>`) is every user's.
fn authorize(state: &ApiState, segs: &[&str], req: &Request<Incoming>) -> Result<()> {
    let Some(user) = req.extensions().get::<rbac::User>() else {
        return Ok(());
    };
    let (group, rest) = (segs[1], &segs[3..]);
    let (namespace, rest) = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some(*ns), tail),
        _ => (None, rest),
    };
    let Some((resource, tail)) = rest.split_first() else {
        return Ok(());
    };
    let (name, sub) = (tail.first().copied(), tail.get(1).copied());
    let watch = Query::parse(req.uri().query()).get("watch") == Some("true");
    rbac::authorize(
        &state.store,
        user,
        &rbac::Attributes {
            verb: rbac::verb(req.method(), name.is_some(), watch, sub),
            group,
            resource,
            sub,
            namespace,
            name,
        },
    )
}

/// Proxy the request to the APIService's Service.
pub async fn proxy(
    state: &ApiState,
    apiservice: &Value,
    segs: &[&str],
    mut req: Request<Incoming>,
) -> Result<Response<Body>> {
    authorize(state, segs, &req)?;
    let who = req
        .extensions()
        .get::<Identity>()
        .cloned()
        .ok_or_else(|| ApiError::new(401, "Unauthorized", "Unauthorized"))?;
    let spec = &apiservice["spec"];
    let apiservice_name = apiservice["metadata"]["name"].as_str().unwrap_or_default();
    let namespace = spec["service"]["namespace"].as_str().unwrap_or("default");
    let service_name = spec["service"]["name"].as_str().unwrap_or_default();
    let port = spec["service"]["port"].as_u64().unwrap_or(443);
    let registry = state.store.registry();
    let services = registry.find("", "v1", "services").expect("built-in type");
    let service = state
        .store
        .get(services, Some(namespace), service_name)
        .map_err(|_| {
            unavailable(format!(
                "service/{service_name} in {namespace} (of apiservice {apiservice_name}) not found"
            ))
        })?;
    let ip = state.store.routed_cluster_ip(&service).ok_or_else(|| {
        unavailable(format!(
            "service/{service_name} in {namespace} has no routed cluster IP"
        ))
    })?;
    let config = client_config(&state.front_proxy, spec, apiservice_name)?;
    let host = format!("{service_name}.{namespace}.svc");
    let server_name =
        ServerName::try_from(host.clone()).map_err(|e| unavailable(format!("{host}: {e}")))?;
    let tcp = TcpStream::connect((ip, u16::try_from(port).unwrap_or(443)))
        .await
        .map_err(|e| unavailable(format!("connecting to {host} ({ip}:{port}): {e}")))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(|e| {
            unavailable(format!(
                "TLS to {host} for apiservice {apiservice_name}: {e}"
            ))
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| unavailable(format!("HTTP to {host}: {e}")))?;
    tokio::spawn(connection.with_upgrades());

    let upgrading = req
        .headers()
        .contains_key(header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
    let mut out = Request::builder()
        .method(parts.method)
        .uri(parts.uri.path_and_query().map_or("/", |p| p.as_str()));
    for (name, value) in &parts.headers {
        let n = name.as_str();
        // The client's credentials stay here, and only the front proxy names users.
        if n == "authorization" || n == "host" || n.starts_with("x-remote-") {
            continue;
        }
        out = out.header(name, value);
    }
    out = out
        .header(header::HOST, host.as_str())
        .header("X-Remote-User", who.user.as_str());
    for group in &who.groups {
        out = out.header("X-Remote-Group", group.as_str());
    }
    let out = out
        .body(Full::new(body))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut response = sender
        .send_request(out)
        .await
        .map_err(|e| unavailable(format!("proxying to {host}: {e}")))?;
    if response.status() == hyper::StatusCode::SWITCHING_PROTOCOLS
        && let Some(client) = upgrading
    {
        let backend = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            let (Ok(client), Ok(backend)) = tokio::join!(client, backend) else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(
                &mut TokioIo::new(client),
                &mut TokioIo::new(backend),
            )
            .await;
        });
        let mut back = Response::builder().status(hyper::StatusCode::SWITCHING_PROTOCOLS);
        for (name, value) in response.headers() {
            back = back.header(name, value);
        }
        return back
            .body(full(Bytes::new()))
            .map_err(|e| unavailable(e.to_string()));
    }
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| unavailable(format!("reading the answer of {host}: {e}")))?;
    let mut back = Response::builder().status(parts.status);
    for (name, value) in &parts.headers {
        if matches!(name.as_str(), "content-type" | "content-encoding" | "vary") {
            back = back.header(name, value);
        }
    }
    back.body(full(body))
        .map_err(|e| unavailable(e.to_string()))
}

/// The TLS client of the proxied connection: the front-proxy certificate, and the backend
/// verified with the caBundle (or not at all with `insecureSkipTLSVerify`).
fn client_config(
    front_proxy: &FrontProxy,
    spec: &Value,
    name: &str,
) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| unavailable(e.to_string()))?;
    let builder = if spec["insecureSkipTLSVerify"] == true {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        let bundle = spec["caBundle"]
            .as_str()
            .and_then(crate::store::decode_base64)
            .filter(|b| !b.is_empty())
            .ok_or_else(|| {
                unavailable(format!(
                    "apiservice {name} has no caBundle (and insecureSkipTLSVerify is not set): its \
                     service cannot be verified"
                ))
            })?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&bundle) {
            let ca = ca.map_err(|e| unavailable(format!("apiservice {name} caBundle: {e}")))?;
            roots
                .add(ca)
                .map_err(|e| unavailable(format!("apiservice {name} caBundle: {e}")))?;
        }
        builder.with_root_certificates(roots)
    };
    let mut config = builder
        .with_client_auth_cert(front_proxy.client_chain.clone(), front_proxy.client_key())
        .map_err(|e| unavailable(format!("the front-proxy certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// `insecureSkipTLSVerify: true`: any server certificate is accepted (signatures still checked).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The `Available` condition's check interval (kube-aggregator resyncs every 30 s and on
/// every APIService, Service and EndpointSlice change; the sim checks every second).
const AVAILABILITY_RESYNC: std::time::Duration = std::time::Duration::from_secs(1);
/// How long the discovery probe waits (kube-aggregator's client timeout).
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What each APIService's backend last answered to `GET /apis/<group>/<version>` (its
/// `APIResourceList`), by APIService name: the resources aggregated discovery lists. An
/// APIService whose probe failed has no entry (its version is then listed without resources,
/// as kube-aggregator's discovery manager does after a failed fetch).
#[derive(Debug, Default)]
pub struct Discovered(parking_lot::Mutex<std::collections::HashMap<String, Value>>);

impl Discovered {
    fn set(&self, name: &str, list: Option<Value>) {
        let mut map = self.0.lock();
        match list {
            Some(list) => map.insert(name.to_owned(), list),
            None => map.remove(name),
        };
    }

    /// The `APIResourceList` of `group`/`version`'s APIService, if its last probe passed.
    pub fn resource_list(&self, store: &Store, group: &str, version: &str) -> Option<Value> {
        let name = served_by(store, group, version)?["metadata"]["name"]
            .as_str()?
            .to_owned();
        self.0.lock().get(&name).cloned()
    }
}

/// The groups served only by APIServices (not by the sim itself), with their versions:
/// what `/apis` lists after the built-in groups, available or not (kube-aggregator's
/// `apisHandler` lists every APIService's group).
pub fn aggregated_groups(store: &Store) -> Vec<(String, Vec<String>)> {
    let builtin = store.registry().groups();
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for s in apiservices(store) {
        let (Some(group), Some(version)) =
            (s["spec"]["group"].as_str(), s["spec"]["version"].as_str())
        else {
            continue;
        };
        if group.is_empty() || builtin.iter().any(|(g, _)| g == group) {
            continue;
        }
        match out.iter_mut().find(|(g, _)| g == group) {
            Some((_, versions)) if !versions.iter().any(|v| v == version) => {
                versions.push(version.to_owned());
            }
            Some(_) => {}
            None => out.push((group.to_owned(), vec![version.to_owned()])),
        }
    }
    out
}

/// The availability controller: sets every APIService's `Available` condition as
/// kube-aggregator's does (`Local` for one without a service; `ServiceNotFound`,
/// `ServicePortError`, `EndpointsNotFound`, `MissingEndpoints`, `FailedDiscoveryCheck`, or
/// `Passed` after a 2xx answer to `GET /apis/<group>/<version>` on the service, asked as
/// `system:kube-aggregator` in `system:masters` with the front-proxy certificate and no
/// server verification). The status is written only when it changes.
pub async fn run_availability(state: Arc<ApiState>) {
    let mut events = state.store.subscribe();
    loop {
        for apiservice in apiservices(&state.store) {
            let name = apiservice["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let (status, reason, message, list) = check(&state, &apiservice).await;
            state.discovered.set(&name, list);
            set_available(&state.store, &apiservice, status, reason, &message);
        }
        // Again after a change of what availability depends on, or the resync.
        let resync = tokio::time::sleep(AVAILABILITY_RESYNC);
        tokio::pin!(resync);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                    Ok(ev) if relevant(&ev.key.1) => {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        while events.try_recv().is_ok() {}
                        break;
                    }
                    Ok(_) => {}
                },
                () = &mut resync => break,
            }
        }
    }
}

/// The kinds whose changes kube-aggregator's availability controller reacts to.
fn relevant(plural: &str) -> bool {
    matches!(plural, "apiservices" | "services" | "endpointslices")
}

fn set_available(store: &Store, apiservice: &Value, status: &str, reason: &str, message: &str) {
    let conditions = apiservice["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let old = conditions.iter().find(|c| c["type"] == "Available");
    if old
        .is_some_and(|c| c["status"] == status && c["reason"] == reason && c["message"] == message)
    {
        return;
    }
    // lastTransitionTime moves only when the status does.
    let since = old.filter(|c| c["status"] == status).map_or_else(
        || json!(crate::time::now_rfc3339()),
        |c| c["lastTransitionTime"].clone(),
    );
    let mut conditions: Vec<Value> = conditions
        .into_iter()
        .filter(|c| c["type"] != "Available")
        .collect();
    conditions.push(
        json!({"type": "Available", "status": status, "lastTransitionTime": since,
                           "reason": reason, "message": message}),
    );
    let Some(rt) = store
        .registry()
        .find("apiregistration.k8s.io", "v1", "apiservices")
        .cloned()
    else {
        return;
    };
    let name = apiservice["metadata"]["name"].as_str().unwrap_or_default();
    let _ = store.modify(&rt, None, name, true, false, None, |old| {
        let mut new = old.clone();
        new["status"]["conditions"] = json!(conditions);
        Ok(new)
    });
}

/// One APIService's availability: (status, reason, message, the backend's APIResourceList).
async fn check(
    state: &ApiState,
    apiservice: &Value,
) -> (&'static str, &'static str, String, Option<Value>) {
    let spec = &apiservice["spec"];
    if !spec["service"].is_object() {
        return (
            "True",
            "Local",
            "Local APIServices are always available".to_owned(),
            None,
        );
    }
    let namespace = spec["service"]["namespace"].as_str().unwrap_or_default();
    let name = spec["service"]["name"].as_str().unwrap_or_default();
    let port = spec["service"]["port"].as_i64().unwrap_or(443);
    let registry = state.store.registry();
    let services = registry.find("", "v1", "services").expect("built-in type");
    let Ok(service) = state.store.get(services, Some(namespace), name) else {
        return (
            "False",
            "ServiceNotFound",
            format!("service/{name} in {namespace:?} is not present"),
            None,
        );
    };
    let cluster_ip_type = service["spec"]["type"]
        .as_str()
        .is_none_or(|t| t == "ClusterIP");
    if cluster_ip_type {
        let Some(service_port) = service["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["port"].as_i64() == Some(port))
        else {
            return (
                "False",
                "ServicePortError",
                format!("service/{name} in {namespace:?} is not listening on port {port}"),
                None,
            );
        };
        let port_name = service_port["name"].as_str().unwrap_or_default();
        let slices = registry
            .find("discovery.k8s.io", "v1", "endpointslices")
            .map(|rt| {
                let selector = crate::selector::LabelSelector::parse(&format!(
                    "kubernetes.io/service-name={name}"
                ))
                .unwrap_or_default();
                state
                    .store
                    .list(rt, Some(namespace), &selector, &Default::default())
                    .0
            })
            .unwrap_or_default();
        if slices.is_empty() {
            return (
                "False",
                "EndpointsNotFound",
                format!("cannot find endpointslices for service/{name} in {namespace:?}"),
                None,
            );
        }
        let available = slices.iter().any(|s| {
            let ready = s["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["conditions"]["ready"] != false);
            let port =
                s["ports"].as_array().into_iter().flatten().any(|p| {
                    p["name"].as_str().unwrap_or_default() == port_name && p["port"].is_i64()
                });
            ready && port
        });
        if !available {
            return (
                "False",
                "MissingEndpoints",
                format!(
                    "endpointslices for service/{name} in {namespace:?} have no addresses with \
                     port name {port_name:?}"
                ),
                None,
            );
        }
    }
    let group = spec["group"].as_str().unwrap_or_default();
    let version = spec["version"].as_str().unwrap_or_default();
    let Some(ip) = state.store.routed_cluster_ip(&service) else {
        return (
            "False",
            "FailedDiscoveryCheck",
            format!("service/{name} in {namespace:?} has no routed cluster IP"),
            None,
        );
    };
    let url = format!("https://{ip}:{port}/apis/{group}/{version}");
    match tokio::time::timeout(PROBE_TIMEOUT, probe(state, ip, port, &url)).await {
        Ok(Ok(list)) => ("True", "Passed", "all checks passed".to_owned(), list),
        Ok(Err(e)) => (
            "False",
            "FailedDiscoveryCheck",
            format!("failing or missing response from {url}: {e}"),
            None,
        ),
        Err(_) => (
            "False",
            "FailedDiscoveryCheck",
            format!("timed out waiting for {url}"),
            None,
        ),
    }
}

/// `GET url` on the backend, unverified, as the aggregator; its body if an APIResourceList.
async fn probe(
    state: &ApiState,
    ip: std::net::Ipv4Addr,
    port: i64,
    url: &str,
) -> std::result::Result<Option<Value>, String> {
    let config = client_config(
        &state.front_proxy,
        &json!({"insecureSkipTLSVerify": true}),
        "",
    )
    .map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect((ip, u16::try_from(port).unwrap_or(443)))
        .await
        .map_err(|e| e.to_string())?;
    let server_name = ServerName::IpAddress(std::net::IpAddr::V4(ip).into());
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let path = url.splitn(4, '/').nth(3).unwrap_or_default();
    let request = Request::get(format!("/{path}"))
        .header(header::HOST, format!("{ip}:{port}"))
        .header(header::ACCEPT, "application/json")
        .header("X-Remote-User", "system:kube-aggregator")
        .header("X-Remote-Group", "system:masters")
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let code = response.status().as_u16();
    if !(200..300).contains(&code) {
        return Err(format!("bad status from {url}: {code}"));
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string())?;
    Ok(serde_json::from_slice::<Value>(&body)
        .ok()
        .filter(|v| v["kind"] == "APIResourceList"))
}

/// `/apis` (legacy) entries of the groups only APIServices serve.
pub fn group_list_entries(store: &Store) -> Vec<Value> {
    aggregated_groups(store)
        .into_iter()
        .filter_map(|(group, _)| {
            let mut entry = api_group(store, &group)?;
            if let Some(m) = entry.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            Some(entry)
        })
        .collect()
}

/// Aggregated discovery (`/apis` as an `APIGroupDiscoveryList`) entries of the groups only
/// APIServices serve: each version with the resources its backend listed at the last
/// availability check, or none (the version alone) when that check failed.
pub fn discovery_items(state: &ApiState) -> Vec<Value> {
    aggregated_groups(&state.store)
        .into_iter()
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(
                    |v| match state.discovered.resource_list(&state.store, &group, v) {
                        Some(list) => json!({
                            "version": v,
                            "resources": crate::resources::discovered_resources(&list, &group, v),
                            "freshness": "Current",
                        }),
                        None => json!({"version": v}),
                    },
                )
                .collect();
            json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": versions})
        })
        .collect()
}
