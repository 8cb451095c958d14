//! `remora session ls|kill --operator ADDR`: a control connection to the
//! operator (a `Hello` without a target), one request, one answer.

use crate::args::SessionCommand;
use crate::error::{Error, Result};
use crate::intproxy_cmd::identity;
use crate::session::operator_token;
use remora_protocol::codec;
use remora_protocol::incoming::{HttpFilter, IncomingMode};
use remora_protocol::session::{SessionInfo, SessionReply, SessionRequest};
use remora_protocol::{
    Capabilities, ClientMessage, Hello, HelloReply, PROTOCOL_VERSION, Request, RequestId, Response,
    ServerMessage, SessionId, SessionToken,
};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, SystemTime};

/// How long the operator may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(command: SessionCommand) -> Result<i32> {
    match command {
        SessionCommand::Ls {
            kube,
            json,
            all_namespaces,
            ..
        } if kube.kubernetes => crate::session_kube::ls(&kube, all_namespaces, json),
        SessionCommand::Kill { id, kube, .. } if kube.kubernetes => {
            crate::session_kube::kill(&kube, &id)
        }
        SessionCommand::Ls { operator, json, .. } => {
            let operator = operator.unwrap_or_default();
            let sessions = match ask(&operator, SessionRequest::List)? {
                SessionReply::Sessions(sessions) => sessions,
                other => return Err(unexpected(&operator, &other)),
            };
            if json {
                println!("{}", to_json(&sessions));
            } else {
                print!("{}", table(&sessions, SystemTime::now()));
            }
            Ok(0)
        }
        SessionCommand::Kill { id, operator, .. } => {
            let operator = operator.unwrap_or_default();
            let id = parse_id(&id)?;
            match ask(&operator, SessionRequest::Kill { id })? {
                SessionReply::Killed => {
                    println!("session {id} killed");
                    Ok(0)
                }
                other => Err(unexpected(&operator, &other)),
            }
        }
    }
}

fn unexpected(operator: &str, reply: &SessionReply) -> Error {
    Error::OperatorSession {
        operator: operator.into(),
        reason: format!("unexpected reply {reply:?}"),
    }
}

/// Session ids are shown in hex, as `remora session ls` prints them.
fn parse_id(id: &str) -> Result<SessionId> {
    u64::from_str_radix(id.trim().trim_start_matches("0x"), 16)
        .map(SessionId)
        .map_err(|_| {
            Error::Io(format!(
                "{id:?} is not a session id (use an ID column value of `remora session ls`)"
            ))
        })
}

fn ask(operator: &str, request: SessionRequest) -> Result<SessionReply> {
    match ask_operator(operator, Request::Session(request))? {
        Response::Session(reply) => Ok(reply),
        other => Err(Error::OperatorSession {
            operator: operator.into(),
            reason: format!("unexpected reply {other:?}"),
        }),
    }
}

/// One request on a control connection to `operator`, one answer.
///
/// # Errors
/// [`Error::OperatorSession`] with the operator's reason.
pub(crate) fn ask_operator(operator: &str, request: Request) -> Result<Response> {
    ask_operator_within(operator, request, TIMEOUT)
}

/// [`ask_operator`], waiting up to `wait` for the answer.
///
/// # Errors
/// As [`ask_operator`].
pub(crate) fn ask_operator_within(
    operator: &str,
    request: Request,
    wait: Duration,
) -> Result<Response> {
    ask_operator_over(operator, None, request, wait)
}

/// [`ask_operator_within`]; an operator in the cluster (`kube...`) is
/// reached with `kube` (kubeconfig, context), default: KUBECONFIG.
///
/// # Errors
/// As [`ask_operator`].
pub(crate) fn ask_operator_over(
    operator: &str,
    kube: Option<remora_kube::ClientOptions>,
    request: Request,
    wait: Duration,
) -> Result<Response> {
    let failed = |reason: String| Error::OperatorSession {
        operator: operator.into(),
        reason,
    };
    let (addr, token) =
        match crate::kube_operator::OperatorLaunch::from_value(operator, kube.unwrap_or_default())?
        {
            // Through the API server, as the kubeconfig's user.
            Some(mut launch) => {
                let token = launch.token()?;
                (launch.relay_in_background()?, token)
            }
            None => (
                operator
                    .to_socket_addrs()
                    .map_err(|e| failed(format!("cannot resolve it: {e}")))?
                    .next()
                    .ok_or_else(|| failed("the name resolves to no address".into()))?,
                operator_token()?,
            ),
        };
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .map_err(|e| failed(format!("cannot connect: {e} (is remora-operator running?)")))?;
    stream.set_read_timeout(Some(wait)).ok();
    let hello = Hello {
        version: PROTOCOL_VERSION,
        capabilities: Capabilities::SESSIONS
            | Capabilities::DB_BRANCHES
            | Capabilities::QUEUE_SPLITS,
        token: SessionToken(token),
        client: identity("remora session"),
        target: None,
    };
    codec::write_frame(&mut stream, &hello).map_err(|e| failed(e.to_string()))?;
    match codec::read_frame::<_, HelloReply>(&mut stream).map_err(|e| failed(e.to_string()))? {
        HelloReply::Accepted { .. } => {}
        HelloReply::Rejected { reason, .. } => return Err(failed(reason)),
    }
    let id = RequestId(1);
    let message = ClientMessage::Request { id, request };
    codec::write_frame(&mut stream, &message).map_err(|e| failed(e.to_string()))?;
    loop {
        match codec::read_frame::<_, ServerMessage>(&mut stream)
            .map_err(|e| failed(e.to_string()))?
        {
            ServerMessage::Response { id: got, result } if got == id => {
                let _ = codec::write_frame(&mut stream, &ClientMessage::Bye);
                return result.map_err(|e| failed(e.message));
            }
            ServerMessage::Closing { reason } => return Err(failed(reason)),
            _ => {}
        }
    }
}

/// A filter as one line of text (`header:^x-user: alice$`).
pub(crate) fn filter_text(filter: &HttpFilter) -> String {
    match filter {
        HttpFilter::Header(p) => format!("header:{p}"),
        HttpFilter::Path(p) => format!("path:{p}"),
        HttpFilter::Method(m) => format!("method:{m}"),
        HttpFilter::AllOf(list) | HttpFilter::AnyOf(list) => {
            let kind = if matches!(filter, HttpFilter::AllOf(_)) {
                "all_of"
            } else {
                "any_of"
            };
            let parts: Vec<String> = list.iter().map(filter_text).collect();
            format!("{kind}({})", parts.join(", "))
        }
    }
}

fn mode_text(mode: IncomingMode) -> &'static str {
    match mode {
        IncomingMode::Steal => "steal",
        IncomingMode::Mirror => "mirror",
    }
}

/// The JSON array `session ls --json` prints.
pub fn to_json(sessions: &[SessionInfo]) -> serde_json::Value {
    sessions
        .iter()
        .map(|s| {
            serde_json::json!({
                "id": s.id.to_string(),
                "user": s.user,
                "target": s.target,
                "ports": s.subscriptions.iter().map(|p| p.port.0).collect::<Vec<_>>(),
                "filters": s.subscriptions.iter()
                    .filter_map(|p| p.filter.as_ref().map(filter_text))
                    .collect::<Vec<_>>(),
                "subscriptions": s.subscriptions.iter().map(|p| serde_json::json!({
                    "port": p.port.0,
                    "mode": mode_text(p.mode),
                    "filter": p.filter.as_ref().map(filter_text),
                })).collect::<Vec<_>>(),
                "started_at": s.started_at,
            })
        })
        .collect()
}

/// The table `session ls` prints.
pub fn table(sessions: &[SessionInfo], now: SystemTime) -> String {
    let mut rows = vec![[
        "ID".to_owned(),
        "USER".to_owned(),
        "TARGET".to_owned(),
        "PORTS".to_owned(),
        "FILTERS".to_owned(),
        "AGE".to_owned(),
    ]];
    for s in sessions {
        let now_secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let age = remora_operator::registry::format_age(Duration::from_secs(
            now_secs.saturating_sub(s.started_at),
        ));
        let ports: Vec<String> = s
            .subscriptions
            .iter()
            .map(|p| format!("{} ({})", p.port.0, mode_text(p.mode)))
            .collect();
        let filters: Vec<String> = s
            .subscriptions
            .iter()
            .filter_map(|p| p.filter.as_ref().map(filter_text))
            .collect();
        let dash = |v: Vec<String>| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.join(", ")
            }
        };
        rows.push([
            s.id.to_string(),
            s.user.clone(),
            s.target.clone(),
            dash(ports),
            dash(filters),
            age,
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use remora_protocol::incoming::RemotePort;
    use remora_protocol::session::PortSubscription;

    fn alice() -> SessionInfo {
        SessionInfo {
            id: SessionId(0x7f3a),
            user: "alice@laptop".into(),
            target: "pid/4242".into(),
            subscriptions: vec![PortSubscription {
                port: RemotePort(8080),
                mode: IncomingMode::Steal,
                filter: Some(HttpFilter::Header("^x-user: alice$".into())),
            }],
            started_at: 1000,
        }
    }

    #[test]
    fn json_has_the_documented_fields() {
        let json = to_json(&[alice()]);
        let s = &json[0];
        assert_eq!(s["id"], "7f3a");
        assert_eq!(s["user"], "alice@laptop");
        assert_eq!(s["target"], "pid/4242");
        assert_eq!(s["ports"], serde_json::json!([8080]));
        assert_eq!(s["filters"], serde_json::json!(["header:^x-user: alice$"]));
        assert_eq!(s["started_at"], 1000);
    }

    #[test]
    fn table_lists_each_session_with_its_age() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000 + 245);
        let text = table(&[alice()], now);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ID"), "{text}");
        assert!(
            lines[1].contains("7f3a")
                && lines[1].contains("8080 (steal)")
                && lines[1].contains("header:^x-user: alice$")
                && lines[1].ends_with("4 min"),
            "{text}"
        );
    }

    #[test]
    fn ids_parse_as_shown() {
        assert_eq!(parse_id("7f3a").unwrap(), SessionId(0x7f3a));
        assert!(parse_id("zz").is_err());
    }
}
