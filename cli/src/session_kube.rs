//! `remora session ls|kill --kubernetes`: the sessions of the operators of a
//! cluster, read from (ls) or deleted as (kill) their RemoraSession objects;
//! the operator ends a session whose object is deleted.

use crate::args::SessionKubeArgs;
use crate::error::{Error, Result};
use remora_operator_kube::crd::{RemoraSession, SubscriptionMode};
use remora_operator_kube::session_objects;
use std::time::SystemTime;

/// `remora session ls --kubernetes [-n N | -A] [--json]`.
///
/// # Errors
/// The cluster cannot be reached or refuses the list.
pub fn ls(kube: &SessionKubeArgs, all_namespaces: bool, json: bool) -> Result<i32> {
    let sessions = block_on(async {
        let client = connect(kube).await?;
        let namespace = (!all_namespaces).then_some(client.namespace.as_str());
        session_objects::list(client.client.clone(), namespace)
            .await
            .map_err(|e| failed("listing RemoraSession objects", &e))
    })?;
    if json {
        println!("{}", to_json(&sessions));
    } else {
        print!("{}", table(&sessions, SystemTime::now()));
    }
    Ok(0)
}

/// `remora session kill ID --kubernetes [-n N]`.
///
/// # Errors
/// No such session, or the cluster refuses the delete.
pub fn kill(kube: &SessionKubeArgs, id: &str) -> Result<i32> {
    let id = id.trim().trim_start_matches("0x");
    block_on(async {
        let client = connect(kube).await?;
        let namespace = client.namespace.clone();
        match session_objects::delete(client.client.clone(), &namespace, id).await {
            Ok(true) => {
                println!("session {id} killed (RemoraSession {namespace}/{id} deleted)");
                Ok(0)
            }
            Ok(false) => Err(Error::Io(format!(
                "no RemoraSession {id} in namespace {namespace} (see `remora session ls \
                 --kubernetes -A`, and pass -n NAMESPACE)"
            ))),
            Err(e) => Err(failed(
                &format!("deleting RemoraSession {namespace}/{id}"),
                &e,
            )),
        }
    })
}

fn block_on<T>(future: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Io(format!("cannot start the async runtime: {e}")))?
        .block_on(future)
}

async fn connect(kube: &SessionKubeArgs) -> Result<remora_kube::KubeClient> {
    let options = remora_kube::ClientOptions {
        kubeconfig: kube.kubeconfig.clone(),
        context: None,
        namespace: kube.namespace.clone(),
    };
    remora_kube::KubeClient::connect(&options)
        .await
        .map_err(|e| Error::Io(e.to_string()))
}

fn failed(action: &str, e: &kube::Error) -> Error {
    let hint = match e {
        kube::Error::Api(status) if status.code == 403 => {
            " (ask for RBAC access to remorasessions.remora.dev)"
        }
        kube::Error::Api(status) if status.code == 404 => {
            " (are the CRDs installed? `remora operator manifests`)"
        }
        _ => "",
    };
    Error::Io(format!("{action}: {e}{hint}"))
}

fn mode(mode: SubscriptionMode) -> &'static str {
    match mode {
        SubscriptionMode::Steal => "steal",
        SubscriptionMode::Mirror => "mirror",
    }
}

fn started_secs(s: &RemoraSession) -> Option<u64> {
    let at: k8s_openapi::jiff::Timestamp = s.spec.started_at.parse().ok()?;
    u64::try_from(at.as_second()).ok()
}

/// The same keys as `remora session ls --json` against an operator, plus
/// `namespace` and `identity`.
pub fn to_json(sessions: &[RemoraSession]) -> serde_json::Value {
    sessions
        .iter()
        .map(|s| {
            let subs = s
                .status
                .as_ref()
                .map(|st| st.subscriptions.as_slice())
                .unwrap_or_default();
            serde_json::json!({
                "id": s.spec.id,
                "namespace": s.metadata.namespace,
                "user": s.spec.user,
                "identity": s.spec.identity,
                "target": s.spec.target,
                "ports": subs.iter().map(|p| p.port).collect::<Vec<_>>(),
                "filters": subs.iter().filter_map(|p| p.filter.clone()).collect::<Vec<_>>(),
                "subscriptions": subs.iter().map(|p| serde_json::json!({
                    "port": p.port,
                    "mode": mode(p.mode),
                    "filter": p.filter,
                })).collect::<Vec<_>>(),
                "started_at": started_secs(s),
            })
        })
        .collect()
}

/// The table: the operator mode's columns, plus the namespace.
pub fn table(sessions: &[RemoraSession], now: SystemTime) -> String {
    let now_secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut rows = vec![
        [
            "NAMESPACE",
            "ID",
            "USER",
            "TARGET",
            "PORTS",
            "FILTERS",
            "AGE",
        ]
        .map(str::to_owned),
    ];
    for s in sessions {
        let subs = s
            .status
            .as_ref()
            .map(|st| st.subscriptions.as_slice())
            .unwrap_or_default();
        let dash = |v: Vec<String>| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.join(", ")
            }
        };
        let age = started_secs(s).map_or_else(
            || "?".to_owned(),
            |at| {
                remora_operator::registry::format_age(std::time::Duration::from_secs(
                    now_secs.saturating_sub(at),
                ))
            },
        );
        rows.push([
            s.metadata.namespace.clone().unwrap_or_default(),
            s.spec.id.clone(),
            s.spec.user.clone(),
            s.spec.target.clone(),
            dash(
                subs.iter()
                    .map(|p| format!("{} ({})", p.port, mode(p.mode)))
                    .collect(),
            ),
            dash(subs.iter().filter_map(|p| p.filter.clone()).collect()),
            age,
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
