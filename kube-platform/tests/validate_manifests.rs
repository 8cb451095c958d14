//! The golden agent manifests are valid Kubernetes objects: PyPI's
//! `kubernetes-validate` (installed by scripts/setup.sh) checks them strictly
//! against the API schema of the oldest Kubernetes remora supports.

use std::path::{Path, PathBuf};
use std::process::Command;

const KUBERNETES_VERSION: &str = "1.33.0";

fn validate(path: &Path) {
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .arg(path)
        .output()
        .unwrap_or_else(|e| {
            panic!("running kubernetes-validate: {e} (scripts/setup.sh installs it)")
        });
    assert!(
        out.status.success(),
        "{} is not a valid object:\n{}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

#[test]
fn job_pod_and_secret_manifests_pass_strict_validation() {
    for name in [
        "job-default.json",
        "job-configured.json",
        "job-privileged.json",
        "targetless-pod.json",
        "token-secret.json",
    ] {
        validate(&golden(name));
    }
}

#[test]
fn the_ephemeral_container_is_valid_inside_its_pod() {
    let container: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden("ephemeral-container.json")).unwrap())
            .unwrap();
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "api-7f9c", "namespace": "shop"},
        "spec": {"containers": [{"name": "app", "image": "shop/api:1"}], "ephemeralContainers": [container]}
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pod-with-agent.json");
    std::fs::write(&path, serde_json::to_string_pretty(&pod).unwrap()).unwrap();
    validate(&path);
}

#[test]
fn an_invalid_manifest_is_rejected() {
    // The check itself can fail: an unknown field is refused in strict mode.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    std::fs::write(
        &path,
        r#"{"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"}, "spec": {"templat": {}}}"#,
    )
    .unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
}
