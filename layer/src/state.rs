//! The layer's process-wide configuration, read once at load time.

use crate::file::local_paths::LocalPaths;
use remora_config::{Config, Policies, RESOLVED_CONFIG_ENV};
use std::sync::OnceLock;

/// Environment variable naming the intproxy's address for layers.
pub const INTPROXY_ADDR_ENV: &str = "REMORA_INTPROXY_ADDR";
/// Environment variable carrying the intproxy's per-run secret.
pub const LAYER_TOKEN_ENV: &str = "REMORA_LAYER_TOKEN";

/// Everything a hook needs to decide local vs remote.
#[derive(Debug)]
pub struct LayerState {
    pub config: Config,
    pub policies: Policies,
    /// The fast "certainly local" answer for paths, before the detour guard.
    pub local_paths: LocalPaths,
}

static STATE: OnceLock<LayerState> = OnceLock::new();

/// The active state, or `None` when the layer is loaded but not configured
/// (every hook then calls libc directly).
pub fn get() -> Option<&'static LayerState> {
    STATE.get()
}

/// Read the environment and activate the layer. Returns why it stays inactive.
pub fn init() -> Result<(), String> {
    let Ok(addr) = std::env::var(INTPROXY_ADDR_ENV) else {
        return Err(format!("{INTPROXY_ADDR_ENV} is not set"));
    };
    let addr = addr
        .parse()
        .map_err(|e| format!("{INTPROXY_ADDR_ENV}={addr:?}: {e}"))?;
    let token = std::env::var(LAYER_TOKEN_ENV).unwrap_or_default();
    let config = match std::env::var(RESOLVED_CONFIG_ENV) {
        // The CLI validated it; `policies()` below compiles (and so checks) it
        // once more, so skip `from_env_value`'s second validation.
        Ok(value) => serde_json::from_str::<Config>(&value)
            .map_err(|e| format!("{RESOLVED_CONFIG_ENV}: {e}"))?,
        Err(_) => Config::default(),
    };
    let mut policies = config.policies().map_err(|e| e.to_string())?;
    let prefixes = runtime_local_prefixes();
    let local_paths = LocalPaths::new(&config.fs, &prefixes);
    policies.fs = policies.fs.with_local_prefixes(prefixes);
    let reply_timeout = reply_timeout(&config);
    crate::broker::configure(&token);
    crate::session::configure(crate::session::ProxyEndpoint {
        addr,
        token,
        reply_timeout,
    });
    let _ = STATE.set(LayerState {
        config,
        policies,
        local_paths,
    });
    crate::exec::capture_environment();
    crate::file::cwd::init_from_env();
    crate::file::streams::init_from_env();
    crate::session::connect_now();
    Ok(())
}

/// Paths that are local for this process in particular: its working directory
/// and the directory of its executable.
fn runtime_local_prefixes() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        if cwd.as_os_str() != "/" {
            out.push(cwd.to_string_lossy().into_owned());
        }
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            if dir.as_os_str() != "/" {
                out.push(dir.to_string_lossy().into_owned());
            }
        }
    }
    out
}

/// The reply timeout: the config's `layer.reply_timeout_secs` (which the CLI
/// fills from the file, `REMORA_REPLY_TIMEOUT` or `--reply-timeout`), else
/// the default.
fn reply_timeout(config: &Config) -> std::time::Duration {
    config
        .layer
        .reply_timeout_secs
        .filter(|secs| *secs > 0)
        .map_or(
            crate::session::DEFAULT_REPLY_TIMEOUT,
            std::time::Duration::from_secs,
        )
}
