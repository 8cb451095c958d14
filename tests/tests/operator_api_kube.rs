//! The operator's aggregated API (`operator.remora.dev/v1alpha1`) in the
//! test cluster (`serve --tls`): the operator installed by its manifests
//! (with the APIService, whose caBundle it fills), and users whose
//! kubeconfig authenticates with a client certificate signed by the
//! cluster's CA, as a kubeadm or kind admin's does.
//!
//! * such a user, allowed by RBAC, runs a steal session: the API server
//!   authenticates the certificate, authorises `get` on `targets/connect`,
//!   and proxies the upgrade to the operator with its front-proxy
//!   certificate and the user's `X-Remote-*` headers; the session's
//!   RemoraSession and SubjectAccessReviews carry that user (no token is
//!   reviewed); `kubectl get --raw /apis/operator.remora.dev/v1alpha1`
//!   answers from the operator;
//! * one allowed to connect but not to have sessions is refused by the
//!   operator naming the user and the permission; one not allowed to
//!   connect is refused by the API server, naming both; nothing is left;
//! * a request straight to the operator's aggregated port with a forged
//!   `X-Remote-User` and no front-proxy certificate is refused, and a
//!   client certificate of another CA does not get past the handshake.
//!
//! Needs root and the workspace binaries `remora`, `remora-operator`,
//! `remora-agent`, `libremora_layer.so` and `remora-kube-sim`.

use remora_tests::require_sandbox;
use std::path::PathBuf;
use std::process::Command;

#[path = "support/kube_sim.rs"]
mod kube_sim;
#[path = "support/operator_users.rs"]
mod operator_users;

use kube_sim::*;
use operator_users::*;

/// A kubeconfig of its own for `user` in `groups`: a client certificate
/// (and key) the sim's CA signs, no token.
fn certificate_kubeconfig(sim: &Sim, user: &str, groups: &str) -> PathBuf {
    let issued: serde_json::Value = serde_json::from_str(&sim.kubectl(&[
        "get",
        "--raw",
        &format!("/remora-sim/client-cert?user={user}&groups={groups}"),
    ]))
    .unwrap();
    let dir = sim.dir.path();
    let file = |name: &str, field: &str| {
        let path = dir.join(format!("{user}.{name}"));
        std::fs::write(&path, issued[field].as_str().unwrap()).unwrap();
        path
    };
    let (cert, key, ca) = (file("crt", "cert"), file("key", "key"), file("ca", "ca"));
    let path = dir.join(format!("{user}.kubeconfig"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: {}\n    \
             certificate-authority: {}\ncontexts:\n- name: sim\n  context:\n    cluster: sim\n    \
             user: {user}\n    namespace: default\ncurrent-context: sim\nusers:\n- name: {user}\n  \
             user:\n    client-certificate: {}\n    client-key: {}\n",
            api_server(sim),
            ca.display(),
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    path
}

/// The operator installed, its APIService's caBundle filled in and its
/// aggregated API answering through the API server.
fn install_with_api(sim: &Sim) {
    install_operator(sim);
    poll(
        || {
            Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&sim.kubeconfig)
                .args(["get", "--raw", "/apis/operator.remora.dev/v1alpha1"])
                .output()
                .is_ok_and(|o| o.status.success() && text(&o.stdout).contains("targets/connect"))
        },
        "the aggregated API to answer through the API server",
    );
}

/// RBAC-checked `user` may connect through the aggregated API in `default`.
fn grant_connect(sim: &Sim, user: &str) {
    grant(
        sim,
        user,
        "default",
        "remora-connect",
        "- {apiGroups: [operator.remora.dev], resources: [targets/connect], verbs: [get]}",
    );
}

fn reviews_of(sim: &Sim, user: &str) -> Vec<serde_json::Value> {
    reviews(sim)
        .into_iter()
        .filter(|r| r["spec"]["user"] == user || r["status"]["user"]["username"] == user)
        .collect()
}

#[test]
fn a_client_certificate_user_runs_a_session_through_the_aggregated_api_as_itself() {
    require_sandbox!();
    let sim = Sim::start_with(true, &["--tls"]);
    let pod_www = www(&sim, "pod-www", "the pod");
    web_server(&sim, "web", &pod_www);
    install_with_api(&sim);
    let bundle = sim.kubectl(&[
        "get",
        "apiservice",
        "v1alpha1.operator.remora.dev",
        "-o",
        "jsonpath={.spec.caBundle}",
    ]);
    assert!(!bundle.is_empty(), "the operator filled the caBundle");
    let discovery = sim.kubectl(&["get", "--raw", "/apis/operator.remora.dev/v1alpha1"]);
    assert!(discovery.contains("\"APIResourceList\""), "{discovery}");
    // As kube-aggregator shows it: available after its discovery check, and
    // the group in discovery.
    let row = sim.kubectl(&[
        "get",
        "apiservices",
        "v1alpha1.operator.remora.dev",
        "--no-headers",
    ]);
    assert_eq!(
        row.split_whitespace().take(3).collect::<Vec<_>>(),
        [
            "v1alpha1.operator.remora.dev",
            "remora/remora-operator",
            "True"
        ],
        "{row}"
    );
    let reason = sim.kubectl(&[
        "get",
        "apiservice",
        "v1alpha1.operator.remora.dev",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Available\")].reason}",
    ]);
    assert_eq!(reason.trim(), "Passed");
    // The operator, as its service account, watches the front proxy's
    // ConfigMap (the reader Role allows a watch by name).
    let logs = || {
        sim.kubectl(&[
            "logs",
            "-n",
            OPERATOR_NS,
            "-l",
            "app.kubernetes.io/name=remora-operator",
            "--tail=-1",
        ])
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !logs().contains("following the front proxy's trust") {
        assert!(std::time::Instant::now() < deadline, "{}", logs());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let versions = sim.kubectl(&["api-versions"]);
    assert!(
        versions
            .lines()
            .any(|l| l == "operator.remora.dev/v1alpha1"),
        "{versions}"
    );

    let carol_kc = certificate_kubeconfig(&sim, "carol", "remora-devs");
    grant_connect(&sim, "carol");
    grant(
        &sim,
        "carol",
        "default",
        "remora-sessions",
        "- {apiGroups: [remora.dev], resources: [remorasessions], verbs: [create, steal]}",
    );
    let ip = pod_ip(&sim, "web");
    let carol_www = www(&sim, "carol-www", "carol's laptop");
    let carol_err = sim.dir.path().join("carol.err");
    let _carol = steal_as(
        &carol_kc,
        "carol-laptop",
        "x-user: carol",
        &carol_www,
        &carol_err,
    );
    poll(
        || get(&ip, "x-user: carol").as_deref() == Ok("carol's laptop"),
        "carol's requests to reach her laptop",
    );
    assert_eq!(get(&ip, "x-user: erin").as_deref(), Ok("the pod"));
    let listed = sessions(&sim);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["spec"]["user"], "carol-laptop");
    assert_eq!(
        listed[0]["spec"]["identity"], "carol",
        "the certificate's user, as the API server vouched for it"
    );
    let reviews = reviews_of(&sim, "carol");
    for verb in ["create", "steal"] {
        assert!(
            reviews.iter().any(|r| r["kind"] == "SubjectAccessReview"
                && r["spec"]["resourceAttributes"]["verb"] == verb
                && r["spec"]["resourceAttributes"]["namespace"] == "default"
                && r["spec"]["groups"]
                    .as_array()
                    .is_some_and(|g| g.iter().any(|g| g == "remora-devs"))
                && r["status"]["allowed"] == true),
            "{verb}: {reviews:#?}"
        );
    }
    assert!(
        !reviews.iter().any(|r| r["kind"] == "TokenReview"),
        "no token of carol's reached the operator: {reviews:#?}"
    );
}

#[test]
fn client_certificate_users_without_the_permission_are_refused_naming_them() {
    require_sandbox!();
    let sim = Sim::start_with(true, &["--tls"]);
    sim.deployment("web", "exec sleep 300");
    wait_ready(&sim, "web");
    install_with_api(&sim);

    // frank may reach the operator but have no session: the operator says so.
    let frank_kc = certificate_kubeconfig(&sim, "frank", "remora-devs");
    grant_connect(&sim, "frank");
    let out = remora_as(&frank_kc, "frank")
        .args(["-t", "deployment/web", "--", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "frank had a session");
    let err = text(&out.stderr);
    assert!(
        says(
            &err,
            "frank may not create remorasessions.remora.dev in namespace default"
        ),
        "{err}"
    );
    assert!(
        reviews_of(&sim, "frank")
            .iter()
            .any(|r| r["kind"] == "SubjectAccessReview"
                && r["spec"]["resourceAttributes"]["verb"] == "create"
                && r["status"]["allowed"] == false),
        "the operator asked about frank himself"
    );

    // grace may not even connect: the API server refuses, naming her and
    // the subresource, before the operator hears of it.
    let grace_kc = certificate_kubeconfig(&sim, "grace", "");
    let out = remora_as(&grace_kc, "grace")
        .args(["-t", "deployment/web", "--", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "grace had a session");
    let err = text(&out.stderr);
    assert!(
        says(
            &err,
            "User \"grace\" cannot get resource \"targets/connect\""
        ) && says(&err, "needs get on targets/connect"),
        "{err}"
    );
    assert!(reviews_of(&sim, "grace").is_empty());
    assert!(sessions(&sim).is_empty(), "no RemoraSession");
    assert!(operator_agents(&sim).trim().is_empty(), "no agent");
}

/// `curl` to the operator pod's aggregated port: the HTTP status (`000`
/// when the TLS handshake failed).
fn curl_operator(ip: &str, args: &[&str]) -> String {
    let url = format!(
        "https://{ip}:8444/apis/operator.remora.dev/v1alpha1/namespaces/default/targets/\
         deployment.web/connect"
    );
    let out = Command::new("curl")
        .args([
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .args([
            "-H",
            "X-Remote-User: system:admin",
            "-H",
            "X-Remote-Group: system:masters",
        ])
        .args(["-H", "Connection: Upgrade", "-H", "Upgrade: websocket"])
        .args(["-H", "Sec-WebSocket-Version: 13"])
        .args(["-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    text(&out.stdout)
}

#[test]
fn forged_user_headers_without_the_front_proxy_certificate_are_refused() {
    require_sandbox!();
    let sim = Sim::start_with(true, &["--tls"]);
    sim.deployment("web", "exec sleep 300");
    wait_ready(&sim, "web");
    install_with_api(&sim);
    let ip = sim.kubectl(&[
        "get",
        "pods",
        "-n",
        OPERATOR_NS,
        "-l",
        "app.kubernetes.io/name=remora-operator",
        "-o",
        "jsonpath={.items[0].status.podIP}",
    ]);
    // No client certificate: the headers are not believed (an upgrade
    // would be 101).
    assert_eq!(curl_operator(&ip, &[]), "401");
    // A certificate of the cluster's CA (a user's, not the front proxy's
    // CA): refused in the handshake.
    let kc = certificate_kubeconfig(&sim, "mallory", "system:masters");
    let (cert, key) = (
        kc.with_file_name("mallory.crt"),
        kc.with_file_name("mallory.key"),
    );
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    assert_eq!(curl_operator(&ip, &["--cert", cert, "--key", key]), "000");
    assert!(sessions(&sim).is_empty());
}
