//! `serve --tls`: a CA made at start and a serving certificate it signs, for every address
//! the API server is reached at (this machine's listen address, the bridge's address pods
//! use) and the in-cluster names. The kubeconfig then carries the CA
//! (`certificate-authority-data`) and an `https://` server, so clients verify the server and
//! send their bearer token (kubectl sends none to a plain-http server).

use std::{net::IpAddr, sync::Arc};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// The run's TLS material.
#[derive(Clone)]
pub struct Tls {
    /// The CA certificate, PEM (for kubeconfigs and pods' `ca.crt`).
    pub ca_pem: String,
    pub acceptor: TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

/// Names a pod or a client may use for the API server.
const NAMES: [&str; 5] = [
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

/// Makes a CA and a serving certificate for `ips` and [`NAMES`].
pub fn make(ips: &[IpAddr]) -> Result<Tls, String> {
    let err = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| err("CA params", &e))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "remora-kube-sim CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().map_err(|e| err("CA key", &e))?;
    let ca_cert = ca.self_signed(&ca_key).map_err(|e| err("CA cert", &e))?;

    let mut leaf =
        CertificateParams::new(NAMES.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .map_err(|e| err("serving params", &e))?;
    leaf.subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    leaf.distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let key = KeyPair::generate().map_err(|e| err("serving key", &e))?;
    let cert = leaf
        .signed_by(&key, &ca_cert, &ca_key)
        .map_err(|e| err("serving cert", &e))?;

    let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone(), ca_cert.der().clone()];
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| err("TLS versions", &e))?
    .with_no_client_auth()
    .with_single_cert(chain, private)
    .map_err(|e| err("TLS config", &e))?;
    // HTTP/1.1 only: exec, attach and port-forward upgrade the connection.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls {
        ca_pem: ca_cert.pem(),
        acceptor: TlsAcceptor::from(Arc::new(config)),
    })
}
