//! Fetching the target's environment.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Ask for the target's environment variables. Globs use `*` and `?`.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvRequest {
    /// Only variables matching one of these (all when empty).
    pub include: Vec<String>,
    /// Never these, even when included.
    pub exclude: Vec<String>,
}

/// The selected variables.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvReply {
    pub vars: BTreeMap<String, String>,
}
