//! A container's environment: `env` (value, valueFrom), `envFrom`, and the variables every
//! container gets.

use serde_json::Value;

use super::HOST_IP;
use super::{Kubelet, PodContext, s};
use crate::store::NODE_NAME;

impl Kubelet {
    /// Resolves a container's environment.
    pub(super) fn env(
        &self,
        pod: &Value,
        container: &Value,
        ctx: &PodContext,
    ) -> Vec<(String, String)> {
        let ns = s(&pod["metadata"]["namespace"]);
        let reg = self.store.registry();
        let lookup = |plural: &str, name: &str, key: &str| -> Option<String> {
            let rt = reg.find("", "v1", plural)?;
            let obj = self.store.get(rt, Some(ns), name).ok()?;
            if let Some(v) = obj["data"][key].as_str() {
                return Some(if plural == "secrets" {
                    decode_base64(v)
                } else {
                    v.to_owned()
                });
            }
            obj["stringData"][key].as_str().map(str::to_owned)
        };
        let mut env = vec![
            (
                "HOSTNAME".to_owned(),
                s(&pod["metadata"]["name"]).to_owned(),
            ),
            ("KUBERNETES_SERVICE_HOST".to_owned(), ctx.api_host.clone()),
            (
                "KUBERNETES_SERVICE_PORT".to_owned(),
                self.api_port.to_string(),
            ),
        ];
        for from in container["envFrom"].as_array().into_iter().flatten() {
            let prefix = s(&from["prefix"]);
            for (plural, field) in [("configmaps", "configMapRef"), ("secrets", "secretRef")] {
                let name = s(&from[field]["name"]);
                if name.is_empty() {
                    continue;
                }
                let Some(rt) = reg.find("", "v1", plural) else {
                    continue;
                };
                let Ok(obj) = self.store.get(rt, Some(ns), name) else {
                    continue;
                };
                for (k, v) in obj["data"].as_object().into_iter().flatten() {
                    let v = if plural == "secrets" {
                        decode_base64(s(v))
                    } else {
                        s(v).to_owned()
                    };
                    env.push((format!("{prefix}{k}"), v));
                }
            }
        }
        for e in container["env"].as_array().into_iter().flatten() {
            let name = s(&e["name"]).to_owned();
            let vf = &e["valueFrom"];
            let value = if let Some(v) = e["value"].as_str() {
                Some(v.to_owned())
            } else if vf["configMapKeyRef"].is_object() {
                lookup(
                    "configmaps",
                    s(&vf["configMapKeyRef"]["name"]),
                    s(&vf["configMapKeyRef"]["key"]),
                )
            } else if vf["secretKeyRef"].is_object() {
                lookup(
                    "secrets",
                    s(&vf["secretKeyRef"]["name"]),
                    s(&vf["secretKeyRef"]["key"]),
                )
            } else if vf["fieldRef"].is_object() {
                let path = s(&vf["fieldRef"]["fieldPath"]);
                let current = self
                    .store
                    .get(&self.pod_rt(), Some(ns), s(&pod["metadata"]["name"]))
                    .unwrap_or(pod.clone());
                Some(match path {
                    "status.podIP" => ctx.pod_ip.clone(),
                    "status.hostIP" => HOST_IP.to_owned(),
                    "spec.nodeName" => NODE_NAME.to_owned(),
                    other => {
                        let mut cur = &current;
                        for seg in other.split('.') {
                            cur = &cur[seg];
                        }
                        cur.as_str().map(str::to_owned).unwrap_or_default()
                    }
                })
            } else {
                None
            };
            env.push((name, value.unwrap_or_default()));
        }
        env
    }
}

fn decode_base64(text: &str) -> String {
    String::from_utf8_lossy(&decode_base64_bytes(text)).into_owned()
}

/// Standard base64 (padding and whitespace ignored).
pub(super) fn decode_base64_bytes(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let Some(v) = ALPHABET.iter().position(|&a| a == c) else {
            continue;
        };
        buf = (buf << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    out
}
