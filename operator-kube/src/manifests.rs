//! The operator's install manifests (`remora operator manifests`): its
//! Namespace and ServiceAccount, least-privilege RBAC, the Deployment, the
//! Service, the CRDs and the APIService of the aggregated API
//! (`operator.remora.dev`), built as typed objects by pure functions.
//!
//! Every RBAC rule is a row of [`CLUSTER_RULES`] or [`NAMESPACE_RULES`] with
//! the reason it is needed; `docs/operator.md` shows the same table, and a
//! test keeps the two in step.

use crate::crd;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, Namespace, ObjectFieldSelector,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, TCPSocketAction,
};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::{
    APIService, APIServiceSpec, ServiceReference,
};
use std::collections::BTreeMap;

/// The namespace the operator is installed in unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "remora";
/// The operator image unless told otherwise.
pub const DEFAULT_IMAGE: &str = concat!(
    "ghcr.io/remora-dev/remora-operator:",
    env!("CARGO_PKG_VERSION")
);
/// Name of every namespaced object of the install, and of the cluster-wide RBAC.
pub const NAME: &str = "remora-operator";
/// The port sessions reach the operator on (through the API server).
pub const PORT: u16 = 8443;
/// The container port of the aggregated API (`--api-listen`, TLS).
pub const API_PORT: u16 = 8444;
/// The Service port the APIService names (the API server connects there).
pub const API_SERVICE_PORT: u16 = 443;
/// The bootstrap Role (in kube-system) that reads the front proxy's trust.
pub const AUTH_READER_ROLE: &str = "extension-apiserver-authentication-reader";

/// Name of the Role (and its RoleBinding) [`queue_split_role`] puts in each
/// namespace that registers queue splits.
pub const QUEUE_SPLIT_ROLE: &str = "remora-queue-splits";

/// `remora operator manifests [--namespace N] [--image I]
/// [--queue-split-namespace NS]...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestOptions {
    /// Where the operator, its service account and its agents live.
    pub namespace: String,
    /// The operator image.
    pub image: String,
    /// Namespaces that register `RemoraQueueSplit`s: each gets the Role
    /// [`QUEUE_SPLIT_RULES`] and its binding to the operator's service
    /// account. Empty: none (the default install edits no workload).
    pub queue_split_namespaces: Vec<String>,
}

impl Default for ManifestOptions {
    fn default() -> Self {
        ManifestOptions {
            namespace: DEFAULT_NAMESPACE.to_owned(),
            image: DEFAULT_IMAGE.to_owned(),
            queue_split_namespaces: Vec::new(),
        }
    }
}

/// One RBAC rule and why the operator needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// API group (`""`: core).
    pub group: &'static str,
    /// Resources (with subresources, `pods/portforward`).
    pub resources: &'static [&'static str],
    /// Verbs.
    pub verbs: &'static [&'static str],
    /// Only these objects (`resourceNames`); empty: any.
    pub names: &'static [&'static str],
    /// Why, as the docs say it.
    pub why: &'static str,
}

/// Cluster-wide: targets and sessions live in any namespace.
pub const CLUSTER_RULES: &[Rule] = &[
    Rule {
        group: "",
        resources: &["pods"],
        verbs: &["get", "list"],
        names: &[],
        why: "resolve a target to its ready pod and container (pods are listed by the owner's selector)",
    },
    Rule {
        group: "",
        resources: &["services"],
        verbs: &["get"],
        names: &[],
        why: "resolve `service/NAME` targets through their selector",
    },
    Rule {
        group: "apps",
        resources: &["deployments", "replicasets", "statefulsets"],
        verbs: &["get"],
        names: &[],
        why: "resolve `deployment/`, `replicaset/`, `statefulset/` targets (and a rollout's `workloadRef`)",
    },
    Rule {
        group: "apps",
        resources: &["replicasets"],
        verbs: &["list"],
        names: &[],
        why: "find a Deployment's or Rollout's own ReplicaSets (listed by its selector), whose pods are the target's, not another owner's with the same labels",
    },
    Rule {
        group: "batch",
        resources: &["jobs"],
        verbs: &["get", "list"],
        names: &[],
        why: "resolve `job/` targets, and `cronjob/` targets to their newest job",
    },
    Rule {
        group: "batch",
        resources: &["cronjobs"],
        verbs: &["get"],
        names: &[],
        why: "resolve `cronjob/` targets",
    },
    Rule {
        group: "argoproj.io",
        resources: &["rollouts"],
        verbs: &["get"],
        names: &[],
        why: "resolve `rollout/` targets (Argo Rollouts)",
    },
    Rule {
        group: "remora.dev",
        resources: &["remorasessions"],
        verbs: &["get", "list", "watch", "create", "delete"],
        names: &[],
        why: "one RemoraSession per session in the target's namespace, created and deleted with it; the watch sees `kubectl delete remorasession` and ends that session",
    },
    Rule {
        group: "remora.dev",
        resources: &["remorasessions/status"],
        verbs: &["patch"],
        names: &[],
        why: "keep a session's subscriptions (ports, modes, filters) in its status",
    },
    Rule {
        group: "remora.dev",
        resources: &["remorapolicies", "remoraclusterpolicies"],
        verbs: &["get", "list", "watch"],
        names: &[],
        why: "read the policies, and see them change",
    },
    Rule {
        group: "remora.dev",
        resources: &["remoraqueuesplits"],
        verbs: &["get", "list", "watch", "patch"],
        names: &[],
        why: "queue splits: read a workload's registration, see it edited or deleted (which ends a running split), and hold the finalizer `remora.dev/queue-split` while a split is set up",
    },
    Rule {
        group: "remora.dev",
        resources: &["remoraqueuesplits/status"],
        verbs: &["patch"],
        names: &[],
        why: "keep a split's routers' state, sessions and the workload's saved variables in its status (what a restarted operator resumes from)",
    },
    Rule {
        group: "authentication.k8s.io",
        resources: &["tokenreviews"],
        verbs: &["create"],
        names: &[],
        why: "learn who a client is from its bearer token",
    },
    Rule {
        group: "apiregistration.k8s.io",
        resources: &["apiservices"],
        verbs: &["get", "patch"],
        names: &[remora_kube::operator_api::APISERVICE],
        why: "put the CA of the serving certificate made at start in the caBundle of the operator's own APIService",
    },
    Rule {
        group: "authorization.k8s.io",
        resources: &["subjectaccessreviews"],
        verbs: &["create"],
        names: &[],
        why: "ask whether that user may create sessions, steal and mirror in the target's namespace",
    },
];

/// In the operator's own namespace: its agents run there.
pub const NAMESPACE_RULES: &[Rule] = &[
    Rule {
        group: "batch",
        resources: &["jobs"],
        verbs: &["create", "delete"],
        names: &[],
        why: "start a target's agent as a Job on the target's node, and remove it after the last session",
    },
    Rule {
        group: "",
        resources: &["pods"],
        verbs: &["create", "delete"],
        names: &[],
        why: "the agent pod of `targetless` sessions, and branch pods (`[[branch_pod]]` of `--db-config`: a database server per branch, deleted with it)",
    },
    Rule {
        group: "",
        resources: &["services"],
        verbs: &["create"],
        names: &[],
        why: "a branch pod's Service, owned by the pod (the garbage collector deletes it with the pod)",
    },
    Rule {
        group: "",
        resources: &["pods/portforward"],
        verbs: &["get", "create"],
        names: &[],
        why: "reach an agent through the API server's port-forward (`get`: the WebSocket upgrade kube-rs sends is a GET; `create`: API servers that authorise the SPDY POST)",
    },
    Rule {
        group: "remora.dev",
        resources: &["remoradbbranches"],
        verbs: &["list", "create", "patch", "delete"],
        names: &[],
        why: "one RemoraDbBranch per database branch the operator made, listed at start so that a restarted operator still drops them at their TTL",
    },
    Rule {
        group: "",
        resources: &["secrets"],
        verbs: &["create", "get", "patch"],
        names: &[],
        why: "a branch's credentials (to drop it) and its session variables, in an immutable Secret owned by its RemoraDbBranch, read back at start; a branch pod's generated password, in a Secret owned by the pod; an agent's per-run token, in a Secret created before its Job or pod and then patched to be owned by it (the garbage collector deletes them all with their owners); no list, update or delete",
    },
    Rule {
        group: "coordination.k8s.io",
        resources: &["leases"],
        verbs: &["get", "create", "update"],
        names: &[],
        why: "leader election: only the replica holding the Lease `remora-operator` serves",
    },
];

/// In each namespace named with `--queue-split-namespace`: a queue split
/// edits its workload there and reads what its registration names there.
pub const QUEUE_SPLIT_RULES: &[Rule] = &[
    Rule {
        group: "apps",
        resources: &["deployments", "statefulsets"],
        verbs: &["update"],
        names: &[],
        why: "queue splits: point the workload's queue variable at its temporary queue (a rollout), and restore it when the split ends (a second rollout); the template is read, edited and written back whole",
    },
    Rule {
        group: "argoproj.io",
        resources: &["rollouts"],
        verbs: &["update"],
        names: &[],
        why: "the same for an Argo Rollout workload (one with `workloadRef` has its Deployment updated instead)",
    },
    Rule {
        group: "",
        resources: &["configmaps", "secrets"],
        verbs: &["get"],
        names: &[],
        why: "read the broker's URL and credentials (`urlFrom`, `usernameFrom`, `passwordFrom`) and the ConfigMap or Secret the workload's queue variable is set from (`configMapKeyRef`, `secretKeyRef`, `envFrom`); no list, watch or write",
    },
];

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), NAME.to_owned()),
        ("app.kubernetes.io/part-of".to_owned(), "remora".to_owned()),
    ])
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(labels()),
        ..ObjectMeta::default()
    }
}

fn policy_rules(rules: &[Rule]) -> Vec<PolicyRule> {
    rules
        .iter()
        .map(|r| PolicyRule {
            api_groups: Some(vec![r.group.to_owned()]),
            resources: Some(r.resources.iter().map(|s| (*s).to_owned()).collect()),
            verbs: r.verbs.iter().map(|s| (*s).to_owned()).collect(),
            resource_names: (!r.names.is_empty())
                .then(|| r.names.iter().map(|s| (*s).to_owned()).collect()),
            ..PolicyRule::default()
        })
        .collect()
}

fn subject(namespace: &str) -> Vec<Subject> {
    vec![Subject {
        kind: "ServiceAccount".to_owned(),
        name: NAME.to_owned(),
        namespace: Some(namespace.to_owned()),
        api_group: None,
    }]
}

/// The namespace; its agents need host access (hostPID, capabilities), so
/// Pod Security admission must allow privileged pods in it.
pub fn namespace(options: &ManifestOptions) -> Namespace {
    let mut meta = meta(&options.namespace, None);
    meta.labels.get_or_insert_default().insert(
        "pod-security.kubernetes.io/enforce".to_owned(),
        "privileged".to_owned(),
    );
    Namespace {
        metadata: meta,
        ..Namespace::default()
    }
}

/// The operator's service account.
pub fn service_account(options: &ManifestOptions) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(NAME, Some(&options.namespace)),
        ..ServiceAccount::default()
    }
}

/// [`CLUSTER_RULES`].
pub fn cluster_role() -> ClusterRole {
    ClusterRole {
        metadata: meta(NAME, None),
        rules: Some(policy_rules(CLUSTER_RULES)),
        ..ClusterRole::default()
    }
}

/// Binds [`cluster_role`] to the service account.
pub fn cluster_role_binding(options: &ManifestOptions) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(NAME, None),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "ClusterRole".to_owned(),
            name: NAME.to_owned(),
        },
        subjects: Some(subject(&options.namespace)),
    }
}

/// [`NAMESPACE_RULES`], in the operator's namespace.
pub fn role(options: &ManifestOptions) -> Role {
    Role {
        metadata: meta(NAME, Some(&options.namespace)),
        rules: Some(policy_rules(NAMESPACE_RULES)),
    }
}

/// Binds [`role`] to the service account.
pub fn role_binding(options: &ManifestOptions) -> RoleBinding {
    RoleBinding {
        metadata: meta(NAME, Some(&options.namespace)),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "Role".to_owned(),
            name: NAME.to_owned(),
        },
        subjects: Some(subject(&options.namespace)),
    }
}

/// [`QUEUE_SPLIT_RULES`] in `namespace` (one that registers queue splits).
pub fn queue_split_role(namespace: &str) -> Role {
    Role {
        metadata: meta(QUEUE_SPLIT_ROLE, Some(namespace)),
        rules: Some(policy_rules(QUEUE_SPLIT_RULES)),
    }
}

/// Binds [`queue_split_role`] in `namespace` to the operator's service account.
pub fn queue_split_role_binding(options: &ManifestOptions, namespace: &str) -> RoleBinding {
    RoleBinding {
        metadata: meta(QUEUE_SPLIT_ROLE, Some(namespace)),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "Role".to_owned(),
            name: QUEUE_SPLIT_ROLE.to_owned(),
        },
        subjects: Some(subject(&options.namespace)),
    }
}

fn tcp_probe(initial_delay: i32, period: i32) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String("remora".to_owned()),
            host: None,
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// The operator: one replica (two would need leader election, not built
/// yet), non-root, read-only root filesystem, no capabilities.
pub fn deployment(options: &ManifestOptions) -> Deployment {
    let selector = BTreeMap::from([("app.kubernetes.io/name".to_owned(), NAME.to_owned())]);
    let quantity = |s: &str| Quantity(s.to_owned());
    let container = Container {
        name: "operator".to_owned(),
        image: Some(options.image.clone()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        command: Some(vec!["remora-operator".to_owned()]),
        args: Some(
            [
                "serve",
                "--platform",
                "kubernetes",
                "--listen",
                &format!("0.0.0.0:{PORT}"),
                "--api-listen",
                &format!("0.0.0.0:{API_PORT}"),
            ]
            .map(str::to_owned)
            .to_vec(),
        ),
        env: Some(vec![
            EnvVar {
                name: "REMORA_OPERATOR_NAMESPACE".to_owned(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.namespace".to_owned(),
                        api_version: None,
                    }),
                    ..EnvVarSource::default()
                }),
                value: None,
            },
            EnvVar {
                name: "REMORA_OPERATOR_LOG".to_owned(),
                value: Some("info".to_owned()),
                value_from: None,
            },
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("remora".to_owned()),
                container_port: i32::from(PORT),
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("https".to_owned()),
                container_port: i32::from(API_PORT),
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
        ]),
        readiness_probe: Some(tcp_probe(1, 5)),
        liveness_probe: Some(tcp_probe(10, 20)),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), quantity("50m")),
                ("memory".to_owned(), quantity("64Mi")),
            ])),
            limits: Some(BTreeMap::from([
                ("cpu".to_owned(), quantity("1")),
                ("memory".to_owned(), quantity("256Mi")),
            ])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    Deployment {
        metadata: meta(NAME, Some(&options.namespace)),
        spec: DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector),
                match_expressions: None,
            },
            // Never two operators at once: each would start its own agents.
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".to_owned()),
                rolling_update: None,
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(NAME.to_owned()),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        run_as_group: Some(65532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_owned(),
                            localhost_profile: None,
                        }),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// A ClusterIP service: clients reach it through the API server (its
/// service proxy or a port-forward), never from outside the cluster.
pub fn service(options: &ManifestOptions) -> Service {
    Service {
        metadata: meta(NAME, Some(&options.namespace)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_owned(),
                NAME.to_owned(),
            )])),
            // The first port is what the CLI port-forwards to.
            ports: Some(vec![
                ServicePort {
                    name: Some("remora".to_owned()),
                    port: i32::from(PORT),
                    target_port: Some(IntOrString::String("remora".to_owned())),
                    protocol: Some("TCP".to_owned()),
                    ..ServicePort::default()
                },
                ServicePort {
                    name: Some("https".to_owned()),
                    port: i32::from(API_SERVICE_PORT),
                    target_port: Some(IntOrString::String("https".to_owned())),
                    protocol: Some("TCP".to_owned()),
                    ..ServicePort::default()
                },
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The RoleBinding (in kube-system) letting the operator read the front
/// proxy's trust, `kube-system/extension-apiserver-authentication`, through
/// the bootstrap Role every cluster has for aggregated API servers.
pub fn auth_reader_binding(options: &ManifestOptions) -> RoleBinding {
    RoleBinding {
        metadata: meta(
            &format!("{NAME}-{}", options.namespace),
            Some(crate::aggregated::front_proxy::CONFIGMAP_NAMESPACE),
        ),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "Role".to_owned(),
            name: AUTH_READER_ROLE.to_owned(),
        },
        subjects: Some(subject(&options.namespace)),
    }
}

/// The APIService registering the aggregated API
/// `operator.remora.dev/v1alpha1`, backed by the operator's Service. Its
/// `caBundle` is left out: the operator sets it to the CA of the serving
/// certificate it makes at start (docs/operator.md: or set it yourself for
/// a certificate given with --tls-cert).
pub fn api_service(options: &ManifestOptions) -> APIService {
    use remora_kube::operator_api::{APISERVICE, GROUP, VERSION};
    APIService {
        metadata: meta(APISERVICE, None),
        spec: Some(APIServiceSpec {
            group: Some(GROUP.to_owned()),
            version: Some(VERSION.to_owned()),
            service: Some(ServiceReference {
                namespace: Some(options.namespace.clone()),
                name: Some(NAME.to_owned()),
                port: Some(i32::from(API_SERVICE_PORT)),
            }),
            group_priority_minimum: 1000,
            version_priority: 15,
            insecure_skip_tls_verify: Some(false),
            ca_bundle: None,
        }),
        status: None,
    }
}

/// Every object, in the order `kubectl apply -f` should create them: the
/// CRDs first, then the namespace and what lives in it (the queue-split
/// Roles, in namespaces that must already exist, after the RBAC of the
/// operator's own namespace).
///
/// # Panics
/// Never: typed objects always convert to JSON.
pub fn all(options: &ManifestOptions) -> Vec<serde_json::Value> {
    let json = |v: serde_json::Result<serde_json::Value>| v.expect("objects serialize");
    let mut out: Vec<serde_json::Value> = crd::crds()
        .iter()
        .map(|c| json(serde_json::to_value(c)))
        .collect();
    out.extend([
        json(serde_json::to_value(namespace(options))),
        json(serde_json::to_value(service_account(options))),
        json(serde_json::to_value(cluster_role())),
        json(serde_json::to_value(cluster_role_binding(options))),
        json(serde_json::to_value(role(options))),
        json(serde_json::to_value(role_binding(options))),
        json(serde_json::to_value(auth_reader_binding(options))),
    ]);
    let mut seen = std::collections::BTreeSet::new();
    for ns in options
        .queue_split_namespaces
        .iter()
        .filter(|ns| seen.insert(ns.as_str()))
    {
        out.extend([
            json(serde_json::to_value(queue_split_role(ns))),
            json(serde_json::to_value(queue_split_role_binding(options, ns))),
        ]);
    }
    out.extend([
        json(serde_json::to_value(service(options))),
        json(serde_json::to_value(deployment(options))),
        json(serde_json::to_value(api_service(options))),
    ]);
    out
}

/// [`all`] as a YAML stream, what `remora operator manifests` prints.
pub fn yaml(options: &ManifestOptions) -> String {
    crate::yaml::documents(&all(options))
}

#[cfg(test)]
mod tests;
