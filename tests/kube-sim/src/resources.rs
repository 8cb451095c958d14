//! The resource types the server knows: built-in kinds plus those CRDs register.

use serde_json::{Value, json};

/// One printer column of `kubectl get` (a CRD's `additionalPrinterColumns` or a built-in's).
#[derive(Debug, Clone)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    /// A dotted JSONPath such as `.spec.replicas`.
    pub json_path: String,
}

/// A resource type served under a group/version.
#[derive(Debug, Clone)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub status_subresource: bool,
    /// Only `create` (reviews); no storage.
    pub create_only: bool,
    pub printer_columns: Vec<PrinterColumn>,
    /// Set for types a CRD registered: the CRD's name.
    pub crd: Option<String>,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Storage key: group and plural (all versions share one store).
    pub fn key(&self) -> (String, String) {
        (self.group.clone(), self.plural.clone())
    }

    pub fn verbs(&self) -> Vec<&'static str> {
        if self.create_only {
            vec!["create"]
        } else {
            vec![
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ]
        }
    }

    fn to_api_resource(&self) -> Value {
        json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": self.verbs(),
            "shortNames": self.short_names,
        })
    }
}

fn col(name: &str, type_: &str, path: &str) -> PrinterColumn {
    PrinterColumn {
        name: name.to_owned(),
        type_: type_.to_owned(),
        json_path: path.to_owned(),
    }
}

/// (group, version, kind, plural, namespaced, short names, status subresource)
type BuiltinRow = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
    &'static [&'static str],
    bool,
);

/// The registry of served types.
#[derive(Debug, Clone)]
pub struct Registry {
    pub types: Vec<ResourceType>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Registry {
    pub fn builtin() -> Self {
        // (group, version, kind, plural, namespaced, short names, status subresource)
        let table: &[BuiltinRow] = &[
            ("", "v1", "Namespace", "namespaces", false, &["ns"], true),
            ("", "v1", "Node", "nodes", false, &["no"], true),
            ("", "v1", "Pod", "pods", true, &["po"], true),
            ("", "v1", "Service", "services", true, &["svc"], true),
            ("", "v1", "Endpoints", "endpoints", true, &["ep"], false),
            ("", "v1", "ConfigMap", "configmaps", true, &["cm"], false),
            ("", "v1", "Secret", "secrets", true, &[], false),
            (
                "",
                "v1",
                "ServiceAccount",
                "serviceaccounts",
                true,
                &["sa"],
                false,
            ),
            ("", "v1", "Event", "events", true, &["ev"], false),
            (
                "apps",
                "v1",
                "Deployment",
                "deployments",
                true,
                &["deploy"],
                true,
            ),
            (
                "apps",
                "v1",
                "ReplicaSet",
                "replicasets",
                true,
                &["rs"],
                true,
            ),
            (
                "apps",
                "v1",
                "StatefulSet",
                "statefulsets",
                true,
                &["sts"],
                true,
            ),
            ("apps", "v1", "DaemonSet", "daemonsets", true, &["ds"], true),
            (
                "apps",
                "v1",
                "ControllerRevision",
                "controllerrevisions",
                true,
                &[],
                false,
            ),
            ("batch", "v1", "Job", "jobs", true, &[], true),
            ("batch", "v1", "CronJob", "cronjobs", true, &["cj"], true),
            (
                "coordination.k8s.io",
                "v1",
                "Lease",
                "leases",
                true,
                &[],
                false,
            ),
            (
                "discovery.k8s.io",
                "v1",
                "EndpointSlice",
                "endpointslices",
                true,
                &[],
                false,
            ),
            (
                "events.k8s.io",
                "v1",
                "Event",
                "events",
                true,
                &["ev"],
                false,
            ),
            (
                "rbac.authorization.k8s.io",
                "v1",
                "Role",
                "roles",
                true,
                &[],
                false,
            ),
            (
                "rbac.authorization.k8s.io",
                "v1",
                "RoleBinding",
                "rolebindings",
                true,
                &[],
                false,
            ),
            (
                "rbac.authorization.k8s.io",
                "v1",
                "ClusterRole",
                "clusterroles",
                false,
                &[],
                false,
            ),
            (
                "rbac.authorization.k8s.io",
                "v1",
                "ClusterRoleBinding",
                "clusterrolebindings",
                false,
                &[],
                false,
            ),
            (
                "apiregistration.k8s.io",
                "v1",
                "APIService",
                "apiservices",
                false,
                &[],
                true,
            ),
            (
                "apiextensions.k8s.io",
                "v1",
                "CustomResourceDefinition",
                "customresourcedefinitions",
                false,
                &["crd", "crds"],
                true,
            ),
        ];
        let mut types: Vec<ResourceType> = table
            .iter()
            .map(
                |&(group, version, kind, plural, namespaced, short, status)| ResourceType {
                    group: group.to_owned(),
                    version: version.to_owned(),
                    kind: kind.to_owned(),
                    plural: plural.to_owned(),
                    singular: kind.to_ascii_lowercase(),
                    namespaced,
                    short_names: short.iter().map(|s| (*s).to_owned()).collect(),
                    status_subresource: status,
                    create_only: false,
                    printer_columns: builtin_columns(plural),
                    crd: None,
                },
            )
            .collect();
        let reviews: &[(&str, &str, &str, bool)] = &[
            (
                "authentication.k8s.io",
                "TokenReview",
                "tokenreviews",
                false,
            ),
            (
                "authorization.k8s.io",
                "SubjectAccessReview",
                "subjectaccessreviews",
                false,
            ),
            (
                "authorization.k8s.io",
                "SelfSubjectAccessReview",
                "selfsubjectaccessreviews",
                false,
            ),
            (
                "authorization.k8s.io",
                "LocalSubjectAccessReview",
                "localsubjectaccessreviews",
                true,
            ),
        ];
        for &(group, kind, plural, namespaced) in reviews {
            types.push(ResourceType {
                group: group.to_owned(),
                version: "v1".to_owned(),
                kind: kind.to_owned(),
                plural: plural.to_owned(),
                singular: kind.to_ascii_lowercase(),
                namespaced,
                short_names: Vec::new(),
                status_subresource: false,
                create_only: true,
                printer_columns: Vec::new(),
                crd: None,
            });
        }
        Self { types }
    }

    /// Finds a type by group, version and plural.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    /// Any version of the type stored under `key`.
    pub fn find_by_key(&self, group: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.plural == plural)
    }

    /// Groups in discovery order, each with its versions.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for t in &self.types {
            if t.group.is_empty() {
                continue;
            }
            match out.iter_mut().find(|(g, _)| *g == t.group) {
                Some((_, versions)) => {
                    if !versions.contains(&t.version) {
                        versions.push(t.version.clone());
                    }
                }
                None => out.push((t.group.clone(), vec![t.version.clone()])),
            }
        }
        out
    }

    pub fn api_group(&self, group: &str, versions: &[String]) -> Value {
        let gvs: Vec<Value> = versions
            .iter()
            .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
            .collect();
        json!({
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": group,
            "versions": gvs,
            "preferredVersion": gvs.first().cloned().unwrap_or(Value::Null),
        })
    }

    pub fn api_group_list(&self) -> Value {
        let groups: Vec<Value> = self
            .groups()
            .iter()
            .map(|(g, vs)| {
                let mut v = self.api_group(g, vs);
                if let Some(m) = v.as_object_mut() {
                    m.remove("kind");
                    m.remove("apiVersion");
                }
                v
            })
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    /// `APIResourceList` of one group/version, or None when it is not served.
    pub fn resource_list(&self, group: &str, version: &str) -> Option<Value> {
        let mut resources = Vec::new();
        for t in self
            .types
            .iter()
            .filter(|t| t.group == group && t.version == version)
        {
            resources.push(t.to_api_resource());
            if t.status_subresource {
                resources.push(json!({
                    "name": format!("{}/status", t.plural), "singularName": "",
                    "namespaced": t.namespaced, "kind": t.kind,
                    "verbs": ["get", "patch", "update"],
                }));
            }
            if t.plural == "pods" && t.group.is_empty() {
                for (sub, kind, verbs) in [
                    ("log", "Pod", vec!["get"]),
                    (
                        "portforward",
                        "PodPortForwardOptions",
                        vec!["create", "get"],
                    ),
                    ("ephemeralcontainers", "Pod", vec!["get", "patch", "update"]),
                    ("eviction", "Eviction", vec!["create"]),
                ] {
                    resources.push(json!({
                        "name": format!("pods/{sub}"), "singularName": "", "namespaced": true,
                        "kind": kind, "verbs": verbs,
                    }));
                }
            }
            if matches!(
                t.plural.as_str(),
                "deployments" | "replicasets" | "statefulsets"
            ) {
                resources.push(json!({
                    "name": format!("{}/scale", t.plural), "singularName": "", "namespaced": true,
                    "group": "autoscaling", "version": "v1", "kind": "Scale",
                    "verbs": ["get", "patch", "update"],
                }));
            }
        }
        if resources.is_empty() {
            return None;
        }
        let gv = if group.is_empty() {
            version.to_owned()
        } else {
            format!("{group}/{version}")
        };
        Some(json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
            "resources": resources,
        }))
    }

    /// Aggregated discovery (`apidiscovery.k8s.io/v2`, or `v2beta1`: the same shape) of the
    /// legacy group (`legacy`: what `/api` serves) or of every named group (`/apis`): an
    /// `APIGroupDiscoveryList` whose versions hold their resources, each resource with its
    /// subresources, as kubectl 1.32 asks for first.
    pub fn aggregated_discovery(&self, legacy: bool, version: &str) -> Value {
        let groups: Vec<(String, Vec<String>)> = if legacy {
            vec![(String::new(), vec!["v1".to_owned()])]
        } else {
            self.groups()
        };
        let items: Vec<Value> = groups
            .iter()
            .map(|(group, versions)| {
                let versions: Vec<Value> = versions
                    .iter()
                    .map(|v| {
                        json!({
                            "version": v,
                            "resources": self.discovered_resources(group, v),
                            "freshness": "Current",
                        })
                    })
                    .collect();
                json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": versions})
            })
            .collect();
        json!({
            "kind": "APIGroupDiscoveryList",
            "apiVersion": format!("apidiscovery.k8s.io/{version}"),
            "metadata": {},
            "items": items,
        })
    }

    /// The `APIResourceDiscovery` entries of one group/version (from its `APIResourceList`:
    /// each `x/sub` entry becomes a subresource of `x`).
    fn discovered_resources(&self, group: &str, version: &str) -> Vec<Value> {
        self.resource_list(group, version)
            .map(|list| discovered_resources(&list, group, version))
            .unwrap_or_default()
    }

    /// Registers (or re-registers) the types a CRD defines.
    pub fn register_crd(&mut self, crd: &Value) {
        let Some(name) = crd.pointer("/metadata/name").and_then(Value::as_str) else {
            return;
        };
        self.unregister_crd(name);
        let spec = &crd["spec"];
        let group = spec["group"].as_str().unwrap_or_default().to_owned();
        let names = &spec["names"];
        let kind = names["kind"].as_str().unwrap_or_default().to_owned();
        let plural = names["plural"].as_str().unwrap_or_default().to_owned();
        let singular = names["singular"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| kind.to_ascii_lowercase());
        let short_names: Vec<String> = names["shortNames"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let namespaced = spec["scope"].as_str() != Some("Cluster");
        for version in spec["versions"].as_array().into_iter().flatten() {
            if version["served"] == Value::Bool(false) {
                continue;
            }
            let printer_columns = version["additionalPrinterColumns"]
                .as_array()
                .map(|cols| {
                    cols.iter()
                        .map(|c| {
                            col(
                                c["name"].as_str().unwrap_or_default(),
                                c["type"].as_str().unwrap_or("string"),
                                c["jsonPath"].as_str().unwrap_or_default(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            self.types.push(ResourceType {
                group: group.clone(),
                version: version["name"].as_str().unwrap_or_default().to_owned(),
                kind: kind.clone(),
                plural: plural.clone(),
                singular: singular.clone(),
                namespaced,
                short_names: short_names.clone(),
                status_subresource: version.pointer("/subresources/status").is_some(),
                create_only: false,
                printer_columns,
                crd: Some(name.to_owned()),
            });
        }
    }

    pub fn unregister_crd(&mut self, name: &str) {
        self.types.retain(|t| t.crd.as_deref() != Some(name));
    }
}

/// Extra `kubectl get` columns of built-in types (name and age are always there).
fn builtin_columns(plural: &str) -> Vec<PrinterColumn> {
    match plural {
        "pods" => vec![
            col("Ready", "string", "@ready"),
            col("Status", "string", "@podstatus"),
            col("Restarts", "integer", "@restarts"),
        ],
        "deployments" => vec![
            col("Ready", "string", "@deployready"),
            col("Up-to-date", "integer", ".status.updatedReplicas"),
            col("Available", "integer", ".status.availableReplicas"),
        ],
        "replicasets" => vec![
            col("Desired", "integer", ".spec.replicas"),
            col("Current", "integer", ".status.replicas"),
            col("Ready", "integer", ".status.readyReplicas"),
        ],
        "statefulsets" => vec![col("Ready", "string", "@stsready")],
        "services" => vec![
            col("Type", "string", ".spec.type"),
            col("Cluster-IP", "string", ".spec.clusterIP"),
            col("Port(s)", "string", "@ports"),
        ],
        "namespaces" => vec![col("Status", "string", ".status.phase")],
        "jobs" => vec![
            col("Status", "string", "@jobstatus"),
            col("Completions", "string", "@completions"),
        ],
        "cronjobs" => vec![
            col("Schedule", "string", ".spec.schedule"),
            col("Suspend", "boolean", ".spec.suspend"),
        ],
        "configmaps" => vec![col("Data", "integer", "@datacount")],
        "secrets" => vec![
            col("Type", "string", ".type"),
            col("Data", "integer", "@datacount"),
        ],
        "nodes" => vec![col("Status", "string", "@nodestatus")],
        "apiservices" => vec![
            col("Service", "string", "@apiservice"),
            col("Available", "string", "@available"),
        ],
        "customresourcedefinitions" => {
            vec![col("Created At", "date", ".metadata.creationTimestamp")]
        }
        _ => Vec::new(),
    }
}

/// The `APIResourceDiscovery` entries of one group/version's `APIResourceList` (each `x/sub`
/// entry becomes a subresource of `x`), as kube-apiserver converts legacy discovery.
pub fn discovered_resources(list: &Value, group: &str, version: &str) -> Vec<Value> {
    let entries = list["resources"].as_array().cloned().unwrap_or_default();
    let kind_of = |e: &Value| {
        json!({
            "group": e["group"].as_str().unwrap_or(group),
            "version": e["version"].as_str().unwrap_or(version),
            "kind": e["kind"],
        })
    };
    let mut out: Vec<Value> = Vec::new();
    for e in &entries {
        let name = e["name"].as_str().unwrap_or_default();
        match name.split_once('/') {
            None => out.push(json!({
                "resource": name,
                "responseKind": kind_of(e),
                "scope": if e["namespaced"] == json!(true) { "Namespaced" } else { "Cluster" },
                "singularResource": e["singularName"],
                "verbs": e["verbs"],
                "shortNames": e["shortNames"],
                "subresources": [],
            })),
            Some((parent, sub)) => {
                if let Some(p) = out.iter_mut().find(|r| r["resource"] == json!(parent))
                    && let Some(subs) = p["subresources"].as_array_mut()
                {
                    subs.push(json!({
                        "subresource": sub,
                        "responseKind": kind_of(e),
                        "verbs": e["verbs"],
                    }));
                }
            }
        }
    }
    for r in &mut out {
        if let Some(m) = r.as_object_mut() {
            for key in ["shortNames", "subresources"] {
                if m.get(key)
                    .and_then(Value::as_array)
                    .is_some_and(Vec::is_empty)
                {
                    m.remove(key);
                }
            }
        }
    }
    out
}
