//! The object store: every object as JSON per resource type, a monotonic resourceVersion,
//! a bounded event history for watches, finalizers and owner-reference garbage collection.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    sync::Arc,
};

use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::{
    error::{ApiError, Result},
    paging::Snapshots,
    resources::{Registry, ResourceType},
    selector::{FieldSelector, LabelSelector},
    time,
};

/// Events kept for watches that resume from a resourceVersion.
const HISTORY_CAPACITY: usize = 20_000;
/// Watch fan-out buffer; a watcher that falls this far behind is closed (it re-lists).
const WATCH_CHANNEL_CAPACITY: usize = 8192;
/// Name of the single node.
pub const NODE_NAME: &str = "remora-sim-node";

/// Storage key of a type: (group, plural).
pub type TypeKey = (String, String);

/// One change, as a watch sees it.
#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    pub key: TypeKey,
    pub namespace: String,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    pub object: Value,
}

#[derive(Debug, Default)]
struct Inner {
    rv: u64,
    registry: Registry,
    objects: BTreeMap<TypeKey, BTreeMap<(String, String), Value>>,
    history: VecDeque<Arc<Event>>,
    /// Highest resourceVersion no longer in `history`.
    compacted_rv: u64,
    reviews: Vec<Value>,
    /// Discovery requests served: `{"path", "served"}` (`v2`, `v2beta1` or `legacy`).
    discovery: VecDeque<Value>,
    next_cluster_ip: u32,
    /// `N` of the run's routed service range 10.215.N.0/24 (see [`Store::set_service_subnet`]).
    service_subnet: Option<u8>,
    /// The API server's CA (PEM) for every namespace's `kube-root-ca.crt`; empty without TLS.
    root_ca: String,
}

/// The shared store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
    events_tx: broadcast::Sender<Arc<Event>>,
    /// Snapshots of paged lists (`limit`/`continue`).
    pub snapshots: Snapshots,
}

/// What a watch starts from.
#[derive(Debug)]
pub struct WatchStart {
    pub initial: Vec<Arc<Event>>,
    pub events_rx: broadcast::Receiver<Arc<Event>>,
}

/// Options of a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Orphan,
}

fn meta(obj: &Value, field: &str) -> String {
    obj["metadata"][field]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("getrandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random RFC 4122 v4 UUID.
pub fn uuid() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// A random suffix of `n` lowercase alphanumerics, as generateName uses.
pub fn name_suffix(n: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).expect("getrandom");
    buf.iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// The object without metadata and status: a change here bumps `metadata.generation`.
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    v
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub fn new() -> Self {
        let (events_tx, _) = broadcast::channel(WATCH_CHANNEL_CAPACITY);
        let store = Self {
            inner: Arc::new(Mutex::new(Inner::default())),
            events_tx,
            snapshots: Snapshots::default(),
        };
        store.seed();
        store
    }

    fn seed(&self) {
        let ns = self
            .registry()
            .find("", "v1", "namespaces")
            .cloned()
            .expect("ns");
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let _ = self.create(
                &ns,
                None,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
                false,
            );
        }
        let node = self
            .registry()
            .find("", "v1", "nodes")
            .cloned()
            .expect("node");
        let now = time::now_rfc3339();
        let _ = self.create(
            &node,
            None,
            json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": NODE_NAME, "labels": {"kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux"}},
                "status": {
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                    "lastHeartbeatTime": now, "lastTransitionTime": now}],
                    "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": NODE_NAME}],
                    "nodeInfo": {"kubeletVersion": "v1.32.0-remora-sim", "containerRuntimeVersion": "remora-sim://0.1",
                                 "operatingSystem": "linux", "architecture": std::env::consts::ARCH},
                    "capacity": {"cpu": "2", "memory": "4Gi", "pods": "1000"},
                    "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "1000"},
                },
            }),
            false,
        );
    }

    /// A snapshot of the served types.
    /// From now on, cluster IPs come from 10.215.`index`.1–254, the range the run's service
    /// proxy routes (without it they come from 10.215.0.0/16 and are not routed).
    pub fn set_service_subnet(&self, index: u8) {
        self.inner.lock().service_subnet = Some(index);
    }

    /// The cluster IP of `service` if the run's service proxy routes it (a ClusterIP in the
    /// run's range); `None` for headless services and addresses outside the range.
    pub fn routed_cluster_ip(&self, service: &Value) -> Option<std::net::Ipv4Addr> {
        let index = self.inner.lock().service_subnet?;
        let ip: std::net::Ipv4Addr = service["spec"]["clusterIP"].as_str()?.parse().ok()?;
        (ip.octets()[..3] == [10, 215, index]).then_some(ip)
    }

    /// Publishes the API server's CA in every namespace's `kube-root-ca.crt` ConfigMap
    /// (`ca.crt`), now and for namespaces made later.
    pub fn set_root_ca(&self, pem: &str) {
        let mut inner = self.inner.lock();
        inner.root_ca = pem.to_owned();
        let key = ("".to_owned(), "configmaps".to_owned());
        let names: Vec<(String, String)> = inner
            .objects
            .get(&key)
            .into_iter()
            .flat_map(|m| m.keys())
            .filter(|(_, name)| name == "kube-root-ca.crt")
            .cloned()
            .collect();
        for id in names {
            inner.rv += 1;
            let rv = inner.rv.to_string();
            let Some(obj) = inner.objects.get_mut(&key).and_then(|m| m.get_mut(&id)) else {
                continue;
            };
            obj["data"]["ca.crt"] = json!(pem);
            obj["metadata"]["resourceVersion"] = json!(rv);
            let obj = obj.clone();
            self.emit(&mut inner, key.clone(), "MODIFIED", obj);
        }
    }

    pub fn registry(&self) -> Registry {
        self.inner.lock().registry.clone()
    }

    pub fn current_rv(&self) -> u64 {
        self.inner.lock().rv
    }

    /// Records a review (TokenReview, SubjectAccessReview…) so tests can assert on it.
    pub fn record_review(&self, review: Value) {
        self.inner.lock().reviews.push(review);
    }

    pub fn reviews(&self) -> Vec<Value> {
        self.inner.lock().reviews.clone()
    }

    /// Records which discovery format a discovery request got (the last 1000 are kept), so
    /// tests can assert on what kubectl negotiated.
    pub fn record_discovery(&self, path: &str, served: &str) {
        let mut inner = self.inner.lock();
        if inner.discovery.len() >= 1000 {
            inner.discovery.pop_front();
        }
        inner
            .discovery
            .push_back(json!({"path": path, "served": served}));
    }

    pub fn discoveries(&self) -> Vec<Value> {
        self.inner.lock().discovery.iter().cloned().collect()
    }

    /// Drops the watch history, so a watch from an older resourceVersion gets 410 Gone.
    pub fn compact(&self) {
        let mut inner = self.inner.lock();
        inner.history.clear();
        inner.compacted_rv = inner.rv;
    }

    /// Subscribes to every event (controllers use this).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events_tx.subscribe()
    }

    fn emit(&self, inner: &mut Inner, key: TypeKey, kind: &'static str, object: Value) {
        let event = Arc::new(Event {
            rv: inner.rv,
            key,
            namespace: meta(&object, "namespace"),
            kind,
            object,
        });
        if inner.history.len() >= HISTORY_CAPACITY
            && let Some(old) = inner.history.pop_front()
        {
            inner.compacted_rv = old.rv;
        }
        inner.history.push_back(event.clone());
        let _ = self.events_tx.send(event);
    }

    pub fn list(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> (Vec<Value>, u64) {
        let inner = self.inner.lock();
        let items = inner
            .objects
            .get(&rt.key())
            .map(|objs| {
                objs.iter()
                    .filter(|((ns, _), _)| namespace.is_none_or(|want| want == ns))
                    .map(|(_, o)| o)
                    .filter(|o| labels.matches(&o["metadata"]["labels"]) && fields.matches(o))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        (items, inner.rv)
    }

    pub fn get(&self, rt: &ResourceType, namespace: Option<&str>, name: &str) -> Result<Value> {
        let inner = self.inner.lock();
        Self::get_locked(&inner, rt, namespace, name).cloned()
    }

    fn get_locked<'a>(
        inner: &'a Inner,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<&'a Value> {
        let ns = if rt.namespaced {
            namespace.unwrap_or("default")
        } else {
            ""
        };
        inner
            .objects
            .get(&rt.key())
            .and_then(|m| m.get(&(ns.to_owned(), name.to_owned())))
            .ok_or_else(|| ApiError::not_found(&rt.plural, name))
    }

    /// Creates `obj`; `dry_run` validates and fills defaults without storing.
    pub fn create(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        mut obj: Value,
        dry_run: bool,
    ) -> Result<Value> {
        let mut inner = self.inner.lock();
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body is not an object"));
        }
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        let ns = if rt.namespaced {
            let from_body = meta(&obj, "namespace");
            let ns = namespace
                .map(str::to_owned)
                .unwrap_or(if from_body.is_empty() {
                    "default".to_owned()
                } else {
                    from_body.clone()
                });
            if !from_body.is_empty() && from_body != ns {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the provided object ({from_body}) does not match the namespace sent on the request ({ns})"
                )));
            }
            let ns_key = (String::new(), "namespaces".to_owned());
            let ns_obj = inner
                .objects
                .get(&ns_key)
                .and_then(|m| m.get(&(String::new(), ns.clone())));
            match ns_obj {
                None => return Err(ApiError::not_found("namespaces", &ns)),
                Some(n) if n["metadata"]["deletionTimestamp"].is_string() => {
                    return Err(ApiError::new(
                        403,
                        "Forbidden",
                        format!(
                            "unable to create new content in namespace {ns} because it is being terminated"
                        ),
                    ));
                }
                Some(_) => {}
            }
            obj["metadata"]["namespace"] = json!(ns);
            ns
        } else {
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("namespace");
            }
            String::new()
        };
        let mut name = meta(&obj, "name");
        if name.is_empty() {
            let prefix = meta(&obj, "generateName");
            if prefix.is_empty() {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    format!(
                        "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                        rt.kind
                    ),
                ));
            }
            name = format!("{prefix}{}", name_suffix(5));
            obj["metadata"]["name"] = json!(name);
        }
        let key = rt.key();
        if inner
            .objects
            .get(&key)
            .is_some_and(|m| m.contains_key(&(ns.clone(), name.clone())))
        {
            return Err(ApiError::already_exists(&rt.plural, &name));
        }
        obj["apiVersion"] = json!(rt.api_version());
        obj["kind"] = json!(rt.kind);
        let m = obj["metadata"].as_object_mut().expect("metadata");
        m.insert("uid".into(), json!(uuid()));
        m.insert("creationTimestamp".into(), json!(time::now_rfc3339()));
        m.insert("generation".into(), json!(1));
        m.remove("deletionTimestamp");
        self.defaults(&mut inner, rt, &mut obj)?;
        if dry_run {
            return Ok(obj);
        }
        inner.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        inner
            .objects
            .entry(key.clone())
            .or_default()
            .insert((ns.clone(), name.clone()), obj.clone());
        self.emit(&mut inner, key, "ADDED", obj.clone());
        self.after_create(&mut inner, rt, &obj);
        Ok(obj)
    }
}

/// Standard base64 with padding.
pub fn encode_base64(data: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 (padding optional, whitespace ignored); `None` when malformed.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
    {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(v);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Some(out)
}

/// A Job's defaults as the API server sets them: unless `spec.manualSelector` is true, the
/// selector is generated from the Job's uid (`batch.kubernetes.io/controller-uid`) and the pod
/// template gets the labels it selects plus the job name (both with and without the
/// `batch.kubernetes.io/` prefix); a selector given without `manualSelector` is refused, as
/// the real server does.
fn job_defaults(obj: &mut Value) -> Result<(), ApiError> {
    let uid = obj["metadata"]["uid"].clone();
    let name = obj["metadata"]["name"].clone();
    let spec = &mut obj["spec"];
    if spec["manualSelector"] != json!(true) {
        let generated = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
        if !spec["selector"].is_null() && spec["selector"] != generated {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!(
                    "Job.batch {name} is invalid: spec.selector: Invalid value: {}: `selector` not auto-generated",
                    spec["selector"]
                ),
            ));
        }
        spec["selector"] = generated;
        if !spec["template"]["metadata"]["labels"].is_object() {
            spec["template"]["metadata"]["labels"] = json!({});
        }
        let labels = &mut spec["template"]["metadata"]["labels"];
        labels["batch.kubernetes.io/controller-uid"] = uid.clone();
        labels["batch.kubernetes.io/job-name"] = name.clone();
        labels["controller-uid"] = uid;
        labels["job-name"] = name;
    }
    for (field, default) in [("parallelism", 1), ("backoffLimit", 6)] {
        if spec[field].is_null() {
            spec[field] = json!(default);
        }
    }
    if spec["completions"].is_null() && spec["parallelism"] == json!(1) {
        spec["completions"] = json!(1);
    }
    if spec["completionMode"].is_null() {
        spec["completionMode"] = json!("NonIndexed");
    }
    if spec["suspend"].is_null() {
        spec["suspend"] = json!(false);
    }
    Ok(())
}

/// A Secret's `stringData` is write-only: it lands base64-encoded in `data`.
fn fold_string_data(rt: &ResourceType, obj: &mut Value) {
    if !(rt.group.is_empty() && rt.plural == "secrets") {
        return;
    }
    let Some(Value::Object(string_data)) = obj.as_object_mut().and_then(|m| m.remove("stringData"))
    else {
        return;
    };
    if !obj["data"].is_object() {
        obj["data"] = json!({});
    }
    for (k, v) in string_data {
        obj["data"][k] = json!(encode_base64(v.as_str().unwrap_or_default().as_bytes()));
    }
    if obj["type"].is_null() {
        obj["type"] = json!("Opaque");
    }
}

impl Store {
    /// Type-specific defaults on create.
    fn defaults(
        &self,
        inner: &mut Inner,
        rt: &ResourceType,
        obj: &mut Value,
    ) -> Result<(), ApiError> {
        fold_string_data(rt, obj);
        match (rt.group.as_str(), rt.plural.as_str()) {
            ("", "namespaces") => {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
                obj["status"] = json!({"phase": "Active"});
            }
            ("", "pods") => {
                if obj["status"]["phase"].is_null() {
                    obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
                }
                let spec = &mut obj["spec"];
                if spec["restartPolicy"].is_null() {
                    spec["restartPolicy"] = json!("Always");
                }
                if spec["serviceAccountName"].is_null() {
                    spec["serviceAccountName"] = json!("default");
                }
                if spec["dnsPolicy"].is_null() {
                    spec["dnsPolicy"] = json!("ClusterFirst");
                }
            }
            ("", "secrets") if obj["type"].as_str().is_none_or(str::is_empty) => {
                obj["type"] = json!("Opaque");
            }
            ("", "services") => {
                let spec = &mut obj["spec"];
                if spec["type"].is_null() {
                    spec["type"] = json!("ClusterIP");
                }
                if spec["clusterIP"].is_null() || spec["clusterIP"] == json!("") {
                    let ip = match inner.service_subnet {
                        Some(index) => {
                            let used: BTreeSet<String> = inner
                                .objects
                                .get(&("".to_owned(), "services".to_owned()))
                                .into_iter()
                                .flat_map(|m| m.values())
                                .filter_map(|s| s["spec"]["clusterIP"].as_str().map(str::to_owned))
                                .collect();
                            (1..=254u8)
                                .map(|k| format!("10.215.{index}.{k}"))
                                .find(|ip| !used.contains(ip))
                                .ok_or_else(|| {
                                    ApiError::new(
                                        500,
                                        "InternalError",
                                        format!("failed to allocate a serviceIP: range 10.215.{index}.0/24 is full"),
                                    )
                                })?
                        }
                        None => {
                            inner.next_cluster_ip += 1;
                            let n = inner.next_cluster_ip;
                            format!("10.215.{}.{}", (n >> 8) & 0xff, n & 0xff)
                        }
                    };
                    spec["clusterIP"] = json!(ip);
                    spec["clusterIPs"] = json!([ip]);
                }
                for port in spec["ports"].as_array_mut().into_iter().flatten() {
                    if port["protocol"].is_null() {
                        port["protocol"] = json!("TCP");
                    }
                    if port["targetPort"].is_null() {
                        port["targetPort"] = port["port"].clone();
                    }
                }
                if obj["status"].is_null() {
                    obj["status"] = json!({"loadBalancer": {}});
                }
            }
            ("batch", "jobs") => job_defaults(obj)?,
            ("apps", "deployments" | "replicasets") if obj["spec"]["replicas"].is_null() => {
                obj["spec"]["replicas"] = json!(1);
            }
            ("apps", "statefulsets") => {
                if obj["spec"]["replicas"].is_null() {
                    obj["spec"]["replicas"] = json!(1);
                }
                if obj["spec"]["updateStrategy"].is_null() {
                    obj["spec"]["updateStrategy"] =
                        json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}});
                }
            }
            ("apiextensions.k8s.io", "customresourcedefinitions") => {
                let names = obj["spec"]["names"].clone();
                obj["status"] = json!({
                    "acceptedNames": names,
                    "conditions": [
                        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "lastTransitionTime": time::now_rfc3339()},
                        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "lastTransitionTime": time::now_rfc3339()},
                    ],
                    "storedVersions": obj["spec"]["versions"].as_array().into_iter().flatten()
                        .filter(|v| v["storage"] == json!(true)).map(|v| v["name"].clone()).collect::<Vec<_>>(),
                });
            }
            _ => {}
        }
        Ok(())
    }

    fn after_create(&self, inner: &mut Inner, rt: &ResourceType, obj: &Value) {
        match (rt.group.as_str(), rt.plural.as_str()) {
            ("", "namespaces") => {
                let ns = meta(obj, "name");
                let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                                "metadata": {"name": "default", "namespace": ns}});
                self.insert_locked(inner, ("".into(), "serviceaccounts".into()), sa);
                let root_ca = json!({"apiVersion": "v1", "kind": "ConfigMap",
                                "metadata": {"name": "kube-root-ca.crt", "namespace": ns},
                                "data": {"ca.crt": inner.root_ca.clone()}});
                self.insert_locked(inner, ("".into(), "configmaps".into()), root_ca);
            }
            ("apiextensions.k8s.io", "customresourcedefinitions") => {
                inner.registry.register_crd(obj);
            }
            _ => {}
        }
    }

    /// Inserts an object made by the server itself (no checks beyond uniqueness).
    fn insert_locked(&self, inner: &mut Inner, key: TypeKey, mut obj: Value) {
        let id = (meta(&obj, "namespace"), meta(&obj, "name"));
        if inner.objects.get(&key).is_some_and(|m| m.contains_key(&id)) {
            return;
        }
        inner.rv += 1;
        let m = obj["metadata"].as_object_mut().expect("metadata");
        m.insert("uid".into(), json!(uuid()));
        m.insert("creationTimestamp".into(), json!(time::now_rfc3339()));
        m.insert("resourceVersion".into(), json!(inner.rv.to_string()));
        inner
            .objects
            .entry(key.clone())
            .or_default()
            .insert(id, obj.clone());
        self.emit(inner, key, "ADDED", obj);
    }

    /// PUT: replaces the object (or only its status when `status` is set).
    pub fn update(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        obj: Value,
        status: bool,
        dry_run: bool,
    ) -> Result<Value> {
        self.modify(rt, namespace, name, status, dry_run, None, |old| {
            let want = meta(&obj, "resourceVersion");
            if !want.is_empty() && want != meta(old, "resourceVersion") {
                return Err(ApiError::conflict(&rt.plural, name));
            }
            Ok(obj)
        })
    }

    /// Read-modify-write under the lock. `f` gets the current object and returns the new one.
    /// With `create` set, a missing object is created from `create(…)` (server-side apply).
    #[allow(clippy::too_many_arguments)]
    pub fn modify(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        status: bool,
        dry_run: bool,
        create: Option<Value>,
        f: impl FnOnce(&Value) -> Result<Value>,
    ) -> Result<Value> {
        let mut inner = self.inner.lock();
        let old = match Self::get_locked(&inner, rt, namespace, name) {
            Ok(o) => o.clone(),
            Err(e) => {
                drop(inner);
                return match create {
                    Some(obj) => self.create(rt, namespace, obj, dry_run),
                    None => Err(e),
                };
            }
        };
        let mut new = f(&old)?;
        if !new.is_object() {
            return Err(ApiError::bad_request("the body is not an object"));
        }
        if meta(&new, "name") != name && !meta(&new, "name").is_empty() {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta(&new, "name")
            )));
        }
        if status {
            let mut merged = old.clone();
            merged["status"] = new["status"].clone();
            match new["metadata"].get("managedFields") {
                Some(mf) => merged["metadata"]["managedFields"] = mf.clone(),
                None => {
                    if let Some(m) = merged["metadata"].as_object_mut() {
                        m.remove("managedFields");
                    }
                }
            }
            new = merged;
        } else if rt.status_subresource {
            new["status"] = old["status"].clone();
        }
        new["apiVersion"] = json!(rt.api_version());
        new["kind"] = json!(rt.kind);
        fold_string_data(rt, &mut new);
        if !new["metadata"].is_object() {
            new["metadata"] = json!({});
        }
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "namespace",
            "name",
            "generateName",
        ] {
            match old["metadata"].get(field) {
                Some(v) => new["metadata"][field] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(field);
                    }
                }
            }
        }
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
        let bumped = if spec_part(&old) != spec_part(&new) {
            generation + 1
        } else {
            generation
        };
        new["metadata"]["generation"] = json!(bumped);
        if rt.plural == "namespaces" && rt.group.is_empty() {
            // The namespace's own spec is managed here.
            new["spec"] = old["spec"].clone();
        }
        if dry_run {
            return Ok(new);
        }
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if new == old {
            return Ok(old);
        }
        inner.rv += 1;
        new["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        let key = rt.key();
        let id = (meta(&new, "namespace"), name.to_owned());
        let finalizing = new["metadata"]["deletionTimestamp"].is_string()
            && new["metadata"]["finalizers"]
                .as_array()
                .is_none_or(Vec::is_empty);
        inner
            .objects
            .entry(key.clone())
            .or_default()
            .insert(id.clone(), new.clone());
        self.emit(&mut inner, key.clone(), "MODIFIED", new.clone());
        if rt.crd.is_none() && key.0 == "apiextensions.k8s.io" {
            inner.registry.register_crd(&new);
        }
        if finalizing {
            self.remove_locked(&mut inner, &key, &id, Propagation::Background);
        }
        Ok(new)
    }

    /// DELETE: removes the object, or marks it when finalizers hold it.
    pub fn delete(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        propagation: Propagation,
        dry_run: bool,
    ) -> Result<Value> {
        let mut inner = self.inner.lock();
        let old = Self::get_locked(&inner, rt, namespace, name)?.clone();
        if dry_run {
            return Ok(old);
        }
        let key = rt.key();
        let id = (meta(&old, "namespace"), name.to_owned());
        let has_finalizers = old["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if old["metadata"]["deletionTimestamp"].is_string() {
                return Ok(old);
            }
            let mut new = old;
            inner.rv += 1;
            new["metadata"]["deletionTimestamp"] = json!(time::now_rfc3339());
            new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            new["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
            inner
                .objects
                .entry(key.clone())
                .or_default()
                .insert(id, new.clone());
            self.emit(&mut inner, key, "MODIFIED", new.clone());
            return Ok(new);
        }
        Ok(self
            .remove_locked(&mut inner, &key, &id, propagation)
            .unwrap_or(old))
    }

    /// Removes an object and garbage-collects what it owned (or orphans it).
    fn remove_locked(
        &self,
        inner: &mut Inner,
        key: &TypeKey,
        id: &(String, String),
        propagation: Propagation,
    ) -> Option<Value> {
        let mut obj = inner.objects.get_mut(key)?.remove(id)?;
        inner.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        self.emit(inner, key.clone(), "DELETED", obj.clone());
        let uid = meta(&obj, "uid");
        // Type hooks.
        if key.0 == "apiextensions.k8s.io" && key.1 == "customresourcedefinitions" {
            let group = obj["spec"]["group"].as_str().unwrap_or_default().to_owned();
            let plural = obj["spec"]["names"]["plural"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            inner.registry.unregister_crd(&id.1);
            let ck = (group, plural);
            let ids: Vec<_> = inner
                .objects
                .get(&ck)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            for cid in ids {
                self.remove_locked(inner, &ck, &cid, Propagation::Background);
            }
        }
        if key.0.is_empty() && key.1 == "namespaces" {
            let ns = id.1.clone();
            let keys: Vec<TypeKey> = inner.objects.keys().cloned().collect();
            for k in keys {
                let ids: Vec<_> = inner.objects[&k]
                    .keys()
                    .filter(|(n, _)| *n == ns)
                    .cloned()
                    .collect();
                for cid in ids {
                    self.remove_locked(inner, &k, &cid, Propagation::Background);
                }
            }
        }
        // Owner references.
        let mut dependents = Vec::new();
        for (k, objs) in &inner.objects {
            for (oid, o) in objs {
                let owned = o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == json!(uid)));
                if owned {
                    dependents.push((k.clone(), oid.clone()));
                }
            }
        }
        for (k, oid) in dependents {
            match propagation {
                Propagation::Orphan => {
                    let Some(mut o) = inner.objects.get(&k).and_then(|m| m.get(&oid)).cloned()
                    else {
                        continue;
                    };
                    if let Some(refs) = o["metadata"]["ownerReferences"].as_array_mut() {
                        refs.retain(|r| r["uid"] != json!(uid));
                    }
                    inner.rv += 1;
                    o["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
                    inner
                        .objects
                        .entry(k.clone())
                        .or_default()
                        .insert(oid, o.clone());
                    self.emit(inner, k, "MODIFIED", o);
                }
                Propagation::Background => {
                    let has_finalizers = inner
                        .objects
                        .get(&k)
                        .and_then(|m| m.get(&oid))
                        .is_some_and(|o| {
                            o["metadata"]["finalizers"]
                                .as_array()
                                .is_some_and(|f| !f.is_empty())
                        });
                    if has_finalizers {
                        let Some(mut o) = inner.objects.get(&k).and_then(|m| m.get(&oid)).cloned()
                        else {
                            continue;
                        };
                        if o["metadata"]["deletionTimestamp"].is_null() {
                            inner.rv += 1;
                            o["metadata"]["deletionTimestamp"] = json!(time::now_rfc3339());
                            o["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
                            inner
                                .objects
                                .entry(k.clone())
                                .or_default()
                                .insert(oid, o.clone());
                            self.emit(inner, k, "MODIFIED", o);
                        }
                    } else {
                        self.remove_locked(inner, &k, &oid, Propagation::Background);
                    }
                }
            }
        }
        Some(obj)
    }

    /// Starts a watch of one type. `from`: None = current state as ADDED events, then changes;
    /// Some(rv) = every change after `rv`, or 410 Gone when that history is compacted.
    pub fn watch(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        from: Option<u64>,
    ) -> Result<WatchStart> {
        let inner = self.inner.lock();
        let events_rx = self.events_tx.subscribe();
        let key = rt.key();
        let initial = match from {
            None => inner
                .objects
                .get(&key)
                .into_iter()
                .flat_map(|m| m.iter())
                .filter(|((ns, _), _)| namespace.is_none_or(|want| want == ns))
                .map(|(_, o)| {
                    Arc::new(Event {
                        rv: inner.rv,
                        key: key.clone(),
                        namespace: meta(o, "namespace"),
                        kind: "ADDED",
                        object: o.clone(),
                    })
                })
                .collect(),
            Some(rv) => {
                if rv < inner.compacted_rv {
                    return Err(ApiError::gone(format!(
                        "too old resource version: {rv} ({})",
                        inner.compacted_rv + 1
                    )));
                }
                inner
                    .history
                    .iter()
                    .filter(|e| e.rv > rv && e.key == key)
                    .filter(|e| namespace.is_none_or(|want| want == e.namespace))
                    .cloned()
                    .collect()
            }
        };
        Ok(WatchStart { initial, events_rx })
    }
}
