//! The configuration types: what a config file may hold, and what the CLI hands
//! the layer once every layer of configuration is merged and validated.
//!
//! The same types serve both purposes: every field has a default, so a file sets
//! only what it changes, and the resolved [`Config`] round-trips through JSON.
//! Field doc comments become the JSON Schema's descriptions.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::{Error, Result};

/// The environment variable the CLI uses to hand the resolved config to the layer.
pub const RESOLVED_CONFIG_ENV: &str = "REMORA_RESOLVED_CONFIG";

/// remora's configuration: what to target and which calls of the local process
/// go to the target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct Config {
    /// What to run against: `pid/<PID>` (a process on this machine),
    /// `pod/<name>[/container/<c>]`, `deployment/<name>[/container/<c>]`,
    /// `statefulset/..`, `job/..`, `rollout/..`, or `targetless` (remote
    /// network and DNS without a pod). Unset means `targetless`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Kubernetes namespace of the target. Unset: the kubeconfig context's namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Kubeconfig file for Kubernetes targets. Unset: `KUBECONFIG`, then
    /// `~/.kube/config`, then the in-cluster service account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Context of the kubeconfig for Kubernetes targets. Unset: its current context.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// How the agent is started for Kubernetes targets (`[agent]`).
    #[serde(skip_serializing_if = "crate::AgentSettings::is_default")]
    pub agent: crate::AgentSettings,
    /// The remora operator to go through instead of starting an agent:
    /// `host:port` (an operator daemon), or `kube[:NAMESPACE[/SERVICE]]`:
    /// the operator installed in the cluster (default `remora/remora-operator`),
    /// reached through the API server's port-forward with the kubeconfig
    /// user's identity. Unset: no operator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// Which of the target's environment variables the local process gets.
    pub env: EnvConfig,
    /// Which file operations read or write the target's files.
    pub fs: FsConfig,
    /// Incoming traffic, outgoing connections and DNS.
    pub network: NetworkConfig,
    /// How `remora run` intercepts the program's calls: `auto` (the
    /// `LD_PRELOAD` layer for dynamically linked programs, the seccomp
    /// supervisor for Go and static ones), `preload` or `seccomp`. Unset: `auto`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interception: Option<Interception>,
    /// How the layer inside the local process talks to remora.
    #[serde(skip_serializing_if = "LayerConfig::is_default")]
    pub layer: LayerConfig,
    /// Databases the operator branches for this session (`[[db_branches]]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub db_branches: Vec<crate::DbBranchConfig>,
    /// Queues whose messages this session takes for itself, by queue id
    /// (`split_queues = { orders = { type = "rabbitmq", message_filter = {
    /// "x-user" = "^alice$" } } }`). Through the operator only.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub split_queues: BTreeMap<String, crate::SplitQueueConfig>,
}

/// How a program's calls are intercepted (see docs/seccomp.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Interception {
    /// By the program's ELF: seccomp for Go and static programs.
    #[default]
    Auto,
    /// Always the `LD_PRELOAD` layer.
    Preload,
    /// Always the seccomp supervisor.
    Seccomp,
}

impl std::fmt::Display for Interception {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Interception::Auto => "auto",
            Interception::Preload => "preload",
            Interception::Seccomp => "seccomp",
        })
    }
}

/// The layer's own settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct LayerConfig {
    /// Seconds one remote call (a file read, a DNS lookup, a connect) may wait
    /// for its reply before it fails with a message naming this key. Unset: 120.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_timeout_secs: Option<u64>,
}

impl LayerConfig {
    fn is_default(&self) -> bool {
        *self == LayerConfig::default()
    }
}

/// Environment variables: the local process starts from the local environment,
/// then gets the target's variables that pass `include`/`exclude` (never those
/// in the built-in never-imported list), then `override`, then `unset`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct EnvConfig {
    /// Globs (`*`, `?`) of the target's variables to import. Empty: all of them.
    pub include: Vec<String>,
    /// Globs (`*`, `?`) of the target's variables never to import, even when included.
    pub exclude: Vec<String>,
    /// Variables to set in the local process, whatever the target or the local
    /// environment says (file key `override`).
    #[serde(rename = "override")]
    pub overrides: BTreeMap<String, String>,
    /// Globs (`*`, `?`) of variables to remove from the final environment, local or remote.
    pub unset: Vec<String>,
}

/// How a file operation that no list matches is handled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FsMode {
    /// Every file is local.
    Local,
    /// Reads come from the target; files opened for writing are local.
    #[default]
    Read,
    /// Reads and writes go to the target.
    Write,
}

/// File operations. Lists are regexes matched against the absolute path
/// (anywhere in it unless anchored with `^`). Precedence: `not_found`, `local`,
/// `read_write`, `read_only`, the built-in default-local list, then `mode`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct FsConfig {
    /// What happens to paths no list matches. Default: `read`.
    pub mode: FsMode,
    /// Paths read from the target; opened locally when written.
    pub read_only: Vec<String>,
    /// Paths read from and written to the target.
    pub read_write: Vec<String>,
    /// Paths always opened locally.
    pub local: Vec<String>,
    /// Paths that do not exist for the process (`ENOENT`).
    pub not_found: Vec<String>,
}

/// Network traffic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct NetworkConfig {
    /// Traffic arriving at the target.
    pub incoming: IncomingConfig,
    /// Connections the local process opens.
    pub outgoing: OutgoingConfig,
    /// Name resolution.
    pub dns: DnsConfig,
}

/// What happens to traffic arriving at the target's ports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IncomingMode {
    /// The local process gets no incoming traffic.
    #[default]
    Off,
    /// The local process gets a copy; the target still answers.
    Mirror,
    /// The local process gets the traffic instead of the target.
    Steal,
}

/// Traffic arriving at the target, delivered to the ports the local process listens on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct IncomingConfig {
    /// `off`, `mirror` or `steal`. Default: `off`.
    pub mode: IncomingMode,
    /// Remote ports to subscribe to. Empty: every port the local process listens on.
    pub ports: Vec<u16>,
    /// `[local, remote]` pairs: the local process listening on `local` gets the
    /// traffic of the target's port `remote`. Unmapped ports use the same number.
    pub port_mapping: Vec<[u16; 2]>,
    /// Only HTTP requests matching this filter are stolen (steal) or copied
    /// (mirror); the others go to the target as usual. Unset: whole connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_filter: Option<HttpFilter>,
    /// Through an operator: when another session holds an identical filter
    /// (or the port unfiltered), take the port over from it instead of being
    /// refused; the holder is told. Policies may forbid it. Default: `false`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub override_filter: bool,
}

/// An HTTP request filter. Set exactly one key; combine with `all_of` / `any_of`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct HttpFilter {
    /// Regex matched case-insensitively against each `name: value` header line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Regex matched against the request path and query (`/api/x?y=1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// HTTP method, compared case-insensitively (`GET`, `POST`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Matches when every filter in the list matches.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub all_of: Vec<HttpFilter>,
    /// Matches when at least one filter in the list matches.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub any_of: Vec<HttpFilter>,
}

impl HttpFilter {
    /// A filter on a header line regex.
    pub fn header(regex: impl Into<String>) -> Self {
        Self {
            header: Some(regex.into()),
            ..Self::default()
        }
    }

    /// A filter on a path regex.
    pub fn path(regex: impl Into<String>) -> Self {
        Self {
            path: Some(regex.into()),
            ..Self::default()
        }
    }

    /// A filter on the method.
    pub fn method(method: impl Into<String>) -> Self {
        Self {
            method: Some(method.into()),
            ..Self::default()
        }
    }

    /// A filter matching when all of `filters` match.
    pub fn all_of(filters: Vec<HttpFilter>) -> Self {
        Self {
            all_of: filters,
            ..Self::default()
        }
    }

    /// A filter matching when any of `filters` matches.
    pub fn any_of(filters: Vec<HttpFilter>) -> Self {
        Self {
            any_of: filters,
            ..Self::default()
        }
    }

    /// How many of the five keys are set at this level (valid filters have exactly one).
    pub fn keys_set(&self) -> usize {
        usize::from(self.header.is_some())
            + usize::from(self.path.is_some())
            + usize::from(self.method.is_some())
            + usize::from(!self.all_of.is_empty())
            + usize::from(!self.any_of.is_empty())
    }
}

/// Connections the local process opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct OutgoingConfig {
    /// Send TCP connections through the target. Default: `true`.
    pub tcp: bool,
    /// Send UDP traffic through the target. Default: `true`.
    pub udp: bool,
    /// Keep connections to loopback addresses (`127.0.0.0/8`, `::1`) local. Default: `false`.
    pub ignore_localhost: bool,
    /// Which destinations go through the target. Unset: all of them.
    pub filter: OutgoingFilter,
}

impl Default for OutgoingConfig {
    fn default() -> Self {
        Self {
            tcp: true,
            udp: true,
            ignore_localhost: false,
            filter: OutgoingFilter::default(),
        }
    }
}

/// Outgoing destinations, each `[tcp://|udp://]host|ip|cidr[:port]`: `db:5432`,
/// `*.svc.cluster.local`, `10.0.0.0/8`, `[fd00::1]:80`, `udp://:53`. Set either
/// list, not both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct OutgoingFilter {
    /// Only these destinations go through the target; everything else is local.
    pub remote: Vec<String>,
    /// These destinations stay local; everything else goes through the target.
    pub local: Vec<String>,
}

/// Name resolution (`getaddrinfo` and friends).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct DnsConfig {
    /// Resolve names in the target (its `resolv.conf` and `hosts`). Default: `true`.
    pub enabled: bool,
    /// Which names are resolved by the target. Unset: all of them.
    pub filter: DnsFilter,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            filter: DnsFilter::default(),
        }
    }
}

/// Names, exact (`db`, `api.example.com`) or `*.suffix` (any name under the
/// suffix), compared case-insensitively. Set either list, not both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "snake_case")]
pub struct DnsFilter {
    /// Only these names are resolved by the target; others locally.
    pub remote: Vec<String>,
    /// These names are resolved locally; others by the target.
    pub local: Vec<String>,
}

impl Config {
    /// The config as the value of [`RESOLVED_CONFIG_ENV`] (compact JSON).
    pub fn to_env_value(&self) -> String {
        // Cannot fail: every map key is a String and no type has a fallible Serialize.
        serde_json::to_string(self).expect("Config serialises to JSON")
    }

    /// Reads the value of [`RESOLVED_CONFIG_ENV`] back and validates it.
    ///
    /// # Errors
    /// [`Error::Resolved`] when it is not a config's JSON, [`Error::Invalid`]
    /// when it does not validate.
    pub fn from_env_value(value: &str) -> Result<Config> {
        let config: Config =
            serde_json::from_str(value).map_err(|source| Error::Resolved { source })?;
        config.validate()?;
        Ok(config)
    }
}

impl std::str::FromStr for FsMode {
    type Err = String;

    /// `local`, `read` or `write`, any case.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "local" => Ok(FsMode::Local),
            "read" => Ok(FsMode::Read),
            "write" => Ok(FsMode::Write),
            _ => Err("expected local, read or write".to_owned()),
        }
    }
}

impl std::str::FromStr for IncomingMode {
    type Err = String;

    /// `off`, `mirror` or `steal`, any case.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "off" => Ok(IncomingMode::Off),
            "mirror" => Ok(IncomingMode::Mirror),
            "steal" => Ok(IncomingMode::Steal),
            _ => Err("expected off, mirror or steal".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests;
