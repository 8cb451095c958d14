//! Helpers of the layer-level suite (`layer_suite.rs`): a scripted agent and
//! the staging pod it plays, local HTTP and UDP services standing in for
//! remote ones, and the harness that runs real programs with the real layer
//! against an in-process intproxy.

pub mod fake_agent;
pub mod harness;
pub mod http;
pub mod staging;
pub mod udp;
