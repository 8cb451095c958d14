//! The aggregated API follows the front proxy's trust in the test cluster:
//! set up from the cluster (`AggregatedApi::setup`), it trusts the CA and
//! names of `kube-system/extension-apiserver-authentication`; when that
//! ConfigMap is changed (a rotated front-proxy CA, then another allowed
//! name), new connections are judged by the new trust without a restart.
//! The test plays the front proxy with a CA of its own.

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::TokenReview;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use remora_operator::platform::local::LocalPlatform;
use remora_operator::{Operator, OperatorConfig};
use remora_operator_kube::access::{KubeAccess, Reviewer};
use remora_operator_kube::aggregated::{AggregatedApi, tls};
use remora_protocol::SessionToken;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

#[path = "support/sim.rs"]
mod sim;

use sim::{DEADLINE, Sim, ok};

/// No reviews are asked for here.
#[derive(Debug)]
struct NoReviews;

impl Reviewer for NoReviews {
    fn token_review(&self, _: TokenReview) -> BoxFuture<'static, Result<TokenReview, String>> {
        Box::pin(async { Err("no token reviews here".to_owned()) })
    }

    fn subject_access_review(
        &self,
        _: SubjectAccessReview,
    ) -> BoxFuture<'static, Result<SubjectAccessReview, String>> {
        Box::pin(async { Err("no reviews here".to_owned()) })
    }
}

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    Ca {
        cert: params.self_signed(&key).unwrap(),
        key,
    }
}

fn client_cert(ca: &Ca, cn: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (
        cert.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

/// The HTTP status of `GET /apis/operator.remora.dev/v1alpha1` presenting
/// `cert`, or None when the TLS handshake refused it.
async fn status(
    addr: std::net::SocketAddr,
    serving_ca: &str,
    cert: (CertificateDer<'static>, PrivateKeyDer<'static>),
) -> Option<u16> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls::pki_types::pem::PemObject::pem_slice_iter(serving_ca.as_bytes()) {
        roots.add(ca.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert.0], cert.1)
        .unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            ServerName::try_from("remora-operator.remora.svc").unwrap(),
            tcp,
        )
        .await
        .ok()?;
    tls.write_all(
        b"GET /apis/operator.remora.dev/v1alpha1 HTTP/1.1\r\nHost: remora-operator.remora.svc\r\n\
          X-Remote-User: system:kube-aggregator\r\nConnection: close\r\n\r\n",
    )
    .await
    .ok()?;
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    answer.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn patch_configmap(kubeconfig: &Path, data: serde_json::Value) {
    let patch = serde_json::json!({ "data": data }).to_string();
    ok(
        kubeconfig,
        &[
            "-n",
            "kube-system",
            "patch",
            "configmap",
            "extension-apiserver-authentication",
            "--type",
            "merge",
            "-p",
            &patch,
        ],
        None,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_front_proxy_ca_is_trusted_without_a_restart() {
    let sim = Sim::start();
    let kubeconfig = sim.kubeconfig.clone();
    let dir = tempfile::tempdir().unwrap();
    // The APIService whose caBundle the aggregated API fills with its CA.
    let apiservice = dir.path().join("apiservice.yaml");
    std::fs::write(
        &apiservice,
        "apiVersion: apiregistration.k8s.io/v1\nkind: APIService\nmetadata: {name: \
         v1alpha1.operator.remora.dev}\nspec: {group: operator.remora.dev, version: v1alpha1, \
         groupPriorityMinimum: 1000, versionPriority: 15, service: {namespace: remora, name: \
         remora-operator, port: 443}}\n",
    )
    .unwrap();
    ok(
        &kubeconfig,
        &["apply", "-f", apiservice.to_str().unwrap()],
        None,
    );
    let kube = remora_kube::KubeClient::connect(&remora_kube::ClientOptions {
        kubeconfig: Some(kubeconfig.clone()),
        ..Default::default()
    })
    .await
    .unwrap();

    let config = OperatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: SessionToken(String::new()),
        policies: remora_operator::policy::PolicyStore::empty(),
        state_dir: None,
        branch_store: None,
        branch_pods: None,
        pg_bindirs: Vec::new(),
        db_settings: Default::default(),
        access: Some(Arc::new(KubeAccess {
            reviewer: Arc::new(NoReviews),
            namespace: "default".into(),
        })),
        observer: None,
        queue_splitter: None,
    };
    let platform = Arc::new(LocalPlatform::new("/nonexistent/remora-agent".into()));
    let operator = Operator::bind(config, platform).await.unwrap();
    let api = AggregatedApi::setup(
        kube.client.clone(),
        "127.0.0.1:0".parse().unwrap(),
        None,
        &tls::service_names("remora-operator", "remora"),
    )
    .await
    .unwrap();
    let addr = api.local_addr().unwrap();
    let cancel = CancellationToken::new();
    tokio::spawn(api.serve(operator.connections(), cancel.clone()));
    let bundle = ok(
        &kubeconfig,
        &[
            "get",
            "apiservice",
            "v1alpha1.operator.remora.dev",
            "-o",
            "jsonpath={.spec.caBundle}",
        ],
        None,
    );
    let serving_ca: k8s_openapi::ByteString =
        serde_json::from_value(serde_json::json!(bundle)).unwrap();
    let serving_ca = String::from_utf8(serving_ca.0).unwrap();

    // A new front-proxy CA: its client certificate is refused at the
    // handshake while the cluster's ConfigMap names the old CA.
    let rotated = ca("rotated front-proxy CA");
    let proxy = || client_cert(&rotated, "front-proxy-client");
    assert_eq!(status(addr, &serving_ca, proxy()).await, None);

    // The cluster rotates it: the same certificate is now the front proxy.
    patch_configmap(
        &kubeconfig,
        serde_json::json!({"requestheader-client-ca-file": rotated.cert.pem()}),
    );
    eventually("the rotated CA to be trusted", async || {
        status(addr, &serving_ca, proxy()).await == Some(200)
    })
    .await;
    let other = ca("another CA");
    assert_eq!(
        status(addr, &serving_ca, client_cert(&other, "front-proxy-client")).await,
        None,
        "only the CA the ConfigMap names"
    );

    // Another allowed name: the CA's certificate is no longer the proxy.
    patch_configmap(
        &kubeconfig,
        serde_json::json!({"requestheader-allowed-names": "[\"aggregator\"]"}),
    );
    eventually("the new allowed name to apply", async || {
        status(addr, &serving_ca, proxy()).await == Some(401)
    })
    .await;
    assert_eq!(
        status(addr, &serving_ca, client_cert(&rotated, "aggregator")).await,
        Some(200)
    );
    cancel.cancel();
}
