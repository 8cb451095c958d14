//! Patches: JSON merge (RFC 7386), JSON patch (RFC 6902) and strategic merge.

use serde_json::{Map, Value};

/// Why a patch could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("json patch operation {index}: {reason}")]
    JsonPatch { index: usize, reason: String },
    #[error("the patch is not a JSON object or array")]
    Shape,
}

/// RFC 7386 merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn unescape(seg: &str) -> String {
    seg.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(path: &str) -> Result<(String, String), String> {
    let idx = path
        .rfind('/')
        .ok_or_else(|| format!("bad path {path:?}"))?;
    Ok((path[..idx].to_owned(), unescape(&path[idx + 1..])))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    let target = doc
        .pointer_mut(&parent)
        .ok_or_else(|| format!("no such path {parent:?}"))?;
    match target {
        Value::Object(m) => {
            m.insert(last, value);
            Ok(())
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
                return Ok(());
            }
            let i: usize = last.parse().map_err(|_| format!("bad index {last:?}"))?;
            if i > a.len() {
                return Err(format!("index {i} out of range"));
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err(format!("{parent:?} is not a container")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    let target = doc
        .pointer_mut(&parent)
        .ok_or_else(|| format!("no such path {parent:?}"))?;
    match target {
        Value::Object(m) => m
            .remove(&last)
            .ok_or_else(|| format!("no such path {path:?}")),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| format!("bad index {last:?}"))?;
            if i >= a.len() {
                return Err(format!("index {i} out of range"));
            }
            Ok(a.remove(i))
        }
        _ => Err(format!("{parent:?} is not a container")),
    }
}

/// RFC 6902 JSON patch.
pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let ops = patch.as_array().ok_or(PatchError::Shape)?;
    for (index, op) in ops.iter().enumerate() {
        let err = |reason: String| PatchError::JsonPatch { index, reason };
        let path = op["path"].as_str().unwrap_or_default();
        match op["op"].as_str().unwrap_or_default() {
            "add" => add(doc, path, op["value"].clone()).map_err(err)?,
            "remove" => {
                remove(doc, path).map_err(err)?;
            }
            "replace" => {
                let slot = doc
                    .pointer_mut(path)
                    .ok_or_else(|| err(format!("no such path {path:?}")))?;
                *slot = op["value"].clone();
            }
            "move" => {
                let from = op["from"].as_str().unwrap_or_default();
                let v = remove(doc, from).map_err(err)?;
                add(doc, path, v).map_err(err)?;
            }
            "copy" => {
                let from = op["from"].as_str().unwrap_or_default();
                let v = doc
                    .pointer(from)
                    .cloned()
                    .ok_or_else(|| err(format!("no such path {from:?}")))?;
                add(doc, path, v).map_err(err)?;
            }
            "test" => {
                if doc.pointer(path) != Some(&op["value"]) {
                    return Err(err(format!("test of {path:?} failed")));
                }
            }
            other => return Err(err(format!("unknown op {other:?}"))),
        }
    }
    Ok(())
}

/// The merge key of a list field under strategic merge, as Kubernetes' core types declare it.
pub(crate) fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "secrets" => "name",
        "volumeMounts" | "volumeDevices" => "mountPath",
        "ports" => {
            if items.iter().any(|i| i.get("containerPort").is_some()) {
                "containerPort"
            } else {
                "port"
            }
        }
        "conditions" => "type",
        "hostAliases" => "ip",
        "ownerReferences" => "uid",
        "topologySpreadConstraints" => "topologyKey",
        _ => return None,
    })
}

/// Fields whose primitive lists merge as sets.
pub(crate) fn is_set_list(field: &str) -> bool {
    field == "finalizers"
}

/// Strategic merge patch for the core list keys; directives (`$patch`, `$setElementOrder/…`,
/// `$retainKeys`, `$deleteFromPrimitiveList/…`) are honoured or dropped.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut clean = patch.clone();
        strip_directives(&mut clean);
        *target = clean;
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(have)), Value::Array(del)) = (t.get_mut(field), v) {
                have.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match (t.get_mut(k), v) {
            (Some(Value::Array(have)), Value::Array(items)) => {
                if let Some(key) = merge_key(k, items) {
                    merge_list(have, items, key);
                } else if is_set_list(k) {
                    for i in items {
                        if !have.contains(i) {
                            have.push(i.clone());
                        }
                    }
                } else {
                    let mut items = v.clone();
                    strip_directives(&mut items);
                    *have = items.as_array().cloned().unwrap_or_default();
                }
            }
            (Some(slot), Value::Object(_)) if slot.is_object() => strategic_merge(slot, v),
            _ => {
                let mut clean = v.clone();
                strip_directives(&mut clean);
                t.insert(k.clone(), clean);
            }
        }
    }
}

fn merge_list(have: &mut Vec<Value>, items: &[Value], key: &str) {
    for item in items {
        let id = item.get(key);
        let directive = item.get("$patch").and_then(Value::as_str);
        let pos = have.iter().position(|h| id.is_some() && h.get(key) == id);
        match (directive, pos) {
            (Some("delete"), Some(i)) => {
                have.remove(i);
            }
            (Some("delete"), None) => {}
            (_, Some(i)) => strategic_merge(&mut have[i], item),
            (_, None) => {
                let mut clean = item.clone();
                strip_directives(&mut clean);
                have.push(clean);
            }
        }
    }
}

fn strip_directives(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !k.starts_with('$'));
            m.values_mut().for_each(strip_directives);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merges_containers_and_env_by_name() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "image": "x", "env": [{"name": "A", "value": "1"}]},
            {"name": "b", "image": "y"}]}});
        strategic_merge(
            &mut pod,
            &json!({"spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [{"name": "a", "env": [{"name": "B", "value": "2"}]},
                           {"name": "b", "$patch": "delete"}]}}),
        );
        assert_eq!(
            pod,
            json!({"spec": {"containers": [
            {"name": "a", "image": "x", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}]}})
        );
    }

    #[test]
    fn json_patch_ops() {
        let mut doc = json!({"a": [1, 2], "b": {"c": 1}});
        json_patch(
            &mut doc,
            &json!([
            {"op": "add", "path": "/a/-", "value": 3},
            {"op": "replace", "path": "/b/c", "value": 2},
            {"op": "remove", "path": "/a/0"},
            {"op": "test", "path": "/b/c", "value": 2}]),
        )
        .unwrap();
        assert_eq!(doc, json!({"a": [2, 3], "b": {"c": 2}}));
    }

    #[test]
    fn merge_patch_deletes_nulls() {
        let mut doc = json!({"a": 1, "b": {"c": 1, "d": 2}});
        merge_patch(&mut doc, &json!({"a": null, "b": {"d": 3}}));
        assert_eq!(doc, json!({"b": {"c": 1, "d": 3}}));
    }
}
