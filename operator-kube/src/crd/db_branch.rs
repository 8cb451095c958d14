//! `RemoraDbBranch`: the operator's record of one database branch (or
//! golden copy) it made, so that a restarted operator still lists it and
//! drops it at its TTL (see docs/db-branches.md). One object per branch in
//! the operator's namespace; the credentials the branch is dropped with,
//! and the session's rewritten variables, are in the Secret of the same
//! name, owned by the object (deleted with it).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The database server family.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DbBranchType {
    /// PostgreSQL.
    Postgres,
    /// MariaDB and MySQL.
    Mysql,
}

/// How much of the source the branch got.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DbBranchMode {
    /// An empty database.
    Empty,
    /// Tables, views, functions; no rows except filtered tables'.
    Schema,
    /// Everything.
    All,
}

/// One database branch the operator made.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "remora.dev",
    version = "v1alpha1",
    kind = "RemoraDbBranch",
    namespaced,
    shortname = "rdbb",
    category = "remora",
    doc = "A database branch made by the remora operator, dropped at its expiry (also by a restarted operator).",
    printcolumn = r#"{"name":"ID","type":"string","jsonPath":".spec.id"}"#,
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"Source","type":"string","jsonPath":".spec.source"}"#,
    printcolumn = r#"{"name":"Branch","type":"string","jsonPath":".spec.branch"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Owner","type":"string","jsonPath":".spec.owner"}"#,
    printcolumn = r#"{"name":"Expires","type":"date","jsonPath":".spec.expiresAt"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.target","priority":1}"#,
    printcolumn = r#"{"name":"Server","type":"string","jsonPath":".spec.server","priority":1}"#,
    printcolumn = r#"{"name":"Pod","type":"string","jsonPath":".spec.pod","priority":1}"#,
    printcolumn = r#"{"name":"Method","type":"string","jsonPath":".spec.method","priority":1}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RemoraDbBranchSpec {
    /// The branch's id (what `remora db rm` and `remora db url` take);
    /// `golden:<database>` for a golden copy.
    #[schemars(length(min = 1))]
    pub id: String,
    /// The server family.
    #[serde(rename = "type")]
    pub type_: DbBranchType,
    /// The source database.
    pub source: String,
    /// The branch's database.
    pub branch: String,
    /// How much was copied.
    pub mode: DbBranchMode,
    /// The `REMORA_USER` that made it.
    pub owner: String,
    /// The target whose environment named the source.
    pub target: String,
    /// The server the branch is on, `host:port` as the target reaches it.
    pub server: String,
    /// When it was made (RFC 3339).
    pub created_at: String,
    /// When it is dropped (RFC 3339).
    pub expires_at: String,
    /// How it was filled, as the session was told.
    pub method: String,
    /// A golden copy that later branches clone (not listed by `remora db ls`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub golden: bool,
    /// A golden copy is ready to be cloned (false while it is being made).
    #[serde(default = "yes")]
    pub ready: bool,
    /// The MariaDB fast path's data directory on the operator's machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// The branch's own pod (`namespace/name`), deleted with the branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

fn yes() -> bool {
    true
}
