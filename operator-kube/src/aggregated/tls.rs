//! The aggregated API's TLS: its serving certificate (from files, or a CA
//! and a certificate it signs made at start, whose CA then goes into the
//! APIService's caBundle), and the server configuration that asks for a
//! client certificate and verifies it against the front proxy's CA.

use super::front_proxy::RequestHeaderConfig;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::Path;
use std::sync::Arc;

/// What the aggregated API serves with.
#[derive(Debug)]
pub struct ServingCert {
    /// The certificate and its chain.
    pub chain: Vec<CertificateDer<'static>>,
    /// Its key.
    pub key: PrivateKeyDer<'static>,
    /// The CA that signed it, PEM, when made at start (what the APIService's
    /// caBundle must hold); none for certificates from files.
    pub generated_ca_pem: Option<String>,
}

/// The DNS names the API server reaches `service` in `namespace` at.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        "localhost".to_owned(),
    ]
}

/// A CA made now and a serving certificate it signs for `names`.
///
/// # Errors
/// Key generation or signing failed.
pub fn generate(names: &[String]) -> Result<ServingCert, String> {
    let err = |what: &str, e: rcgen::Error| format!("making the {what}: {e}");
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| err("CA", e))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "remora-operator aggregated API CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(|e| err("CA key", e))?;
    let ca_cert = ca.self_signed(&ca_key).map_err(|e| err("CA", e))?;
    let mut leaf = CertificateParams::new(names.to_vec()).map_err(|e| err("certificate", e))?;
    leaf.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("remora-operator", String::as_str),
    );
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let key = KeyPair::generate().map_err(|e| err("key", e))?;
    let cert = leaf
        .signed_by(&key, &ca_cert, &ca_key)
        .map_err(|e| err("certificate", e))?;
    Ok(ServingCert {
        chain: vec![cert.der().clone(), ca_cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        generated_ca_pem: Some(ca_cert.pem()),
    })
}

/// A certificate chain and key from PEM files (a `kubernetes.io/tls`
/// Secret's `tls.crt` and `tls.key`, mounted).
///
/// # Errors
/// A file cannot be read or holds no certificate / key.
pub fn load(cert: &Path, key: &Path) -> Result<ServingCert, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("reading certificates from {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("reading the key {}: {e}", key.display()))?;
    Ok(ServingCert {
        chain,
        key,
        generated_ca_pem: None,
    })
}

/// The server configuration: HTTP/1.1 (the API server proxies upgrades
/// over it), and with `front_proxy` a client certificate asked for and, if
/// given, verified against its CA. Without a certificate a connection is
/// still accepted (and every request but the health check refused).
///
/// # Errors
/// The CA or the serving certificate is unusable.
pub fn server_config(
    cert: ServingCert,
    front_proxy: Option<&RequestHeaderConfig>,
) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match front_proxy {
        Some(fp) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in CertificateDer::pem_slice_iter(fp.client_ca_pem.as_bytes()) {
                let ca = ca.map_err(|e| format!("the requestheader client CA: {e}"))?;
                roots
                    .add(ca)
                    .map_err(|e| format!("the requestheader client CA: {e}"))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("the requestheader client CA: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(cert.chain, cert.key)
        .map_err(|e| format!("the serving certificate: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
