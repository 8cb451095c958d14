use super::*;

#[test]
fn paths_route_to_discovery_and_connect() {
    assert_eq!(route("/healthz"), Route::Health);
    assert_eq!(route("/apis"), Route::GroupList);
    assert_eq!(route("/apis/operator.remora.dev"), Route::Group);
    assert_eq!(
        route("/apis/operator.remora.dev/v1alpha1"),
        Route::Resources
    );
    assert_eq!(
        route("/apis/operator.remora.dev/v1alpha1/namespaces/shop/targets/deployment.web/connect"),
        Route::Connect {
            namespace: "shop",
            name: "deployment.web"
        }
    );
    assert_eq!(
        route("/apis/operator.remora.dev/v1alpha1/namespaces/shop/targets/deployment.web"),
        Route::Unknown
    );
    assert_eq!(route("/apis/remora.dev/v1alpha1"), Route::Unknown);
}

fn config(allowed: &[&str]) -> Arc<RequestHeaderConfig> {
    Arc::new(RequestHeaderConfig {
        client_ca_pem: String::new(),
        allowed_names: allowed.iter().map(|s| (*s).to_owned()).collect(),
        username_headers: vec!["X-Remote-User".into()],
        group_headers: vec!["X-Remote-Group".into()],
        extra_prefixes: vec!["X-Remote-Extra-".into()],
    })
}

fn cert_named(cn: &str) -> Vec<u8> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().der().to_vec()
}

#[test]
fn only_a_verified_certificate_with_an_allowed_name_is_the_front_proxy() {
    let proxy = cert_named("front-proxy-client");
    assert!(trust(Some(config(&["front-proxy-client"])), Some(&proxy)).is_ok());
    let err = trust(Some(config(&["front-proxy-client"])), None).unwrap_err();
    assert!(err.contains("no client certificate"), "{err}");
    let other = cert_named("carol");
    assert!(trust(Some(config(&["front-proxy-client"])), Some(&other)).is_err());
    assert!(trust(Some(config(&[])), Some(&other)).is_ok(), "any name");
    let err = trust(None, Some(&proxy)).unwrap_err();
    assert!(err.contains("extension-apiserver-authentication"), "{err}");
}

#[test]
fn the_generated_serving_certificate_serves_and_names_the_service() {
    let names = tls::service_names("remora-operator", "remora");
    assert_eq!(names[0], "remora-operator.remora.svc");
    let cert = tls::generate(&names).unwrap();
    assert!(
        cert.generated_ca_pem
            .as_deref()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    assert_eq!(cert.chain.len(), 2);
    assert_eq!(
        front_proxy::subject_common_name(&cert.chain[0]).as_deref(),
        Some("remora-operator.remora.svc")
    );
    tls::server_config(cert, None).unwrap();
}
