//! The request-header trust of an aggregated API server: the API server's
//! front proxy proves itself with a client certificate signed by the
//! `requestheader-client-ca-file` CA of the `kube-system/extension-apiserver-authentication`
//! ConfigMap, whose common name is one of `requestheader-allowed-names`
//! (any, when the list is empty); only then are the user headers
//! (`X-Remote-User`, `X-Remote-Group`, `X-Remote-Extra-*`, as that
//! ConfigMap names them) believed. All pure: the ConfigMap's data in, the
//! peer's certificate and the headers in, an identity or a refusal out.

use hyper::HeaderMap;
use std::collections::BTreeMap;

/// The ConfigMap holding the front proxy's trust settings.
pub const CONFIGMAP_NAMESPACE: &str = "kube-system";
/// Its name.
pub const CONFIGMAP_NAME: &str = "extension-apiserver-authentication";

/// What the API server's front proxy is trusted as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeaderConfig {
    /// The CA (PEM) that signs the front proxy's client certificate.
    pub client_ca_pem: String,
    /// Common names the front proxy's certificate may have; empty: any.
    pub allowed_names: Vec<String>,
    /// Headers naming the user (the first one present counts).
    pub username_headers: Vec<String>,
    /// Headers naming its groups (every value of each).
    pub group_headers: Vec<String>,
    /// Prefixes of headers carrying extra attributes.
    pub extra_prefixes: Vec<String>,
}

/// Read the ConfigMap's data.
///
/// # Errors
/// No `requestheader-client-ca-file` (the API server has no front proxy
/// configured), or a list that is not a JSON array of strings.
pub fn from_configmap(data: &BTreeMap<String, String>) -> Result<RequestHeaderConfig, String> {
    let ca = data
        .get("requestheader-client-ca-file")
        .filter(|pem| !pem.trim().is_empty())
        .ok_or_else(|| {
            format!(
                "{CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME} has no requestheader-client-ca-file: \
                 the API server has no front proxy (--requestheader-client-ca-file) and cannot \
                 serve aggregated APIs"
            )
        })?;
    let list = |key: &str, default: &[&str]| -> Result<Vec<String>, String> {
        match data.get(key).map(|v| v.trim()).filter(|v| !v.is_empty()) {
            None => Ok(default.iter().map(|s| (*s).to_owned()).collect()),
            Some(json) => serde_json::from_str::<Vec<String>>(json)
                .map_err(|e| format!("{CONFIGMAP_NAME}: {key} is not a JSON list: {e}")),
        }
    };
    Ok(RequestHeaderConfig {
        client_ca_pem: ca.clone(),
        allowed_names: list("requestheader-allowed-names", &[])?,
        username_headers: list("requestheader-username-headers", &["X-Remote-User"])?,
        group_headers: list("requestheader-group-headers", &["X-Remote-Group"])?,
        extra_prefixes: list("requestheader-extra-headers-prefix", &["X-Remote-Extra-"])?,
    })
}

/// Who the front proxy says the user is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RemoteUser {
    /// User name.
    pub username: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes (keys lower-cased and unescaped).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl RequestHeaderConfig {
    /// Whether a client certificate (already verified against
    /// [`RequestHeaderConfig::client_ca_pem`]) with common name `cn` is the
    /// front proxy.
    ///
    /// # Errors
    /// The name is not allowed, naming it.
    pub fn allow_proxy(&self, cn: Option<&str>) -> Result<(), String> {
        let cn = cn.unwrap_or_default();
        if self.allowed_names.is_empty() || self.allowed_names.iter().any(|n| n == cn) {
            Ok(())
        } else {
            Err(format!(
                "the client certificate's common name {cn:?} is not one of the front proxy's \
                 allowed names {:?}",
                self.allowed_names
            ))
        }
    }

    /// The user the headers name; call only for a trusted front proxy.
    ///
    /// # Errors
    /// No user header.
    pub fn remote_user(&self, headers: &HeaderMap) -> Result<RemoteUser, String> {
        let values = |name: &str| {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let username = self
            .username_headers
            .iter()
            .flat_map(|h| values(h))
            .find(|u| !u.is_empty())
            .ok_or_else(|| {
                format!(
                    "the front proxy named no user ({})",
                    self.username_headers.join(", ")
                )
            })?;
        let groups = self.group_headers.iter().flat_map(|h| values(h)).collect();
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in headers {
            let name = name.as_str();
            let Some(key) = self.extra_prefixes.iter().find_map(|p| {
                (name.len() > p.len() && name[..p.len()].eq_ignore_ascii_case(p))
                    .then(|| &name[p.len()..])
            }) else {
                continue;
            };
            if let Ok(value) = value.to_str() {
                extra
                    .entry(unescape(&key.to_ascii_lowercase()))
                    .or_default()
                    .push(value.to_owned());
            }
        }
        Ok(RemoteUser {
            username,
            groups,
            extra,
        })
    }
}

/// Undo the percent-encoding of an extra header's key (Kubernetes escapes
/// the characters a header name cannot hold).
fn unescape(key: &str) -> String {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = key.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The common name of an X.509 certificate's subject (DER), if it has one:
/// enough of DER to walk `Certificate → tbsCertificate → subject`.
pub fn subject_common_name(der: &[u8]) -> Option<String> {
    /// 2.5.4.3, commonName.
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let (_, cert, _) = tlv(der)?;
    let (_, tbs, _) = tlv(cert)?;
    let mut rest = tbs;
    // [0] EXPLICIT version, when present.
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2;
    }
    // serialNumber, signature, issuer, validity, then subject.
    for _ in 0..4 {
        rest = tlv(rest)?.2;
    }
    let (tag, mut subject, _) = tlv(rest)?;
    if tag != 0x30 {
        return None;
    }
    while !subject.is_empty() {
        let (_, set, next) = tlv(subject)?;
        subject = next;
        let mut attrs = set;
        while !attrs.is_empty() {
            let (_, attr, next) = tlv(attrs)?;
            attrs = next;
            let (oid_tag, oid, value) = tlv(attr)?;
            if oid_tag == 0x06 && oid == CN {
                let (_, text, _) = tlv(value)?;
                return String::from_utf8(text.to_vec()).ok();
            }
        }
    }
    None
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
mod tests;
