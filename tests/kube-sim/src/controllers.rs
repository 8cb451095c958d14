//! Controllers: Deployment → ReplicaSet → Pods, and Jobs. Level-triggered: every change
//! (debounced) reconciles every object of the kinds they own.

mod cronjob;

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    resources::ResourceType,
    selector::{FieldSelector, LabelSelector},
    store::{Propagation, Store},
    time,
};

/// Pause after a change before reconciling, so bursts coalesce.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// Reconcile at least this often (back-offs, missed events).
const RESYNC: Duration = Duration::from_secs(1);

fn rt(store: &Store, group: &str, plural: &str) -> ResourceType {
    store
        .registry()
        .find_by_key(group, plural)
        .cloned()
        .expect("built-in type")
}

fn list_all(store: &Store, rt: &ResourceType) -> Vec<Value> {
    store
        .list(
            rt,
            None,
            &LabelSelector::default(),
            &FieldSelector::default(),
        )
        .0
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn owned_by<'a>(objs: &'a [Value], owner: &Value) -> Vec<&'a Value> {
    let uid = &owner["metadata"]["uid"];
    objs.iter()
        .filter(|o| {
            o["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|refs| refs.iter().any(|r| r["uid"] == *uid))
        })
        .collect()
}

fn owner_ref(owner: &Value) -> Value {
    json!([{
        "apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true,
    }])
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == json!("Ready") && c["status"] == json!("True"))
    })
}

fn terminating(o: &Value) -> bool {
    o["metadata"]["deletionTimestamp"].is_string()
}

/// FNV-1a of the pod template, as the `pod-template-hash` label.
fn template_hash(template: &Value) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in template.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..10)
        .map(|i| ALPHABET[((h >> (i * 6)) % ALPHABET.len() as u64) as usize] as char)
        .collect()
}

fn set_status(store: &Store, rt: &ResourceType, obj: &Value, status: Value) {
    if obj["status"] == status {
        return;
    }
    let ns = obj["metadata"]["namespace"].as_str();
    let _ = store.modify(
        rt,
        ns,
        s(&obj["metadata"]["name"]),
        true,
        false,
        None,
        |old| {
            let mut new = old.clone();
            new["status"] = status;
            Ok(new)
        },
    );
}

/// Runs every controller until the store's process ends.
pub async fn run(store: Store) {
    let mut events_rx = store.subscribe();
    loop {
        reconcile_deployments(&store);
        reconcile_replicasets(&store);
        cronjob::reconcile(&store);
        reconcile_jobs(&store);
        reconcile_statefulsets(&store);
        reconcile_endpoints(&store);
        tokio::select! {
            ev = events_rx.recv() => {
                if matches!(ev, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    return;
                }
                tokio::time::sleep(DEBOUNCE).await;
                while events_rx.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(RESYNC) => {}
        }
    }
}

fn reconcile_deployments(store: &Store) {
    let deploy_rt = rt(store, "apps", "deployments");
    let rs_rt = rt(store, "apps", "replicasets");
    let all_rs = list_all(store, &rs_rt);
    for d in list_all(store, &deploy_rt) {
        if terminating(&d) {
            continue;
        }
        let ns = s(&d["metadata"]["namespace"]).to_owned();
        let name = s(&d["metadata"]["name"]).to_owned();
        let desired = d["spec"]["replicas"].as_i64().unwrap_or(1);
        let hash = template_hash(&d["spec"]["template"]);
        let owned = owned_by(&all_rs, &d);
        let new_name = format!("{name}-{hash}");
        let new_rs = owned
            .iter()
            .find(|r| s(&r["metadata"]["name"]) == new_name)
            .copied();
        let revision = owned
            .iter()
            .filter_map(|r| {
                r["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                    .as_str()?
                    .parse::<i64>()
                    .ok()
            })
            .max()
            .unwrap_or(0);
        match new_rs {
            None => {
                let mut template = d["spec"]["template"].clone();
                template["metadata"]["labels"]["pod-template-hash"] = json!(hash);
                let mut selector = d["spec"]["selector"].clone();
                selector["matchLabels"]["pod-template-hash"] = json!(hash);
                let rs = json!({
                    "apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "metadata": {
                        "name": new_name, "namespace": ns,
                        "labels": template["metadata"]["labels"],
                        "annotations": {"deployment.kubernetes.io/revision": (revision + 1).to_string(),
                                        "deployment.kubernetes.io/desired-replicas": desired.to_string()},
                        "ownerReferences": owner_ref(&d),
                    },
                    "spec": {"replicas": desired, "selector": selector, "template": template},
                });
                let _ = store.create(&rs_rt, Some(&ns), rs, false);
            }
            Some(new_rs) => {
                if new_rs["spec"]["replicas"].as_i64() != Some(desired) {
                    let _ = store.modify(&rs_rt, Some(&ns), &new_name, false, false, None, |old| {
                        let mut n = old.clone();
                        n["spec"]["replicas"] = json!(desired);
                        Ok(n)
                    });
                }
                // Old replica sets go to zero once the new one is fully ready.
                let new_ready = new_rs["status"]["readyReplicas"].as_i64().unwrap_or(0);
                if new_ready >= desired {
                    for old in owned
                        .iter()
                        .filter(|r| s(&r["metadata"]["name"]) != new_name)
                    {
                        if old["spec"]["replicas"].as_i64() != Some(0) {
                            let _ = store.modify(
                                &rs_rt,
                                Some(&ns),
                                s(&old["metadata"]["name"]),
                                false,
                                false,
                                None,
                                |o| {
                                    let mut n = o.clone();
                                    n["spec"]["replicas"] = json!(0);
                                    Ok(n)
                                },
                            );
                        }
                    }
                }
            }
        }
        let sum = |field: &str| {
            owned
                .iter()
                .map(|r| r["status"][field].as_i64().unwrap_or(0))
                .sum::<i64>()
        };
        let updated = new_rs.map_or(0, |r| r["status"]["replicas"].as_i64().unwrap_or(0));
        let available = sum("availableReplicas");
        let now = time::now_rfc3339();
        let status = json!({
            "observedGeneration": d["metadata"]["generation"],
            "replicas": sum("replicas"),
            "updatedReplicas": updated,
            "readyReplicas": sum("readyReplicas"),
            "availableReplicas": available,
            "unavailableReplicas": (desired - available).max(0),
            "conditions": [
                {"type": "Available", "status": if available >= desired { "True" } else { "False" },
                 "reason": if available >= desired { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
                 "lastUpdateTime": d["status"]["conditions"][0]["lastUpdateTime"].as_str().unwrap_or(&now),
                 "lastTransitionTime": d["status"]["conditions"][0]["lastTransitionTime"].as_str().unwrap_or(&now)},
                {"type": "Progressing", "status": "True",
                 "reason": if updated >= desired && available >= desired { "NewReplicaSetAvailable" } else { "ReplicaSetUpdated" },
                 "lastUpdateTime": d["status"]["conditions"][1]["lastUpdateTime"].as_str().unwrap_or(&now),
                 "lastTransitionTime": d["status"]["conditions"][1]["lastTransitionTime"].as_str().unwrap_or(&now)},
            ],
        });
        set_status(store, &deploy_rt, &d, status);
    }
}

fn pod_from_template(owner: &Value, name_prefix: &str, template: &Value) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": template["metadata"].clone(),
        "spec": template["spec"].clone(),
    });
    if !pod["metadata"].is_object() {
        pod["metadata"] = json!({});
    }
    pod["metadata"]["generateName"] = json!(format!("{name_prefix}-"));
    pod["metadata"]["namespace"] = owner["metadata"]["namespace"].clone();
    pod["metadata"]["ownerReferences"] = owner_ref(owner);
    pod
}

fn reconcile_replicasets(store: &Store) {
    let rs_rt = rt(store, "apps", "replicasets");
    let pod_rt = rt(store, "", "pods");
    let pods = list_all(store, &pod_rt);
    for rs in list_all(store, &rs_rt) {
        if terminating(&rs) {
            continue;
        }
        let ns = s(&rs["metadata"]["namespace"]).to_owned();
        let desired = rs["spec"]["replicas"].as_i64().unwrap_or(1);
        let mut mine: Vec<&Value> = owned_by(&pods, &rs)
            .into_iter()
            .filter(|p| !terminating(p))
            .collect();
        let count = mine.len() as i64;
        if count < desired {
            for _ in count..desired {
                let pod =
                    pod_from_template(&rs, s(&rs["metadata"]["name"]), &rs["spec"]["template"]);
                let _ = store.create(&pod_rt, Some(&ns), pod, false);
            }
        } else if count > desired {
            // Not-ready pods go first, then the newest.
            mine.sort_by_key(|p| {
                (
                    is_ready(p),
                    std::cmp::Reverse(s(&p["metadata"]["creationTimestamp"]).to_owned()),
                )
            });
            for p in mine.iter().take((count - desired) as usize) {
                let _ = store.delete(
                    &pod_rt,
                    Some(&ns),
                    s(&p["metadata"]["name"]),
                    Propagation::Background,
                    false,
                );
            }
        }
        let mine: Vec<&Value> = owned_by(&pods, &rs)
            .into_iter()
            .filter(|p| !terminating(p))
            .collect();
        let ready = mine.iter().filter(|p| is_ready(p)).count() as i64;
        let status = json!({
            "replicas": (mine.len() as i64).min(desired.max(mine.len() as i64)),
            "fullyLabeledReplicas": mine.len(),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "observedGeneration": rs["metadata"]["generation"],
        });
        set_status(store, &rs_rt, &rs, status);
    }
}

fn reconcile_jobs(store: &Store) {
    let job_rt = rt(store, "batch", "jobs");
    let pod_rt = rt(store, "", "pods");
    let pods = list_all(store, &pod_rt);
    for job in list_all(store, &job_rt) {
        if terminating(&job) {
            continue;
        }
        let ns = s(&job["metadata"]["namespace"]).to_owned();
        let name = s(&job["metadata"]["name"]).to_owned();
        let completions = job["spec"]["completions"].as_i64().unwrap_or(1);
        let parallelism = job["spec"]["parallelism"].as_i64().unwrap_or(1);
        let backoff_limit = job["spec"]["backoffLimit"].as_i64().unwrap_or(6);
        let mine = owned_by(&pods, &job);
        let phase = |p: &&Value| s(&p["status"]["phase"]).to_owned();
        let succeeded = mine.iter().filter(|p| phase(p) == "Succeeded").count() as i64;
        let failed = mine.iter().filter(|p| phase(p) == "Failed").count() as i64;
        let active = mine
            .iter()
            .filter(|p| !matches!(phase(p).as_str(), "Succeeded" | "Failed"))
            .count() as i64;
        let conds = job["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let finished = conds.iter().any(|c| {
            matches!(s(&c["type"]), "Complete" | "Failed") && c["status"] == json!("True")
        });
        if finished {
            if let Some(ttl) = job["spec"]["ttlSecondsAfterFinished"].as_i64() {
                let done = job["status"]["completionTime"]
                    .as_str()
                    .and_then(time::parse_rfc3339)
                    .unwrap_or(0);
                if time::now_secs() >= done + ttl {
                    let _ = store.delete(&job_rt, Some(&ns), &name, Propagation::Background, false);
                }
            }
            continue;
        }
        let now = time::now_rfc3339();
        let mut status = json!({
            "active": active, "succeeded": succeeded, "failed": failed,
            "startTime": job["status"]["startTime"].as_str().unwrap_or(&now),
        });
        if succeeded >= completions {
            status["completionTime"] = json!(now);
            status["active"] = json!(0);
            status["conditions"] = json!([
                {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now},
                {"type": "Complete", "status": "True", "lastTransitionTime": now}]);
        } else if failed > backoff_limit {
            status["active"] = json!(0);
            status["conditions"] = json!([
                {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded", "lastTransitionTime": now},
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "lastTransitionTime": now}]);
            for p in mine
                .iter()
                .filter(|p| !matches!(phase(p).as_str(), "Succeeded" | "Failed"))
            {
                let _ = store.delete(
                    &pod_rt,
                    Some(&ns),
                    s(&p["metadata"]["name"]),
                    Propagation::Background,
                    false,
                );
            }
        } else {
            let want = parallelism.min(completions - succeeded) - active;
            for _ in 0..want.max(0) {
                let mut pod = pod_from_template(&job, &name, &job["spec"]["template"]);
                pod["metadata"]["labels"]["job-name"] = json!(name);
                pod["metadata"]["labels"]["batch.kubernetes.io/job-name"] = json!(name);
                let _ = store.create(&pod_rt, Some(&ns), pod, false);
            }
        }
        set_status(store, &job_rt, &job, status);
    }
}

/// StatefulSet: pods `<name>-0`, `<name>-1`, … created in order, each once the previous is ready;
/// scaled down from the highest ordinal.
fn reconcile_statefulsets(store: &Store) {
    let sts_rt = rt(store, "apps", "statefulsets");
    let pod_rt = rt(store, "", "pods");
    let pods = list_all(store, &pod_rt);
    for sts in list_all(store, &sts_rt) {
        if terminating(&sts) {
            continue;
        }
        let ns = s(&sts["metadata"]["namespace"]).to_owned();
        let name = s(&sts["metadata"]["name"]).to_owned();
        let desired = sts["spec"]["replicas"].as_i64().unwrap_or(1);
        let mine = owned_by(&pods, &sts);
        let by_ordinal = |i: i64| {
            mine.iter()
                .find(|p| s(&p["metadata"]["name"]) == format!("{name}-{i}"))
                .copied()
        };
        for i in 0..desired {
            match by_ordinal(i) {
                Some(p) if is_ready(p) => continue,
                Some(_) => break,
                None => {
                    let mut pod = pod_from_template(&sts, &name, &sts["spec"]["template"]);
                    if let Some(m) = pod["metadata"].as_object_mut() {
                        m.remove("generateName");
                    }
                    pod["metadata"]["name"] = json!(format!("{name}-{i}"));
                    pod["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"] =
                        json!(format!("{name}-{i}"));
                    pod["spec"]["hostname"] = json!(format!("{name}-{i}"));
                    let _ = store.create(&pod_rt, Some(&ns), pod, false);
                    break;
                }
            }
        }
        for p in &mine {
            let ordinal = s(&p["metadata"]["name"])
                .rsplit('-')
                .next()
                .and_then(|o| o.parse::<i64>().ok());
            if ordinal.is_some_and(|o| o >= desired) && !terminating(p) {
                let _ = store.delete(
                    &pod_rt,
                    Some(&ns),
                    s(&p["metadata"]["name"]),
                    Propagation::Background,
                    false,
                );
            }
        }
        let live: Vec<&&Value> = mine.iter().filter(|p| !terminating(p)).collect();
        let ready = live.iter().filter(|p| is_ready(p)).count();
        let status = json!({
            "observedGeneration": sts["metadata"]["generation"],
            "replicas": live.len(), "readyReplicas": ready, "currentReplicas": live.len(),
            "updatedReplicas": live.len(), "availableReplicas": ready,
            "currentRevision": format!("{name}-{}", template_hash(&sts["spec"]["template"])),
            "updateRevision": format!("{name}-{}", template_hash(&sts["spec"]["template"])),
        });
        set_status(store, &sts_rt, &sts, status);
    }
}

/// The EndpointSlice of a Service with a selector (one per service, as the endpointslice
/// controller makes while a service has under 100 endpoints): every selected pod with its
/// address and `ready`/`serving`/`terminating` conditions, the ports of the Endpoints.
fn reconcile_slice(store: &Store, svc: &Value, selected: &[&Value], ports: &[Value]) {
    let Some(rt) = store
        .registry()
        .find("discovery.k8s.io", "v1", "endpointslices")
        .cloned()
    else {
        return;
    };
    let ns = s(&svc["metadata"]["namespace"]).to_owned();
    let name = s(&svc["metadata"]["name"]).to_owned();
    let endpoints: Vec<Value> = selected
        .iter()
        .filter(|p| p["status"]["podIP"].is_string())
        .map(|p| {
            let ready = is_ready(p);
            json!({"addresses": [p["status"]["podIP"]],
                   "conditions": {"ready": ready, "serving": ready, "terminating": false},
                   "nodeName": p["spec"]["nodeName"],
                   "targetRef": {"kind": "Pod", "name": p["metadata"]["name"], "namespace": ns,
                                 "uid": p["metadata"]["uid"]}})
        })
        .collect();
    let service_label = format!("kubernetes.io/service-name={name}");
    let existing = store
        .list(
            &rt,
            Some(&ns),
            &LabelSelector::parse(&service_label).unwrap_or_default(),
            &FieldSelector::default(),
        )
        .0;
    match existing.first() {
        Some(slice) if slice["endpoints"] == json!(endpoints) && slice["ports"] == json!(ports) => {
        }
        Some(slice) => {
            let _ = store.modify(
                &rt,
                Some(&ns),
                s(&slice["metadata"]["name"]),
                false,
                false,
                None,
                |old| {
                    let mut new = old.clone();
                    new["endpoints"] = json!(endpoints);
                    new["ports"] = json!(ports);
                    Ok(new)
                },
            );
        }
        None => {
            let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"generateName": format!("{name}-"), "namespace": ns,
                             "labels": {"kubernetes.io/service-name": name,
                                        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                             "ownerReferences": owner_ref(svc)},
                "addressType": "IPv4", "endpoints": endpoints, "ports": ports});
            let _ = store.create(&rt, Some(&ns), slice, false);
        }
    }
}

/// Endpoints of every Service with a selector: the ready pods it selects.
fn reconcile_endpoints(store: &Store) {
    let svc_rt = rt(store, "", "services");
    let ep_rt = rt(store, "", "endpoints");
    let pod_rt = rt(store, "", "pods");
    let pods = list_all(store, &pod_rt);
    for svc in list_all(store, &svc_rt) {
        if !svc["spec"]["selector"].is_object() {
            continue;
        }
        let ns = s(&svc["metadata"]["namespace"]).to_owned();
        let name = s(&svc["metadata"]["name"]).to_owned();
        let selector = LabelSelector::from_object(&json!({"matchLabels": svc["spec"]["selector"]}));
        let selected: Vec<&Value> = pods
            .iter()
            .filter(|p| s(&p["metadata"]["namespace"]) == ns && !terminating(p))
            .filter(|p| selector.matches(&p["metadata"]["labels"]))
            .collect();
        let address = |p: &&Value| {
            json!({"ip": p["status"]["podIP"].as_str().unwrap_or("127.0.0.1"),
            "nodeName": p["spec"]["nodeName"],
            "targetRef": {"kind": "Pod", "name": p["metadata"]["name"], "namespace": ns, "uid": p["metadata"]["uid"]}})
        };
        let ready: Vec<Value> = selected
            .iter()
            .filter(|p| is_ready(p))
            .map(address)
            .collect();
        let not_ready: Vec<Value> = selected
            .iter()
            .filter(|p| !is_ready(p))
            .map(address)
            .collect();
        let ports: Vec<Value> = svc["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                // A named targetPort is the selected pods' container port of that name.
                let named = p["targetPort"].as_str().and_then(|want| {
                    selected.iter().find_map(|pod| {
                        pod["spec"]["containers"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
                            .find(|cp| cp["name"] == want)
                            .and_then(|cp| cp["containerPort"].as_i64())
                    })
                });
                let number = p["targetPort"].as_i64().or(named).or(p["port"].as_i64());
                let mut port = json!({"port": number, "protocol": p["protocol"]});
                if let Some(n) = p["name"].as_str() {
                    port["name"] = json!(n);
                }
                port
            })
            .collect();
        let mut subset = json!({"ports": ports});
        if !ready.is_empty() {
            subset["addresses"] = json!(ready);
        }
        if !not_ready.is_empty() {
            subset["notReadyAddresses"] = json!(not_ready);
        }
        let subsets = if selected.is_empty() {
            json!([])
        } else {
            json!([subset])
        };
        reconcile_slice(store, &svc, &selected, &ports);
        match store.get(&ep_rt, Some(&ns), &name) {
            Ok(ep) if ep["subsets"] == subsets => {}
            Ok(_) => {
                let _ = store.modify(&ep_rt, Some(&ns), &name, false, false, None, |old| {
                    let mut new = old.clone();
                    new["subsets"] = subsets.clone();
                    Ok(new)
                });
            }
            Err(_) => {
                let ep = json!({"apiVersion": "v1", "kind": "Endpoints",
                    "metadata": {"name": name, "namespace": ns, "labels": svc["metadata"]["labels"].clone(),
                                 "ownerReferences": owner_ref(&svc)},
                    "subsets": subsets});
                let _ = store.create(&ep_rt, Some(&ns), ep, false);
            }
        }
    }
}
