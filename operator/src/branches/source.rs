//! Where the source database is: connection settings read from the
//! target's environment, and the same settings rewritten to a branch.

use remora_protocol::db::{BranchSpec, DbConnection, DbKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A database server and the credentials to administer branches on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    pub kind: DbKind,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
}

/// The source as the target names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub server: Server,
    pub database: String,
    /// Which of the target's variables name the source, to point the
    /// session at the branch instead.
    pub rewrite: Rewrite,
}

/// The target's variables that say where the source is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    /// One URL variable: `before_db` (scheme and authority, up to the `/`),
    /// the database, then `after_db` (the query string).
    Url {
        var: String,
        scheme: String,
        before_db: String,
        after_db: String,
    },
    /// One variable per setting (`None`: the target does not set it).
    Params {
        host: Option<String>,
        port: Option<String>,
        user: Option<String>,
        password: Option<String>,
        database: String,
    },
}

fn default_port(kind: DbKind) -> u16 {
    match kind {
        DbKind::Postgres => 5432,
        DbKind::Mysql => 3306,
    }
}

fn default_user(kind: DbKind) -> &'static str {
    match kind {
        DbKind::Postgres => "postgres",
        DbKind::Mysql => "root",
    }
}

/// Read `spec`'s connection from the target's `env`.
///
/// # Errors
/// A user-facing reason naming the missing variable or the malformed URL.
pub fn resolve(spec: &BranchSpec, env: &BTreeMap<String, String>) -> Result<Source, String> {
    let get = |name: &str| {
        env.get(name).cloned().ok_or_else(|| {
            format!(
                "the target's environment has no {name} (db_branches {:?}: check the variable name)",
                spec.name
            )
        })
    };
    match &spec.connection {
        DbConnection::Url { env: var } => {
            let url = get(var)?;
            let parsed = parse_url(&url).map_err(|why| format!("{var}: {why}"))?;
            let port = parsed.port.unwrap_or(default_port(spec.kind));
            Ok(Source {
                server: Server {
                    kind: spec.kind,
                    host: parsed.host,
                    port,
                    user: parsed
                        .user
                        .unwrap_or_else(|| default_user(spec.kind).to_owned()),
                    password: parsed.password,
                },
                database: parsed.database,
                rewrite: Rewrite::Url {
                    var: var.clone(),
                    scheme: url[..url.find("://").unwrap_or(0)].to_owned(),
                    before_db: parsed.before_db,
                    after_db: parsed.after_db,
                },
            })
        }
        DbConnection::Params {
            host,
            port,
            user,
            password,
            database,
        } => {
            let opt = |name: &Option<String>| name.as_deref().map(get).transpose();
            let db_var = database
                .clone()
                .ok_or_else(|| "params need a database variable".to_owned())?;
            let port_var = port;
            let port_text = opt(port)?;
            let port = match port_text {
                Some(p) => p.parse().map_err(|_| {
                    format!("{}: {p:?} is not a port", port.as_deref().unwrap_or(""))
                })?,
                None => default_port(spec.kind),
            };
            Ok(Source {
                server: Server {
                    kind: spec.kind,
                    host: opt(host)?.unwrap_or_else(|| "127.0.0.1".to_owned()),
                    port,
                    user: opt(user)?.unwrap_or_else(|| default_user(spec.kind).to_owned()),
                    password: opt(password)?,
                },
                database: get(&db_var)?,
                rewrite: Rewrite::Params {
                    host: host.clone(),
                    port: port_var.clone(),
                    user: user.clone(),
                    password: password.clone(),
                    database: db_var,
                },
            })
        }
    }
}

/// The parts of a database URL remora needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedUrl {
    pub host: String,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub database: String,
    /// Everything up to and including the `/` before the database name.
    pub before_db: String,
    /// The query string, if any (with its `?`).
    pub after_db: String,
}

/// Parse `scheme://[user[:password]@]host[:port]/database[?query]`.
///
/// # Errors
/// What is missing.
pub fn parse_url(url: &str) -> Result<ParsedUrl, String> {
    let (_, rest) = url
        .split_once("://")
        .ok_or("not a URL (expected scheme://user@host:port/database)")?;
    let scheme_len = url.len() - rest.len();
    let slash = rest
        .find('/')
        .ok_or("the URL names no database (expected .../database)")?;
    let authority = &rest[..slash];
    let path = &rest[slash + 1..];
    let (database, query) = match path.find('?') {
        Some(q) => (&path[..q], &path[q..]),
        None => (path, ""),
    };
    if database.is_empty() {
        return Err("the URL names no database (expected .../database)".into());
    }
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((u, p)) => (Some(percent_decode(u)), Some(percent_decode(p))),
            None => (Some(percent_decode(u)), None),
        },
        None => (None, None),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || p.parse::<u16>().is_ok() => (
            h.trim_matches(['[', ']']).to_owned(),
            Some(
                p.parse::<u16>()
                    .map_err(|_| format!("{p:?} is not a port"))?,
            ),
        ),
        _ => (hostport.trim_matches(['[', ']']).to_owned(), None),
    };
    Ok(ParsedUrl {
        host: if host.is_empty() {
            "127.0.0.1".into()
        } else {
            host
        },
        port,
        user: user.filter(|u| !u.is_empty()),
        password,
        database: percent_decode(database),
        before_db: url[..scheme_len + slash + 1].to_owned(),
        after_db: query.to_owned(),
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
        {
            let hex = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
            out.push(hex(bytes[i + 1]) * 16 + hex(bytes[i + 2]));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The session's variables pointing at database `branch` on `at` (the
/// source's own server, or a branch server) instead of the source.
///
/// # Errors
/// `at` is another server and the target names it with params that leave
/// out a setting that differs (no host variable, say): the session could
/// not be pointed there.
pub fn rewritten(
    source: &Source,
    at: &Server,
    branch: &str,
) -> Result<BTreeMap<String, String>, String> {
    let same = at == &source.server;
    match &source.rewrite {
        Rewrite::Url {
            var,
            scheme,
            before_db,
            after_db,
        } => {
            let before = if same {
                before_db.clone()
            } else {
                let password = at
                    .password
                    .as_deref()
                    .map(|p| format!(":{}", percent_encode(p)))
                    .unwrap_or_default();
                let host = if at.host.contains(':') {
                    format!("[{}]", at.host)
                } else {
                    at.host.clone()
                };
                format!(
                    "{scheme}://{}{password}@{host}:{}/",
                    percent_encode(&at.user),
                    at.port
                )
            };
            Ok(BTreeMap::from([(
                var.clone(),
                format!("{before}{branch}{after_db}"),
            )]))
        }
        Rewrite::Params {
            host,
            port,
            user,
            password,
            database,
        } => {
            let mut vars = BTreeMap::from([(database.clone(), branch.to_owned())]);
            if same {
                return Ok(vars);
            }
            let mut set = |setting: &str,
                           var: &Option<String>,
                           differs: bool,
                           value: String|
             -> Result<(), String> {
                match var {
                    Some(var) => {
                        vars.insert(var.clone(), value);
                        Ok(())
                    }
                    None if differs => Err(format!(
                        "the branch server's {setting} differs from the source's, but the \
                         db_branches params name no {setting} variable to point the session at it \
                         (add `{setting} = {{ env = \"…\" }}`)"
                    )),
                    None => Ok(()),
                }
            };
            set("host", host, at.host != source.server.host, at.host.clone())?;
            set(
                "port",
                port,
                at.port != source.server.port,
                at.port.to_string(),
            )?;
            set("user", user, at.user != source.server.user, at.user.clone())?;
            set(
                "password",
                password,
                at.password != source.server.password,
                at.password.clone().unwrap_or_default(),
            )?;
            Ok(vars)
        }
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A URL for `database` on `server`.
pub fn url_for(server: &Server, database: &str) -> String {
    let scheme = match server.kind {
        DbKind::Postgres => "postgres",
        DbKind::Mysql => "mysql",
    };
    let password = server
        .password
        .as_deref()
        .map(|p| format!(":{}", percent_encode(p)))
        .unwrap_or_default();
    format!(
        "{scheme}://{}{password}@{}:{}/{database}",
        percent_encode(&server.user),
        server.host,
        server.port
    )
}
