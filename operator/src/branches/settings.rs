//! The operator's own database-branch settings (`--db-config FILE`, TOML):
//! branch servers, for sources whose credentials may not create databases,
//! and read-only roles the operator reads sources as.
//!
//! ```toml
//! dump_jobs = 4                        # pg_dump -Fd / pg_restore jobs, mydumper / myloader threads (default: CPUs, ≤ 4)
//!
//! [[branch_server]]
//! type = "postgres"                    # or "mysql"
//! url = "postgres://brancher:pw@10.0.0.9:5432/postgres"   # as targets reach it
//!
//! [[mariadb_backup]]                  # MariaDB: branches as reflinked datadirs
//! server = "127.0.0.1:3306"            # the source, host:port as targets name it
//! workdir = "/srv/remora-branches"     # on XFS (reflink=1) or Btrfs
//!
//! [[branch_pod]]                      # Kubernetes: a pod per branch
//! type = "postgres"                    # or "mysql"
//! image = "postgres:15"                # must run the source's series
//! always = false                       # true: even where the source's server could hold it
//! # command = ["sh", "-c", "…"]        # instead of the image's entrypoint
//! # port = 5432, memory = "512Mi", cpu = "500m"
//!
//! [[read_only_role]]
//! type = "postgres"
//! server = "10.0.0.5:5432"             # the source, host:port as targets name it
//! user = "remora_reader"
//! password_env = "REMORA_READER_PASSWORD"   # or password = "…"
//! ```

use super::source::{Server, parse_url};
use crate::error::{Error, Result};
use remora_protocol::db::DbKind;
use serde::Deserialize;
use std::path::Path;

/// Where branches go when the source's server will not take them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchServer {
    pub server: Server,
}

/// Credentials the operator reads one source server with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOnlyRole {
    pub kind: DbKind,
    /// `host:port` of the source, as the target names it.
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
}

/// The MariaDB fast path for one source server (see [`super::instance`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MariadbBackup {
    /// `host:port` of the source, as the target names it.
    pub host: String,
    pub port: u16,
    /// On a filesystem with reflinks: golden copies and branch datadirs.
    pub workdir: std::path::PathBuf,
}

/// Kubernetes: branches in a pod of their own, made from an image (see
/// [`super::pods`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchPod {
    pub kind: DbKind,
    /// The image; it must run the source's series (checked as a branch
    /// server's version is).
    pub image: String,
    /// Instead of the image's entrypoint (the test cluster pulls no image).
    pub command: Option<Vec<String>>,
    /// The server's port in the pod (and the Service's).
    pub port: u16,
    /// Every branch of this kind gets a pod, even where the source's server
    /// could hold it; otherwise only where neither it nor a branch server can.
    pub always: bool,
    /// The container's memory and CPU limits (Kubernetes quantities).
    pub memory: Option<String>,
    pub cpu: Option<String>,
}

/// Everything `--db-config` configures; empty by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbSettings {
    pub branch_servers: Vec<BranchServer>,
    pub branch_pods: Vec<BranchPod>,
    pub read_only_roles: Vec<ReadOnlyRole>,
    pub mariadb_backups: Vec<MariadbBackup>,
    /// Parallel jobs of `pg_dump -Fd` and `pg_restore`, threads (each a
    /// connection) of `mydumper` and `myloader` (`dump_jobs`; default: the
    /// machine's CPUs, at most [`MAX_DEFAULT_JOBS`]).
    pub jobs: usize,
}

/// The default number of dump and restore jobs is at most this.
pub const MAX_DEFAULT_JOBS: usize = 4;

impl Default for DbSettings {
    fn default() -> DbSettings {
        DbSettings {
            branch_servers: Vec::new(),
            branch_pods: Vec::new(),
            read_only_roles: Vec::new(),
            mariadb_backups: Vec::new(),
            jobs: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .clamp(1, MAX_DEFAULT_JOBS),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum KindFile {
    Postgres,
    Mysql,
}

impl From<KindFile> for DbKind {
    fn from(k: KindFile) -> DbKind {
        match k {
            KindFile::Postgres => DbKind::Postgres,
            KindFile::Mysql => DbKind::Mysql,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BranchServerFile {
    #[serde(rename = "type")]
    kind: KindFile,
    url: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadOnlyRoleFile {
    #[serde(rename = "type")]
    kind: KindFile,
    server: String,
    user: String,
    password: Option<String>,
    password_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BranchPodFile {
    #[serde(rename = "type")]
    kind: KindFile,
    image: String,
    command: Option<Vec<String>>,
    port: Option<u16>,
    #[serde(default)]
    always: bool,
    memory: Option<String>,
    cpu: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MariadbBackupFile {
    server: String,
    workdir: std::path::PathBuf,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SettingsFile {
    #[serde(default)]
    mariadb_backup: Vec<MariadbBackupFile>,
    dump_jobs: Option<usize>,
    #[serde(default)]
    branch_server: Vec<BranchServerFile>,
    #[serde(default)]
    branch_pod: Vec<BranchPodFile>,
    #[serde(default)]
    read_only_role: Vec<ReadOnlyRoleFile>,
}

fn default_port(kind: DbKind) -> u16 {
    match kind {
        DbKind::Postgres => 5432,
        DbKind::Mysql => 3306,
    }
}

/// `host:port` (or `host`, with the kind's default port).
fn host_port(text: &str, kind: DbKind, what: &str) -> Result<(String, u16), String> {
    match text.rsplit_once(':') {
        Some((h, p)) => Ok((
            h.trim_matches(['[', ']']).to_owned(),
            p.parse::<u16>()
                .map_err(|_| format!("{what}: {p:?} is not a port"))?,
        )),
        None => Ok((text.to_owned(), default_port(kind))),
    }
}

impl DbSettings {
    /// Read `path`, or nothing when there is none.
    ///
    /// # Errors
    /// [`Error::DbConfig`] naming the file and what is wrong.
    pub fn load(path: Option<&Path>) -> Result<DbSettings> {
        let Some(path) = path else {
            return Ok(DbSettings::default());
        };
        let fail = |reason: String| Error::DbConfig {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        Self::parse(&text, |var| std::env::var(var).ok()).map_err(fail)
    }

    /// Parse the file's text; `env` looks up `password_env` variables.
    ///
    /// # Errors
    /// What is wrong, for the user.
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<DbSettings, String> {
        let file: SettingsFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut settings = DbSettings::default();
        match file.dump_jobs {
            Some(0) => return Err("dump_jobs must be at least 1".into()),
            Some(n) => settings.jobs = n,
            None => {}
        }
        for (i, b) in file.branch_server.into_iter().enumerate() {
            let kind = DbKind::from(b.kind);
            let url =
                parse_url(&b.url).map_err(|why| format!("branch_server #{}: {why}", i + 1))?;
            settings.branch_servers.push(BranchServer {
                server: Server {
                    kind,
                    host: url.host,
                    port: url.port.unwrap_or(default_port(kind)),
                    user: url.user.ok_or_else(|| {
                        format!("branch_server #{}: the URL names no user", i + 1)
                    })?,
                    password: url.password,
                },
            });
        }
        for (i, p) in file.branch_pod.into_iter().enumerate() {
            let kind = DbKind::from(p.kind);
            if p.image.trim().is_empty() {
                return Err(format!("branch_pod #{}: image is empty", i + 1));
            }
            if p.command.as_ref().is_some_and(Vec::is_empty) {
                return Err(format!("branch_pod #{}: command is empty", i + 1));
            }
            if settings.branch_pods.iter().any(|b| b.kind == kind) {
                return Err(format!(
                    "branch_pod #{}: a second branch_pod of the same type",
                    i + 1
                ));
            }
            settings.branch_pods.push(BranchPod {
                kind,
                image: p.image,
                command: p.command,
                port: p.port.unwrap_or(default_port(kind)),
                always: p.always,
                memory: p.memory,
                cpu: p.cpu,
            });
        }
        for (i, m) in file.mariadb_backup.into_iter().enumerate() {
            let what = format!("mariadb_backup #{}", i + 1);
            let (host, port) = host_port(&m.server, DbKind::Mysql, &what)?;
            if !m.workdir.is_absolute() {
                return Err(format!("{what}: workdir must be an absolute path"));
            }
            settings.mariadb_backups.push(MariadbBackup {
                host,
                port,
                workdir: m.workdir,
            });
        }
        for (i, r) in file.read_only_role.into_iter().enumerate() {
            let kind = DbKind::from(r.kind);
            let (host, port) = host_port(&r.server, kind, &format!("read_only_role #{}", i + 1))?;
            let password = match (r.password, r.password_env) {
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "read_only_role #{}: set password or password_env, not both",
                        i + 1
                    ));
                }
                (Some(p), None) => Some(p),
                (None, Some(var)) => Some(env(&var).ok_or_else(|| {
                    format!(
                        "read_only_role #{}: the operator's environment has no {var}",
                        i + 1
                    )
                })?),
                (None, None) => None,
            };
            settings.read_only_roles.push(ReadOnlyRole {
                kind,
                host,
                port,
                user: r.user,
                password,
            });
        }
        Ok(settings)
    }

    /// The branch server for sources of `kind`, if one is configured.
    pub fn branch_server(&self, kind: DbKind) -> Option<&Server> {
        self.branch_servers
            .iter()
            .map(|b| &b.server)
            .find(|s| s.kind == kind)
    }

    /// The branch pod settings for sources of `kind`, if configured.
    pub fn branch_pod(&self, kind: DbKind) -> Option<&BranchPod> {
        self.branch_pods.iter().find(|p| p.kind == kind)
    }

    /// The MariaDB fast path configured for `source`, if any.
    pub fn mariadb_backup(&self, source: &Server) -> Option<&MariadbBackup> {
        (source.kind == DbKind::Mysql)
            .then(|| {
                self.mariadb_backups
                    .iter()
                    .find(|m| m.host == source.host && m.port == source.port)
            })
            .flatten()
    }

    /// The server `source` is read through: with a read-only role
    /// configured for it, its credentials; else the source's own.
    pub fn reader(&self, source: &Server) -> Server {
        match self
            .read_only_roles
            .iter()
            .find(|r| r.kind == source.kind && r.host == source.host && r.port == source.port)
        {
            Some(role) => Server {
                user: role.user.clone(),
                password: role.password.clone(),
                ..source.clone()
            },
            None => source.clone(),
        }
    }
}
