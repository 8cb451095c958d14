//! Protobuf request bodies (`Content-Type: application/vnd.kubernetes.protobuf`), decoded into
//! the JSON object the client meant.
//!
//! client-go's typed clients (kubectl's `create job --from=cronjob/x`, `create configmap`,
//! `create secret`, `create deployment`, `auth can-i`…) send built-in kinds as protobuf:
//! the 4 bytes `k8s\0`, then a `runtime.Unknown` whose `typeMeta` names the kind and whose
//! `raw` is the object's own message. The messages come from the upstream generated.proto
//! files vendored under `proto/` (compiled by `build.rs`). Their field names are the JSON
//! names; the types with a JSON form of their own (Time, MicroTime, Quantity, IntOrString,
//! RawExtension, FieldsV1, byte fields, the named string slices) are mapped as Go's JSON
//! encoding maps them. go-to-protobuf encodes every non-pointer field, even a zero one, so
//! zero scalars are dropped unless Go's JSON keeps them (a pointer, or no `omitempty`:
//! `proto/keep_zero.txt`): `replicas: 0` stays, an unset `restartPolicy` does not become `""`.
//! Responses stay JSON: client-go accepts `application/json` as well.

use std::{collections::HashSet, sync::LazyLock};

use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MapKey, ReflectMessage, Value as Pb};
use serde_json::{Map, Value, json};

use crate::{store::encode_base64, time};

/// The media type of Kubernetes protobuf bodies.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";
/// The prefix of every Kubernetes protobuf body.
const MAGIC: &[u8] = b"k8s\0";

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(include_bytes!(concat!(env!("OUT_DIR"), "/k8s.bin")).as_ref())
        .expect("the vendored descriptor set decodes")
});

static KEEP_ZERO: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("../proto/keep_zero.txt")
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
});

const META: &str = "k8s.io.apimachinery.pkg.apis.meta.v1";

/// The protobuf package of an API group/version (`batch/v1` → `k8s.io.api.batch.v1`).
fn package(api_version: &str) -> String {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let short = match group {
        "" => "core",
        "rbac.authorization.k8s.io" => "rbac",
        g => g.split('.').next().unwrap_or(g),
    };
    format!("k8s.io.api.{short}.{version}")
}

/// Decodes a protobuf request body into its JSON object (with `apiVersion` and `kind`).
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or("the body does not start with the Kubernetes protobuf prefix")?;
    let unknown = POOL
        .get_message_by_name("k8s.io.apimachinery.pkg.runtime.Unknown")
        .ok_or("no runtime.Unknown descriptor")?;
    let envelope =
        DynamicMessage::decode(unknown, rest).map_err(|e| format!("the envelope: {e}"))?;
    let type_meta = message_json(&envelope)?;
    let api_version = type_meta["typeMeta"]["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let kind = type_meta["typeMeta"]["kind"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if let Some(encoding) = type_meta["contentEncoding"]
        .as_str()
        .filter(|e| !e.is_empty())
    {
        return Err(format!("content encoding {encoding:?} is not supported"));
    }
    let raw = match envelope.get_field_by_name("raw").as_deref() {
        Some(Pb::Bytes(b)) => b.clone(),
        _ => Default::default(),
    };
    let descriptor = POOL
        .get_message_by_name(&format!("{}.{kind}", package(&api_version)))
        .or_else(|| POOL.get_message_by_name(&format!("{META}.{kind}")))
        .ok_or_else(|| format!("no protobuf schema for {api_version} {kind}"))?;
    let message = DynamicMessage::decode(descriptor, raw)
        .map_err(|e| format!("{api_version} {kind}: {e}"))?;
    let mut obj = message_json(&message)?;
    if !obj.is_object() {
        return Err(format!("{api_version} {kind} is not an object"));
    }
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(_) | Value::Object(_) => false,
    }
}

/// A message as Go's JSON encoding writes the Go struct it came from.
fn message_json(msg: &DynamicMessage) -> Result<Value, String> {
    let desc = msg.descriptor();
    let field = |name: &str| msg.get_field_by_name(name).map(|v| v.into_owned());
    let int = |name: &str| match field(name) {
        Some(Pb::I64(n)) => n,
        Some(Pb::I32(n)) => i64::from(n),
        _ => 0,
    };
    let string = |name: &str| match field(name) {
        Some(Pb::String(s)) => s,
        _ => String::new(),
    };
    let bytes_json = |name: &str| -> Value {
        match field(name) {
            Some(Pb::Bytes(b)) if !b.is_empty() => {
                serde_json::from_slice(&b).unwrap_or(Value::Null)
            }
            _ => Value::Null,
        }
    };
    match desc.full_name() {
        "k8s.io.apimachinery.pkg.apis.meta.v1.Time" => {
            let secs = int("seconds");
            return Ok(if secs == 0 && int("nanos") == 0 {
                Value::Null
            } else {
                json!(time::rfc3339(secs))
            });
        }
        "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime" => {
            let (secs, nanos) = (int("seconds"), int("nanos"));
            if secs == 0 && nanos == 0 {
                return Ok(Value::Null);
            }
            let base = time::rfc3339(secs);
            let micros = nanos / 1000;
            return Ok(json!(format!(
                "{}.{micros:06}Z",
                base.trim_end_matches('Z')
            )));
        }
        "k8s.io.apimachinery.pkg.api.resource.Quantity" => return Ok(json!(string("string"))),
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => {
            return Ok(if int("type") == 1 {
                json!(string("strVal"))
            } else {
                json!(int("intVal"))
            });
        }
        "k8s.io.apimachinery.pkg.runtime.RawExtension" => return Ok(bytes_json("raw")),
        "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1" => return Ok(bytes_json("Raw")),
        "k8s.io.apimachinery.pkg.apis.meta.v1.Verbs"
        | "k8s.io.api.authentication.v1.ExtraValue"
        | "k8s.io.api.authorization.v1.ExtraValue" => {
            return match field("items") {
                Some(Pb::List(items)) => items.iter().map(scalar_json).collect(),
                _ => Ok(json!([])),
            };
        }
        _ => {}
    }
    let mut out = Map::new();
    for fd in desc.fields() {
        if !msg.has_field(&fd) {
            continue;
        }
        let value = msg.get_field(&fd);
        let json = match value.as_ref() {
            Pb::List(items) => Value::Array(
                items
                    .iter()
                    .map(value_json)
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Pb::Map(entries) => {
                let mut m = Map::new();
                for (k, v) in entries {
                    let key = match k {
                        MapKey::String(s) => s.clone(),
                        MapKey::Bool(b) => b.to_string(),
                        MapKey::I32(n) => n.to_string(),
                        MapKey::I64(n) => n.to_string(),
                        MapKey::U32(n) => n.to_string(),
                        MapKey::U64(n) => n.to_string(),
                    };
                    m.insert(key, value_json(v)?);
                }
                Value::Object(m)
            }
            other => value_json(other)?,
        };
        let scalar = !matches!(fd.kind(), Kind::Message(_)) && !fd.is_list() && !fd.is_map();
        let keep = KEEP_ZERO.contains(format!("{}.{}", desc.full_name(), fd.name()).as_str());
        if json.is_null() || (scalar && !keep && is_zero(&json)) {
            continue;
        }
        out.insert(fd.name().to_owned(), json);
    }
    Ok(Value::Object(out))
}

fn value_json(v: &Pb) -> Result<Value, String> {
    match v {
        Pb::Message(m) => message_json(m),
        other => scalar_json(other),
    }
}

fn scalar_json(v: &Pb) -> Result<Value, String> {
    Ok(match v {
        Pb::Bool(b) => json!(b),
        Pb::I32(n) => json!(n),
        Pb::I64(n) => json!(n),
        Pb::U32(n) => json!(n),
        Pb::U64(n) => json!(n),
        Pb::F32(n) => json!(n),
        Pb::F64(n) => json!(n),
        Pb::String(s) => json!(s),
        Pb::Bytes(b) => json!(encode_base64(b)),
        Pb::EnumNumber(n) => json!(n),
        Pb::Message(_) | Pb::List(_) | Pb::Map(_) => {
            return Err("a nested list or map where a scalar was expected".to_owned());
        }
    })
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn set(msg: &mut DynamicMessage, name: &str, value: Pb) {
        msg.set_field_by_name(name, value);
    }

    fn message(name: &str) -> DynamicMessage {
        DynamicMessage::new(POOL.get_message_by_name(name).expect(name))
    }

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let mut type_meta = message("k8s.io.apimachinery.pkg.runtime.TypeMeta");
        set(&mut type_meta, "apiVersion", Pb::String(api_version.into()));
        set(&mut type_meta, "kind", Pb::String(kind.into()));
        let mut unknown = message("k8s.io.apimachinery.pkg.runtime.Unknown");
        set(&mut unknown, "typeMeta", Pb::Message(type_meta));
        set(&mut unknown, "raw", Pb::Bytes(raw.into()));
        // go-to-protobuf writes the empty strings of the envelope too.
        set(&mut unknown, "contentEncoding", Pb::String(String::new()));
        set(&mut unknown, "contentType", Pb::String(String::new()));
        let mut body = MAGIC.to_vec();
        body.extend(unknown.encode_to_vec());
        body
    }

    #[test]
    fn a_job_decodes_as_go_would_write_it_in_json() {
        let mut meta = message(&format!("{META}.ObjectMeta"));
        set(&mut meta, "name", Pb::String("by-hand".into()));
        // Zero values of non-pointer fields, as go-to-protobuf writes them.
        set(&mut meta, "generateName", Pb::String(String::new()));
        set(
            &mut meta,
            "creationTimestamp",
            Pb::Message(message(&format!("{META}.Time"))),
        );
        let mut labels = std::collections::HashMap::new();
        labels.insert(MapKey::String("app".into()), Pb::String("tick".into()));
        set(&mut meta, "labels", Pb::Map(labels));
        let mut container = message("k8s.io.api.core.v1.Container");
        set(&mut container, "name", Pb::String("tick".into()));
        set(&mut container, "image", Pb::String("busybox".into()));
        set(&mut container, "imagePullPolicy", Pb::String(String::new()));
        set(
            &mut container,
            "command",
            Pb::List(vec![Pb::String("echo".into()), Pb::String("tick".into())]),
        );
        set(&mut container, "stdin", Pb::Bool(false));
        let mut port = message("k8s.io.api.core.v1.ContainerPort");
        set(&mut port, "containerPort", Pb::I32(8080));
        set(&mut port, "hostPort", Pb::I32(0));
        set(&mut container, "ports", Pb::List(vec![Pb::Message(port)]));
        let mut quantity = message("k8s.io.apimachinery.pkg.api.resource.Quantity");
        set(&mut quantity, "string", Pb::String("100m".into()));
        let mut limits = std::collections::HashMap::new();
        limits.insert(MapKey::String("cpu".into()), Pb::Message(quantity));
        let mut resources = message("k8s.io.api.core.v1.ResourceRequirements");
        set(&mut resources, "limits", Pb::Map(limits));
        set(&mut container, "resources", Pb::Message(resources));
        let mut pod_spec = message("k8s.io.api.core.v1.PodSpec");
        set(
            &mut pod_spec,
            "containers",
            Pb::List(vec![Pb::Message(container)]),
        );
        set(&mut pod_spec, "restartPolicy", Pb::String("Never".into()));
        set(&mut pod_spec, "dnsPolicy", Pb::String(String::new()));
        set(&mut pod_spec, "hostNetwork", Pb::Bool(false));
        let mut template = message("k8s.io.api.core.v1.PodTemplateSpec");
        set(
            &mut template,
            "metadata",
            Pb::Message(message(&format!("{META}.ObjectMeta"))),
        );
        set(&mut template, "spec", Pb::Message(pod_spec));
        let mut spec = message("k8s.io.api.batch.v1.JobSpec");
        set(&mut spec, "template", Pb::Message(template));
        // A pointer field: its zero is meant.
        set(&mut spec, "backoffLimit", Pb::I32(0));
        let mut job = message("k8s.io.api.batch.v1.Job");
        set(&mut job, "metadata", Pb::Message(meta));
        set(&mut job, "spec", Pb::Message(spec));
        set(
            &mut job,
            "status",
            Pb::Message(message("k8s.io.api.batch.v1.JobStatus")),
        );
        let body = envelope("batch/v1", "Job", job.encode_to_vec());
        assert_eq!(
            decode(&body).unwrap(),
            json!({
                "apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": "by-hand", "labels": {"app": "tick"}},
                "spec": {
                    "backoffLimit": 0,
                    "template": {"metadata": {}, "spec": {
                        "containers": [{"name": "tick", "image": "busybox", "command": ["echo", "tick"],
                                        "ports": [{"containerPort": 8080}],
                                        "resources": {"limits": {"cpu": "100m"}}}],
                        "restartPolicy": "Never",
                    }},
                },
                "status": {},
            })
        );
    }

    #[test]
    fn secret_bytes_times_and_int_or_string() {
        let mut meta = message(&format!("{META}.ObjectMeta"));
        set(&mut meta, "name", Pb::String("s".into()));
        let mut t = message(&format!("{META}.Time"));
        set(&mut t, "seconds", Pb::I64(1_767_225_600));
        set(&mut meta, "deletionTimestamp", Pb::Message(t));
        let mut data = std::collections::HashMap::new();
        data.insert(MapKey::String("k".into()), Pb::Bytes(b"hi".to_vec().into()));
        let mut secret = message("k8s.io.api.core.v1.Secret");
        set(&mut secret, "metadata", Pb::Message(meta));
        set(&mut secret, "data", Pb::Map(data));
        let got = decode(&envelope("v1", "Secret", secret.encode_to_vec())).unwrap();
        assert_eq!(got["data"], json!({"k": "aGk="}));
        assert_eq!(
            got["metadata"]["deletionTimestamp"],
            json!("2026-01-01T00:00:00Z")
        );

        let mut port = message("k8s.io.api.core.v1.ServicePort");
        set(&mut port, "port", Pb::I32(80));
        let mut target = message("k8s.io.apimachinery.pkg.util.intstr.IntOrString");
        set(&mut target, "type", Pb::I64(1));
        set(&mut target, "strVal", Pb::String("http".into()));
        set(&mut port, "targetPort", Pb::Message(target));
        let mut spec = message("k8s.io.api.core.v1.ServiceSpec");
        set(&mut spec, "ports", Pb::List(vec![Pb::Message(port)]));
        let mut svc = message("k8s.io.api.core.v1.Service");
        set(&mut svc, "spec", Pb::Message(spec));
        let got = decode(&envelope("v1", "Service", svc.encode_to_vec())).unwrap();
        assert_eq!(
            got["spec"]["ports"],
            json!([{"port": 80, "targetPort": "http"}])
        );
    }

    #[test]
    fn an_unknown_kind_or_a_json_body_is_refused() {
        assert!(decode(b"{\"kind\": \"Job\"}").is_err());
        assert!(decode(&envelope("example.com/v1", "Widget", Vec::new())).is_err());
    }
}
