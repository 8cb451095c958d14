//! The aggregated API in-process, over real TLS and WebSocket: an operator
//! (local platform, Kubernetes access with a reviewer that allows all) whose
//! aggregated API trusts a front-proxy CA made here. Only a client
//! certificate of that CA with the allowed name makes the `X-Remote-*`
//! headers count: without a certificate, or with another name, the connect
//! is 401; a certificate of another CA does not get through the handshake.
//! An admitted connection speaks the framed protocol as the vouched user,
//! and its Hello must name the target its URL named.

use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use k8s_openapi::api::authentication::v1::TokenReview;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use remora_operator::platform::local::LocalPlatform;
use remora_operator::{Operator, OperatorConfig};
use remora_operator_kube::access::{KubeAccess, Reviewer};
use remora_operator_kube::aggregated::front_proxy::RequestHeaderConfig;
use remora_operator_kube::aggregated::{AggregatedApi, tls};
use remora_protocol::codec;
use remora_protocol::{
    Capabilities, ClientIdentity, Hello, HelloReply, PROTOCOL_VERSION, SessionToken,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::sync::{Arc, Mutex};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

/// Allows every review, and remembers who was asked about.
#[derive(Debug, Default)]
struct AllowAll {
    asked: Mutex<Vec<SubjectAccessReview>>,
}

impl Reviewer for AllowAll {
    fn token_review(&self, _: TokenReview) -> BoxFuture<'static, Result<TokenReview, String>> {
        Box::pin(async { Err("no token reviews here".to_owned()) })
    }

    fn subject_access_review(
        &self,
        mut review: SubjectAccessReview,
    ) -> BoxFuture<'static, Result<SubjectAccessReview, String>> {
        review.status = Some(serde_json::from_value(serde_json::json!({"allowed": true})).unwrap());
        self.asked.lock().unwrap().push(review.clone());
        Box::pin(async move { Ok(review) })
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

struct Served {
    addr: std::net::SocketAddr,
    serving_ca: String,
    reviewer: Arc<AllowAll>,
    cancel: CancellationToken,
    _operator: Operator,
}

async fn serve(front_proxy_ca: &Ca) -> Served {
    let reviewer = Arc::new(AllowAll::default());
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
            reviewer: reviewer.clone(),
            namespace: "default".into(),
        })),
        observer: None,
        queue_splitter: None,
    };
    let platform = Arc::new(LocalPlatform::new("/nonexistent/remora-agent".into()));
    let operator = Operator::bind(config, platform).await.unwrap();
    let cert = tls::generate(&tls::service_names("remora-operator", "remora")).unwrap();
    let serving_ca = cert.generated_ca_pem.clone().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = AggregatedApi::new(
        listener,
        cert,
        Some(RequestHeaderConfig {
            client_ca_pem: front_proxy_ca.cert.pem(),
            allowed_names: vec!["front-proxy-client".into()],
            username_headers: vec!["X-Remote-User".into()],
            group_headers: vec!["X-Remote-Group".into()],
            extra_prefixes: vec!["X-Remote-Extra-".into()],
        }),
    )
    .unwrap();
    let addr = api.local_addr().unwrap();
    let cancel = CancellationToken::new();
    tokio::spawn(api.serve(operator.connections(), cancel.clone()));
    Served {
        addr,
        serving_ca,
        reviewer,
        cancel,
        _operator: operator,
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// A WebSocket connect to `name` in `default` as `carol`, with the client
/// certificate `cert`.
async fn connect(
    served: &Served,
    cert: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
    name: &str,
) -> Result<Ws, tungstenite::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls::pki_types::pem::PemObject::pem_slice_iter(served.serving_ca.as_bytes()) {
        roots.add(ca.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match cert {
        Some((cert, key)) => builder.with_client_auth_cert(vec![cert], key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(served.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            ServerName::try_from("remora-operator.remora.svc").unwrap(),
            tcp,
        )
        .await
        .map_err(tungstenite::Error::Io)?;
    let mut request = format!(
        "wss://remora-operator.remora.svc/apis/operator.remora.dev/v1alpha1/namespaces/default/\
         targets/{name}/connect"
    )
    .into_client_request()
    .unwrap();
    let headers = request.headers_mut();
    headers.insert("X-Remote-User", "carol".parse().unwrap());
    headers.append("X-Remote-Group", "devs".parse().unwrap());
    headers.insert(
        "Sec-WebSocket-Protocol",
        "v4.channel.k8s.io".parse().unwrap(),
    );
    tokio_tungstenite::client_async(request, tls)
        .await
        .map(|(ws, _)| ws)
}

fn hello(target: Option<&str>) -> Message {
    let hello = Hello {
        version: PROTOCOL_VERSION,
        capabilities: Capabilities::default(),
        token: SessionToken(String::new()),
        client: ClientIdentity {
            user: "carol-laptop".into(),
            hostname: "laptop".into(),
            pid: 1,
            program: "test".into(),
            remora_version: "0".into(),
        },
        target: target.map(str::to_owned),
    };
    let mut frame = Vec::new();
    codec::encode_frame(&hello, &mut frame).unwrap();
    Message::Binary(frame.into())
}

async fn reply(ws: &mut Ws) -> HelloReply {
    let mut buf = Vec::new();
    loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Binary(data) => buf.extend_from_slice(&data),
            _ => continue,
        }
        if let Some((reply, _)) = codec::decode_frame::<HelloReply>(&buf).unwrap() {
            return reply;
        }
    }
}

fn status_of(result: Result<Ws, tungstenite::Error>) -> Option<u16> {
    match result {
        Err(tungstenite::Error::Http(response)) => Some(response.status().as_u16()),
        Err(_) => None,
        Ok(_) => Some(101),
    }
}

#[tokio::test]
async fn only_the_front_proxy_certificate_makes_the_user_headers_count() {
    let front_proxy = ca("front-proxy CA");
    let served = serve(&front_proxy).await;

    // Forged headers, no certificate: 401 (it would be 101 if believed).
    assert_eq!(
        status_of(connect(&served, None, "_control").await),
        Some(401)
    );
    // The front proxy's CA, but not an allowed name.
    let carol = client_cert(&front_proxy, "carol");
    assert_eq!(
        status_of(connect(&served, Some(carol), "_control").await),
        Some(401)
    );
    // The allowed name from another CA: no further than the handshake.
    let other = ca("another CA");
    let impostor = client_cert(&other, "front-proxy-client");
    assert_eq!(
        status_of(connect(&served, Some(impostor), "_control").await),
        None
    );
    assert!(served.reviewer.asked.lock().unwrap().is_empty());
    served.cancel.cancel();
}

#[tokio::test]
async fn the_front_proxy_is_believed_and_the_hello_must_name_the_connected_target() {
    let front_proxy = ca("front-proxy CA");
    let served = serve(&front_proxy).await;
    let proxy = || client_cert(&front_proxy, "front-proxy-client");

    // A control connection, admitted as carol.
    let mut ws = connect(&served, Some(proxy()), "_control").await.unwrap();
    ws.send(hello(None)).await.unwrap();
    assert!(
        matches!(reply(&mut ws).await, HelloReply::Accepted { .. }),
        "admitted"
    );

    // Opened for one target, asking for another: refused before any review.
    let mut ws = connect(&served, Some(proxy()), "deployment.web")
        .await
        .unwrap();
    ws.send(hello(Some("namespace/default/deployment/db")))
        .await
        .unwrap();
    match reply(&mut ws).await {
        HelloReply::Rejected { reason, .. } => assert!(
            reason.contains("opened for targets/deployment.web")
                && reason.contains("deployment.db"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(served.reviewer.asked.lock().unwrap().is_empty());

    // The named target: authorised for carol and her group (the local
    // platform then has no such target, which is fine here).
    let me = std::process::id();
    let mut ws = connect(&served, Some(proxy()), &format!("pid.{me}"))
        .await
        .unwrap();
    ws.send(hello(Some(&format!("pid/{me}")))).await.unwrap();
    let _ = reply(&mut ws).await;
    let asked = served.reviewer.asked.lock().unwrap().clone();
    assert!(
        asked.iter().any(|r| r.spec.user.as_deref() == Some("carol")
            && r.spec.groups.as_deref() == Some(&["devs".to_owned()][..])),
        "{asked:?}"
    );
    served.cancel.cancel();
}
