use super::*;
use std::path::PathBuf;

fn deploy(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name)
}

#[test]
fn checked_in_crds_are_the_generated_ones() {
    let generated = crds_yaml();
    let path = deploy("crds.yaml");
    if std::env::var_os("REMORA_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (REMORA_BLESS=1 writes it)", path.display()));
    assert!(
        checked_in == generated,
        "{} differs from the Rust types: run REMORA_BLESS=1 cargo nextest run -p \
         remora-operator-kube and review the diff",
        path.display()
    );
}

#[test]
fn crds_name_the_group_version_scope_and_printer_columns() {
    let all = crds();
    let names: Vec<_> = all
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "remorasessions.remora.dev",
            "remorapolicies.remora.dev",
            "remoraclusterpolicies.remora.dev",
            "remoraqueuesplits.remora.dev",
            "remoradbbranches.remora.dev"
        ]
    );
    let scopes: Vec<_> = all.iter().map(|c| c.spec.scope.as_str()).collect();
    assert_eq!(
        scopes,
        [
            "Namespaced",
            "Namespaced",
            "Cluster",
            "Namespaced",
            "Namespaced"
        ]
    );
    let branch = &all[4].spec.versions[0];
    let columns: Vec<_> = branch
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.type_.as_str(), c.priority.unwrap_or(0)))
        .collect();
    assert_eq!(
        columns,
        [
            ("ID", "string", 0),
            ("Type", "string", 0),
            ("Source", "string", 0),
            ("Branch", "string", 0),
            ("Mode", "string", 0),
            ("Owner", "string", 0),
            ("Expires", "date", 0),
            ("Target", "string", 1),
            ("Server", "string", 1),
            ("Pod", "string", 1),
            ("Method", "string", 1),
        ]
    );
    let session = &all[0].spec.versions[0];
    assert_eq!(session.name, VERSION);
    assert!(session.subresources.as_ref().unwrap().status.is_some());
    let columns: Vec<_> = session
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.json_path.as_str()))
        .collect();
    assert_eq!(
        columns,
        [
            ("User", ".spec.user"),
            ("Identity", ".spec.identity"),
            ("Target", ".spec.target"),
            ("Ports", ".status.ports"),
            ("Started", ".spec.startedAt"),
        ]
    );
}

#[test]
fn policy_schema_validates_what_the_toml_policies_validate() {
    let crd = RemoraPolicy::crd();
    let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
    let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(spec["required"], serde_json::json!(["targets"]), "{spec:#}");
    assert_eq!(spec["properties"]["targets"]["minItems"], 1, "{spec:#}");
    let block = &spec["properties"]["block"]["items"]["enum"];
    assert_eq!(
        block,
        &serde_json::json!([
            "steal",
            "steal-without-filter",
            "mirror",
            "outgoing",
            "override"
        ])
    );
}

#[test]
fn a_policy_object_in_yaml_reads_into_the_rules() {
    let yaml = r#"
apiVersion: remora.dev/v1alpha1
kind: RemoraPolicy
metadata: {name: payments, namespace: shop}
spec:
  targets:
    - {kind: deployment, name: "payments-*"}
    - matchLabels: {team: payments}
  groups: ["system:serviceaccounts:ci"]
  block: [steal-without-filter, override]
  requireHeaderFilter: "^x-user: .+$"
  envExclude: [DB_PASSWORD]
  fsNotFound: ["^/var/run/secrets/"]
  outgoingBlock: ["10.0.0.0/8:5432"]
"#;
    let policy: RemoraPolicy = serde_yaml_ng::from_str(yaml).unwrap();
    let rules = &policy.spec.rules;
    assert_eq!(rules.targets[0].kind, Some(TargetKind::Deployment));
    assert_eq!(rules.targets[0].name.as_deref(), Some("payments-*"));
    assert_eq!(rules.targets[1].match_labels["team"], "payments");
    assert_eq!(
        rules.block,
        [BlockedAction::StealWithoutFilter, BlockedAction::Override]
    );
    assert_eq!(rules.require_header_filter.as_deref(), Some("^x-user: .+$"));
    assert_eq!(rules.outgoing_block, ["10.0.0.0/8:5432"]);
}

#[test]
fn session_status_summarises_its_ports() {
    let status = RemoraSessionStatus::new(vec![
        SessionSubscription {
            port: 8080,
            mode: SubscriptionMode::Steal,
            filter: Some("header:^x-user: alice$".into()),
        },
        SessionSubscription {
            port: 9090,
            mode: SubscriptionMode::Mirror,
            filter: None,
        },
    ]);
    assert_eq!(
        status.ports.as_deref(),
        Some("8080 steal (filtered), 9090 mirror")
    );
    assert_eq!(RemoraSessionStatus::new(vec![]).ports, None);
}

#[test]
fn a_queue_split_in_yaml_reads_and_its_schema_requires_the_registration() {
    use queue_split::*;
    let split: RemoraQueueSplit = serde_yaml_ng::from_str(
        r#"
apiVersion: remora.dev/v1alpha1
kind: RemoraQueueSplit
metadata: {name: orders, namespace: shop}
spec:
  workload: {kind: Deployment, name: orders-worker}
  queues:
    orders:
      type: rabbitmq
      nameFrom: {env: ORDERS_QUEUE, container: worker}
      brokerEndpoint:
        url: amqp://rabbitmq.shop.svc:5672/%2f
        usernameFrom: {name: rabbit, key: user}
        passwordFrom: {name: rabbit, key: password}
  drainTimeout: 90s
"#,
    )
    .unwrap();
    assert_eq!(split.spec.workload.kind, WorkloadKind::Deployment);
    let orders = &split.spec.queues["orders"];
    assert_eq!(orders.broker, QueueBroker::Rabbitmq);
    assert_eq!(orders.name_from.env, "ORDERS_QUEUE");
    assert_eq!(
        orders.broker_endpoint.password_from.as_ref().unwrap().key,
        "password"
    );
    assert!(split.status.is_none());

    let crd = RemoraQueueSplit::crd();
    let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
    let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(
        spec["required"],
        serde_json::json!(["queues", "workload"]),
        "{spec:#}"
    );
    let queue = &spec["properties"]["queues"]["additionalProperties"];
    assert_eq!(
        queue["required"],
        serde_json::json!(["brokerEndpoint", "nameFrom", "type"]),
        "{queue:#}"
    );
}
