//! Where remora keeps per-user state between commands (`remora test`'s
//! session file, `remora ci`'s state and logs): `$REMORA_STATE_DIR`, else
//! `$XDG_RUNTIME_DIR/remora`, else `/tmp/remora-<uid>`; created private (0700).

use crate::error::{Error, Result};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Environment variable overriding the state directory.
pub const STATE_DIR_ENV: &str = "REMORA_STATE_DIR";

/// The state directory, created if needed.
pub fn dir() -> Result<PathBuf> {
    let dir = match std::env::var_os(STATE_DIR_ENV) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d).join("remora"),
            _ => std::env::temp_dir().join(format!("remora-{}", nix::unistd::getuid())),
        },
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| {
            Error::Io(format!(
                "creating the state directory {}: {e}",
                dir.display()
            ))
        })?;
    Ok(dir)
}

/// Write `contents` to a new private (0600) file.
pub fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::Io(format!("writing {}: {e}", path.display())))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| Error::Io(format!("writing {}: {e}", path.display())))
}
