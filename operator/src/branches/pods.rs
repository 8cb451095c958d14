//! Branch pods (Kubernetes): a database server of its own for one branch,
//! started from the image of the operator's `[[branch_pod]]` settings,
//! filled like a branch server, and deleted when the branch is dropped.
//! The platform makes and deletes them ([`BranchPods`]; in
//! `remora-operator-kube`: a Pod, a Service and a Secret with the server's
//! generated password, in the operator's namespace).

use super::settings::BranchPod;
use futures::future::BoxFuture;

/// What the operator asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRequest {
    /// The Pod's and the Service's name (a [`super::store::key`]).
    pub name: String,
    /// The branch it is for (`remora_shop_alice`), for labels and messages.
    pub branch: String,
    /// The image, command, port and limits.
    pub settings: BranchPod,
    /// The server's superuser password (the image's
    /// `POSTGRES_PASSWORD` / `MARIADB_ROOT_PASSWORD`).
    pub password: String,
}

/// A branch pod that is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMade {
    /// Its Service's name as the target and the operator reach it
    /// (`name.namespace.svc.cluster.local`).
    pub host: String,
    pub port: u16,
    /// Where the pod is, as [`BranchPods::delete`] takes it (`namespace/name`).
    pub handle: String,
}

/// Makes and deletes branch pods.
pub trait BranchPods: Send + Sync + std::fmt::Debug + 'static {
    /// Create the pod (and what it needs) and wait until its server is
    /// ready; on failure, nothing is left.
    ///
    /// # Errors
    /// Why the pod did not become ready, for the user.
    fn create(&self, request: PodRequest) -> BoxFuture<'static, Result<PodMade, String>>;

    /// Delete the pod `handle` (and what it needed); done when it is gone
    /// already.
    ///
    /// # Errors
    /// Why not; tried again later.
    fn delete(&self, handle: String) -> BoxFuture<'static, Result<(), String>>;

    /// Delete every branch pod this operator's platform made that `keep`
    /// does not name (handles): pods left by an operator stopped between
    /// creating a pod and recording its branch. Returns the handles
    /// deleted. The caller holds the registry, so no pod is being made.
    ///
    /// # Errors
    /// Why the pods cannot be listed; tried again later.
    fn sweep(&self, keep: Vec<String>) -> BoxFuture<'static, Result<Vec<String>, String>>;
}

/// The superuser a branch pod's server is administered as.
pub fn superuser(kind: remora_protocol::db::DbKind) -> &'static str {
    match kind {
        remora_protocol::db::DbKind::Postgres => "postgres",
        remora_protocol::db::DbKind::Mysql => "root",
    }
}
