//! The operator's file policies for one session, enforced where the paths
//! mean something: on a namespace worker, on each path as the target
//! resolves it. `//`, `.`, `..` and symlinks (absolute ones too) are undone
//! before a rule is matched, so no spelling of a hidden path gets through.

use regex::Regex;
use remora_protocol::fs::FsRequest;
use remora_protocol::session::SessionPolicy;
use remora_protocol::{ErrorCode, RemoteError, RemoteResult};
use std::path::{Component, Path, PathBuf};

/// Files of a process that hold (or can read) its environment.
const PROCESS_ENV_FILES: &str = r"^/proc/[^/]+/(task/[^/]+/)?(environ|mem|pagemap)$";

/// A compiled [`SessionPolicy`].
#[derive(Debug)]
pub struct FsPolicy {
    rules: Vec<(Regex, String, String)>,
    process_env: Option<(Regex, String)>,
}

impl FsPolicy {
    /// Compile the operator's rules.
    ///
    /// # Errors
    /// An invalid regex (the operator compiled it already, so a bug).
    pub fn compile(policy: &SessionPolicy) -> Result<FsPolicy, String> {
        let rules = policy
            .fs_not_found
            .iter()
            .map(|rule| {
                Regex::new(&rule.pattern)
                    .map(|re| (re, rule.pattern.clone(), rule.label.clone()))
                    .map_err(|e| format!("fs_not_found {:?}: {e}", rule.pattern))
            })
            .collect::<Result<_, _>>()?;
        let process_env = policy.hide_process_env.as_ref().map(|label| {
            let re = Regex::new(PROCESS_ENV_FILES).expect("a valid constant regex");
            (re, label.clone())
        });
        Ok(FsPolicy { rules, process_env })
    }

    /// Whether there is nothing to enforce.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.process_env.is_none()
    }

    /// `NotFound` when a path of `request`, as resolved here, is hidden.
    /// Runs on a namespace worker (the resolution is the target's).
    pub fn check(&self, request: &FsRequest) -> RemoteResult<()> {
        if self.is_empty() {
            return Ok(());
        }
        for path in request.paths() {
            for resolved in resolutions(Path::new(path)) {
                if let Some(reason) = self.hit(path, &resolved) {
                    return Err(RemoteError::new(ErrorCode::NotFound, reason));
                }
            }
        }
        Ok(())
    }

    fn hit(&self, asked: &str, resolved: &str) -> Option<String> {
        let shown = if asked == resolved {
            asked.to_owned()
        } else {
            format!("{asked} (resolved to {resolved})")
        };
        if let Some((_, pattern, label)) = self.rules.iter().find(|(re, ..)| re.is_match(resolved))
        {
            return Some(format!(
                "{shown} is hidden by {label} (fs_not_found {pattern:?})"
            ));
        }
        match &self.process_env {
            Some((re, label)) if re.is_match(resolved) => Some(format!(
                "{shown} is hidden by {label} (env_exclude: process environments are not \
                 readable as files)"
            )),
            _ => None,
        }
    }
}

/// Every form of `path` a rule must see: the path as given, its lexical
/// normal form, the fully resolved path (when it exists) and the resolved
/// parent joined with the last component (a missing file, or a request that
/// does not follow the last symlink). Text, not `Path`s: `Path` equality
/// ignores the very `//` and `.` a rule must not be fooled by.
pub fn resolutions(path: &Path) -> Vec<String> {
    let mut forms = vec![path.to_path_buf()];
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    forms.push(lexical(&absolute));
    if let Ok(real) = std::fs::canonicalize(&absolute) {
        forms.push(real);
    }
    let normal = lexical(&absolute);
    if let (Some(parent), Some(name)) = (normal.parent(), normal.file_name())
        && let Ok(parent) = std::fs::canonicalize(parent)
    {
        forms.push(parent.join(name));
    }
    let mut texts: Vec<String> = Vec::with_capacity(forms.len());
    for form in forms {
        let text = form.to_string_lossy().into_owned();
        if !texts.contains(&text) {
            texts.push(text);
        }
    }
    texts
}

/// `path` with `//`, `.` and `..` removed (`..` of `/` is `/`).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests;
