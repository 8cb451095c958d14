//! Which PostgreSQL client programs branch a given server: `pg_dump` dumps
//! only servers of its own major version or older, so a PostgreSQL 18 source
//! needs an 18 client even where the machine's default `pg_dump` is 15.
//!
//! Candidates, in order: the operator's `--pg-bindir` directories, Debian's
//! `/usr/lib/postgresql/*/bin`, then the directories of `PATH`. The client
//! picked is the oldest one that is at least the server's major version.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A directory holding `pg_dump`, `psql`, ... of one major version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgClients {
    pub dir: PathBuf,
    pub major: u32,
}

impl PgClients {
    /// The full path of `program` in this client directory.
    pub fn program(&self, program: &str) -> PathBuf {
        self.dir.join(program)
    }
}

/// `pg_dump (PostgreSQL) 18.6` → 18; also `15.14 (Debian 15.14-0+deb12u1)`.
pub fn parse_client_major(version_line: &str) -> Option<u32> {
    let after = version_line.split(')').nth(1)?.trim();
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `SHOW server_version_num` (`180006`, `150014`) → 18, 15.
pub fn parse_server_major(version_num: &str) -> Option<u32> {
    version_num.trim().parse::<u32>().ok().map(|n| n / 10000)
}

/// The major version of the `pg_dump` in `dir`, if there is one that runs.
fn client_major(dir: &Path) -> Option<u32> {
    let out = Command::new(dir.join("pg_dump"))
        .arg("--version")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| parse_client_major(&String::from_utf8_lossy(&out.stdout)))
        .flatten()
}

/// Every directory that may hold PostgreSQL clients, configured ones first.
fn candidate_dirs(configured: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = configured.to_vec();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut debian: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .collect();
        debian.sort();
        dirs.extend(debian);
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    let mut seen = std::collections::BTreeSet::new();
    dirs.retain(|d| d.join("pg_dump").is_file() && seen.insert(d.clone()));
    dirs
}

/// Choose among `found` (directory, major) the oldest client that can dump a
/// server of major version `server`.
pub fn choose(found: &[PgClients], server: u32) -> Option<PgClients> {
    found
        .iter()
        .filter(|c| c.major >= server)
        .min_by_key(|c| c.major)
        .cloned()
}

/// The clients for a server of major version `server` (`server_version`
/// is its full version, for messages).
///
/// # Errors
/// None is new enough: the message names the server's version, the clients
/// found and what to do.
pub fn find(
    configured: &[PathBuf],
    server: u32,
    server_version: &str,
) -> Result<PgClients, String> {
    let found: Vec<PgClients> = candidate_dirs(configured)
        .into_iter()
        .filter_map(|dir| client_major(&dir).map(|major| PgClients { dir, major }))
        .collect();
    choose(&found, server).ok_or_else(|| {
        let list = if found.is_empty() {
            "none".to_owned()
        } else {
            found
                .iter()
                .map(|c| format!("pg_dump {} in {}", c.major, c.dir.display()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "the source server runs PostgreSQL {server_version}, which needs pg_dump {server} \
             or newer; found {list} (install the PostgreSQL {server} client, or pass \
             --pg-bindir DIR to remora-operator)"
        )
    })
}
