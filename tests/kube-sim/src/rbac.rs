//! RBAC for users: a bearer token `remora-sim-user:<name>` authenticates as
//! user `<name>`, whose resource requests are authorized by the stored Roles,
//! ClusterRoles and their bindings, as a real API server does (the admin token
//! and service-account tokens stay allowed everything: tests and pods rely on it),
//! and so is the token `remora-sim-sa:<ns>:<name>` of a service account named
//! with `serve --rbac-service-account <ns>:<name>` (user
//! `system:serviceaccount:<ns>:<name>`, bound by subjects of kind `ServiceAccount`).
//! A denial is the real server's 403 `Forbidden` status and message.

use hyper::Method;
use serde_json::Value;

use crate::error::ApiError;
use crate::resources::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::Store;

/// The bearer token prefix of an RBAC-checked user.
pub const USER_TOKEN_PREFIX: &str = "remora-sim-user:";

/// A user whose requests RBAC decides (a request extension).
#[derive(Debug, Clone)]
pub struct User(pub String);

/// The user a bearer header names, if it is an RBAC-checked user's token.
pub fn user_of(authorization: &str) -> Option<User> {
    authorization
        .strip_prefix("Bearer ")?
        .strip_prefix(USER_TOKEN_PREFIX)
        .filter(|name| !name.is_empty())
        .map(|name| User(name.to_owned()))
}

/// The RBAC-checked user a service account's bearer header names: its token
/// `remora-sim-sa:<ns>:<name>`, when `<ns>:<name>` is one of `checked`.
pub fn service_account_of(authorization: &str, checked: &[String]) -> Option<User> {
    let sa = authorization
        .strip_prefix("Bearer ")?
        .strip_prefix("remora-sim-sa:")?;
    checked
        .iter()
        .any(|c| c == sa)
        .then(|| User(format!("system:serviceaccount:{sa}")))
}

/// What a request asks, in RBAC's terms.
#[derive(Debug)]
pub struct Attributes<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub sub: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

/// The RBAC verb of a request. Connecting subresources (exec, attach,
/// portforward) need `create`, also over a WebSocket GET (Kubernetes 1.30+).
pub fn verb(method: &Method, named: bool, watch: bool, sub: Option<&str>) -> &'static str {
    if matches!(sub, Some("exec" | "attach" | "portforward")) {
        return "create";
    }
    match *method {
        Method::GET | Method::HEAD if watch => "watch",
        Method::GET | Method::HEAD if named => "get",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "unknown",
    }
}

fn strings(v: &Value) -> impl Iterator<Item = &str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str)
}

fn rule_allows(rule: &Value, a: &Attributes<'_>) -> bool {
    let resource = match a.sub {
        Some(sub) => format!("{}/{sub}", a.resource),
        None => a.resource.to_owned(),
    };
    let any_or = |field: &str, want: &str| strings(&rule[field]).any(|v| v == "*" || v == want);
    let names: Vec<&str> = strings(&rule["resourceNames"]).collect();
    any_or("verbs", a.verb)
        && any_or("apiGroups", a.group)
        && any_or("resources", &resource)
        && (names.is_empty() || a.name.is_some_and(|n| names.contains(&n)))
}

/// Whether a binding names `user`: a subject of kind `User` with its name, or
/// for `system:serviceaccount:<ns>:<name>`, of kind `ServiceAccount` with that
/// namespace and name.
fn binds(binding: &Value, user: &str) -> bool {
    let service_account = user
        .strip_prefix("system:serviceaccount:")
        .and_then(|sa| sa.split_once(':'));
    binding["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| {
            (s["kind"] == "User" && s["name"] == user)
                || service_account.is_some_and(|(ns, name)| {
                    s["kind"] == "ServiceAccount" && s["namespace"] == ns && s["name"] == name
                })
        })
}

/// Allow or refuse `user`'s request, as the RBAC authorizer does: any rule of a
/// role bound to the user (a ClusterRole through a ClusterRoleBinding
/// anywhere, a Role or ClusterRole through a RoleBinding in its namespace).
///
/// # Errors
/// 403 Forbidden, worded as Kubernetes words it.
pub fn authorize(store: &Store, user: &User, a: &Attributes<'_>) -> Result<(), ApiError> {
    let registry = store.registry();
    let list = |plural: &str, namespace: Option<&str>| -> Vec<Value> {
        registry
            .find_by_key("rbac.authorization.k8s.io", plural)
            .map(|rt: &ResourceType| {
                store
                    .list(
                        rt,
                        namespace,
                        &LabelSelector::default(),
                        &FieldSelector::default(),
                    )
                    .0
            })
            .unwrap_or_default()
    };
    let cluster_roles = list("clusterroles", None);
    let role_named = |kind: &str, name: &str, namespace: Option<&str>| -> Option<Value> {
        let candidates = match kind {
            "ClusterRole" => cluster_roles.clone(),
            _ => list("roles", namespace),
        };
        candidates
            .into_iter()
            .find(|r| r["metadata"]["name"] == name)
    };
    let allowed_by = |role: Option<Value>| {
        role.is_some_and(|r| {
            r["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|rule| rule_allows(rule, a))
        })
    };
    let cluster_wide = list("clusterrolebindings", None)
        .into_iter()
        .filter(|b| binds(b, &user.0))
        .any(|b| {
            allowed_by(role_named(
                "ClusterRole",
                b["roleRef"]["name"].as_str().unwrap_or_default(),
                None,
            ))
        });
    let namespaced = a.namespace.is_some_and(|ns| {
        list("rolebindings", Some(ns))
            .into_iter()
            .filter(|b| binds(b, &user.0))
            .any(|b| {
                allowed_by(role_named(
                    b["roleRef"]["kind"].as_str().unwrap_or("Role"),
                    b["roleRef"]["name"].as_str().unwrap_or_default(),
                    Some(ns),
                ))
            })
    });
    if cluster_wide || namespaced {
        return Ok(());
    }
    Err(forbidden(user, a))
}

/// The message of a real API server's denial.
fn forbidden(user: &User, a: &Attributes<'_>) -> ApiError {
    let qualified = if a.group.is_empty() {
        a.resource.to_owned()
    } else {
        format!("{}.{}", a.resource, a.group)
    };
    let object = match a.name {
        Some(name) => format!("{qualified} \"{name}\""),
        None => qualified,
    };
    let resource = match a.sub {
        Some(sub) => format!("{}/{sub}", a.resource),
        None => a.resource.to_owned(),
    };
    let scope = match a.namespace {
        Some(ns) => format!(" in the namespace \"{ns}\""),
        None => " at the cluster scope".to_owned(),
    };
    ApiError::new(
        403,
        "Forbidden",
        format!(
            "{object} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\"{scope}",
            user.0, a.verb, a.group
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs<'a>(verb: &'static str, resource: &'a str, sub: Option<&'a str>) -> Attributes<'a> {
        Attributes {
            verb,
            group: "",
            resource,
            sub,
            namespace: Some("default"),
            name: Some("web-1"),
        }
    }

    #[test]
    fn rules_match_verbs_groups_resources_subresources_and_names() {
        let rule =
            json!({"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]});
        assert!(rule_allows(&rule, &attrs("get", "pods", None)));
        assert!(rule_allows(&rule, &attrs("get", "pods", Some("log"))));
        assert!(!rule_allows(
            &rule,
            &attrs("create", "pods", Some("portforward"))
        ));
        assert!(!rule_allows(&rule, &attrs("get", "services", None)));
        let named = json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"], "resourceNames": ["web-2"]});
        assert!(!rule_allows(&named, &attrs("get", "pods", None)));
        let any = json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]});
        assert!(rule_allows(
            &any,
            &attrs("create", "pods", Some("portforward"))
        ));
    }

    #[test]
    fn a_denial_reads_as_kubernetes_words_it() {
        let a = Attributes {
            verb: "create",
            group: "batch",
            resource: "jobs",
            sub: None,
            namespace: Some("default"),
            name: None,
        };
        let e = forbidden(&User("bob".into()), &a);
        assert_eq!(
            e.message,
            "jobs.batch is forbidden: User \"bob\" cannot create resource \"jobs\" in API group \"batch\" in the namespace \"default\""
        );
        assert_eq!(
            verb(&Method::GET, true, false, Some("portforward")),
            "create"
        );
        assert_eq!(verb(&Method::GET, false, true, None), "watch");
        assert_eq!(user_of("Bearer remora-sim-user:bob").unwrap().0, "bob");
        assert!(user_of("Bearer remora-sim-sa:default:x").is_none());
    }

    #[test]
    fn a_checked_service_account_is_bound_by_service_account_subjects() {
        let checked = ["remora:op".to_owned()];
        let user = service_account_of("Bearer remora-sim-sa:remora:op", &checked).unwrap();
        assert_eq!(user.0, "system:serviceaccount:remora:op");
        assert!(service_account_of("Bearer remora-sim-sa:default:op", &checked).is_none());
        let bound =
            json!({"subjects": [{"kind": "ServiceAccount", "name": "op", "namespace": "remora"}]});
        let elsewhere =
            json!({"subjects": [{"kind": "ServiceAccount", "name": "op", "namespace": "shop"}]});
        assert!(binds(&bound, &user.0));
        assert!(!binds(&elsewhere, &user.0));
        assert!(!binds(&bound, "op"));
    }
}
