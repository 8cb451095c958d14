//! remora's user configuration: the file / environment / flag layers, their
//! validation, and the compiled policies the layer consults on every hooked call.
//!
//! - [`Config`] is both the file format and the resolved config the CLI hands
//!   to the layer through [`RESOLVED_CONFIG_ENV`] ([`Config::to_env_value`]).
//! - [`Config::load`] merges file < `REMORA_*` environment < [`Overrides`]
//!   (flags) and validates, naming the key path of every problem.
//! - [`Config::policies`] compiles [`FsPolicy`], [`OutgoingPolicy`],
//!   [`DnsPolicy`] and [`EnvPolicy`]: pure, precompiled decisions.
//!
//! The user-facing reference is `docs/config.md`; the annotated example is
//! `config/examples/remora.toml`.

pub mod agent;
mod db_branches;
mod dns;
mod env;
mod error;
mod fs;
mod layers;
mod load;
mod model;
mod outgoing;
mod route_filter;
mod schema;
mod split_queues;
mod target;
mod validate;

pub use agent::{AgentMode, AgentResources, AgentSettings, AgentToleration, DEFAULT_AGENT_IMAGE};
pub use db_branches::{
    CopyConfig, CopyMode, DEFAULT_TTL_SECS, DbBranchConfig, DbConnectionConfig, DbParams, DbType,
    FromEnv, TableCopy, parse_ttl,
};
pub use dns::{DnsPolicy, NameMatch};
pub use env::{EnvPolicy, NEVER_IMPORTED};
pub use error::{Error, Issue, Issues, Result};
pub use fs::{DEFAULT_LOCAL, FsDecision, FsPolicy};
pub use layers::{CONFIG_FILE_ENV, ENV_VARS, EnvVar, Overrides};
pub use load::{DEFAULT_CONFIG_PATH, Format, LoadOptions, Loaded, Origin};
pub use model::{
    Config, DnsConfig, DnsFilter, EnvConfig, FsConfig, FsMode, HttpFilter, IncomingConfig,
    IncomingMode, Interception, LayerConfig, NetworkConfig, OutgoingConfig, OutgoingFilter,
    RESOLVED_CONFIG_ENV,
};
pub use outgoing::{AddrFilter, HostMatch, OutgoingPolicy, Proto, Route};
pub use schema::json_schema;
pub use split_queues::{QueueType, SplitQueueConfig};
pub use target::{TARGET_FORMS, Target};
pub use validate::Policies;
