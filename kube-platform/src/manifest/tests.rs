use super::*;
use std::path::PathBuf;

fn target() -> ResolvedPod {
    ResolvedPod {
        pod: "api-7f9c".to_owned(),
        namespace: "shop".to_owned(),
        node: Some("node-1".to_owned()),
        pod_ip: Some("10.0.0.7".to_owned()),
        container: "app".to_owned(),
        container_id: Some("abc123".to_owned()),
        runtime: Some("containerd".to_owned()),
    }
}

fn configured() -> AgentSettings {
    AgentSettings {
        image: "registry.example/remora-agent:test".to_owned(),
        ttl: 45,
        tolerations: Some(vec![AgentToleration {
            key: Some("dedicated".to_owned()),
            operator: Some("Equal".to_owned()),
            value: Some("shop".to_owned()),
            effect: Some("NoSchedule".to_owned()),
            toleration_seconds: None,
        }]),
        resources: AgentResources {
            requests: [
                ("cpu".to_owned(), "100m".to_owned()),
                ("memory".to_owned(), "64Mi".to_owned()),
            ]
            .into(),
            limits: [("memory".to_owned(), "256Mi".to_owned())].into(),
        },
        labels: [("team".to_owned(), "shop".to_owned())].into(),
        annotations: [("sidecar.istio.io/inject".to_owned(), "false".to_owned())].into(),
        service_account: Some("remora-agent".to_owned()),
        ..AgentSettings::default()
    }
}

/// Compare `value` with `tests/golden/<name>.json`; `REMORA_BLESS=1` rewrites it.
fn golden(name: &str, value: &impl serde::Serialize) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.json"));
    let actual = serde_json::to_string_pretty(value).unwrap() + "\n";
    if std::env::var_os("REMORA_BLESS").is_some() {
        std::fs::write(&path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (REMORA_BLESS=1 writes it)", path.display()));
    assert_eq!(actual, expected, "{name} differs from {}", path.display());
}

#[test]
fn default_job_matches_golden() {
    let settings = AgentSettings::default();
    let t = target();
    let spec = AgentSpec {
        settings: &settings,
        target: Some(&t),
        run_id: "r1a2b3",
        token: "tok",
    };
    golden("job-default", &spec.job("shop"));
}

#[test]
fn configured_job_matches_golden() {
    let settings = configured();
    let t = target();
    let spec = AgentSpec {
        settings: &settings,
        target: Some(&t),
        run_id: "r1a2b3",
        token: "tok",
    };
    golden("job-configured", &spec.job("remora"));
}

#[test]
fn privileged_job_matches_golden() {
    let settings = AgentSettings {
        privileged: true,
        ..AgentSettings::default()
    };
    let t = target();
    let spec = AgentSpec {
        settings: &settings,
        target: Some(&t),
        run_id: "r1a2b3",
        token: "tok",
    };
    golden("job-privileged", &spec.job("shop"));
}

#[test]
fn ephemeral_container_matches_golden() {
    let settings = AgentSettings {
        ephemeral: true,
        ..AgentSettings::default()
    };
    assert_eq!(settings.mode(), AgentMode::Ephemeral);
    let t = target();
    let spec = AgentSpec {
        settings: &settings,
        target: Some(&t),
        run_id: "r1a2b3",
        token: "tok",
    };
    golden("ephemeral-container", &spec.ephemeral_container());
}

#[test]
fn targetless_pod_matches_golden() {
    let settings = AgentSettings {
        node_selector: [("kubernetes.io/os".to_owned(), "linux".to_owned())].into(),
        ..AgentSettings::default()
    };
    let spec = AgentSpec {
        settings: &settings,
        target: None,
        run_id: "r1a2b3",
        token: "tok",
    };
    let pod = spec.targetless_pod("shop");
    let pod_spec = pod.spec.as_ref().unwrap();
    assert_eq!(pod_spec.host_pid, None, "targetless has no host access");
    assert_eq!(pod_spec.volumes, None);
    golden("targetless-pod", &pod);
}

#[test]
fn the_job_is_pinned_with_host_pid_and_three_capabilities() {
    let settings = AgentSettings::default();
    let t = target();
    let job = AgentSpec {
        settings: &settings,
        target: Some(&t),
        run_id: "x",
        token: "tok",
    }
    .job("shop");
    let pod = job.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.node_name.as_deref(), Some("node-1"));
    assert_eq!(pod.host_pid, Some(true));
    let sc = pod.containers[0].security_context.clone().unwrap();
    assert_eq!(sc.privileged, None);
    assert_eq!(
        sc.capabilities.unwrap().add.unwrap(),
        ["SYS_ADMIN", "SYS_PTRACE", "NET_ADMIN"]
    );
}

#[test]
fn settings_parse_from_config_keys() {
    let s: AgentSettings = serde_json::from_value(serde_json::json!({
        "image": "x/agent:1", "namespace": "remora", "ttl": 10, "startup_timeout": 5,
        "privileged": true, "ephemeral": true,
        "tolerations": [{"operator": "Exists"}], "node_selector": {"a": "b"},
        "resources": {"requests": {"cpu": "50m"}}, "labels": {"l": "v"},
        "annotations": {"a": "v"}, "service_account": "sa"
    }))
    .unwrap();
    assert_eq!(s.startup_timeout, 5);
    assert_eq!(s.mode(), AgentMode::Ephemeral);
    assert!(serde_json::from_value::<AgentSettings>(serde_json::json!({"imagee": "x"})).is_err());
}

#[test]
fn token_secret_matches_golden() {
    let settings = configured();
    let t = target();
    let spec = AgentSpec {
        settings: &settings,
        target: Some(&t),
        run_id: "r1a2b3",
        token: "tok",
    };
    golden("token-secret", &spec.token_secret("remora"));
}

#[test]
fn the_token_is_only_in_the_secret_which_every_agent_refers_to() {
    const TOKEN: &str = "9f2c-the-per-run-token";
    let settings = AgentSettings::default();
    let t = target();
    let spec = |target| AgentSpec {
        settings: &settings,
        target,
        run_id: "r1a2b3",
        token: TOKEN,
    };
    let secret = serde_json::to_string(&spec(Some(&t)).token_secret("shop")).unwrap();
    assert!(secret.contains(TOKEN), "{secret}");
    let reference = serde_json::json!([{
        "name": TOKEN_ENV,
        "valueFrom": {"secretKeyRef": {"name": "remora-agent-r1a2b3", "key": TOKEN_KEY, "optional": false}},
    }]);
    let job = spec(Some(&t)).job("shop");
    let pod = spec(None).targetless_pod("shop");
    let ephemeral = spec(Some(&t)).ephemeral_container();
    let envs = [
        serde_json::to_value(&job.spec.unwrap().template.spec.unwrap().containers[0].env),
        serde_json::to_value(&pod.spec.unwrap().containers[0].env),
        serde_json::to_value(&ephemeral.env),
    ];
    for env in envs {
        assert_eq!(env.unwrap(), reference);
    }
    for object in [
        serde_json::to_string(&spec(Some(&t)).job("shop")).unwrap(),
        serde_json::to_string(&spec(None).targetless_pod("shop")).unwrap(),
        serde_json::to_string(&spec(Some(&t)).ephemeral_container()).unwrap(),
    ] {
        assert!(!object.contains(TOKEN), "{object}");
    }
}

#[test]
fn the_secret_is_owned_by_the_created_job_for_the_garbage_collector() {
    let mut job = Job::default();
    assert!(owned_by(&job).is_err(), "no name, no uid");
    job.metadata.name = Some("remora-agent-r1a2b3".to_owned());
    assert!(owned_by(&job).unwrap_err().contains("has no uid"));
    job.metadata.uid = Some("0e1d-uid".to_owned());
    assert_eq!(
        serde_json::to_value(owned_by(&job).unwrap()).unwrap(),
        serde_json::json!({
            "apiVersion": "batch/v1", "kind": "Job", "name": "remora-agent-r1a2b3", "uid": "0e1d-uid",
        })
    );
    let mut pod = Pod::default();
    pod.metadata.name = Some("api-7f9c".to_owned());
    pod.metadata.uid = Some("7a3b-uid".to_owned());
    assert_eq!(owned_by(&pod).unwrap().api_version, "v1");
    assert_eq!(owned_by(&pod).unwrap().kind, "Pod");
}
