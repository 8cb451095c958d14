use super::*;
use remora_protocol::incoming::RemotePort;
use remora_protocol::session::{PortSubscription, SessionInfo};

fn record() -> SessionRecord {
    SessionRecord {
        info: SessionInfo {
            id: SessionId(0x7f3a),
            user: "Alice".into(),
            target: "deployment/api".into(),
            subscriptions: vec![
                PortSubscription {
                    port: RemotePort(8080),
                    mode: IncomingMode::Steal,
                    filter: Some(HttpFilter::AllOf(vec![
                        HttpFilter::Header("^x-user: alice$".into()),
                        HttpFilter::Path("^/api".into()),
                    ])),
                },
                PortSubscription {
                    port: RemotePort(9090),
                    mode: IncomingMode::Mirror,
                    filter: None,
                },
            ],
            started_at: 1_796_392_800,
        },
        identity: Some("system:serviceaccount:shop:alice".into()),
    }
}

#[test]
fn a_session_becomes_its_object() {
    let object = serde_json::to_value(session_object(&record(), "shop")).unwrap();
    assert_eq!(
        object,
        serde_json::json!({
            "apiVersion": "remora.dev/v1alpha1",
            "kind": "RemoraSession",
            "metadata": {
                "name": "7f3a",
                "namespace": "shop",
                "labels": {"app.kubernetes.io/managed-by": "remora-operator"}
            },
            "spec": {
                "id": "7f3a",
                "user": "Alice",
                "identity": "system:serviceaccount:shop:alice",
                "target": "deployment/api",
                "startedAt": "2026-12-04T14:00:00Z"
            },
            "status": {
                "subscriptions": [
                    {"port": 8080, "mode": "steal", "filter": "all_of(header:^x-user: alice$, path:^/api)"},
                    {"port": 9090, "mode": "mirror"}
                ],
                "ports": "8080 steal (filtered), 9090 mirror"
            }
        })
    );
}

#[test]
fn object_names_are_the_ids_session_ls_prints() {
    assert_eq!(object_name(SessionId(0x7f3a)), "7f3a");
    assert_eq!(object_name(SessionId(10)), "a");
}
