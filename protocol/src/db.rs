//! Database branches: a session asks the operator for private copies of the
//! target's databases, and `remora db` lists and removes them.
//!
//! Only the operator answers these ([`crate::Capabilities::DB_BRANCHES`]); an
//! agent never sees them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which database server family.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DbKind {
    Postgres,
    /// MariaDB and MySQL.
    Mysql,
}

/// How much of the source a branch gets.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CopyMode {
    /// An empty database.
    Empty,
    /// Tables, views, functions: no rows (except filtered tables).
    Schema,
    /// Everything (filtered tables: only their filtered rows).
    All,
}

/// Where the connection settings are, in the target's environment: the
/// names of the variables (never their values: the operator reads them).
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DbConnection {
    /// One variable holding a URL (`postgres://u:p@host:5432/db`).
    Url { env: String },
    /// One variable per setting; `None` means the server's default.
    Params {
        host: Option<String>,
        port: Option<String>,
        user: Option<String>,
        password: Option<String>,
        database: Option<String>,
    },
}

/// One branch a session wants.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchSpec {
    pub kind: DbKind,
    /// The source database's name, as configured (for names and listings).
    pub name: String,
    pub connection: DbConnection,
    pub mode: CopyMode,
    /// Table name → SQL filter (`WHERE org_id = 7`): only these rows are copied.
    pub filters: BTreeMap<String, String>,
    pub ttl_secs: u64,
    /// Reuse the live branch with this id instead of making a new one.
    pub id: Option<String>,
}

/// A branch as listed by `remora db ls`.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchInfo {
    pub id: String,
    pub kind: DbKind,
    /// The source database.
    pub source: String,
    /// The branch database, on the same server.
    pub branch: String,
    pub mode: CopyMode,
    /// The `REMORA_USER` that made it.
    pub owner: String,
    /// The target whose environment named the source.
    pub target: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
    /// How it was filled (`template file_copy from remora_golden_shop`, `pg_dump | psql`...).
    pub method: String,
}

/// Client → operator.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DbRequest {
    /// Make (or reuse) these branches for the session's target.
    Branch(Vec<BranchSpec>),
    List,
    /// Drop this branch now.
    Remove {
        id: String,
    },
    /// A connection URL for this branch, as the target would reach it.
    Url {
        id: String,
    },
}

/// One branch made or reused for a session.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchMade {
    pub info: BranchInfo,
    /// Whether an existing branch with the same id was reused.
    pub reused: bool,
    /// Milliseconds it took to make it (0 when reused).
    pub millis: u64,
}

/// Replies to [`DbRequest`].
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DbReply {
    /// The branches, and the session's variables rewritten to point at them.
    Branched {
        branches: Vec<BranchMade>,
        env: BTreeMap<String, String>,
    },
    Branches(Vec<BranchInfo>),
    Removed,
    Url(String),
}
