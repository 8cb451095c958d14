//! The checked-in CRDs and install manifests are valid Kubernetes objects:
//! PyPI's `kubernetes-validate` (installed by scripts/setup.sh) checks them
//! strictly against the API schema of the oldest Kubernetes remora supports.

use std::path::{Path, PathBuf};
use std::process::Command;

const KUBERNETES_VERSION: &str = "1.33.0";

fn validate(path: &Path) -> std::process::Output {
    Command::new("kubernetes-validate")
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .arg(path)
        .output()
        .unwrap_or_else(|e| {
            panic!("running kubernetes-validate: {e} (scripts/setup.sh installs it)")
        })
}

fn assert_valid(path: &Path, expected_objects: usize) {
    let out = validate(path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} is not valid:\n{stdout}{stderr}",
        path.display()
    );
    // Every document was checked, not just the first.
    let passed = format!("{stdout}{stderr}")
        .matches(" passed for resource ")
        .count();
    assert_eq!(passed, expected_objects, "{stdout}{stderr}");
}

fn deploy(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name)
}

#[test]
fn the_crds_pass_strict_validation() {
    assert_valid(&deploy("crds.yaml"), 5);
}

#[test]
fn a_crd_with_an_unknown_field_is_rejected() {
    // The check itself can fail.
    let text = std::fs::read_to_string(deploy("crds.yaml"))
        .unwrap()
        .replacen("  scope: Namespaced", "  scop: Namespaced", 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, text).unwrap();
    assert!(!validate(&path).status.success());
}

#[test]
fn the_install_manifests_pass_strict_validation() {
    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    // 3 CRDs, Namespace, ServiceAccount, ClusterRole(Binding), Role(Binding),
    // the front-proxy reader RoleBinding, Service, Deployment, APIService.
    assert_valid(&golden.join("manifests-default.yaml"), 15);
    assert_valid(&golden.join("manifests-tools.yaml"), 15);
    // + a Role and a RoleBinding in each of two queue-split namespaces.
    assert_valid(&golden.join("manifests-queue-splits.yaml"), 19);
}
