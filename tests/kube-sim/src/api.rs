//! The Kubernetes REST API over the store: discovery, CRUD, patch, watch, subresources.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Method, Request, Response, body::Incoming};
use serde_json::{Value, json};
use tokio::sync::{broadcast::error::RecvError, mpsc};

use crate::{
    error::{ApiError, Result},
    fields,
    http::{self, Body, Query, error_response, json_response},
    kubelet::{Cgroups, Execs, Logs},
    patch, protobuf,
    resources::ResourceType,
    selector::{FieldSelector, LabelSelector},
    store::{Propagation, Store},
    table,
};

/// How often a watch that asked for bookmarks gets one.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(5);
/// Chunks buffered per watch stream.
const WATCH_BUFFER: usize = 256;

/// Shared state of the API server.
#[derive(Debug)]
pub struct ApiState {
    pub store: Store,
    pub token: String,
    /// Refuse requests without a bearer token (`serve --tls`: clients then send theirs).
    pub require_token: bool,
    /// Service accounts (`NAMESPACE:NAME`) whose tokens RBAC decides for (`serve
    /// --rbac-service-account`).
    pub rbac_service_accounts: Vec<String>,
    pub logs: Logs,
    pub cgroups: Cgroups,
    pub execs: Execs,
    /// `serve --tls`: the CA, which also signs client certificates.
    pub tls: Option<crate::tls::Tls>,
    /// What the aggregation layer presents to APIService backends.
    pub front_proxy: crate::tls::FrontProxy,
    /// What APIService backends last answered to the availability check (aggregator.rs).
    pub discovered: crate::aggregator::Discovered,
}

/// Who a request is authenticated as (a request extension): what the aggregation layer names
/// in `X-Remote-User` and `X-Remote-Group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

/// The identity the request's credentials authenticate (after the 401 check).
fn identity(credentials: Option<&str>, cert: Option<&crate::tls::ClientCert>) -> Identity {
    let authenticated = |user: String, mut groups: Vec<String>| {
        groups.push("system:authenticated".to_owned());
        Identity { user, groups }
    };
    if let Some(cert) = cert {
        return authenticated(cert.user.clone(), cert.groups.clone());
    }
    let token = credentials.and_then(|v| v.strip_prefix("Bearer "));
    if let Some(sa) = token.and_then(|t| t.strip_prefix("remora-sim-sa:")) {
        let ns = sa.split(':').next().unwrap_or_default();
        return authenticated(
            format!("system:serviceaccount:{sa}"),
            vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{ns}"),
            ],
        );
    }
    if let Some(user) = credentials.and_then(crate::rbac::user_of) {
        return authenticated(user.0, Vec::new());
    }
    authenticated(
        "remora-sim-admin".to_owned(),
        vec!["system:masters".to_owned()],
    )
}

/// Where a resource request points.
#[derive(Debug)]
struct Target {
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

pub async fn handle(state: Arc<ApiState>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if matches!(path.as_str(), "/healthz" | "/readyz" | "/livez") {
        return http::text_response(200, "text/plain", "ok");
    }
    // kubectl 1.32 sends no bearer token to a plain-http server, so there a request without
    // credentials is the admin (anonymous auth mapped to system:masters); over TLS it is 401
    // (anonymous auth off). A service account's token (`remora-sim-sa:<ns>:<name>`, what pods
    // get in their projected volume) is accepted too (allowed everything), and a user's
    // (`remora-sim-user:<name>`, RBAC-checked: rbac.rs); any other token
    // is 401.
    let credentials = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    // A client certificate the CA signed (verified in the TLS handshake) authenticates its
    // common name; in group system:masters it is allowed everything, else RBAC decides.
    let cert = req.extensions().get::<crate::tls::ClientCert>().cloned();
    let authorized = match credentials {
        _ if cert.is_some() => true,
        None => !state.require_token,
        Some(v) => {
            v == format!("Bearer {}", state.token)
                || v.strip_prefix("Bearer remora-sim-sa:")
                    .is_some_and(|sa| sa.split(':').filter(|p| !p.is_empty()).count() == 2)
                || crate::rbac::user_of(v).is_some()
        }
    };
    if !authorized {
        return error_response(&ApiError::new(401, "Unauthorized", "Unauthorized"));
    }
    let user = match &cert {
        Some(cert) if cert.groups.iter().any(|g| g == "system:masters") => None,
        Some(cert) => Some(crate::rbac::User(cert.user.clone())),
        None => credentials.and_then(crate::rbac::user_of).or_else(|| {
            credentials
                .and_then(|c| crate::rbac::service_account_of(c, &state.rbac_service_accounts))
        }),
    };
    let who = identity(credentials, cert.as_ref());
    // A user's resource requests are authorized by RBAC (rbac.rs).
    let mut req = req;
    if let Some(user) = user {
        req.extensions_mut().insert(user);
    }
    req.extensions_mut().insert(who);
    match route(&state, req).await {
        Ok(resp) => resp,
        Err(err) => error_response(&err),
    }
}

/// The request's body; a protobuf body (client-go's typed clients send built-in kinds so) is
/// decoded into the JSON object it stands for.
async fn read_body(req: Request<Incoming>) -> Result<Bytes> {
    let protobuf = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with(protobuf::MEDIA_TYPE));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
    if !protobuf || body.is_empty() {
        return Ok(body);
    }
    let obj = protobuf::decode(&body).map_err(|e| {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the protobuf body could not be decoded: {e}"),
        )
    })?;
    Ok(Bytes::from(serde_json::to_vec(&obj).unwrap_or_default()))
}

fn parse_json(body: &[u8]) -> Result<Value> {
    serde_json::from_slice(body).or_else(|json_err| {
        serde_yaml_ng::from_slice::<Value>(body)
            .map_err(|_| ApiError::bad_request(format!("the body is not JSON: {json_err}")))
    })
}

async fn route(state: &ApiState, req: Request<Incoming>) -> Result<Response<Body>> {
    let path = req.uri().path().to_owned();
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(http::decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let registry = state.store.registry();
    // An APIService's group and version: proxied to its service (aggregator.rs).
    if let ["apis", group, version, ..] = segs.as_slice()
        && let Some(apiservice) = crate::aggregator::served_by(&state.store, group, version)
    {
        if !crate::aggregator::available(&apiservice) {
            // kube-aggregator's proxy handler, for an APIService not Available.
            return Ok(http::text_response(
                503,
                "text/plain; charset=utf-8",
                Bytes::from_static(b"service unavailable\n"),
            ));
        }
        return crate::aggregator::proxy(state, &apiservice, &segs, req).await;
    }
    if let ["apis", group] = segs.as_slice()
        && registry.groups().iter().all(|(g, _)| g != group)
        && let Some(group) = crate::aggregator::api_group(&state.store, group)
    {
        return Ok(json_response(200, &group));
    }
    match segs.as_slice() {
        ["remora-sim", "client-cert"] => return crate::aggregator::client_cert(state, &req),
        ["version"] => {
            return Ok(json_response(
                200,
                &json!({
                    "major": "1", "minor": "32", "gitVersion": "v1.32.0-remora-sim",
                    "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                    "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23", "compiler": "gc",
                    "platform": format!("linux/{}", if cfg!(target_arch = "aarch64") { "arm64" } else { "amd64" }),
                }),
            ));
        }
        ["api"] | ["apis"] => {
            let legacy = segs == ["api"];
            let served = aggregated_discovery_version(&req);
            state
                .store
                .record_discovery(&path, served.unwrap_or("legacy"));
            if let Some(version) = served {
                let mut body = registry.aggregated_discovery(legacy, version);
                if !legacy && let Some(items) = body["items"].as_array_mut() {
                    items.extend(crate::aggregator::discovery_items(state));
                }
                return Ok(aggregated_response(&body, version));
            }
            if !legacy {
                let mut list = registry.api_group_list();
                if let Some(groups) = list["groups"].as_array_mut() {
                    groups.extend(crate::aggregator::group_list_entries(&state.store));
                }
                return Ok(json_response(200, &list));
            }
            return Ok(json_response(
                200,
                &json!({
                    "kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
                }),
            ));
        }
        ["openapi", "v2"] => {
            // An empty protobuf document: kubectl's client-side validation finds no schema
            // for any kind and skips it (see docs/kube-sim.md).
            return Ok(http::text_response(
                200,
                "application/octet-stream",
                Bytes::new(),
            ));
        }
        ["remora-sim", "reviews"] => return Ok(json_response(200, &json!(state.store.reviews()))),
        ["remora-sim", "discovery"] => {
            return Ok(json_response(200, &json!(state.store.discoveries())));
        }
        ["remora-sim", "compact"] => {
            state.store.compact();
            return Ok(json_response(
                200,
                &json!({"compactedTo": state.store.current_rv()}),
            ));
        }
        ["api", "v1"] => {
            state.store.record_discovery(&path, "legacy");
            return registry
                .resource_list("", "v1")
                .map(|v| json_response(200, &v))
                .ok_or_else(|| ApiError::not_found("groupversion", "v1"));
        }
        ["apis", group] => {
            return registry
                .groups()
                .into_iter()
                .find(|(g, _)| g == group)
                .map(|(g, vs)| json_response(200, &registry.api_group(&g, &vs)))
                .ok_or_else(|| ApiError::not_found("group", group));
        }
        ["apis", group, version] => {
            state.store.record_discovery(&path, "legacy");
            return registry
                .resource_list(group, version)
                .map(|v| json_response(200, &v))
                .ok_or_else(|| ApiError::not_found("groupversion", &format!("{group}/{version}")));
        }
        _ => {}
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => {
            return Err(ApiError::new(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            ));
        }
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, resource, tail @ ..]
            if registry.find(group, version, resource).is_some() =>
        {
            (Some((*ns).to_owned()), {
                let mut v = vec![*resource];
                v.extend_from_slice(tail);
                v
            })
        }
        _ => (None, rest.to_vec()),
    };
    let (resource, name, sub) = match rest.as_slice() {
        [r] => (*r, None, None),
        [r, n] => (*r, Some((*n).to_owned()), None),
        [r, n, s] => (*r, Some((*n).to_owned()), Some((*s).to_owned())),
        _ => {
            return Err(ApiError::new(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            ));
        }
    };
    let rt = registry
        .find(group, version, resource)
        .cloned()
        .ok_or_else(|| {
            ApiError::new(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            )
        })?;
    let target = Target {
        rt,
        namespace,
        name,
        sub,
    };
    if let Some(user) = req.extensions().get::<crate::rbac::User>() {
        let query = Query::parse(req.uri().query());
        let watch = query.get("watch") == Some("true");
        // A list or watch with the field selector `metadata.name=X` is authorised as on
        // the object X (kube-apiserver's RequestInfo takes the name from it), so a role's
        // resourceNames allow watching one object.
        let selected = (target.name.is_none() && req.method() == Method::GET)
            .then(|| selected_name(query.get("fieldSelector").unwrap_or_default()))
            .flatten();
        let attributes = crate::rbac::Attributes {
            verb: crate::rbac::verb(
                req.method(),
                target.name.is_some(),
                watch,
                target.sub.as_deref(),
            ),
            group: &target.rt.group,
            resource: &target.rt.plural,
            sub: target.sub.as_deref(),
            namespace: target.namespace.as_deref(),
            name: target.name.as_deref().or(selected.as_deref()),
        };
        crate::rbac::authorize(&state.store, user, &attributes)?;
    }
    resource_request(state, target, req).await
}

/// The name a field selector requires exactly (`metadata.name=X` or `metadata.name==X`, alone).
fn selected_name(selector: &str) -> Option<String> {
    let (field, name) = selector
        .split_once("==")
        .or_else(|| selector.split_once('='))?;
    (field.trim() == "metadata.name" && !name.is_empty() && !name.contains([',', '=', '!']))
        .then(|| name.trim().to_owned())
}

/// The aggregated discovery version (`v2`, `v2beta1`) the client's Accept header asks for
/// before any plain JSON, as client-go's discovery does (`application/json;g=apidiscovery.k8s.io;
/// v=v2;as=APIGroupDiscoveryList,…;v=v2beta1;…,application/json`); None for legacy discovery.
fn aggregated_discovery_version(req: &Request<Incoming>) -> Option<&'static str> {
    let accept = req.headers().get("accept")?.to_str().ok()?;
    for clause in accept.split(',') {
        let mut parts = clause.split(';').map(str::trim);
        let base = parts.next().unwrap_or_default().to_ascii_lowercase();
        let params: Vec<(String, &str)> = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim()))
            .collect();
        let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
        if base == "application/json"
            && param("g") == Some("apidiscovery.k8s.io")
            && param("as") == Some("APIGroupDiscoveryList")
        {
            match param("v") {
                Some("v2") => return Some("v2"),
                Some("v2beta1") => return Some("v2beta1"),
                _ => continue,
            }
        }
        if matches!(base.as_str(), "application/json" | "*/*" | "application/*") {
            return None;
        }
    }
    None
}

fn aggregated_response(body: &Value, version: &str) -> Response<Body> {
    Response::builder()
        .status(200)
        .header(
            "content-type",
            format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList"),
        )
        .header("vary", "Accept")
        .body(http::full(serde_json::to_vec(body).unwrap_or_default()))
        .expect("response")
}

fn wants_table(req: &Request<Incoming>) -> bool {
    req.headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

fn propagation(query: &Query, body: &[u8]) -> Propagation {
    let from_body = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["propagationPolicy"].as_str().map(str::to_owned))
        .or_else(|| {
            serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v["orphanDependents"].as_bool())
                .map(|o| {
                    if o {
                        "Orphan".to_owned()
                    } else {
                        "Background".to_owned()
                    }
                })
        });
    match from_body.as_deref().or(query.get("propagationPolicy")) {
        Some("Orphan") => Propagation::Orphan,
        _ => Propagation::Background,
    }
}

async fn resource_request(
    state: &ApiState,
    t: Target,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    let query = Query::parse(req.uri().query());
    let table = wants_table(&req);
    let method = req.method().clone();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let dry_run = query.get("dryRun").is_some_and(|v| !v.is_empty());
    let manager = query
        .get("fieldManager")
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| {
            fields::default_manager(
                req.headers()
                    .get("user-agent")
                    .and_then(|v| v.to_str().ok()),
            )
        });
    let api_version = t.rt.api_version();
    let update = |sub: Option<&'static str>| fields::Write {
        manager: &manager,
        operation: "Update",
        subresource: sub,
        api_version: &api_version,
    };
    let ns = t.namespace.as_deref();
    let rt = &t.rt;
    let store = &state.store;
    if rt.plural == "pods"
        && t.sub.as_deref() == Some("portforward")
        && let Some(name) = t.name.as_deref()
    {
        let pod = store.get(rt, ns, name)?;
        return crate::portforward::handle(&state.cgroups, &pod, req);
    }
    if rt.plural == "pods"
        && t.sub.as_deref() == Some("exec")
        && let Some(name) = t.name.as_deref()
    {
        let pod = store.get(rt, ns, name)?;
        return crate::exec::handle(&state.execs, &pod, req);
    }
    if rt.create_only {
        if method != Method::POST {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "only create is supported",
            ));
        }
        let body = parse_json(&read_body(req).await?)?;
        return Ok(json_response(201, &review(state, rt, body)));
    }
    match (method, t.name.as_deref(), t.sub.as_deref()) {
        (Method::GET, None, None) => {
            let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or_default())
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or_default())
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            if query.flag("watch") && query.get("watch").is_some() {
                return watch(
                    state,
                    rt.clone(),
                    t.namespace.clone(),
                    &query,
                    labels,
                    fields,
                    table,
                );
            }
            let limit = match query.get("limit").filter(|l| !l.is_empty()) {
                Some(l) => l
                    .parse::<usize>()
                    .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
                None => 0,
            };
            let selected = !labels.is_empty() || !fields.is_empty();
            let page = store.snapshots.page(
                || store.list(rt, ns, &labels, &fields),
                limit,
                query.get("continue"),
            )?;
            let mut metadata = json!({"resourceVersion": page.rv.to_string()});
            if let Some(token) = &page.continue_token {
                metadata["continue"] = json!(token);
                // As the API server: only when no selector filters the list.
                if !selected {
                    metadata["remainingItemCount"] = json!(page.remaining);
                }
            }
            if table {
                let mut t = table::table(rt, &page.items, page.rv, true);
                t["metadata"] = metadata;
                return Ok(json_response(200, &t));
            }
            Ok(json_response(
                200,
                &json!({
                    "kind": format!("{}List", rt.kind),
                    "apiVersion": rt.api_version(),
                    "metadata": metadata,
                    "items": page.items,
                }),
            ))
        }
        (Method::GET, Some(name), sub) => match sub {
            None | Some("status") => {
                let obj = store.get(rt, ns, name)?;
                if table {
                    let rv = store.current_rv();
                    return Ok(json_response(200, &table::table(rt, &[obj], rv, true)));
                }
                Ok(json_response(200, &obj))
            }
            Some("scale") => Ok(json_response(200, &scale_of(&store.get(rt, ns, name)?))),
            Some("log") if rt.plural == "pods" => {
                let pod = store.get(rt, ns, name)?;
                state.logs.response(&pod, &query).await
            }
            Some(other) => Err(ApiError::not_found("subresource", other)),
        },
        (Method::POST, None, None) => {
            let mut body = parse_json(&read_body(req).await?)?;
            fields::record_update(
                &Value::Null,
                &mut body,
                &update(None),
                rt.status_subresource,
            );
            let obj = store.create(rt, ns, body, dry_run)?;
            Ok(json_response(201, &obj))
        }
        (Method::POST, Some(name), Some("eviction")) if rt.plural == "pods" => {
            store.delete(rt, ns, name, Propagation::Background, dry_run)?;
            Ok(json_response(
                201,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}),
            ))
        }
        (Method::PUT, Some(name), sub @ (None | Some("status") | Some("ephemeralcontainers"))) => {
            let body = parse_json(&read_body(req).await?)?;
            let status = sub == Some("status");
            let write = update(status.then_some("status"));
            let obj = store.modify(rt, ns, name, status, dry_run, None, |old| {
                let want = body["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default();
                if !want.is_empty() && Some(want) != old["metadata"]["resourceVersion"].as_str() {
                    return Err(ApiError::conflict(&rt.plural, name));
                }
                let mut new = body.clone();
                fields::record_update(old, &mut new, &write, rt.status_subresource);
                Ok(new)
            })?;
            Ok(json_response(200, &obj))
        }
        (Method::PUT, Some(name), Some("scale")) => {
            let body = parse_json(&read_body(req).await?)?;
            let replicas = body["spec"]["replicas"].clone();
            let obj = store.modify(rt, ns, name, false, dry_run, None, |old| {
                let mut new = old.clone();
                new["spec"]["replicas"] = replicas;
                Ok(new)
            })?;
            Ok(json_response(200, &scale_of(&obj)))
        }
        (Method::PATCH, Some(name), sub) => {
            let body = read_body(req).await?;
            patch_request(
                state,
                rt,
                ns,
                name,
                sub,
                &content_type,
                &query,
                &body,
                dry_run,
                &manager,
            )
        }
        (Method::DELETE, Some(name), None) => {
            let body = read_body(req).await?;
            let obj = store.delete(rt, ns, name, propagation(&query, &body), dry_run)?;
            Ok(json_response(200, &obj))
        }
        (Method::DELETE, None, None) => {
            let body = read_body(req).await?;
            let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or_default())
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or_default())
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            let (items, _) = store.list(rt, ns, &labels, &fields);
            let mut deleted = Vec::new();
            for item in items {
                let name = item["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let item_ns = item["metadata"]["namespace"].as_str().map(str::to_owned);
                if let Ok(o) = store.delete(
                    rt,
                    item_ns.as_deref(),
                    &name,
                    propagation(&query, &body),
                    dry_run,
                ) {
                    deleted.push(o);
                }
            }
            Ok(json_response(
                200,
                &json!({
                    "kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(),
                    "metadata": {"resourceVersion": store.current_rv().to_string()}, "items": deleted,
                }),
            ))
        }
        (m, _, sub) => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!(
                "{m} is not supported on {}{}",
                rt.plural,
                sub.map(|s| format!("/{s}")).unwrap_or_default()
            ),
        )),
    }
}

fn scale_of(obj: &Value) -> Value {
    let selector = obj["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": obj["metadata"]["name"], "namespace": obj["metadata"]["namespace"],
            "uid": obj["metadata"]["uid"], "resourceVersion": obj["metadata"]["resourceVersion"],
            "creationTimestamp": obj["metadata"]["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"]},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
}

#[allow(clippy::too_many_arguments)]
fn patch_request(
    state: &ApiState,
    rt: &ResourceType,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    content_type: &str,
    query: &Query,
    body: &[u8],
    dry_run: bool,
    manager: &str,
) -> Result<Response<Body>> {
    let kind = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let patch_doc = parse_json(body)?;
    let apply = kind == "application/apply-patch+yaml";
    if apply && query.get("fieldManager").is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(
            "fieldManager is required for apply requests",
        ));
    }
    let api_version = rt.api_version();
    let subresource = (sub == Some("status")).then_some("status");
    let write = fields::Write {
        manager,
        operation: if apply { "Apply" } else { "Update" },
        subresource,
        api_version: &api_version,
    };
    let force = query.flag("force") && query.get("force").is_some();
    let create = if apply && sub.is_none() {
        let mut obj = patch_doc.clone();
        obj["metadata"]["name"] = json!(name);
        Some(fields::apply(
            None,
            &obj,
            &write,
            force,
            rt.status_subresource,
        )?)
    } else {
        None
    };
    let apply_patch = |target: &mut Value| -> Result<()> {
        match kind.as_str() {
            "application/merge-patch+json" => patch::merge_patch(target, &patch_doc),
            "application/json-patch+json" => patch::json_patch(target, &patch_doc)
                .map_err(|e| ApiError::new(422, "Invalid", e.to_string()))?,
            "application/strategic-merge-patch+json" | "application/apply-patch+yaml" => {
                patch::strategic_merge(target, &patch_doc)
            }
            other => {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!("the body of the request was in an unknown format ({other})"),
                ));
            }
        }
        Ok(())
    };
    let store = &state.store;
    match sub {
        Some("scale") => {
            let obj = store.modify(rt, ns, name, false, dry_run, None, |old| {
                let mut scale = scale_of(old);
                apply_patch(&mut scale)?;
                let mut new = old.clone();
                new["spec"]["replicas"] = scale["spec"]["replicas"].clone();
                Ok(new)
            })?;
            Ok(json_response(200, &scale_of(&obj)))
        }
        None | Some("status") | Some("ephemeralcontainers") => {
            let obj = store.modify(
                rt,
                ns,
                name,
                sub == Some("status"),
                dry_run,
                create,
                |old| {
                    let mut new = if apply {
                        fields::apply(Some(old), &patch_doc, &write, force, rt.status_subresource)?
                    } else {
                        let mut new = old.clone();
                        apply_patch(&mut new)?;
                        fields::record_update(old, &mut new, &write, rt.status_subresource);
                        new
                    };
                    let want = new["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap_or_default();
                    if !want.is_empty()
                        && Some(want) != old["metadata"]["resourceVersion"].as_str()
                        && !apply
                    {
                        return Err(ApiError::conflict(&rt.plural, name));
                    }
                    new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
                    Ok(new)
                },
            )?;
            Ok(json_response(200, &obj))
        }
        Some(other) => Err(ApiError::not_found("subresource", other)),
    }
}

/// Whether a SubjectAccessReview asks about an RBAC-checked user of the sim (a
/// `remora-sim-user:` token's user or a service account of `serve --rbac-service-account`,
/// not the admin or another service account, which stay allowed everything) and a resource.
fn rbac_checked(spec: &Value, rbac_service_accounts: &[String]) -> bool {
    let user = spec["user"].as_str().unwrap_or_default();
    let masters = spec["groups"]
        .as_array()
        .is_some_and(|g| g.iter().any(|g| g == "system:masters"));
    let checked_sa = user
        .strip_prefix("system:serviceaccount:")
        .is_some_and(|sa| rbac_service_accounts.iter().any(|a| a == sa));
    !user.is_empty()
        && (checked_sa || !user.starts_with("system:"))
        && user != "remora-sim-admin"
        && !masters
        && spec["resourceAttributes"].is_object()
}

/// Answers a TokenReview / SubjectAccessReview and records it. Users of `remora-sim-user:`
/// tokens authenticate, and their SubjectAccessReviews are decided by the stored RBAC.
fn review(state: &ApiState, rt: &ResourceType, mut body: Value) -> Value {
    body["apiVersion"] = json!(rt.api_version());
    body["kind"] = json!(rt.kind);
    match rt.plural.as_str() {
        "tokenreviews" => {
            let token = body["spec"]["token"].as_str().unwrap_or_default();
            body["status"] = if token == state.token {
                json!({"authenticated": true, "user": {"username": "remora-sim-admin", "uid": "remora-sim-admin",
                       "groups": ["system:masters", "system:authenticated"]}})
            } else if let Some(sa) = token.strip_prefix("remora-sim-sa:") {
                json!({"authenticated": true, "user": {"username": format!("system:serviceaccount:{sa}"),
                       "groups": ["system:serviceaccounts", "system:authenticated"]}})
            } else if let Some(user) = crate::rbac::user_of(&format!("Bearer {token}")) {
                json!({"authenticated": true, "user": {"username": user.0, "groups": ["system:authenticated"]}})
            } else {
                json!({"authenticated": false, "error": "invalid bearer token"})
            };
        }
        "subjectaccessreviews" if rbac_checked(&body["spec"], &state.rbac_service_accounts) => {
            // As the RBAC authorizer answers: allowed, or not (no reason).
            let spec = &body["spec"];
            let user = crate::rbac::User(spec["user"].as_str().unwrap_or_default().to_owned());
            let attrs = &spec["resourceAttributes"];
            let text = |field: &str| attrs[field].as_str().filter(|s| !s.is_empty());
            // Custom verbs too (remora's `steal`, `mirror`), as rules name them.
            let a = crate::rbac::Attributes {
                verb: text("verb").unwrap_or_default(),
                group: text("group").unwrap_or_default(),
                resource: text("resource").unwrap_or_default(),
                sub: text("subresource"),
                namespace: text("namespace"),
                name: text("name"),
            };
            let allowed = crate::rbac::authorize(&state.store, &user, &a).is_ok();
            body["status"] = json!({ "allowed": allowed });
        }
        _ => {
            body["status"] = json!({"allowed": true, "reason": "remora-kube-sim stores RBAC but does not enforce it"});
        }
    }
    state.store.record_review(body.clone());
    body
}

fn watch(
    state: &ApiState,
    rt: ResourceType,
    namespace: Option<String>,
    query: &Query,
    labels: LabelSelector,
    fields: FieldSelector,
    table: bool,
) -> Result<Response<Body>> {
    let rv = query.get("resourceVersion").unwrap_or_default();
    let send_initial = query.get("sendInitialEvents") == Some("true");
    let from = if rv.is_empty() || rv == "0" || send_initial {
        None
    } else {
        Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        )
    };
    let bookmarks = query.flag("allowWatchBookmarks") && query.get("allowWatchBookmarks").is_some();
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let (tx, rx) = mpsc::channel::<Bytes>(WATCH_BUFFER);
    let start = match state.store.watch(&rt, namespace.as_deref(), from) {
        Ok(s) => s,
        Err(err) if err.code == 410 => {
            let line = json!({"type": "ERROR", "object": err.status()});
            let _ = tx.try_send(Bytes::from(format!("{line}\n")));
            drop(tx);
            return Ok(watch_response(rx));
        }
        Err(err) => return Err(err),
    };
    let start_rv = state.store.current_rv();
    let store = state.store.clone();
    tokio::spawn(async move {
        let mut headers_sent = false;
        let mut encode = |kind: &str, obj: &Value| -> Bytes {
            let object = if table && kind != "BOOKMARK" && kind != "ERROR" {
                let t = table::table(&rt, std::slice::from_ref(obj), 0, !headers_sent);
                headers_sent = true;
                t
            } else {
                obj.clone()
            };
            Bytes::from(format!("{}\n", json!({"type": kind, "object": object})))
        };
        let matches = |o: &Value| labels.matches(&o["metadata"]["labels"]) && fields.matches(o);
        for e in &start.initial {
            if matches(&e.object) && tx.send(encode(e.kind, &e.object)).await.is_err() {
                return;
            }
        }
        let bookmark = |rv: u64, initial_end: bool| {
            let mut meta = json!({"resourceVersion": rv.to_string()});
            if initial_end {
                meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": meta})
        };
        let mut last_rv = start_rv;
        if send_initial && bookmarks {
            let b = bookmark(last_rv, true);
            if tx.send(encode("BOOKMARK", &b)).await.is_err() {
                return;
            }
        }
        let mut events_rx = start.events_rx;
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut ticker = tokio::time::interval(BOOKMARK_INTERVAL);
        ticker.tick().await;
        loop {
            let sleep_until =
                deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                ev = events_rx.recv() => match ev {
                    Ok(e) => {
                        last_rv = last_rv.max(e.rv);
                        let ns_ok = namespace.as_deref().is_none_or(|n| n == e.namespace);
                        if e.key == rt.key() && ns_ok && e.rv > start_rv {
                            // A label change that moves an object out of the selection reads as DELETED.
                            let kind = e.kind;
                            if matches(&e.object) && tx.send(encode(kind, &e.object)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        let err = ApiError::gone("the watch fell behind; list again");
                        let _ = tx.send(Bytes::from(format!("{}\n", json!({"type": "ERROR", "object": err.status()})))).await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                },
                _ = ticker.tick(), if bookmarks => {
                    let b = bookmark(last_rv, false);
                    if tx.send(encode("BOOKMARK", &b)).await.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(sleep_until) => {
                    if deadline.is_some() {
                        return;
                    }
                }
                _ = tx.closed() => return,
            }
            let _ = &store;
        }
    });
    Ok(watch_response(rx))
}

fn watch_response(rx: mpsc::Receiver<Bytes>) -> Response<Body> {
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(http::channel_body(rx))
        .expect("response")
}
