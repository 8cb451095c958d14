//! remora-operator-kube: the operator in a Kubernetes cluster. Its custom
//! resources ([`crd`]: sessions and policies as Kubernetes objects) and its
//! install manifests ([`manifests`]), and Kubernetes identity and access
//! for sessions ([`access`]: TokenReview, SubjectAccessReview; [`aggregated`]:
//! the aggregated API the API server proxies sessions to), and the
//! session table mirrored as `RemoraSession` objects ([`session_objects`]),
//! policies read from `RemoraPolicy`/`RemoraClusterPolicy` objects
//! ([`policy_objects`]), database branches kept as `RemoraDbBranch`
//! objects ([`db_branch_objects`]), leader election among replicas ([`leader`]);
//! [`serve`] runs it all (`remora-operator serve --platform kubernetes`; this
//! crate builds the `remora-operator` binary).
//!
//! Everything here is pure (objects built by functions, compared with golden
//! files and validated against the Kubernetes schemas); the API calls sit in
//! thin layers on top.

pub mod access;
pub mod aggregated;
pub mod branch_pods;
pub mod crd;
pub mod db_branch_objects;
pub mod error;
pub mod leader;
pub mod leftover_agents;
pub mod manifests;
pub mod policy_objects;
pub mod queue_splits;
pub mod serve;
pub mod session_objects;
pub mod yaml;

pub use error::{Error, Result};
