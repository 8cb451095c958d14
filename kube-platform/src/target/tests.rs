use super::*;

#[test]
fn every_kind_round_trips_with_and_without_a_container() {
    for kind in TargetKind::ALL {
        let plain = format!("{kind}/api-1");
        let t: KubeTarget = plain.parse().unwrap();
        assert_eq!(t.to_string(), plain);
        let with = format!("{kind}/api-1/container/app");
        let t: KubeTarget = with.parse().unwrap();
        assert_eq!(t.to_string(), with);
        assert_eq!(t.object(), plain);
    }
    assert_eq!(
        "targetless".parse::<KubeTarget>().unwrap(),
        KubeTarget::Targetless
    );
}

#[test]
fn kubectl_short_names_are_accepted_and_printed_canonically() {
    let t: KubeTarget = "deploy/api".parse().unwrap();
    assert_eq!(t.to_string(), "deployment/api");
    let t: KubeTarget = "svc/web/container/nginx".parse().unwrap();
    assert_eq!(t.to_string(), "service/web/container/nginx");
    let t: KubeTarget = "sts/db".parse().unwrap();
    assert_eq!(t.to_string(), "statefulset/db");
}

#[test]
fn bad_targets_say_what_is_wrong() {
    let err = |s: &str| s.parse::<KubeTarget>().unwrap_err().to_string();
    assert!(
        err("daemonset/x").contains("unknown kind `daemonset`"),
        "{}",
        err("daemonset/x")
    );
    assert!(err("pod/Api").contains("not a valid object name"));
    assert!(err("pod/api/sidecar/x").contains("unexpected `sidecar`"));
    assert!(err("pod/api/container/a.b").contains("not a valid container name"));
    assert!(err("pod").contains("wrong number"));
    assert!(err("pod/").contains("not a valid object name"));
}
