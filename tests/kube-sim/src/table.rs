//! `meta.k8s.io/v1` Table output, which `kubectl get` asks for.

use serde_json::{Value, json};

use crate::{resources::ResourceType, time};

fn column_defs(rt: &ResourceType) -> Vec<Value> {
    let mut cols = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}),
    ];
    for c in &rt.printer_columns {
        let (type_, format) = match c.type_.as_str() {
            "date" => ("string", "date"),
            other => (other, ""),
        };
        cols.push(json!({"name": c.name, "type": type_, "format": format, "description": c.name, "priority": 0}));
    }
    if !rt.printer_columns.iter().any(|c| c.name == "Age") {
        cols.push(json!({"name": "Age", "type": "string", "format": "", "description": "Age", "priority": 0}));
    }
    cols
}

fn lookup<'a>(obj: &'a Value, path: &str) -> &'a Value {
    let mut cur = obj;
    for seg in path.trim_start_matches('.').split('.') {
        if seg.is_empty() {
            continue;
        }
        if let Some((field, idx)) = seg.split_once('[') {
            cur = &cur[field];
            let idx = idx.trim_end_matches(']');
            cur = match idx.parse::<usize>() {
                Ok(i) => &cur[i],
                Err(_) => &Value::Null,
            };
        } else {
            cur = &cur[seg];
        }
    }
    cur
}

fn count(v: &Value) -> usize {
    v.as_object().map_or(0, |m| m.len())
}

fn num(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn cell(obj: &Value, path: &str, type_: &str) -> Value {
    let statuses = obj["status"]["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    match path {
        "@ready" => {
            let total = obj["spec"]["containers"].as_array().map_or(0, Vec::len);
            let ready = statuses
                .iter()
                .filter(|s| s["ready"] == json!(true))
                .count();
            json!(format!("{ready}/{total}"))
        }
        "@podstatus" => {
            if obj["metadata"]["deletionTimestamp"].is_string() {
                return json!("Terminating");
            }
            for s in &statuses {
                if let Some(r) = s["state"]["waiting"]["reason"].as_str() {
                    return json!(r);
                }
                if let Some(r) = s["state"]["terminated"]["reason"].as_str()
                    && obj["status"]["phase"] != json!("Succeeded")
                {
                    return json!(r);
                }
            }
            if obj["status"]["phase"] == json!("Succeeded") {
                return json!("Completed");
            }
            obj["status"]["phase"].clone()
        }
        "@restarts" => json!(
            statuses
                .iter()
                .map(|s| num(&s["restartCount"]))
                .sum::<i64>()
        ),
        "@deployready" | "@stsready" => json!(format!(
            "{}/{}",
            num(&obj["status"]["readyReplicas"]),
            num(&obj["spec"]["replicas"])
        )),
        "@ports" => {
            let ports: Vec<String> = obj["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    format!(
                        "{}/{}",
                        num(&p["port"]),
                        p["protocol"].as_str().unwrap_or("TCP")
                    )
                })
                .collect();
            json!(if ports.is_empty() {
                "<none>".to_owned()
            } else {
                ports.join(",")
            })
        }
        "@jobstatus" => {
            let conds = obj["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let has = |t: &str| {
                conds
                    .iter()
                    .any(|c| c["type"] == json!(t) && c["status"] == json!("True"))
            };
            json!(if has("Complete") {
                "Complete"
            } else if has("Failed") {
                "Failed"
            } else {
                "Running"
            })
        }
        "@completions" => json!(format!(
            "{}/{}",
            num(&obj["status"]["succeeded"]),
            obj["spec"]["completions"].as_i64().unwrap_or(1)
        )),
        "@datacount" => {
            json!(count(&obj["data"]) + count(&obj["binaryData"]) + count(&obj["stringData"]))
        }
        "@nodestatus" => json!("Ready"),
        // kube-aggregator's APIService columns: `NAMESPACE/NAME` of the service (or `Local`),
        // and the Available condition's status, its reason after it when not True.
        "@apiservice" => match obj["spec"]["service"].as_object() {
            Some(svc) => json!(format!(
                "{}/{}",
                svc.get("namespace")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
                svc.get("name").and_then(Value::as_str).unwrap_or_default()
            )),
            None => json!("Local"),
        },
        "@available" => {
            let available = obj["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Available");
            json!(match available {
                None => "Unknown".to_owned(),
                Some(c)
                    if c["status"] == "True" || c["reason"].as_str().is_none_or(str::is_empty) =>
                {
                    c["status"].as_str().unwrap_or("Unknown").to_owned()
                }
                Some(c) => format!(
                    "{} ({})",
                    c["status"].as_str().unwrap_or("Unknown"),
                    c["reason"].as_str().unwrap_or_default()
                ),
            })
        }
        _ => {
            let v = lookup(obj, path);
            match (type_, v) {
                (_, Value::Null) => match type_ {
                    "integer" | "number" => json!(0),
                    _ => json!("<none>"),
                },
                ("date", Value::String(s)) => json!(time::age(s)),
                ("string", Value::Array(a)) => json!(
                    a.iter()
                        .map(|x| x
                            .as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| x.to_string()))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                ("string", Value::Object(_)) => json!(v.to_string()),
                _ => v.clone(),
            }
        }
    }
}

fn row(rt: &ResourceType, obj: &Value) -> Value {
    let mut cells = vec![obj["metadata"]["name"].clone()];
    for c in &rt.printer_columns {
        cells.push(cell(obj, &c.json_path, &c.type_));
    }
    if !rt.printer_columns.iter().any(|c| c.name == "Age") {
        cells.push(json!(time::age(
            obj["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or_default()
        )));
    }
    json!({"cells": cells, "object": obj})
}

/// A Table of `items`; `headers` false leaves the column definitions out (watch events after the first).
pub fn table(rt: &ResourceType, items: &[Value], rv: u64, headers: bool) -> Value {
    let rows: Vec<Value> = items.iter().map(|o| row(rt, o)).collect();
    let mut t = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv.to_string()},
        "rows": rows,
    });
    t["columnDefinitions"] = if headers {
        json!(column_defs(rt))
    } else {
        json!([])
    };
    t
}
