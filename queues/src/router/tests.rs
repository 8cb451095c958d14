use super::*;

fn key(k: &str) -> SplitSessionKey {
    SplitSessionKey::new(k).unwrap()
}

#[test]
fn temporary_names_are_recognisable_and_fit_each_broker() {
    let orders = QueueName("orders".into());
    let alice = key("a1ce");
    assert_eq!(
        temp_queue_name(BrokerKind::Rabbitmq, &orders, Owner::Workload).0,
        "orders.remora.workload"
    );
    assert_eq!(
        temp_queue_name(BrokerKind::Rabbitmq, &orders, Owner::Session(&alice)).0,
        "orders.remora.a1ce"
    );
    assert_eq!(
        temp_queue_name(BrokerKind::Sqs, &orders, Owner::Session(&alice)).0,
        "orders-remora-a1ce"
    );
    assert_eq!(
        temp_queue_name(
            BrokerKind::Sqs,
            &QueueName("orders.fifo".into()),
            Owner::Workload
        )
        .0,
        "orders-remora-workload.fifo"
    );
    // Too long: cut, with a hash of the whole name, within the limit.
    let long_key = key(&"k".repeat(MAX_SESSION_KEY_LEN));
    for (kind, max) in [
        (BrokerKind::Sqs, 80),
        (BrokerKind::Kafka, 249),
        (BrokerKind::Rabbitmq, 255),
    ] {
        let a = QueueName(format!("{}a", "é".repeat(150)));
        let b = QueueName(format!("{}b", "é".repeat(150)));
        let na = temp_queue_name(kind, &a, Owner::Session(&long_key));
        let nb = temp_queue_name(kind, &b, Owner::Session(&long_key));
        assert!(na.0.len() <= max, "{kind}: {} bytes", na.0.len());
        assert_ne!(na, nb, "{kind}");
        assert!(na.0.contains("remora"), "{na}");
        assert_eq!(na, temp_queue_name(kind, &a, Owner::Session(&long_key)));
    }
}

#[test]
fn session_keys_are_checked() {
    assert!(SplitSessionKey::new("7f3a").is_ok());
    assert!(SplitSessionKey::new("dev_alice-2").is_ok());
    for bad in [
        "",
        "workload",
        "a.b",
        "a b",
        &"x".repeat(MAX_SESSION_KEY_LEN + 1),
    ] {
        let err = SplitSessionKey::new(bad).unwrap_err().to_string();
        assert!(err.contains("not a valid split session key"), "{err}");
    }
    // Deserialising checks too.
    assert!(serde_json::from_str::<SplitSessionKey>("\"a.b\"").is_err());
}

#[test]
fn the_state_round_trips_through_json() {
    let state = SplitState {
        kind: BrokerKind::Rabbitmq,
        original: QueueName("orders".into()),
        props: QueueProps {
            name: Some(QueueName("orders".into())),
            props: [("durable".to_owned(), "true".to_owned())].into(),
        },
        workload_queue: QueueName("orders.remora.workload".into()),
        sessions: vec![SessionState {
            key: key("a1"),
            filter: [("x-user".to_owned(), "^alice$".to_owned())].into(),
            queue: QueueName("orders.remora.a1".into()),
        }],
        draining: vec![SessionState {
            key: key("b2"),
            filter: [("x-user".to_owned(), "^bob$".to_owned())].into(),
            queue: QueueName("orders.remora.b2".into()),
        }],
    };
    let json = serde_json::to_string(&state).unwrap();
    assert!(json.contains("\"kind\":\"rabbitmq\""), "{json}");
    assert_eq!(serde_json::from_str::<SplitState>(&json).unwrap(), state);
    let queues: Vec<&str> = state.temp_queues().map(|q| q.0.as_str()).collect();
    assert_eq!(
        queues,
        [
            "orders.remora.workload",
            "orders.remora.a1",
            "orders.remora.b2"
        ]
    );
}

#[test]
fn an_overlap_refusal_names_the_holder_and_the_way_out() {
    let err = RouterError::Overlap {
        filter: "{x-user = \"ali\"}".into(),
        holder: key("a1"),
        holder_filter: "{x-user = \"^alice$\"}".into(),
        overlap: Overlap::Overlapping,
    }
    .to_string();
    assert!(err.contains("session a1's {x-user = \"^alice$\"}"), "{err}");
    let undecided = RouterError::Overlap {
        filter: "f".into(),
        holder: key("a1"),
        holder_filter: "g".into(),
        overlap: Overlap::Undecided {
            header: "x-user".into(),
        },
    }
    .to_string();
    assert!(
        undecided.contains("beyond the exact overlap check"),
        "{undecided}"
    );
}
