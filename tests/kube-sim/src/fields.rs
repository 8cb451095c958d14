//! Field ownership (`metadata.managedFields`) for server-side apply and every other write.
//!
//! A field set is a set of paths; a path is a list of FieldsV1 elements: `f:<field>`, `k:<key
//! fields as JSON>` (an item of a list merged by key: containers by name…, the keys of
//! `patch::merge_key`), `v:<value as JSON>` (an item of a set list: finalizers). Any other
//! list is atomic (owned as one field). A path that ends at a list item stands for the
//! item's presence (FieldsV1's `.`).
//!
//! * **Apply** by manager M (`application/apply-patch+yaml`): M's field set is exactly the
//!   fields of the applied configuration. A field that another manager owns and whose live
//!   value differs from the applied one is a conflict: 409 with a `FieldManagerConflict`
//!   cause per field, unless `force=true`, which takes the fields over. Fields M applied
//!   before and no longer applies are removed from the object, unless another manager owns
//!   them.
//! * **Update** (create, PUT, patch) by manager U (`fieldManager`, else the User-Agent's
//!   first word): the fields it added or changed become U's (and no one else's); the fields
//!   it removed are no one's.
//!
//! Entries are per (manager, operation, subresource); `status` writes own fields under
//! `status` in their own entry. An object without managedFields (made by a controller of the
//! simulator) gets a `before-first-apply` Update entry owning all of it at the first apply,
//! as a real API server does.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::{error::ApiError, patch, time};

/// A path of FieldsV1 elements.
pub type Path = Vec<String>;
/// A set of field paths.
pub type FieldSet = BTreeSet<Path>;

/// What a write is, for its managedFields entry.
#[derive(Debug, Clone)]
pub struct Write<'a> {
    pub manager: &'a str,
    /// `Apply` or `Update`.
    pub operation: &'static str,
    /// `Some("status")` for the status subresource.
    pub subresource: Option<&'a str>,
    pub api_version: &'a str,
}

/// Top-level fields no manager owns (a Secret's `stringData` is write-only: it is folded
/// into `data` and never stored, so no one can own it).
const UNOWNED: &[&str] = &["apiVersion", "kind", "stringData"];
/// Metadata fields no manager owns.
const UNOWNED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

fn key_element(item: &Value, key: &str) -> Option<String> {
    let k = item.get(key)?;
    let mut m = Map::new();
    m.insert(key.to_owned(), k.clone());
    Some(format!("k:{}", Value::Object(m)))
}

/// The field set of `obj`, limited to the main resource (`subresource` None: no `status`
/// when the type has a status subresource) or to `status`.
pub fn field_set(obj: &Value, subresource: Option<&str>, has_status: bool) -> FieldSet {
    let mut set = FieldSet::new();
    let Some(top) = obj.as_object() else {
        return set;
    };
    for (k, v) in top {
        if UNOWNED.contains(&k.as_str()) {
            continue;
        }
        let is_status = k == "status";
        match subresource {
            Some("status") if !is_status => continue,
            None if is_status && has_status => continue,
            _ => {}
        }
        let path = vec![format!("f:{k}")];
        if k == "metadata" {
            if let Some(meta) = v.as_object() {
                for (mk, mv) in meta {
                    if !UNOWNED_META.contains(&mk.as_str()) {
                        walk(mk, mv, vec![path[0].clone(), format!("f:{mk}")], &mut set);
                    }
                }
            }
            continue;
        }
        walk(k, v, path, &mut set);
    }
    set
}

fn walk(field: &str, v: &Value, path: Path, set: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                let mut p = path.clone();
                p.push(format!("f:{k}"));
                walk(k, child, p, set);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            if let Some(key) = patch::merge_key(field, items) {
                for item in items {
                    let Some(el) = key_element(item, key) else {
                        continue;
                    };
                    let mut p = path.clone();
                    p.push(el);
                    set.insert(p.clone());
                    if let Some(m) = item.as_object() {
                        for (k, child) in m {
                            let mut cp = p.clone();
                            cp.push(format!("f:{k}"));
                            walk(k, child, cp, set);
                        }
                    }
                }
            } else if patch::is_set_list(field) {
                for item in items {
                    let mut p = path.clone();
                    p.push(format!("v:{item}"));
                    set.insert(p);
                }
            } else {
                set.insert(path);
            }
        }
        _ => {
            set.insert(path);
        }
    }
}

/// The value at `path` in `obj`, if it is there.
pub fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for el in path {
        cur = if let Some(f) = el.strip_prefix("f:") {
            cur.get(f)?
        } else if let Some(k) = el.strip_prefix("k:") {
            let want: Map<String, Value> = serde_json::from_str(k).ok()?;
            cur.as_array()?
                .iter()
                .find(|item| want.iter().all(|(wk, wv)| item.get(wk) == Some(wv)))?
        } else if let Some(v) = el.strip_prefix("v:") {
            let want: Value = serde_json::from_str(v).ok()?;
            cur.as_array()?.iter().find(|item| **item == want)?
        } else {
            return None;
        };
    }
    Some(cur)
}

/// Removes the field at `path` from `obj` (a key, a keyed list item, a set item).
fn remove_at(obj: &mut Value, path: &[String]) {
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for el in parent_path {
        let next = if let Some(f) = el.strip_prefix("f:") {
            cur.get_mut(f)
        } else if let Some(k) = el.strip_prefix("k:") {
            let Ok(want) = serde_json::from_str::<Map<String, Value>>(k) else {
                return;
            };
            cur.as_array_mut().and_then(|a| {
                a.iter_mut()
                    .find(|item| want.iter().all(|(wk, wv)| item.get(wk) == Some(wv)))
            })
        } else {
            None
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
    } else if let Some(k) = last.strip_prefix("k:") {
        if let (Ok(want), Some(a)) = (
            serde_json::from_str::<Map<String, Value>>(k),
            cur.as_array_mut(),
        ) {
            a.retain(|item| !want.iter().all(|(wk, wv)| item.get(wk) == Some(wv)));
        }
    } else if let Some(v) = last.strip_prefix("v:")
        && let (Ok(want), Some(a)) = (serde_json::from_str::<Value>(v), cur.as_array_mut())
    {
        a.retain(|item| *item != want);
    }
}

/// A path as conflicts name it: `.spec.containers[name="app"].image`.
pub fn display(path: &[String]) -> String {
    let mut out = String::new();
    for el in path {
        if let Some(f) = el.strip_prefix("f:") {
            out.push('.');
            out.push_str(f);
        } else if let Some(k) = el.strip_prefix("k:") {
            let m: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let inner: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", inner.join(",")));
        } else if let Some(v) = el.strip_prefix("v:") {
            out.push_str(&format!("[={v}]"));
        }
    }
    out
}

/// FieldsV1 (a tree of `{}` leaves, `.` marking an owned node that also has children).
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut cur = &mut root;
        for el in path {
            cur = cur
                .entry(el.clone())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("object");
        }
        cur.insert(".".to_owned(), json!({}));
    }
    // A node whose only child is `.` is a plain leaf.
    fn tidy(m: &mut Map<String, Value>) {
        for v in m.values_mut() {
            if let Some(child) = v.as_object_mut() {
                if child.len() == 1 && child.contains_key(".") {
                    child.clear();
                } else {
                    tidy(child);
                }
            }
        }
    }
    tidy(&mut root);
    Value::Object(root)
}

/// The paths of a FieldsV1 tree.
pub fn from_fields_v1(v: &Value) -> FieldSet {
    fn go(m: &Map<String, Value>, path: &mut Path, set: &mut FieldSet) {
        for (k, child) in m {
            if k == "." {
                set.insert(path.clone());
                continue;
            }
            path.push(k.clone());
            match child.as_object() {
                Some(c) if !c.is_empty() => go(c, path, set),
                _ => {
                    set.insert(path.clone());
                }
            }
            path.pop();
        }
    }
    let mut set = FieldSet::new();
    if let Some(m) = v.as_object() {
        go(m, &mut Vec::new(), &mut set);
    }
    set
}

/// One managedFields entry, decoded.
#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    subresource: Option<String>,
    api_version: String,
    time: String,
    fields: FieldSet,
}

impl Entry {
    fn is(&self, w: &Write<'_>) -> bool {
        self.manager == w.manager
            && self.operation == w.operation
            && self.subresource.as_deref() == w.subresource
    }

    fn to_json(&self) -> Value {
        let mut v = json!({
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(&self.fields),
        });
        if let Some(sub) = &self.subresource {
            v["subresource"] = json!(sub);
        }
        v
    }
}

fn entries(obj: &Value) -> Vec<Entry> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| Entry {
            manager: e["manager"].as_str().unwrap_or_default().to_owned(),
            operation: e["operation"].as_str().unwrap_or("Update").to_owned(),
            subresource: e["subresource"].as_str().map(str::to_owned),
            api_version: e["apiVersion"].as_str().unwrap_or_default().to_owned(),
            time: e["time"].as_str().unwrap_or_default().to_owned(),
            fields: from_fields_v1(&e["fieldsV1"]),
        })
        .collect()
}

fn store_entries(obj: &mut Value, list: Vec<Entry>) {
    let list: Vec<Value> = list
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(Entry::to_json)
        .collect();
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    let meta = obj["metadata"].as_object_mut().expect("metadata");
    if list.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".to_owned(), Value::Array(list));
    }
}

fn entry_for(list: &mut Vec<Entry>, w: &Write<'_>) -> usize {
    if let Some(i) = list.iter().position(|e| e.is(w)) {
        return i;
    }
    list.push(Entry {
        manager: w.manager.to_owned(),
        operation: w.operation.to_owned(),
        subresource: w.subresource.map(str::to_owned),
        api_version: w.api_version.to_owned(),
        time: String::new(),
        fields: FieldSet::new(),
    });
    list.len() - 1
}

/// Records an Update (create, PUT, patch) from `old` (`Null` on create) to `new` in `new`'s
/// managedFields. They start from `old`'s, unless the write itself set different ones (as
/// kubectl does when it moves client-side apply's fields to its server-side apply manager;
/// `[]` resets them), as the API server does.
pub fn record_update(old: &Value, new: &mut Value, w: &Write<'_>, has_status: bool) {
    let given = new["metadata"].get("managedFields");
    let client_set =
        given.is_some_and(Value::is_array) && given != old["metadata"].get("managedFields");
    let mut list = if client_set {
        entries(new)
    } else {
        entries(old)
    };
    let old_set = field_set(old, w.subresource, has_status);
    let new_set = field_set(new, w.subresource, has_status);
    let changed: FieldSet = new_set
        .iter()
        .filter(|p| {
            let presence = p.last().is_some_and(|e| !e.starts_with("f:"));
            match (value_at(old, p), value_at(new, p)) {
                (None, _) => true,
                (Some(_), _) if presence => false,
                (a, b) => a != b,
            }
        })
        .cloned()
        .collect();
    let removed: FieldSet = old_set.difference(&new_set).cloned().collect();
    for e in &mut list {
        if e.subresource.as_deref() != w.subresource {
            continue;
        }
        e.fields.retain(|p| !removed.contains(p));
        if !e.is(w) {
            e.fields.retain(|p| !changed.contains(p));
        }
    }
    if !changed.is_empty() {
        let i = entry_for(&mut list, w);
        list[i].fields.extend(changed);
        list[i].time = time::now_rfc3339();
        list[i].api_version = w.api_version.to_owned();
    }
    store_entries(new, list);
}

/// Server-side apply of `applied` onto `live` (`None`: the object does not exist yet) by
/// `w.manager`: checks conflicts, merges, removes the fields the manager gave up, and
/// records the managedFields. Returns the new object.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    w: &Write<'_>,
    force: bool,
    has_status: bool,
) -> Result<Value, ApiError> {
    let applied_set = field_set(applied, w.subresource, has_status);
    let Some(live) = live else {
        let mut obj = applied.clone();
        let mut list = Vec::new();
        let i = entry_for(&mut list, w);
        list[i].fields = applied_set;
        list[i].time = time::now_rfc3339();
        store_entries(&mut obj, list);
        return Ok(obj);
    };
    let mut list = entries(live);
    if list.is_empty() {
        // As a real API server: what was there before the first apply is owned by
        // `before-first-apply`.
        let all = field_set(live, None, has_status);
        if !all.is_empty() {
            list.push(Entry {
                manager: "before-first-apply".to_owned(),
                operation: "Update".to_owned(),
                subresource: None,
                api_version: w.api_version.to_owned(),
                time: time::now_rfc3339(),
                fields: all,
            });
        }
    }
    let mut conflicts: Vec<(String, String, Path)> = Vec::new();
    for e in &list {
        if e.is(w) || e.subresource.as_deref() != w.subresource {
            continue;
        }
        for p in e.fields.intersection(&applied_set) {
            if value_at(live, p) != value_at(applied, p) {
                conflicts.push((e.manager.clone(), e.api_version.clone(), p.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force && w.manager == "kubectl" {
        // As the API server's last-applied manager: kubectl's server-side apply takes over
        // the fields client-side apply set (those of the last-applied-configuration
        // annotation that still have the value it gives them) without conflicts.
        let allowed = last_applied_fields(live, w.api_version, has_status);
        conflicts.retain(|(_, _, p)| !allowed.contains(p));
        if conflicts.is_empty() {
            return apply(Some(live), applied, w, true, has_status);
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflict_error(&conflicts));
    }
    let conflicting: FieldSet = conflicts.into_iter().map(|(_, _, p)| p).collect();
    let mine = entry_for(&mut list, w);
    let given_up: FieldSet = list[mine]
        .fields
        .difference(&applied_set)
        .cloned()
        .collect();
    for (i, e) in list.iter_mut().enumerate() {
        if i != mine {
            e.fields.retain(|p| !conflicting.contains(p));
        }
    }
    let mut obj = live.clone();
    let mut patch_doc = applied.clone();
    if let Some(m) = patch_doc["metadata"].as_object_mut() {
        m.remove("managedFields");
    }
    patch::strategic_merge(&mut obj, &patch_doc);
    let owned_by_others: FieldSet = list
        .iter()
        .enumerate()
        .filter(|(i, e)| *i != mine && e.subresource.as_deref() == w.subresource)
        .flat_map(|(_, e)| e.fields.iter().cloned())
        .collect();
    // Deepest first, so a removed item does not hide its own fields.
    let mut removals: Vec<&Path> = given_up
        .iter()
        .filter(|p| !owned_by_others.contains(*p))
        .collect();
    removals.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in removals {
        remove_at(&mut obj, p);
    }
    list[mine].fields = applied_set;
    list[mine].time = time::now_rfc3339();
    list[mine].api_version = w.api_version.to_owned();
    store_entries(&mut obj, list);
    Ok(obj)
}

/// The fields of the object's `kubectl.kubernetes.io/last-applied-configuration` whose live
/// value is the one it gives.
fn last_applied_fields(live: &Value, api_version: &str, has_status: bool) -> FieldSet {
    let Some(last) =
        live["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .and_then(|s| serde_json::from_str::<Value>(s).ok())
    else {
        return FieldSet::new();
    };
    if last["apiVersion"].as_str() != Some(api_version) {
        return FieldSet::new();
    }
    field_set(&last, None, has_status)
        .into_iter()
        .filter(|p| value_at(&last, p) == value_at(live, p))
        .collect()
}

fn conflict_error(conflicts: &[(String, String, Path)]) -> ApiError {
    let n = conflicts.len();
    let lines: Vec<String> = conflicts
        .iter()
        .map(|(m, v, p)| format!("conflict with \"{m}\" using {v}: {}", display(p)))
        .collect();
    let message = if n == 1 {
        format!("Apply failed with 1 conflict: {}", lines[0])
    } else {
        format!("Apply failed with {n} conflicts: {}", lines.join("\n"))
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(m, v, p)| {
            json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\" using {v}"),
                   "field": display(p)})
        })
        .collect();
    ApiError::new(409, "Conflict", message).with_details(json!({"causes": causes}))
}

/// The manager of a write that did not name one: the User-Agent up to its first `/`, as the
/// API server does.
pub fn default_manager(user_agent: Option<&str>) -> String {
    let ua = user_agent.unwrap_or_default();
    let m: String = ua
        .split('/')
        .next()
        .unwrap_or_default()
        .chars()
        .take(128)
        .collect();
    if m.is_empty() {
        "unknown".to_owned()
    } else {
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w<'a>(manager: &'a str, operation: &'static str) -> Write<'a> {
        Write {
            manager,
            operation,
            subresource: None,
            api_version: "apps/v1",
        }
    }

    fn deploy(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "d", "labels": {"app": "d"}},
               "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "app", "image": image}]}}}})
    }

    #[test]
    fn field_sets_round_trip_through_fields_v1() {
        let set = field_set(&deploy(1, "x"), None, true);
        assert!(set.contains(&vec![
            "f:spec".to_owned(),
            "f:template".to_owned(),
            "f:spec".to_owned(),
            "f:containers".to_owned(),
            "k:{\"name\":\"app\"}".to_owned(),
        ]));
        let v1 = to_fields_v1(&set);
        assert_eq!(
            v1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"app\"}"],
            json!({".": {}, "f:image": {}, "f:name": {}})
        );
        assert_eq!(v1["f:metadata"], json!({"f:labels": {"f:app": {}}}));
        assert_eq!(from_fields_v1(&v1), set);
    }

    #[test]
    fn a_second_manager_conflicts_unless_forced_and_a_given_up_field_goes() {
        let a = apply(None, &deploy(1, "x"), &w("alice", "Apply"), false, true).unwrap();
        // Same values: shared, no conflict.
        let b = apply(Some(&a), &deploy(1, "x"), &w("bob", "Apply"), false, true).unwrap();
        assert_eq!(b["metadata"]["managedFields"].as_array().unwrap().len(), 2);
        // A different replicas: conflict with alice (bob shares it, but alice still owns it).
        let err = apply(Some(&b), &deploy(3, "x"), &w("bob", "Apply"), false, true).unwrap_err();
        assert_eq!(err.code, 409);
        assert!(
            err.message.contains("conflict with \"alice\""),
            "{}",
            err.message
        );
        assert!(err.message.contains(".spec.replicas"), "{}", err.message);
        let forced = apply(Some(&b), &deploy(3, "x"), &w("bob", "Apply"), true, true).unwrap();
        assert_eq!(forced["spec"]["replicas"], json!(3));
        let alice = &forced["metadata"]["managedFields"][0];
        assert_eq!(alice["manager"], json!("alice"));
        assert!(alice["fieldsV1"]["f:spec"].get("f:replicas").is_none());
        // alice stops applying her label: it is shared with bob, so it stays; bob then
        // stops too, and it goes.
        let mut no_label = deploy(1, "x");
        no_label["metadata"]["labels"] = json!({});
        no_label["spec"].as_object_mut().unwrap().remove("replicas");
        let c = apply(Some(&forced), &no_label, &w("alice", "Apply"), false, true).unwrap();
        assert_eq!(c["metadata"]["labels"], json!({"app": "d"}));
        let mut bob_no_label = deploy(3, "x");
        bob_no_label["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("labels");
        let d = apply(Some(&c), &bob_no_label, &w("bob", "Apply"), false, true).unwrap();
        assert_eq!(d["metadata"]["labels"], json!({}));
    }

    #[test]
    fn updates_take_what_they_change() {
        let mut a = deploy(1, "x");
        record_update(&Value::Null, &mut a, &w("creator", "Update"), true);
        let mut b = deploy(2, "x");
        b["metadata"]["managedFields"] = a["metadata"]["managedFields"].clone();
        record_update(&a, &mut b, &w("scaler", "Update"), true);
        let mf = b["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(mf.len(), 2);
        assert!(mf[0]["fieldsV1"]["f:spec"].get("f:replicas").is_none());
        assert_eq!(mf[1]["manager"], json!("scaler"));
        assert_eq!(mf[1]["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));
        // An apply of another replicas now conflicts with the scaler.
        let err = apply(
            Some(&b),
            &deploy(5, "x"),
            &w("applier", "Apply"),
            false,
            true,
        )
        .unwrap_err();
        assert!(err.message.contains("\"scaler\""), "{}", err.message);
    }
}
