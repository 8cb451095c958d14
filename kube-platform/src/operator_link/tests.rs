use super::*;

#[test]
fn operator_values_name_the_service_in_the_cluster_or_nothing() {
    assert_eq!(OperatorRef::parse("kube"), Some(Ok(OperatorRef::default())));
    assert_eq!(
        OperatorRef::parse("kube:team-a"),
        Some(Ok(OperatorRef {
            namespace: "team-a".into(),
            service: DEFAULT_SERVICE.into()
        }))
    );
    assert_eq!(
        OperatorRef::parse("kube:ops/remora"),
        Some(Ok(OperatorRef {
            namespace: "ops".into(),
            service: "remora".into()
        }))
    );
    assert_eq!(OperatorRef::parse("127.0.0.1:8443"), None);
    assert_eq!(OperatorRef::parse("kubernetes.default:443"), None);
    for bad in ["kube:", "kube:/x", "kube:ns/", "kube:Ns", "kube:a/b/c"] {
        assert!(
            matches!(OperatorRef::parse(bad), Some(Err(_))),
            "{bad} should be refused"
        );
    }
}

#[test]
fn a_named_target_port_is_looked_up_in_the_pods_containers() {
    let service: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "remora-operator"},
        "spec": {"selector": {"app": "op"},
                 "ports": [{"name": "remora", "port": 8443, "targetPort": "remora"}]}
    }))
    .unwrap();
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "op-1"},
        "spec": {"containers": [{"name": "operator",
                 "ports": [{"name": "metrics", "containerPort": 9090},
                           {"name": "remora", "containerPort": 9443}]}]}
    }))
    .unwrap();
    assert_eq!(target_port(&service, &pod), Some(9443));
    let mut numbered = service.clone();
    numbered.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].target_port =
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(7000));
    assert_eq!(target_port(&numbered, &pod), Some(7000));
    let mut plain = service;
    plain.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].target_port = None;
    assert_eq!(target_port(&plain, &pod), Some(8443));
}
