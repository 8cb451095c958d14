//! Environment policy: which of the target's variables the local process gets,
//! and the final environment it starts with.

use globset::{Glob, GlobSet, GlobSetBuilder};
use std::collections::BTreeMap;

use crate::{EnvConfig, Issues, Result};

/// Variables never imported from the target, whatever `env.include` says: they
/// describe the developer's machine, session or remora itself, and the local
/// process breaks or misbehaves with the pod's values. `env.override` can still
/// set them. `HOSTNAME` is deliberately absent: the pod's is useful.
pub const NEVER_IMPORTED: &[&str] = &[
    // Where local executables are; the pod's paths do not exist here.
    "PATH",
    // The developer's identity, home directory and shell.
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    // The local terminal.
    "TERM",
    "TERMINFO",
    "COLORTERM",
    // The local graphical session.
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "XAUTHORITY",
    // The developer's SSH agent and connection.
    "SSH_*",
    // The dynamic loader: would drop the remora layer or load the pod's libraries.
    "LD_*",
    "DYLD_*",
    // The shell's own bookkeeping.
    "PWD",
    "OLDPWD",
    "SHLVL",
    "_",
    // Local temporary directory.
    "TMPDIR",
    // Local locale (the pod's may not be installed here).
    "LANG",
    "LANGUAGE",
    "LC_*",
    // The local desktop's directories and session.
    "XDG_*",
    // remora's own settings for this run.
    "REMORA_*",
    // Local interpreters and environments.
    "PYTHONHOME",
    "VIRTUAL_ENV",
    // The developer's cluster credentials.
    "KUBECONFIG",
];

/// [`EnvConfig`] compiled: which remote variables to import, and the final environment.
#[derive(Debug, Clone)]
pub struct EnvPolicy {
    include: GlobSet,
    include_raw: Vec<String>,
    exclude: GlobSet,
    exclude_raw: Vec<String>,
    never: GlobSet,
    overrides: BTreeMap<String, String>,
    unset: GlobSet,
}

impl EnvPolicy {
    /// Compiles the globs and checks the override names.
    ///
    /// # Errors
    /// [`crate::Error::Invalid`] naming every invalid glob (`env.exclude[1]: ...`)
    /// and variable name.
    pub fn new(config: &EnvConfig) -> Result<EnvPolicy> {
        let mut issues = Issues::default();
        let include = compile("env.include", &config.include, &mut issues);
        let exclude = compile("env.exclude", &config.exclude, &mut issues);
        let unset = compile("env.unset", &config.unset, &mut issues);
        let never_raw: Vec<String> = NEVER_IMPORTED.iter().map(|s| (*s).to_owned()).collect();
        let never = compile("NEVER_IMPORTED", &never_raw, &mut issues);
        for (name, value) in &config.overrides {
            if name.is_empty() || name.contains(['=', '\0']) {
                issues.push(
                    format!("env.override.{name:?}"),
                    "a variable name cannot be empty or contain '=' or a NUL byte",
                );
            }
            if value.contains('\0') {
                issues.push(
                    format!("env.override.{name}"),
                    "a value cannot contain a NUL byte",
                );
            }
        }
        issues.into_result(EnvPolicy {
            include,
            include_raw: config.include.clone(),
            exclude,
            exclude_raw: config.exclude.clone(),
            never,
            overrides: config.overrides.clone(),
            unset,
        })
    }

    /// The user's include globs, as written (for the agent's request).
    pub fn include_patterns(&self) -> &[String] {
        &self.include_raw
    }

    /// The user's exclude globs, as written.
    pub fn exclude_patterns(&self) -> &[String] {
        &self.exclude_raw
    }

    /// The user's exclude globs plus [`NEVER_IMPORTED`]: what the agent should not
    /// even send.
    pub fn agent_exclude_patterns(&self) -> Vec<String> {
        let never = NEVER_IMPORTED.iter().map(|s| (*s).to_owned());
        self.exclude_raw.iter().cloned().chain(never).collect()
    }

    /// Whether the target's variable `name` is imported.
    pub fn imports(&self, name: &str) -> bool {
        (self.include_raw.is_empty() || self.include.is_match(name))
            && !self.exclude.is_match(name)
            && !self.never.is_match(name)
    }

    /// The local process's environment: `local`, overlaid with every imported
    /// variable of `remote`, then `env.override`, then without `env.unset`.
    pub fn select(
        &self,
        remote: &BTreeMap<String, String>,
        local: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut out = local.clone();
        for (name, value) in remote {
            if self.imports(name) {
                out.insert(name.clone(), value.clone());
            }
        }
        for (name, value) in &self.overrides {
            out.insert(name.clone(), value.clone());
        }
        out.retain(|name, _| !self.unset.is_match(name));
        out
    }
}

/// Compiles `globs`, recording each invalid one as `key[i]`.
fn compile(key: &str, globs: &[String], issues: &mut Issues) -> GlobSet {
    let mut builder = GlobSetBuilder::new();
    for (i, glob) in globs.iter().enumerate() {
        match Glob::new(glob) {
            Ok(glob) => {
                builder.add(glob);
            }
            Err(err) => issues.push(
                format!("{key}[{i}]"),
                format!(
                    "invalid glob {glob:?}: {} (use `*` and `?`, e.g. \"AWS_*\")",
                    err.kind()
                ),
            ),
        }
    }
    builder.build().unwrap_or_else(|err| {
        issues.push(key, format!("{err}"));
        GlobSet::empty()
    })
}

#[cfg(test)]
mod tests;
