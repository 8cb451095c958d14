//! Errors of the operator's Kubernetes mode, each saying what failed and
//! what to do next.

/// What can stop `remora-operator serve --platform kubernetes`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operator itself (listening, signals, policies).
    #[error(transparent)]
    Operator(#[from] remora_operator::Error),
    /// The command line or the cluster's setup does not allow serving.
    #[error("{0}")]
    Usage(String),
    /// The cluster cannot be reached or configured.
    #[error(transparent)]
    Kube(#[from] remora_kube::Error),
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
