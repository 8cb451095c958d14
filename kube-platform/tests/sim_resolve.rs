//! Target resolution against the test cluster `remora-kube-sim` (its kubelet
//! runs pods as local processes): a deployment resolves to its ready pod and
//! container; a missing object or container says what was found.
//!
//! Needs the simulator binary: `cargo build -p remora-kube-sim` (or
//! `REMORA_KUBE_SIM_BIN`); the test fails, not skips, without it.

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use remora_kube::{ClientOptions, KubeClient, KubeTarget};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(60);

/// The simulator process, SIGTERMed and reaped on drop.
struct Sim {
    child: Child,
    _dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SIGTERM our own child by its pid: the simulator stops its pods.
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        let _ = self.child.wait();
    }
}

fn start_sim() -> Sim {
    let bin = std::env::var_os("REMORA_KUBE_SIM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/remora-kube-sim")
        });
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p remora-kube-sim`",
        bin.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let child = Command::new(&bin)
        .args(["serve", "--exit-with-parent", "--kubeconfig"])
        .arg(&kubeconfig)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let sim = Sim {
        child,
        _dir: dir,
        kubeconfig,
    };
    let deadline = Instant::now() + DEADLINE;
    while !sim.kubeconfig.exists() {
        assert!(
            Instant::now() < deadline,
            "the simulator wrote no kubeconfig"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    sim
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_resolves_to_its_ready_pod_and_errors_say_what_was_found() {
    let sim = start_sim();
    let options = ClientOptions {
        kubeconfig: Some(sim.kubeconfig.clone()),
        context: None,
        namespace: None,
    };
    let client = KubeClient::connect(&options).await.unwrap();
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [
                    {"name": "istio-proxy", "image": "sleep", "command": ["sleep", "300"]},
                    {"name": "app", "image": "sleep", "command": ["sleep", "300"]}]}}}
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.client.clone(), &client.namespace)
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();

    let target: KubeTarget = "deployment/web".parse().unwrap();
    let deadline = Instant::now() + DEADLINE;
    let resolved = loop {
        match client.resolve(&target).await {
            Ok(Some(r)) => break r,
            Ok(None) => unreachable!("not targetless"),
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "deployment/web never resolved: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(resolved.pod.starts_with("web-"), "{resolved:?}");
    assert_eq!(resolved.container, "app", "the mesh sidecar is skipped");

    // The same pod through a service and by name.
    let service: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}
    }))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::Service>::namespaced(
        client.client.clone(),
        &client.namespace,
    )
    .create(&PostParams::default(), &service)
    .await
    .unwrap();
    let via_service = client
        .resolve(&"service/web".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(via_service, resolved);
    let by_name = format!("pod/{}/container/istio-proxy", resolved.pod);
    let by_name = client
        .resolve(&by_name.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (by_name.pod.as_str(), by_name.container.as_str()),
        (resolved.pod.as_str(), "istio-proxy")
    );

    let err = client
        .resolve(&"deployment/nope".parse().unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "deployment/nope not found in namespace {} (check the name and -n/--namespace)",
            client.namespace
        )
    );
    let err = client
        .resolve(&"deployment/web/container/worker".parse().unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("has no container `worker`") && err.contains("istio-proxy, app"),
        "{err}"
    );

    let targets = client.list_targets().await.unwrap();
    assert!(
        targets.contains(&"deployment/web".to_owned()),
        "{targets:?}"
    );
    assert!(
        targets.contains(&format!("pod/{}/container/app", resolved.pod)),
        "{targets:?}"
    );
}
