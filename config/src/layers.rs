//! The environment and command-line layers: what `REMORA_*` variables and the
//! CLI's flags ([`Overrides`]) change in a [`Config`], applied after the file.

use crate::{Config, Error, FsMode, HttpFilter, IncomingMode, Origin, Result};

/// `REMORA_CONFIG_FILE`: path of the config file when `-f/--config` is not given.
pub const CONFIG_FILE_ENV: &str = "REMORA_CONFIG_FILE";

/// One environment variable the loader reads, and the key it sets.
#[derive(Debug, Clone, Copy)]
pub struct EnvVar {
    /// The variable, `REMORA_TARGET`.
    pub name: &'static str,
    /// The key it sets, `target`.
    pub key: &'static str,
    apply: fn(&mut Config, &str) -> std::result::Result<(), String>,
}

/// Every environment variable the loader reads (besides [`CONFIG_FILE_ENV`]).
/// Lists are `;`-separated; booleans are `true`/`false` (or `1`/`0`); an empty
/// value counts as unset.
pub const ENV_VARS: &[EnvVar] = &[
    EnvVar {
        name: "REMORA_REPLY_TIMEOUT",
        key: "layer.reply_timeout_secs",
        apply: |c, v| {
            c.layer.reply_timeout_secs = Some(seconds(v)?);
            Ok(())
        },
    },
    EnvVar {
        name: "REMORA_TARGET",
        key: "target",
        apply: |c, v| {
            c.target = Some(v.to_owned());
            Ok(())
        },
    },
    EnvVar {
        name: "REMORA_NAMESPACE",
        key: "namespace",
        apply: |c, v| {
            c.namespace = Some(v.to_owned());
            Ok(())
        },
    },
    EnvVar {
        name: "REMORA_OPERATOR",
        key: "operator",
        apply: |c, v| {
            c.operator = Some(v.to_owned());
            Ok(())
        },
    },
    EnvVar {
        name: "REMORA_FS_MODE",
        key: "fs.mode",
        apply: |c, v| {
            c.fs.mode = v.parse()?;
            Ok(())
        },
    },
    EnvVar {
        name: "REMORA_ENV_INCLUDE",
        key: "env.include",
        apply: |c, v| {
            c.env.include = list(v);
            Ok(())
        },
    },
    EnvVar {
        name: "REMORA_ENV_EXCLUDE",
        key: "env.exclude",
        apply: |c, v| {
            c.env.exclude = list(v);
            Ok(())
        },
    },
    EnvVar {
        name: "REMORA_INCOMING_MODE",
        key: "network.incoming.mode",
        apply: |c, v| {
            c.network.incoming.mode = v.parse()?;
            Ok(())
        },
    },
    EnvVar {
        name: "REMORA_OUTGOING_TCP",
        key: "network.outgoing.tcp",
        apply: |c, v| {
            c.network.outgoing.tcp = boolean(v)?;
            Ok(())
        },
    },
    EnvVar {
        name: "REMORA_OUTGOING_UDP",
        key: "network.outgoing.udp",
        apply: |c, v| {
            c.network.outgoing.udp = boolean(v)?;
            Ok(())
        },
    },
    EnvVar {
        name: "REMORA_REMOTE_DNS",
        key: "network.dns.enabled",
        apply: |c, v| {
            c.network.dns.enabled = boolean(v)?;
            Ok(())
        },
    },
];

fn list(value: &str) -> Vec<String> {
    value
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A positive whole number of seconds.
fn seconds(value: &str) -> std::result::Result<u64, String> {
    match value.trim().parse::<u64>() {
        Ok(secs) if secs > 0 => Ok(secs),
        _ => Err("expected a whole number of seconds above 0".to_owned()),
    }
}

fn boolean(value: &str) -> std::result::Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

/// Settings from command-line flags, the highest-precedence layer. The CLI fills
/// it from its arguments; `None`, an empty list or `false` leaves a key alone.
/// The flag names are the ones error messages use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `-t/--target`: sets `target`.
    pub target: Option<String>,
    /// `-n/--namespace`: sets `namespace`.
    pub namespace: Option<String>,
    /// `--operator`: sets `operator`.
    pub operator: Option<String>,
    /// `--kubeconfig FILE`: sets `kubeconfig`.
    pub kubeconfig: Option<std::path::PathBuf>,
    /// `--context NAME`: sets `context`.
    pub context: Option<String>,
    /// `--fs-mode`: sets `fs.mode`.
    pub fs_mode: Option<FsMode>,
    /// `--env-include` (repeatable): replaces `env.include`.
    pub env_include: Vec<String>,
    /// `--env-exclude` (repeatable): replaces `env.exclude`.
    pub env_exclude: Vec<String>,
    /// `--env KEY=VALUE` (repeatable): added to `env.override`.
    pub env_set: Vec<String>,
    /// `--env-unset GLOB` (repeatable): added to `env.unset`.
    pub env_unset: Vec<String>,
    /// `--no-outgoing`: sets `network.outgoing.tcp` and `.udp` to false.
    pub no_outgoing: bool,
    /// `--no-remote-dns`: sets `network.dns.enabled` to false.
    pub no_remote_dns: bool,
    /// `--steal` or `--mirror`: sets `network.incoming.mode`.
    pub incoming_mode: Option<IncomingMode>,
    /// `--port` (repeatable): replaces `network.incoming.ports`.
    pub ports: Vec<u16>,
    /// `--port-mapping LOCAL:REMOTE` (repeatable): replaces `network.incoming.port_mapping`.
    pub port_mappings: Vec<String>,
    /// `--http-header-filter REGEX`: part of `network.incoming.http_filter`.
    pub http_header_filter: Option<String>,
    /// `--http-path-filter REGEX`: part of `network.incoming.http_filter`.
    pub http_path_filter: Option<String>,
    /// `--http-method METHOD`: part of `network.incoming.http_filter`.
    pub http_method_filter: Option<String>,
    /// `--override-filter`: sets `network.incoming.override_filter`.
    pub override_filter: bool,
    /// `--reply-timeout SECONDS`: sets `layer.reply_timeout_secs`.
    pub reply_timeout_secs: Option<u64>,
}

/// Applies the `REMORA_*` variables that `env` returns, recording what each set.
pub(crate) fn apply_env(
    config: &mut Config,
    env: &dyn Fn(&str) -> Option<String>,
    origins: &mut Vec<(&'static str, Origin)>,
) -> Result<()> {
    for var in ENV_VARS {
        let Some(value) = env(var.name).filter(|v| !v.is_empty()) else {
            continue;
        };
        (var.apply)(config, &value).map_err(|message| Error::Env {
            var: var.name,
            value,
            message,
        })?;
        origins.push((var.key, Origin::Env(var.name)));
    }
    Ok(())
}

impl Overrides {
    /// Applies the flags that were given, recording what each set.
    pub(crate) fn apply(
        self,
        config: &mut Config,
        origins: &mut Vec<(&'static str, Origin)>,
    ) -> Result<()> {
        let mut set =
            |key: &'static str, flag: &'static str| origins.push((key, Origin::Flag(flag)));
        if let Some(target) = self.target {
            config.target = Some(target);
            set("target", "--target");
        }
        if let Some(namespace) = self.namespace {
            config.namespace = Some(namespace);
            set("namespace", "--namespace");
        }
        if let Some(operator) = self.operator {
            config.operator = Some(operator);
            set("operator", "--operator");
        }
        if let Some(kubeconfig) = self.kubeconfig {
            config.kubeconfig = Some(kubeconfig);
            set("kubeconfig", "--kubeconfig");
        }
        if let Some(context) = self.context {
            config.context = Some(context);
            set("context", "--context");
        }
        if let Some(mode) = self.fs_mode {
            config.fs.mode = mode;
            set("fs.mode", "--fs-mode");
        }
        if !self.env_include.is_empty() {
            config.env.include = self.env_include;
            set("env.include", "--env-include");
        }
        if !self.env_exclude.is_empty() {
            config.env.exclude = self.env_exclude;
            set("env.exclude", "--env-exclude");
        }
        for pair in self.env_set {
            let Some((name, value)) = pair.split_once('=').filter(|(name, _)| !name.is_empty())
            else {
                return Err(Error::Flag {
                    flag: "--env",
                    value: pair,
                    message: "expected KEY=VALUE".to_owned(),
                });
            };
            config
                .env
                .overrides
                .insert(name.to_owned(), value.to_owned());
            set("env.override", "--env");
        }
        if !self.env_unset.is_empty() {
            config.env.unset.extend(self.env_unset);
            set("env.unset", "--env-unset");
        }
        if self.no_outgoing {
            config.network.outgoing.tcp = false;
            config.network.outgoing.udp = false;
            set("network.outgoing.tcp", "--no-outgoing");
            set("network.outgoing.udp", "--no-outgoing");
        }
        if let Some(secs) = self.reply_timeout_secs {
            config.layer.reply_timeout_secs = Some(secs);
            set("layer.reply_timeout_secs", "--reply-timeout");
        }
        if self.no_remote_dns {
            config.network.dns.enabled = false;
            set("network.dns.enabled", "--no-remote-dns");
        }
        if self.override_filter {
            config.network.incoming.override_filter = true;
            set("network.incoming.override_filter", "--override-filter");
        }
        if let Some(mode) = self.incoming_mode {
            config.network.incoming.mode = mode;
            let flag = match mode {
                IncomingMode::Steal => "--steal",
                IncomingMode::Mirror => "--mirror",
                // No flag turns it off; only the file or the environment do.
                IncomingMode::Off => "--steal/--mirror",
            };
            set("network.incoming.mode", flag);
        }
        if !self.ports.is_empty() {
            config.network.incoming.ports = self.ports;
            set("network.incoming.ports", "--port");
        }
        if !self.port_mappings.is_empty() {
            let mut mappings = Vec::with_capacity(self.port_mappings.len());
            for mapping in self.port_mappings {
                let parsed = mapping
                    .split_once(':')
                    .and_then(|(l, r)| Some([l.trim().parse().ok()?, r.trim().parse().ok()?]));
                let Some(pair) = parsed else {
                    return Err(Error::Flag {
                        flag: "--port-mapping",
                        value: mapping,
                        message: "expected LOCAL:REMOTE ports, e.g. 8080:80".to_owned(),
                    });
                };
                mappings.push(pair);
            }
            config.network.incoming.port_mapping = mappings;
            set("network.incoming.port_mapping", "--port-mapping");
        }
        let mut filters = Vec::new();
        let mut flags = Vec::new();
        if let Some(header) = self.http_header_filter {
            filters.push(HttpFilter::header(header));
            flags.push("--http-header-filter");
        }
        if let Some(path) = self.http_path_filter {
            filters.push(HttpFilter::path(path));
            flags.push("--http-path-filter");
        }
        if let Some(method) = self.http_method_filter {
            filters.push(HttpFilter::method(method));
            flags.push("--http-method");
        }
        // Flags replace the file's filter; several flags must all match.
        if let Some(flag) = flags.first() {
            let filter = if filters.len() == 1 {
                filters.remove(0)
            } else {
                HttpFilter::all_of(filters)
            };
            config.network.incoming.http_filter = Some(filter);
            set("network.incoming.http_filter", flag);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
