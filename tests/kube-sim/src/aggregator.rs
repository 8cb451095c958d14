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
//! Not done: the APIService's `Available` condition, the group in `/apis` discovery
//! (kubectl's aggregated discovery does not list it; `/apis/<group>` and everything below
//! answer), local APIServices (no `spec.service`).

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
