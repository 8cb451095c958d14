//! The target's environment: `/proc/<PID>/environ`, filtered by the client's
//! include and exclude globs.

use globset::{Glob, GlobSet, GlobSetBuilder};
use remora_protocol::env::{EnvReply, EnvRequest};
use remora_protocol::{ErrorCode, RemoteError, RemoteResult};
use std::collections::BTreeMap;
use std::path::Path;

/// Read the environment of the process whose `/proc` directory is `proc_dir`
/// and keep what `request` selects.
pub async fn read_env(proc_dir: &Path, request: &EnvRequest) -> RemoteResult<EnvReply> {
    let path = proc_dir.join("environ");
    let raw = tokio::fs::read(&path)
        .await
        .map_err(|e| RemoteError::from_io(format!("reading {}", path.display()), &e))?;
    Ok(EnvReply {
        vars: filter_env(&raw, request)?,
    })
}

/// Parse NUL-separated `KEY=VALUE` entries and keep those matching an include
/// glob (all when there is none) and no exclude glob. Entries without `=`
/// are skipped; the first `=` separates key and value; a later duplicate key
/// wins, as with `getenv` on a last-set basis.
///
/// # Errors
/// [`ErrorCode::InvalidInput`] for a malformed glob.
pub fn filter_env(raw: &[u8], request: &EnvRequest) -> RemoteResult<BTreeMap<String, String>> {
    let include = globs(&request.include)?;
    let exclude = globs(&request.exclude)?;
    let mut vars = BTreeMap::new();
    for entry in raw.split(|&b| b == 0).filter(|e| !e.is_empty()) {
        let Some(eq) = entry.iter().position(|&b| b == b'=') else {
            continue;
        };
        let key = String::from_utf8_lossy(&entry[..eq]).into_owned();
        if key.is_empty() {
            continue;
        }
        let selected = request.include.is_empty() || include.is_match(&key);
        if selected && !exclude.is_match(&key) {
            let value = String::from_utf8_lossy(&entry[eq + 1..]).into_owned();
            vars.insert(key, value);
        }
    }
    Ok(vars)
}

fn globs(patterns: &[String]) -> RemoteResult<GlobSet> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let glob = Glob::new(pattern).map_err(|e| {
            RemoteError::new(
                ErrorCode::InvalidInput,
                format!("invalid environment glob {pattern:?}: {e}"),
            )
        })?;
        builder.add(glob);
    }
    builder
        .build()
        .map_err(|e| RemoteError::new(ErrorCode::InvalidInput, e.to_string()))
}

#[cfg(test)]
mod tests;
