use super::*;

const KUBECONFIG: &str = r#"
apiVersion: v1
kind: Config
current-context: shop-admin
clusters:
- name: shop
  cluster: {server: "https://shop.example:6443", insecure-skip-tls-verify: true}
- name: ops
  cluster: {server: "https://ops.example:7443", insecure-skip-tls-verify: true}
users:
- name: admin
  user: {token: "a-token"}
contexts:
- name: shop-admin
  context: {cluster: shop, user: admin, namespace: shop}
- name: ops-admin
  context: {cluster: ops, user: admin}
"#;

#[tokio::test]
async fn kubeconfig_context_and_namespace_options_pick_the_cluster_and_namespace_as_kubectl_does() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, KUBECONFIG).unwrap();
    let with = |context: Option<&str>, namespace: Option<&str>| ClientOptions {
        kubeconfig: Some(path.clone()),
        context: context.map(str::to_owned),
        namespace: namespace.map(str::to_owned),
    };
    // The current context, and its namespace.
    let c = config(&with(None, None)).await.unwrap();
    assert_eq!(c.cluster_url.to_string(), "https://shop.example:6443/");
    assert_eq!(c.default_namespace, "shop");
    // --context: another cluster; a context without a namespace means `default`.
    let c = config(&with(Some("ops-admin"), None)).await.unwrap();
    assert_eq!(c.cluster_url.to_string(), "https://ops.example:7443/");
    assert_eq!(c.default_namespace, "default");
    // -n/--namespace wins over the context's.
    let c = config(&with(None, Some("payments"))).await.unwrap();
    assert_eq!(c.default_namespace, "payments");
    // Errors say which source failed.
    let err = config(&with(Some("nope"), None))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&path.display().to_string()) && err.contains("nope"),
        "{err}"
    );
    let missing = ClientOptions {
        kubeconfig: Some(dir.path().join("absent")),
        ..ClientOptions::default()
    };
    let err = config(&missing).await.unwrap_err().to_string();
    assert!(err.contains("reading kubeconfig"), "{err}");
}
