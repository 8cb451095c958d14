//! Where the branch registry is kept when the platform has a better place
//! than `--state-dir` (on Kubernetes: a `RemoraDbBranch` object per branch
//! and a Secret with its credentials, in `remora-operator-kube`).
//!
//! The registry hands a [`BranchStore`] the whole of each entry, split into
//! what may be shown ([`BranchRecord`]: what `remora db ls` prints) and what
//! may not ([`BranchSecret`]: the server's credentials and the session's
//! rewritten variables). [`super::Branches`] remembers what it last wrote
//! and writes only what changed: a new entry (record and secret), a changed
//! record (a reused branch's later expiry, a golden copy becoming ready), a
//! removed entry.

use super::source::Server;
use futures::future::BoxFuture;
use remora_protocol::db::BranchInfo;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What may be shown of one branch (or golden copy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchRecord {
    /// What `remora db ls` prints.
    pub info: BranchInfo,
    /// A golden copy (never listed, never handed to a session).
    pub golden: bool,
    /// A golden copy may be cloned (false while it is being made).
    pub ready: bool,
    /// The MariaDB fast path's directory (its own `mariadbd`'s datadir).
    pub dir: Option<PathBuf>,
    /// Kubernetes: the branch's own pod (`namespace/name`).
    pub pod: Option<String>,
    /// The server the branch is on, `host:port` (its credentials are in
    /// the [`BranchSecret`]).
    pub server: String,
}

/// What may not be shown: needed to drop the branch and to hand it to a
/// session that reuses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchSecret {
    /// The server with the credentials the branch is dropped with.
    pub server: Server,
    /// The session's variables pointing at the branch.
    pub env: BTreeMap<String, String>,
}

/// One stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBranch {
    /// Unique among the operator's entries, and a valid Kubernetes object
    /// name ([`key`]).
    pub key: String,
    pub record: BranchRecord,
    pub secret: BranchSecret,
}

/// Keeps the branch registry across operator restarts.
pub trait BranchStore: Send + Sync + std::fmt::Debug + 'static {
    /// Every stored entry (at start).
    ///
    /// # Errors
    /// Why the entries cannot be read: the operator does not start, since
    /// it would never drop them.
    fn load(&self) -> BoxFuture<'static, Result<Vec<StoredBranch>, String>>;

    /// Store `branch`: create it (record and secret) when `new`, else
    /// update its record (its secret never changes).
    ///
    /// # Errors
    /// Why it was not stored; it is written again at the next change or
    /// reaper round.
    fn put(&self, branch: StoredBranch, new: bool) -> BoxFuture<'static, Result<(), String>>;

    /// Forget the entry `key` (its database was dropped).
    ///
    /// # Errors
    /// Why not; tried again later.
    fn remove(&self, key: String) -> BoxFuture<'static, Result<(), String>>;
}

/// The key of the entry for `branch` on `server`: `remora-…` (lowercase
/// letters, digits and `-`, at most 63 bytes), ending with a hash of the
/// server and the branch, so entries on different servers do not clash.
pub fn key(branch: &str, server: &Server) -> String {
    // FNV-1a, 64 bits: stable across builds (unlike `DefaultHasher`).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in format!("{}:{}/{branch}", server.host, server.port).bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let name: String = branch
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_start_matches("remora-").to_owned();
    let mut name = format!("remora-{name}");
    name.truncate(63 - 17);
    let name = name.trim_end_matches('-');
    format!("{name}-{hash:016x}")
}
