use super::*;
use remora_operator::branches::settings::BranchPod;

fn request() -> PodRequest {
    PodRequest {
        name: "remora-shop-alice-0123456789abcdef".into(),
        branch: "remora_shop_alice".into(),
        settings: BranchPod {
            kind: DbKind::Postgres,
            image: "postgres:15".into(),
            command: None,
            port: 5432,
            always: false,
            memory: Some("512Mi".into()),
            cpu: None,
        },
        password: "0f1e2d3c".into(),
    }
}

#[test]
fn the_pod_reads_its_password_from_its_secret_and_keeps_its_data_in_an_empty_dir() {
    let r = request();
    let pod = pod(&r);
    let json = serde_json::to_string(&pod).unwrap();
    assert!(
        !json.contains("0f1e2d3c"),
        "the password is not in the pod: {json}"
    );
    let spec = pod.spec.unwrap();
    let c = &spec.containers[0];
    assert_eq!(c.image.as_deref(), Some("postgres:15"));
    let env = c.env.as_ref().unwrap();
    let password = env.iter().find(|e| e.name == "POSTGRES_PASSWORD").unwrap();
    let from = password
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (from.name.as_str(), from.key.as_str()),
        (r.name.as_str(), PASSWORD_KEY)
    );
    assert_eq!(
        c.volume_mounts.as_ref().unwrap()[0].mount_path,
        "/var/lib/postgresql/data"
    );
    assert!(spec.volumes.unwrap()[0].empty_dir.is_some());
    let probe = c.readiness_probe.as_ref().unwrap().exec.as_ref().unwrap();
    assert_eq!(probe.command.as_ref().unwrap()[0], "pg_isready");
    assert_eq!(
        c.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0,
        "512Mi"
    );
    let labels = pod.metadata.labels.unwrap();
    assert_eq!(labels[POD_LABEL], r.name);
    assert_eq!(labels["remora.dev/branch"], "remora_shop_alice");
}

#[test]
fn the_secret_and_the_service_belong_to_the_pod() {
    let r = request();
    let mut made = pod(&r);
    made.metadata.uid = Some("pod-uid".into());
    for owners in [
        secret(&r, &made).metadata.owner_references.unwrap(),
        service(&r, &made).metadata.owner_references.unwrap(),
    ] {
        assert_eq!(owners.len(), 1);
        assert_eq!(
            (owners[0].kind.as_str(), owners[0].uid.as_str()),
            ("Pod", "pod-uid")
        );
    }
    assert_eq!(
        secret(&r, &made).string_data.unwrap()[PASSWORD_KEY],
        "0f1e2d3c"
    );
    let svc = service(&r, &made).spec.unwrap();
    assert_eq!(svc.selector.unwrap()[POD_LABEL], r.name);
    assert_eq!(svc.ports.unwrap()[0].port, 5432);
}
