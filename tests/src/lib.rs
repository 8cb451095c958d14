//! remora-tests: the end-to-end harness that builds local "pods" (network + mount + UTS
//! namespaces on this machine) for remora's local platform, and finds workspace binaries.
//!
//! - [`sandbox`]: [`Sandbox`] / [`Pod`]: one sandbox per test, pods with their own IP,
//!   hosts file, private files, hostname and environment; everything removed on drop and
//!   leftovers of crashed runs swept on the next [`Sandbox::new`].
//! - [`operator`]: a `remora-operator` daemon for tests and benchmarks.
//! - [`bins`]: paths of binaries and libraries cargo built for the workspace.
//!
//! Tests that need root start with [`require_sandbox!`], which skips loudly without
//! privileges and fails instead when `REMORA_REQUIRE_SANDBOX=1` (CI).

pub mod bins;
mod cmd;
pub mod db;
pub mod error;
pub mod fixtures;
pub mod operator;
pub mod pg18;
pub mod procs;
pub mod sandbox;

pub use bins::{artifact_path, bin_path};
pub use error::{Error, Result};
pub use sandbox::{Pod, PodCommand, PodProcess, PodSpec, Sandbox};
