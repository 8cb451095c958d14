//! Helpers of the layer-level suite (`layer_suite.rs`): a scripted agent, a
//! local HTTP server standing in for a remote service, and the harness that
//! runs real programs with the real layer against an in-process intproxy.

pub mod fake_agent;
pub mod harness;
pub mod http;
pub mod udp;
