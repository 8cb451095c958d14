//! The Kubernetes platform of remora: client configuration, target strings and
//! their resolution to a pod and container, and the agent's manifests.
//!
//! Deciding is pure ([`target`], [`resolve`], [`manifest`]) and unit-tested
//! over `k8s-openapi` objects; [`client`] is the thin layer that talks to the
//! API server.

pub mod client;
pub mod labels;
pub mod manifest;
pub mod namespaced;
pub mod operator_api;
pub mod operator_link;
pub mod platform;
pub mod portforward;
pub mod resolve;
pub mod target;

pub use client::{ClientOptions, KubeClient};
pub use manifest::{AgentMode, AgentSettings, AgentSpec};
pub use platform::KubePlatform;
pub use resolve::ResolvedPod;
pub use target::{KubeTarget, TargetKind};

/// What can go wrong on the Kubernetes platform.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The target string does not parse.
    #[error("invalid target `{target}`: {reason}")]
    InvalidTarget {
        /// As given.
        target: String,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// The target's object does not exist.
    #[error("{target} not found in namespace {namespace} (check the name and -n/--namespace)")]
    NotFound {
        /// The target's object (`deployment/api`).
        target: String,
        /// Where it was looked for.
        namespace: String,
    },
    /// The target has no pod that is Running, Ready and not terminating.
    #[error("{target} in namespace {namespace} has no ready pod: {found}")]
    NoReadyPod {
        /// The target's object.
        target: String,
        /// Its namespace.
        namespace: String,
        /// What was found instead (`api-7f9c (Pending: ImagePullBackOff)`).
        found: String,
    },
    /// The container named (explicitly or by annotation) is not in the pod.
    #[error("pod {pod} has no container `{container}` ({origin}); its containers: {available}")]
    UnknownContainer {
        /// Pod name.
        pod: String,
        /// The container asked for.
        container: String,
        /// Where the name came from.
        origin: String,
        /// The pod's containers.
        available: String,
    },
    /// Any other reason a target does not resolve.
    #[error("{0}")]
    Resolve(String),
    /// The client configuration (kubeconfig, context, in-cluster) is unusable.
    #[error("kubernetes client configuration: {0}")]
    Config(String),
    /// The API server refused or failed a request.
    #[error("{action}: {}", api_message(source))]
    Api {
        /// What was being done (`listing pods in namespace shop`).
        action: String,
        /// The client error.
        #[source]
        source: Box<kube::Error>,
    },
}

impl Error {
    /// Wrap a client error with what was being done; a 403 names the verb and
    /// resource that were denied.
    pub fn api(action: impl Into<String>, source: kube::Error) -> Error {
        let action = action.into();
        let action = match &source {
            kube::Error::Api(status) if status.code == 403 => {
                format!(
                    "{action}: permission denied (ask for RBAC access; `kubectl auth can-i` helps)"
                )
            }
            _ => action,
        };
        Error::Api {
            action,
            source: Box::new(source),
        }
    }
}

/// A client error in one line: the server's message and code for an API
/// status, else the client's own text.
fn api_message(source: &kube::Error) -> String {
    match source {
        kube::Error::Api(status) => format!(
            "{} (HTTP {} {})",
            status.message, status.code, status.reason
        ),
        other => other.to_string(),
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
