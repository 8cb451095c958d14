//! Secrets: the operator's own token (what clients present) and the random
//! tokens of the agents it starts.

use crate::error::{Error, Result};
use remora_protocol::SessionToken;
use std::path::Path;

/// Environment variable holding the operator's token, on both sides: the
/// operator uses it when set, and `remora` clients present it.
pub const OPERATOR_TOKEN_ENV: &str = "REMORA_OPERATOR_TOKEN";

/// 128 random bits as 32 hex digits.
///
/// # Errors
/// The system's random source failed.
pub fn random_token() -> std::result::Result<String, String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| format!("generating a token: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The operator's token: [`OPERATOR_TOKEN_ENV`] when set (and `token_file`
/// is then not touched); otherwise a new random token written to
/// `token_file` with mode 0600 (replacing an old one), so only its owner
/// (and root) can read it.
///
/// # Errors
/// [`Error::Token`] when neither is given, or the file cannot be written.
pub fn operator_token(env: Option<String>, token_file: Option<&Path>) -> Result<SessionToken> {
    if let Some(token) = env.filter(|t| !t.is_empty()) {
        return Ok(SessionToken(token));
    }
    let Some(path) = token_file else {
        return Err(Error::Token {
            reason: format!(
                "set {OPERATOR_TOKEN_ENV}, or pass --token-file PATH to have a random token \
                 written there"
            ),
        });
    };
    let token = random_token().map_err(|reason| Error::Token { reason })?;
    write_private(path, &token).map_err(|e| Error::Token {
        reason: format!("writing {}: {e}", path.display()),
    })?;
    Ok(SessionToken(token))
}

fn write_private(path: &Path, token: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // Remove first: an existing file may have looser permissions, which
    // `mode` would not change.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{token}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn env_token_wins_and_the_file_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        let token = operator_token(Some("abc".into()), Some(&file)).unwrap();
        assert_eq!(token.0, "abc");
        assert!(!file.exists());
    }

    #[test]
    fn generated_token_is_written_for_the_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "old").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let token = operator_token(None, Some(&file)).unwrap();
        assert_eq!(token.0.len(), 32);
        assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token.0);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn no_token_source_is_explained() {
        let err = operator_token(None, None).unwrap_err().to_string();
        assert!(
            err.contains(OPERATOR_TOKEN_ENV) && err.contains("--token-file"),
            "{err}"
        );
    }

    #[test]
    fn tokens_compare_exactly() {
        let t = |s: &str| SessionToken(s.into());
        assert!(t("abc").matches(&t("abc")));
        assert!(!t("abc").matches(&t("abd")));
        assert!(!t("abc").matches(&t("abcd")));
    }
}
