//! Checked against the ConfigMap a kubeadm cluster publishes (its keys and
//! JSON-list values) and the headers kube-apiserver's proxy sends.

use super::*;

fn kubeadm_data() -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "client-ca-file".into(),
            "-----BEGIN CERTIFICATE-----\nclients\n".into(),
        ),
        (
            "requestheader-client-ca-file".into(),
            "-----BEGIN CERTIFICATE-----\nfront-proxy\n".into(),
        ),
        (
            "requestheader-allowed-names".into(),
            "[\"front-proxy-client\"]".into(),
        ),
        (
            "requestheader-extra-headers-prefix".into(),
            "[\"X-Remote-Extra-\"]".into(),
        ),
        (
            "requestheader-group-headers".into(),
            "[\"X-Remote-Group\"]".into(),
        ),
        (
            "requestheader-username-headers".into(),
            "[\"X-Remote-User\"]".into(),
        ),
    ])
}

#[test]
fn the_kubeadm_configmap_reads_as_its_front_proxy_trust() {
    let config = from_configmap(&kubeadm_data()).unwrap();
    assert!(config.client_ca_pem.contains("front-proxy"));
    assert_eq!(config.allowed_names, ["front-proxy-client"]);
    assert_eq!(config.username_headers, ["X-Remote-User"]);
    assert_eq!(config.group_headers, ["X-Remote-Group"]);
    assert_eq!(config.extra_prefixes, ["X-Remote-Extra-"]);
    assert!(config.allow_proxy(Some("front-proxy-client")).is_ok());
    let err = config.allow_proxy(Some("jane")).unwrap_err();
    assert!(
        err.contains("\"jane\"") && err.contains("front-proxy-client"),
        "{err}"
    );
    assert!(config.allow_proxy(None).is_err());
}

#[test]
fn without_a_requestheader_ca_there_is_no_front_proxy_and_an_empty_name_list_allows_any() {
    let mut data = kubeadm_data();
    data.remove("requestheader-client-ca-file");
    let err = from_configmap(&data).unwrap_err();
    assert!(err.contains("requestheader-client-ca-file"), "{err}");
    let mut data = kubeadm_data();
    data.insert("requestheader-allowed-names".into(), "[]".into());
    data.remove("requestheader-username-headers");
    let config = from_configmap(&data).unwrap();
    assert!(config.allow_proxy(Some("anyone")).is_ok());
    assert_eq!(config.username_headers, ["X-Remote-User"], "the default");
    data.insert(
        "requestheader-group-headers".into(),
        "X-Remote-Group".into(),
    );
    assert!(from_configmap(&data).is_err(), "not a JSON list");
}

#[test]
fn the_headers_name_the_user_its_groups_and_extras() {
    let config = from_configmap(&kubeadm_data()).unwrap();
    let mut headers = HeaderMap::new();
    headers.append("x-remote-user", "carol".parse().unwrap());
    headers.append("x-remote-group", "devs".parse().unwrap());
    headers.append("x-remote-group", "system:authenticated".parse().unwrap());
    headers.append("x-remote-extra-scopes", "read".parse().unwrap());
    headers.append("x-remote-extra-scopes", "write".parse().unwrap());
    headers.append("x-remote-extra-example.com%2fteam", "a".parse().unwrap());
    let user = config.remote_user(&headers).unwrap();
    assert_eq!(user.username, "carol");
    assert_eq!(user.groups, ["devs", "system:authenticated"]);
    assert_eq!(user.extra["scopes"], ["read", "write"]);
    assert_eq!(user.extra["example.com/team"], ["a"]);
    assert!(config.remote_user(&HeaderMap::new()).is_err());
}

#[test]
fn the_common_name_is_read_from_a_certificate() {
    let mut params = rcgen::CertificateParams::new(vec!["x.example".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:masters");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "front-proxy-client");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    assert_eq!(
        subject_common_name(cert.der()).as_deref(),
        Some("front-proxy-client")
    );
    let mut nameless = rcgen::CertificateParams::new(vec!["x.example".to_owned()]).unwrap();
    nameless.distinguished_name = rcgen::DistinguishedName::new();
    let cert = nameless.self_signed(&key).unwrap();
    assert_eq!(subject_common_name(cert.der()), None);
    assert_eq!(subject_common_name(b"\x30\x82\xff"), None, "truncated");
}
