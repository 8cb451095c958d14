//! Pure edits of a workload's pod template for a queue split: where a
//! queue's name comes from ([`sources`]), pointing the variable at the
//! workload's temporary queue ([`point_at`]) and putting it back exactly as
//! it was ([`restore`]). Works on the template's `spec` as JSON, so the same
//! code serves Deployments, StatefulSets and Argo Rollouts.

use crate::crd::queue_split::QueueNameSource;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// A ConfigMap or Secret key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// A ConfigMap's key.
    ConfigMap {
        /// The ConfigMap.
        name: String,
        /// The key.
        key: String,
    },
    /// A Secret's key.
    Secret {
        /// The Secret.
        name: String,
        /// The key.
        key: String,
    },
}

/// Where one container's variable gets its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameSource {
    /// `env[].value`.
    Value(String),
    /// `env[].valueFrom.configMapKeyRef` or `secretKeyRef`: the key must exist.
    Key(KeyRef),
    /// `envFrom[]` entries that would supply it, the winning one first (the
    /// last in the list). Only the objects say whether a key exists: the
    /// first that has it supplies the value; if none does, the container
    /// does not set the variable.
    EnvFrom(Vec<KeyRef>),
}

/// Why the template cannot be used for a split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template has no containers list.
    #[error("the pod template has no containers")]
    NoContainers,
    /// The named container is not in the template.
    #[error("the pod template has no container {0:?}")]
    NoContainer(String),
    /// No container sets the variable.
    #[error("no container of the pod template sets {var} (in env or envFrom){where_}")]
    NoVariable {
        /// The variable.
        var: String,
        /// ` in container "x"` when one was named.
        where_: String,
    },
    /// The variable's value comes from something the operator cannot read
    /// (a field or resource reference).
    #[error("container {container:?} sets {var} from {from}, which does not name a queue")]
    Unsupported {
        /// The container.
        container: String,
        /// The variable.
        var: String,
        /// What it is set from.
        from: String,
    },
}

/// The key under which a container's variable is saved: `container/VAR`.
pub fn saved_key(container: &str, var: &str) -> String {
    format!("{container}/{var}")
}

fn containers(pod_spec: &Value) -> Result<&Vec<Value>, TemplateError> {
    pod_spec
        .get("containers")
        .and_then(Value::as_array)
        .ok_or(TemplateError::NoContainers)
}

fn name_of(container: &Value) -> &str {
    container.get("name").and_then(Value::as_str).unwrap_or("")
}

/// The containers `source` applies to (the named one, else all).
fn selected<'a>(
    pod_spec: &'a Value,
    source: &QueueNameSource,
) -> Result<Vec<&'a Value>, TemplateError> {
    let all = containers(pod_spec)?;
    match &source.container {
        Some(name) => all
            .iter()
            .find(|c| name_of(c) == name)
            .map(|c| vec![c])
            .ok_or_else(|| TemplateError::NoContainer(name.clone())),
        None => Ok(all.iter().collect()),
    }
}

/// Where `container` gets `var` from, if it sets it: `env` wins over
/// `envFrom`, and among `envFrom` entries the last one with the key wins,
/// as the kubelet does.
fn source_in(container: &Value, var: &str) -> Result<Option<NameSource>, TemplateError> {
    let unsupported = |from: String| TemplateError::Unsupported {
        container: name_of(container).to_owned(),
        var: var.to_owned(),
        from,
    };
    let entry = container
        .get("env")
        .and_then(Value::as_array)
        .and_then(|env| {
            env.iter()
                .find(|e| e.get("name").and_then(Value::as_str) == Some(var))
        });
    if let Some(entry) = entry {
        if let Some(value) = entry.get("value").and_then(Value::as_str) {
            return Ok(Some(NameSource::Value(value.to_owned())));
        }
        let from = entry.get("valueFrom");
        let key_ref = |kind: &str| {
            from.and_then(|f| f.get(kind)).map(|r| {
                (
                    r.get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    r.get("key")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                )
            })
        };
        if let Some((name, key)) = key_ref("configMapKeyRef") {
            return Ok(Some(NameSource::Key(KeyRef::ConfigMap { name, key })));
        }
        if let Some((name, key)) = key_ref("secretKeyRef") {
            return Ok(Some(NameSource::Key(KeyRef::Secret { name, key })));
        }
        return match from {
            Some(from) => Err(unsupported(from.to_string())),
            // `env: [{name: VAR}]`: the empty string.
            None => Ok(Some(NameSource::Value(String::new()))),
        };
    }
    // envFrom: the last source with the key wins; keys may carry a prefix.
    let mut found = Vec::new();
    for from in container
        .get("envFrom")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let prefix = from.get("prefix").and_then(Value::as_str).unwrap_or("");
        let Some(key) = var.strip_prefix(prefix) else {
            continue;
        };
        let name = |kind: &str| {
            from.get(kind)
                .and_then(|r| r.get("name"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let key = key.to_owned();
        if let Some(name) = name("configMapRef") {
            found.push(KeyRef::ConfigMap { name, key });
        } else if let Some(name) = name("secretRef") {
            found.push(KeyRef::Secret { name, key });
        }
    }
    found.reverse();
    Ok((!found.is_empty()).then_some(NameSource::EnvFrom(found)))
}

/// For every selected container that may set the variable, where it gets
/// it (for [`NameSource::EnvFrom`], the objects decide whether it does).
///
/// # Errors
/// No such container, no container sets it, or it is set from something
/// that cannot name a queue.
pub fn sources(
    pod_spec: &Value,
    source: &QueueNameSource,
) -> Result<Vec<(String, NameSource)>, TemplateError> {
    let mut out = Vec::new();
    for container in selected(pod_spec, source)? {
        if let Some(found) = source_in(container, &source.env)? {
            out.push((name_of(container).to_owned(), found));
        }
    }
    if out.is_empty() {
        return Err(TemplateError::NoVariable {
            var: source.env.clone(),
            where_: source
                .container
                .as_ref()
                .map(|c| format!(" in container {c:?}"))
                .unwrap_or_default(),
        });
    }
    Ok(out)
}

/// Sets `var` to `queue` in the named `containers` (those that set it, as
/// [`sources`] and the objects said), saving each original entry in `saved` first (JSON of the `env` entry, or
/// `null` when it came from `envFrom`). An entry already saved is kept: a
/// resumed split never saves its own patch as the original.
///
/// # Errors
/// The template has no containers.
pub fn point_at(
    pod_spec: &mut Value,
    var: &str,
    names: &[String],
    queue: &str,
    saved: &mut BTreeMap<String, String>,
) -> Result<(), TemplateError> {
    let Some(all) = pod_spec.get_mut("containers").and_then(Value::as_array_mut) else {
        return Err(TemplateError::NoContainers);
    };
    for container in all
        .iter_mut()
        .filter(|c| names.iter().any(|n| n == name_of(c)))
    {
        let key = saved_key(name_of(container), var);
        let Some(obj) = container.as_object_mut() else {
            continue;
        };
        let env = obj.entry("env").or_insert_with(|| Value::Array(Vec::new()));
        if !env.is_array() {
            *env = Value::Array(Vec::new());
        }
        let env = env.as_array_mut().expect("made an array above");
        let new_entry = json!({"name": var, "value": queue});
        match env
            .iter_mut()
            .find(|e| e.get("name").and_then(Value::as_str) == Some(var))
        {
            Some(entry) => {
                saved.entry(key).or_insert_with(|| entry.to_string());
                *entry = new_entry;
            }
            None => {
                saved.entry(key).or_insert_with(|| Value::Null.to_string());
                env.push(new_entry);
            }
        }
    }
    Ok(())
}

/// Puts back every saved variable: the original `env` entry where there was
/// one, else removes the entry the split added. Containers or entries gone
/// since (the template was edited by someone else) are left alone.
pub fn restore(pod_spec: &mut Value, saved: &BTreeMap<String, String>) {
    let Some(all) = pod_spec.get_mut("containers").and_then(Value::as_array_mut) else {
        return;
    };
    for (key, original) in saved {
        let Some((container, var)) = key.split_once('/') else {
            continue;
        };
        let Some(c) = all.iter_mut().find(|c| name_of(c) == container) else {
            continue;
        };
        let Some(env) = c.get_mut("env").and_then(Value::as_array_mut) else {
            continue;
        };
        let Some(at) = env
            .iter()
            .position(|e| e.get("name").and_then(Value::as_str) == Some(var))
        else {
            continue;
        };
        match serde_json::from_str::<Value>(original) {
            Ok(Value::Null) => {
                env.remove(at);
            }
            Ok(entry) => env[at] = entry,
            Err(_) => {}
        }
        if env.is_empty() {
            if let Some(obj) = c.as_object_mut() {
                obj.remove("env");
            }
        }
    }
}
