//! Database branches on the CLI side: the `[[db_branches]]` of a session
//! asked from the operator when the session starts, and `remora db
//! ls|rm|url`.

use crate::args::DbCommand;
use crate::error::{Error, Result};
use crate::session_cmd::ask_operator;
use remora_config::{Config, CopyMode as ConfigMode, DbType};
use remora_protocol::codec;
use remora_protocol::db::{
    BranchInfo, BranchSpec, CopyMode, DbConnection, DbKind, DbReply, DbRequest,
};
use remora_protocol::messages::{LayerMessage, LayerRequest, LayerResponse, ProxyMessage};
use remora_protocol::{Request, RequestId, Response};
use std::collections::BTreeMap;
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn run(command: DbCommand) -> Result<i32> {
    match command {
        DbCommand::Ls { operator, json } => {
            let branches = match ask(&operator, DbRequest::List)? {
                DbReply::Branches(b) => b,
                other => return Err(unexpected(&operator, &other)),
            };
            if json {
                println!("{}", to_json(&branches));
            } else {
                print!("{}", table(&branches));
            }
            Ok(0)
        }
        DbCommand::Rm { id, operator } => {
            match ask(&operator, DbRequest::Remove { id: id.clone() })? {
                DbReply::Removed => {
                    println!("db branch {id} dropped");
                    Ok(0)
                }
                other => Err(unexpected(&operator, &other)),
            }
        }
        DbCommand::Url { id, operator } => match ask(&operator, DbRequest::Url { id })? {
            DbReply::Url(url) => {
                println!("{url}");
                Ok(0)
            }
            other => Err(unexpected(&operator, &other)),
        },
    }
}

fn ask(operator: &str, request: DbRequest) -> Result<DbReply> {
    match ask_operator(operator, Request::Db(request))? {
        Response::Db(reply) => Ok(reply),
        other => Err(Error::OperatorSession {
            operator: operator.into(),
            reason: format!("unexpected reply {other:?}"),
        }),
    }
}

fn unexpected(operator: &str, reply: &DbReply) -> Error {
    Error::OperatorSession {
        operator: operator.into(),
        reason: format!("unexpected reply {reply:?}"),
    }
}

fn kind_text(kind: DbKind) -> &'static str {
    match kind {
        DbKind::Postgres => "postgres",
        DbKind::Mysql => "mysql",
    }
}

fn mode_text(mode: CopyMode) -> &'static str {
    match mode {
        CopyMode::Empty => "empty",
        CopyMode::Schema => "schema",
        CopyMode::All => "all",
    }
}

/// `remora db ls --json`: one object per branch.
pub fn to_json(branches: &[BranchInfo]) -> serde_json::Value {
    serde_json::Value::Array(
        branches
            .iter()
            .map(|b| {
                serde_json::json!({
                    "id": b.id,
                    "type": kind_text(b.kind),
                    "source": b.source,
                    "branch": b.branch,
                    "mode": mode_text(b.mode),
                    "owner": b.owner,
                    "target": b.target,
                    "created": b.created_at,
                    "expires": b.expires_at,
                    "method": b.method,
                })
            })
            .collect(),
    )
}

/// `remora db ls`: a table, expiry as time left.
pub fn table(branches: &[BranchInfo]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut out = format!(
        "{:<20} {:<8} {:<12} {:<36} {:<6} {:<12} {:>8}\n",
        "ID", "TYPE", "SOURCE", "BRANCH", "MODE", "OWNER", "EXPIRES"
    );
    for b in branches {
        out.push_str(&format!(
            "{:<20} {:<8} {:<12} {:<36} {:<6} {:<12} {:>7}s\n",
            b.id,
            kind_text(b.kind),
            b.source,
            b.branch,
            mode_text(b.mode),
            b.owner,
            b.expires_at.saturating_sub(now)
        ));
    }
    out
}

/// Sends `request` to the operator over the session's lifeline (the layer
/// link of the intproxy), waiting up to `wait`; the operator's log lines
/// on the way are printed.
///
/// # Errors
/// The operator's reason, or a broken link.
pub fn ask_over_lifeline(
    stream: &mut TcpStream,
    request: Request,
    wait: Duration,
) -> std::result::Result<Response, String> {
    stream.set_read_timeout(Some(wait)).ok();
    let msg = LayerMessage::Request {
        id: RequestId(2),
        request: LayerRequest::Remote(request),
    };
    codec::write_frame(stream, &msg).map_err(|e| e.to_string())?;
    let reply = loop {
        match codec::read_frame::<_, ProxyMessage>(stream).map_err(|e| e.to_string())? {
            ProxyMessage::Response { result, .. } => break result.map_err(|e| e.message)?,
            ProxyMessage::Log { message, .. } => eprintln!("remora: {message}"),
        }
    };
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
    match reply {
        LayerResponse::Remote(response) => Ok(response),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

/// The config's `[[db_branches]]` as the operator wants them.
pub fn specs(config: &Config) -> Vec<BranchSpec> {
    config
        .db_branches
        .iter()
        .map(|b| {
            let env = |v: &Option<remora_config::FromEnv>| v.as_ref().map(|v| v.env.clone());
            let connection = match (&b.connection.url, &b.connection.params) {
                (Some(url), _) => DbConnection::Url {
                    env: url.env.clone(),
                },
                (None, params) => {
                    let p = params.clone().unwrap_or_default();
                    DbConnection::Params {
                        host: env(&p.host),
                        port: env(&p.port),
                        user: env(&p.user),
                        password: env(&p.password),
                        database: env(&p.database),
                    }
                }
            };
            BranchSpec {
                kind: match b.kind {
                    DbType::Postgres => DbKind::Postgres,
                    DbType::Mysql => DbKind::Mysql,
                },
                name: b.name.clone(),
                connection,
                mode: match b.copy.mode {
                    ConfigMode::Empty => CopyMode::Empty,
                    ConfigMode::Schema => CopyMode::Schema,
                    ConfigMode::All => CopyMode::All,
                },
                filters: b
                    .copy
                    .tables
                    .iter()
                    .filter_map(|(t, c)| Some((t.clone(), c.filter.clone()?)))
                    .collect(),
                ttl_secs: b.ttl_secs(),
                id: b.id.clone(),
            }
        })
        .collect()
}

/// Ask the operator (through the intproxy, over the CLI's own layer session
/// `stream`) for the branches; returns the variables to set and one line per
/// branch saying how it was made.
///
/// # Errors
/// The operator's reason (unknown variable, no right to create a database,
/// server unreachable...).
pub fn make_branches(
    stream: &mut TcpStream,
    specs: Vec<BranchSpec>,
) -> std::result::Result<(BTreeMap<String, String>, Vec<String>), String> {
    // Filling a big branch may take longer than the usual request timeout.
    let reply = ask_over_lifeline(
        stream,
        Request::Db(DbRequest::Branch(specs)),
        Duration::from_secs(3600),
    )?;
    match reply {
        Response::Db(DbReply::Branched { branches, env }) => {
            let notes = branches
                .iter()
                .map(|b| {
                    if b.reused {
                        format!(
                            "db branch {} ({}) reused: {}",
                            b.info.id, b.info.source, b.info.branch
                        )
                    } else {
                        format!(
                            "db branch {} of {} made in {} ms: {} ({}, {})",
                            b.info.id,
                            b.info.source,
                            b.millis,
                            b.info.branch,
                            mode_text(b.info.mode),
                            b.info.method
                        )
                    }
                })
                .collect();
            Ok((env, notes))
        }
        other => Err(format!("unexpected reply {other:?}")),
    }
}
