//! `[[db_branches]]`: private copies of the target's databases, made by the
//! operator when a session starts (see `docs/db-branches.md`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::Issues;

/// The server family of a branched database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DbType {
    /// PostgreSQL.
    #[default]
    Postgres,
    /// MariaDB or MySQL.
    Mysql,
}

/// How much of the source a branch gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CopyMode {
    /// An empty database.
    Empty,
    /// The schema only (`pg_dump --schema-only`, `mariadb-dump --no-data`),
    /// plus the filtered rows of tables with a filter.
    #[default]
    Schema,
    /// Schema and every row (filtered tables: their filtered rows only).
    All,
}

/// A value read from the target's environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FromEnv {
    /// The name of the target's variable.
    pub env: String,
}

/// Connection settings, one variable per setting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DbParams {
    /// Host name or address, as the target reaches it.
    pub host: Option<FromEnv>,
    /// Port.
    pub port: Option<FromEnv>,
    /// User name.
    pub user: Option<FromEnv>,
    /// Password.
    pub password: Option<FromEnv>,
    /// Database name: rewritten to the branch's in the local process.
    pub database: Option<FromEnv>,
}

/// Where the connection settings are in the target's environment: `url` or `params`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DbConnectionConfig {
    /// A variable holding a URL (`postgres://user:pw@host:5432/shop`,
    /// `mysql://root@host:3306/shop`); rewritten to the branch's URL.
    pub url: Option<FromEnv>,
    /// One variable per setting.
    pub params: Option<DbParams>,
}

/// Per-table copy settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TableCopy {
    /// SQL appended to `SELECT * FROM table`, e.g. `WHERE org_id = 7`: only
    /// these rows are copied, whatever the mode.
    pub filter: Option<String>,
}

/// What a branch is filled with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CopyConfig {
    /// `empty`, `schema` (default) or `all`.
    pub mode: CopyMode,
    /// Table name → copy settings.
    pub tables: BTreeMap<String, TableCopy>,
}

/// One database to branch when the session starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DbBranchConfig {
    /// `postgres` or `mysql` (MariaDB and MySQL).
    #[serde(rename = "type")]
    pub kind: DbType,
    /// The source database's name (used in the branch's name and listings).
    pub name: String,
    /// Where the connection settings are in the target's environment.
    pub connection: DbConnectionConfig,
    /// What the branch is filled with.
    pub copy: CopyConfig,
    /// How long the branch lives (`90s`, `30m`, `2h`, `1d`). Default `30m`.
    pub ttl: Option<String>,
    /// Reuse the live branch with this id instead of making a new one.
    pub id: Option<String>,
}

/// Default branch lifetime.
pub const DEFAULT_TTL_SECS: u64 = 30 * 60;

/// `90s`, `30m`, `2h`, `1d` or plain seconds.
///
/// # Errors
/// A message saying what is expected.
pub fn parse_ttl(text: &str) -> std::result::Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits.parse().map_err(|_| {
        format!("invalid duration {text:?} (expected e.g. \"90s\", \"30m\", \"2h\", \"1d\")")
    })?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => {
            return Err(format!(
                "invalid duration unit in {text:?} (use s, m, h or d)"
            ));
        }
    };
    match n.checked_mul(factor) {
        Some(0) => Err("a ttl of 0 would drop the branch at once".into()),
        Some(secs) => Ok(secs),
        None => Err(format!("duration {text:?} is too long")),
    }
}

fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl DbBranchConfig {
    /// The branch's lifetime in seconds (validated by [`check`]).
    pub fn ttl_secs(&self) -> u64 {
        self.ttl
            .as_deref()
            .and_then(|t| parse_ttl(t).ok())
            .unwrap_or(DEFAULT_TTL_SECS)
    }
}

/// Check every `[[db_branches]]` entry.
pub(crate) fn check(branches: &[DbBranchConfig], issues: &mut Issues) {
    let mut ids = BTreeMap::new();
    for (i, branch) in branches.iter().enumerate() {
        let key = |field: &str| format!("db_branches[{i}].{field}");
        if !is_identifier(&branch.name) {
            issues.push(
                key("name"),
                format!(
                    "invalid database name {:?}: use 1-40 letters, digits, '_' or '-'",
                    branch.name
                ),
            );
        }
        if let Some(id) = &branch.id {
            if !is_identifier(id) {
                issues.push(
                    key("id"),
                    format!("invalid id {id:?}: use 1-40 letters, digits, '_' or '-'"),
                );
            } else if let Some(first) = ids.insert(id.clone(), i) {
                issues.push(
                    key("id"),
                    format!("id {id:?} is already used by db_branches[{first}]"),
                );
            }
        }
        if let Some(ttl) = &branch.ttl
            && let Err(why) = parse_ttl(ttl)
        {
            issues.push(key("ttl"), why);
        }
        let conn = &branch.connection;
        let mut names = Vec::new();
        match (&conn.url, &conn.params) {
            (Some(url), None) => names.push(("connection.url.env".to_owned(), &url.env)),
            (None, Some(params)) => {
                if params.database.is_none() {
                    issues.push(
                        key("connection.params.database"),
                        "params need a database variable: it is the one rewritten to the branch",
                    );
                }
                for (field, value) in [
                    ("host", &params.host),
                    ("port", &params.port),
                    ("user", &params.user),
                    ("password", &params.password),
                    ("database", &params.database),
                ] {
                    if let Some(v) = value {
                        names.push((format!("connection.params.{field}.env"), &v.env));
                    }
                }
            }
            _ => issues.push(
                key("connection"),
                "set exactly one of `url = { env = \"DATABASE_URL\" }` or `params = { ... }`",
            ),
        }
        for (field, name) in names {
            if !is_env_name(name) {
                issues.push(key(&field), format!("invalid variable name {name:?}"));
            }
        }
        for (table, copy) in &branch.copy.tables {
            let tkey = key(&format!("copy.tables.{table}"));
            if !table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
                || table.is_empty()
            {
                issues.push(&tkey, format!("invalid table name {table:?}"));
            }
            if let Some(filter) = &copy.filter {
                if branch.copy.mode == CopyMode::Empty {
                    issues.push(
                        format!("{tkey}.filter"),
                        "a filter copies rows, but copy.mode is \"empty\" (use \"schema\" or \"all\")",
                    );
                }
                if filter.contains(';') {
                    issues.push(
                        format!("{tkey}.filter"),
                        "a filter is one SQL condition (`WHERE ...`), without ';'",
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
