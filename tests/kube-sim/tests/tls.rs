//! `serve --tls`: the kubeconfig names an https server and carries the CA; kubectl and kube-rs
//! verify the server and send the token; requests without a valid token get 401; exec's
//! connection upgrade works over TLS; pods find the CA in `kube-root-ca.crt` and reach the API
//! server with it and their service-account token.

mod common;

use std::process::Command;

use common::{Sim, poll};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, Config,
    api::ListParams,
    config::{KubeConfigOptions, Kubeconfig},
};

fn kubeconfig_field(sim: &Sim, field: &str) -> String {
    let text = std::fs::read_to_string(&sim.kubeconfig).unwrap();
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{field}: ")))
        .unwrap_or_else(|| panic!("no {field} in {text}"))
        .to_owned()
}

/// curl's HTTP status code for `url` (`000` when TLS verification failed).
fn curl_status(args: &[&str], url: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "10"])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn kubectl_curl_and_pods_talk_to_the_api_over_tls() {
    let sim = Sim::start_with(&["--tls"]);
    let server = kubeconfig_field(&sim, "server");
    assert!(server.starts_with("https://127.0.0.1:"), "{server}");
    let token = kubeconfig_field(&sim, "token");
    let ca = sim.dir.path().join("ca.crt");
    // The CA as a pod sees it, also the one the kubeconfig carries.
    let ca_pem = sim.ok(&[
        "get",
        "configmap",
        "kube-root-ca.crt",
        "-o",
        "jsonpath={.data.ca\\.crt}",
    ]);
    assert!(
        ca_pem.starts_with("-----BEGIN CERTIFICATE-----"),
        "{ca_pem}"
    );
    std::fs::write(&ca, &ca_pem).unwrap();

    let url = format!("{server}/api/v1/namespaces");
    let ca_arg = ca.to_str().unwrap();
    let bearer = format!("Authorization: Bearer {token}");
    assert_eq!(
        curl_status(&["--cacert", ca_arg, "-H", &bearer], &url),
        "200"
    );
    assert_eq!(curl_status(&["--cacert", ca_arg], &url), "401", "no token");
    assert_eq!(
        curl_status(
            &["--cacert", ca_arg, "-H", "Authorization: Bearer nope"],
            &url
        ),
        "401"
    );
    assert_eq!(
        curl_status(&["-H", &bearer], &url),
        "000",
        "an unknown CA fails verification"
    );
    let out = sim.kubectl(&["--token", "nope", "get", "pods"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unauthorized"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A pod with the usual kube-api-access volume reaches the API server over TLS with its
    // token and the CA, as in-cluster clients do.
    sim.apply_yaml(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: in-cluster}
spec:
  containers:
  - name: main
    image: curl
    command:
    - sh
    - -c
    - |
      d=/var/run/secrets/kubernetes.io/serviceaccount
      curl -sS -m 10 -o /dev/null -w 'in-cluster %{http_code}\n' --cacert $d/ca.crt \
        -H "Authorization: Bearer $(cat $d/token)" \
        https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api/v1/namespaces/default/pods
      exec sleep 1000
    volumeMounts: [{name: kube-api-access, mountPath: /var/run/secrets/kubernetes.io/serviceaccount, readOnly: true}]
  volumes:
  - name: kube-api-access
    projected:
      sources:
      - serviceAccountToken: {path: token}
      - configMap: {name: kube-root-ca.crt, items: [{key: ca.crt, path: ca.crt}]}
"#,
        &[],
    );
    sim.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/in-cluster",
        "--timeout=30s",
    ]);
    poll(
        || sim.ok(&["logs", "in-cluster"]).contains("in-cluster"),
        "the pod's request",
    );
    assert_eq!(sim.ok(&["logs", "in-cluster"]).trim(), "in-cluster 200");
    // exec upgrades the TLS connection to a WebSocket.
    assert_eq!(
        sim.ok(&["exec", "in-cluster", "--", "uname", "-n"]).trim(),
        "in-cluster"
    );
}

#[tokio::test]
async fn kube_rs_verifies_the_server_and_lists() {
    let sim = Sim::start_with(&["--tls"]);
    let kubeconfig = Kubeconfig::read_from(&sim.kubeconfig).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    assert_eq!(config.cluster_url.scheme_str(), Some("https"));
    let client = Client::try_from(config).unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    assert!(
        pods.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

/// A list or watch whose field selector names one object is authorised as on that object, as
/// kube-apiserver does: a Role with `resourceNames` (the bootstrap
/// `extension-apiserver-authentication-reader`) lets its user watch that one ConfigMap, and
/// not list the others.
#[test]
fn a_field_selector_on_the_name_is_authorised_by_resource_names() {
    let sim = Sim::start_with(&["--tls"]);
    let server = kubeconfig_field(&sim, "server");
    let issued: serde_json::Value =
        serde_json::from_str(&sim.ok(&["get", "--raw", "/remora-sim/client-cert?user=reader"]))
            .unwrap();
    let file = |name: &str, field: &str| {
        let path = sim.dir.path().join(name);
        std::fs::write(&path, issued[field].as_str().unwrap()).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (cert, key, ca) = (
        file("reader.crt", "cert"),
        file("reader.key", "key"),
        file("ca.crt", "ca"),
    );
    sim.ok(&[
        "-n",
        "kube-system",
        "create",
        "rolebinding",
        "reader",
        "--role=extension-apiserver-authentication-reader",
        "--user=reader",
    ]);
    let args = ["--cacert", &ca, "--cert", &cert, "--key", &key];
    let url = |query: &str| format!("{server}/api/v1/namespaces/kube-system/configmaps{query}");
    let named = "fieldSelector=metadata.name%3Dextension-apiserver-authentication";
    poll(
        || curl_status(&args, &url(&format!("?{named}"))) == "200",
        "the reader to list the ConfigMap its Role names",
    );
    assert_eq!(
        curl_status(
            &args,
            &url(&format!("?{named}&watch=true&timeoutSeconds=1"))
        ),
        "200"
    );
    assert_eq!(curl_status(&args, &url("")), "403", "not every ConfigMap");
    assert_eq!(
        curl_status(
            &args,
            &url("?fieldSelector=metadata.name%3Dkube-root-ca.crt")
        ),
        "403",
        "not another one"
    );
}
