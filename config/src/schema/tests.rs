//! Tests for the JSON Schema, the annotated example file and the reference docs.

use super::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn example_path() -> PathBuf {
    manifest_dir().join("examples/remora.toml")
}

fn docs() -> String {
    std::fs::read_to_string(manifest_dir().join("../docs/config.md")).unwrap()
}

/// Every property name anywhere in the schema (top level and `$defs`).
fn property_names(schema: &Value, names: &mut BTreeSet<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get("properties") {
                names.extend(props.keys().cloned());
            }
            map.values().for_each(|v| property_names(v, names));
        }
        Value::Array(items) => items.iter().for_each(|v| property_names(v, names)),
        _ => {}
    }
}

/// The definition a property points to (`$ref`, or `anyOf` with null for an `Option`).
fn resolve<'a>(root: &'a Value, node: &'a Value) -> (Option<&'a str>, &'a Value) {
    if let Some(Value::String(r)) = node.get("$ref") {
        let name = r.trim_start_matches("#/$defs/");
        return (Some(name), &root["$defs"][name]);
    }
    if let Some(Value::Array(options)) = node.get("anyOf") {
        if let Some(with_ref) = options.iter().find(|o| o.get("$ref").is_some()) {
            return resolve(root, with_ref);
        }
    }
    (None, node)
}

/// Dotted paths of every key (`network.dns.filter.remote`); a recursive
/// definition (the HTTP filter) is listed once, as `http_filter.<key>`.
fn key_paths(
    root: &Value,
    node: &Value,
    prefix: &str,
    seen: &mut BTreeSet<String>,
    out: &mut Vec<String>,
) {
    let Some(Value::Object(props)) = node.get("properties") else {
        return;
    };
    for (name, prop) in props {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        let (def, target) = resolve(root, prop);
        let nested = target.get("properties").is_some();
        let first_visit = def.is_none_or(|d| seen.insert(d.to_owned()));
        if nested && first_visit {
            key_paths(root, target, &path, seen, out);
        } else if !nested {
            out.push(path);
        }
    }
}

#[test]
fn schema_describes_the_config_file() {
    let schema = json_schema();
    assert!(schema.is_object());
    let props = &schema["properties"];
    for key in ["target", "namespace", "operator", "env", "fs", "network"] {
        assert!(props.get(key).is_some(), "missing {key}");
        assert!(
            props[key]["description"].is_string(),
            "{key} has no description"
        );
    }
    assert_eq!(schema["additionalProperties"], Value::Bool(false));
    assert!(schema.get("required").is_none(), "every key is optional");
    let defs = &schema["$defs"];
    assert!(defs["EnvConfig"]["properties"].get("override").is_some());
    assert!(
        defs["NetworkConfig"]["properties"]
            .get("incoming")
            .is_some()
    );
    assert!(defs["HttpFilter"]["properties"]["all_of"].is_object());
}

#[test]
fn every_schema_property_has_a_description() {
    fn check(schema: &Value, path: &str) {
        if let Value::Object(map) = schema {
            if let Some(Value::Object(props)) = map.get("properties") {
                for (name, prop) in props {
                    assert!(prop.get("description").is_some(), "{path}.{name}");
                }
            }
            for (k, v) in map {
                check(v, &format!("{path}/{k}"));
            }
        }
    }
    check(&json_schema(), "#");
}

#[test]
fn example_file_loads_validates_and_covers_every_key() {
    let path = example_path();
    let config = crate::Config::from_file(&path).unwrap();
    config.validate().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let mut names = BTreeSet::new();
    property_names(&json_schema(), &mut names);
    for name in &names {
        assert!(
            text.contains(&format!("{name} ="))
                || text.contains(&format!(".{name}]"))
                || text.contains(&format!("[{name}]")),
            "example misses {name}"
        );
    }
}

#[test]
fn docs_cover_every_key_env_var_and_built_in_list() {
    let docs = docs();
    let schema = json_schema();
    let mut paths = Vec::new();
    key_paths(&schema, &schema, "", &mut BTreeSet::new(), &mut paths);
    assert!(
        paths.contains(&"network.outgoing.filter.remote".to_owned()),
        "{paths:?}"
    );
    for path in &paths {
        assert!(docs.contains(&format!("`{path}`")), "docs miss key {path}");
    }
    for var in crate::ENV_VARS {
        assert!(docs.contains(var.name), "docs miss {}", var.name);
    }
    assert!(docs.contains(crate::CONFIG_FILE_ENV));
    for pattern in crate::DEFAULT_LOCAL {
        assert!(
            docs.contains(&format!("`{pattern}`")),
            "docs miss default-local {pattern}"
        );
    }
    for name in crate::NEVER_IMPORTED {
        assert!(
            docs.contains(&format!("`{name}`")),
            "docs miss never-imported {name}"
        );
    }
}
