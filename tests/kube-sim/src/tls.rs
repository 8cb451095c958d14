//! `serve --tls`: a CA made at start and a serving certificate it signs, for every address
//! the API server is reached at (this machine's listen address, the bridge's address pods
//! use) and the in-cluster names. The kubeconfig then carries the CA
//! (`certificate-authority-data`) and an `https://` server, so clients verify the server and
//! send their bearer token (kubectl sends none to a plain-http server).
//!
//! The server also asks for a client certificate (optional): one signed by the CA
//! authenticates its common name as the user and its organizations as groups, as a real API
//! server's x509 authenticator does ([`Tls::issue_client`] makes one). Separately, a front-proxy
//! CA and the client certificate it signs ([`FrontProxy`], made at every start, TLS or not) are
//! what the aggregation layer presents to the servers behind APIServices (aggregator.rs).

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
    issuer: Arc<Issuer>,
}

/// A CA that signs more certificates.
struct Issuer {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A client certificate's identity (a request extension): the user is its common name, the
/// groups its organizations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub user: String,
    pub groups: Vec<String>,
}

/// The aggregation layer's client identity: the front-proxy CA (published as
/// `requestheader-client-ca-file`) and the `front-proxy-client` certificate it signs.
#[derive(Clone)]
pub struct FrontProxy {
    pub ca_pem: String,
    pub client_chain: Vec<CertificateDer<'static>>,
    client_key_der: Arc<Vec<u8>>,
}

impl std::fmt::Debug for FrontProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontProxy").finish_non_exhaustive()
    }
}

/// The common name of the front proxy's client certificate (`requestheader-allowed-names`).
pub const FRONT_PROXY_CN: &str = "front-proxy-client";

impl FrontProxy {
    /// Its key, for a TLS client configuration.
    pub fn client_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            self.client_key_der.as_ref().clone(),
        ))
    }
}

fn err(what: &str, e: &dyn std::fmt::Display) -> String {
    format!("{what}: {e}")
}

fn make_ca(name: &str) -> Result<Issuer, String> {
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| err("CA params", &e))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, name);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().map_err(|e| err("CA key", &e))?;
    let cert = ca.self_signed(&key).map_err(|e| err("CA cert", &e))?;
    Ok(Issuer { cert, key })
}

impl Issuer {
    /// A client certificate for `user` in `groups`.
    fn client(&self, user: &str, groups: &[String]) -> Result<Client, String> {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| err("client params", &e))?;
        for group in groups {
            params
                .distinguished_name
                .push(DnType::OrganizationName, group.as_str());
        }
        params.distinguished_name.push(DnType::CommonName, user);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().map_err(|e| err("client key", &e))?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(|e| err("client cert", &e))?;
        Ok(Client {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        })
    }
}

/// A client certificate and its key.
struct Client {
    cert_pem: String,
    key_pem: String,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Tls {
    /// A client certificate the API server authenticates as `user` in `groups` (PEM
    /// certificate and key, for a kubeconfig's `client-certificate-data` / `client-key-data`).
    ///
    /// # Errors
    /// Key generation or signing failed.
    pub fn issue_client(&self, user: &str, groups: &[String]) -> Result<(String, String), String> {
        self.issuer
            .client(user, groups)
            .map(|c| (c.cert_pem, c.key_pem))
    }
}

/// The front-proxy CA and its client certificate, made now.
///
/// # Errors
/// Key generation or signing failed.
pub fn front_proxy() -> Result<FrontProxy, String> {
    let ca = make_ca("remora-kube-sim front-proxy CA")?;
    let client = ca.client(FRONT_PROXY_CN, &[])?;
    Ok(FrontProxy {
        ca_pem: ca.cert.pem(),
        client_chain: vec![client.cert_der],
        client_key_der: Arc::new(client.key_der),
    })
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
    let issuer = make_ca("remora-kube-sim CA")?;
    let (ca_cert, ca_key) = (&issuer.cert, &issuer.key);

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
        .signed_by(&key, ca_cert, ca_key)
        .map_err(|e| err("serving cert", &e))?;

    let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone(), ca_cert.der().clone()];
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // A client certificate is asked for, not required (token users send none).
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca_cert.der().clone())
        .map_err(|e| err("client CA", &e))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| err("client verifier", &e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err("TLS versions", &e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, private)
        .map_err(|e| err("TLS config", &e))?;
    // HTTP/1.1 only: exec, attach and port-forward upgrade the connection.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls {
        ca_pem: ca_cert.pem(),
        acceptor: TlsAcceptor::from(Arc::new(config)),
        issuer: Arc::new(issuer),
    })
}

/// The identity of a verified client certificate (DER): its subject's common name as the user,
/// its organizations as groups; `None` without a common name.
pub fn client_identity(der: &[u8]) -> Option<ClientCert> {
    /// 2.5.4.3 commonName, 2.5.4.10 organizationName.
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    const O: &[u8] = &[0x55, 0x04, 0x0a];
    let (_, cert, _) = tlv(der)?;
    let (_, tbs, _) = tlv(cert)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2;
    }
    // serialNumber, signature, issuer, validity; then the subject.
    for _ in 0..4 {
        rest = tlv(rest)?.2;
    }
    let (_, mut subject, _) = tlv(rest)?;
    let (mut user, mut groups) = (None, Vec::new());
    while !subject.is_empty() {
        let (_, set, next) = tlv(subject)?;
        subject = next;
        let mut attrs = set;
        while !attrs.is_empty() {
            let (_, attr, next) = tlv(attrs)?;
            attrs = next;
            let (_, oid, value) = tlv(attr)?;
            let text = String::from_utf8(tlv(value)?.1.to_vec()).ok()?;
            if oid == CN {
                user = Some(text);
            } else if oid == O {
                groups.push(text);
            }
        }
    }
    Some(ClientCert {
        user: user.filter(|u| !u.is_empty())?,
        groups,
    })
}

/// One DER tag-length-value: (tag, contents, what follows).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_client_certificate_names_its_user_and_groups() {
        let ca = make_ca("test CA").unwrap();
        let client = ca
            // rcgen keeps one value per attribute type: one group per certificate.
            .client("carol", &["devs".to_owned()])
            .unwrap();
        assert_eq!(
            client_identity(&client.cert_der),
            Some(ClientCert {
                user: "carol".into(),
                groups: vec!["devs".into()]
            })
        );
        assert!(client.key_pem.contains("PRIVATE KEY"));
        assert_eq!(client_identity(b"\x30\x03\x02"), None);
    }
}
