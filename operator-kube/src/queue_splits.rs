//! Queue splits on Kubernetes: reading a workload's queue names from its pod
//! template and pointing the workload at its temporary queues while a split
//! is active ([`template`] holds the pure edits; [`Workloads`] the API calls:
//! GET, edit, PUT with the object's resourceVersion, retried on conflict).
//!
//! [`controller`] runs splits for sessions (routers from `remora-queues`,
//! state in the object's status); sessions do not reach it through the
//! protocol yet (see docs/queues.md).

pub mod brokers;
pub mod controller;
pub mod template;

use crate::crd::queue_split::{QueueNameSource, WorkloadKind, WorkloadRef};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;
use std::collections::BTreeMap;
use template::{KeyRef, NameSource, TemplateError};

/// The annotation on a workload whose template a split has changed: the
/// split's name. Removed when the workload is restored.
pub const PATCHED_ANNOTATION: &str = "remora.dev/queue-split";

/// How often a PUT that lost a race (409) is retried with a fresh read.
const CONFLICT_RETRIES: usize = 5;

/// What went wrong with a split's workload.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    /// The template cannot be used.
    #[error("{kind:?} {name}: {source}")]
    Template {
        /// The workload's kind.
        kind: WorkloadKind,
        /// Its name.
        name: String,
        /// Why.
        #[source]
        source: TemplateError,
    },
    /// The API server refused or failed a call (a refusal by RBAC says
    /// which install grants what splits need).
    #[error("{what}: {}{}", api_message(.source), rbac_hint(.source))]
    Api {
        /// What was attempted.
        what: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// A referenced ConfigMap or Secret lacks the key, or containers
    /// disagree on the queue's name.
    #[error("{0}")]
    Value(String),
}

/// The API server's own message for a refusal (kube's `Display` of it
/// adds the whole `Status` in debug form), else the client's error.
fn api_message(source: &kube::Error) -> String {
    match source {
        kube::Error::Api(status) => {
            format!("{} ({} {})", status.message, status.code, status.reason)
        }
        other => other.to_string(),
    }
}

/// What to do about a call RBAC refused: the operator's own permissions
/// come from its install, and a split's from the per-namespace Role.
fn rbac_hint(source: &kube::Error) -> &'static str {
    match source {
        kube::Error::Api(status) if status.code == 403 => {
            " (the operator's service account lacks this permission: a queue split needs the Role \
             that `remora operator manifests --queue-split-namespace NAMESPACE` emits for the \
             workload's namespace, next to the install's ClusterRole)"
        }
        _ => "",
    }
}

/// Results of this module.
pub type Result<T, E = SplitError> = std::result::Result<T, E>;

/// The API calls of splits, in one namespace.
#[derive(Clone)]
pub struct Workloads {
    client: kube::Client,
    namespace: String,
}

impl std::fmt::Debug for Workloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workloads")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

fn resource(kind: WorkloadKind) -> ApiResource {
    let (group, version, kind_name, plural) = match kind {
        WorkloadKind::Deployment => ("apps", "v1", "Deployment", "deployments"),
        WorkloadKind::StatefulSet => ("apps", "v1", "StatefulSet", "statefulsets"),
        WorkloadKind::Rollout => ("argoproj.io", "v1alpha1", "Rollout", "rollouts"),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind_name), plural)
}

impl Workloads {
    /// The calls for `namespace`.
    pub fn new(client: kube::Client, namespace: impl Into<String>) -> Self {
        Self {
            client,
            namespace: namespace.into(),
        }
    }

    fn api(&self, kind: WorkloadKind) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.namespace, &resource(kind))
    }

    /// The object holding the workload's pod template: the workload itself,
    /// or for a Rollout with `workloadRef`, the Deployment it names.
    async fn template_owner(
        &self,
        workload: &WorkloadRef,
    ) -> Result<(WorkloadKind, DynamicObject)> {
        let get = |kind: WorkloadKind, name: String| async move {
            self.api(kind)
                .get(&name)
                .await
                .map_err(|source| SplitError::Api {
                    what: format!("reading {kind:?} {name} in namespace {}", self.namespace),
                    source,
                })
        };
        let object = get(workload.kind, workload.name.clone()).await?;
        if workload.kind == WorkloadKind::Rollout {
            let reference = object.data.pointer("/spec/workloadRef");
            if let Some(name) = reference
                .and_then(|r| r.get("name"))
                .and_then(Value::as_str)
            {
                let kind = reference
                    .and_then(|r| r.get("kind"))
                    .and_then(Value::as_str);
                if kind.is_some_and(|k| k != "Deployment") {
                    return Err(SplitError::Value(format!(
                        "Rollout {}: workloadRef kind {kind:?} is not supported (Deployment only)",
                        workload.name
                    )));
                }
                return Ok((
                    WorkloadKind::Deployment,
                    get(WorkloadKind::Deployment, name.to_owned()).await?,
                ));
            }
        }
        Ok((workload.kind, object))
    }

    fn template_error(
        kind: WorkloadKind,
        object: &DynamicObject,
    ) -> impl Fn(TemplateError) -> SplitError {
        let name = object.metadata.name.clone().unwrap_or_default();
        move |source| SplitError::Template {
            kind,
            name: name.clone(),
            source,
        }
    }

    /// The containers that set `source`'s variable, with the value each gets.
    async fn settings(
        &self,
        kind: WorkloadKind,
        object: &DynamicObject,
        source: &QueueNameSource,
    ) -> Result<Vec<(String, String)>> {
        let pod_spec = object
            .data
            .pointer("/spec/template/spec")
            .cloned()
            .unwrap_or(Value::Null);
        let found =
            template::sources(&pod_spec, source).map_err(Self::template_error(kind, object))?;
        let mut out = Vec::new();
        for (container, from) in found {
            let value = match from {
                NameSource::Value(v) => Some(v),
                NameSource::Key(key) => Some(self.key(&key).await?.ok_or_else(|| {
                    SplitError::Value(format!(
                        "container {container:?} reads {} from {}, which does not exist",
                        source.env,
                        describe(&key)
                    ))
                })?),
                NameSource::EnvFrom(keys) => {
                    let mut value = None;
                    for key in keys {
                        if let Some(v) = self.key(&key).await? {
                            value = Some(v);
                            break;
                        }
                    }
                    value
                }
            };
            if let Some(value) = value {
                out.push((container, value));
            }
        }
        if out.is_empty() {
            return Err(Self::template_error(kind, object)(
                TemplateError::NoVariable {
                    var: source.env.clone(),
                    where_: source
                        .container
                        .as_ref()
                        .map(|c| format!(" in container {c:?}"))
                        .unwrap_or_default(),
                },
            ));
        }
        Ok(out)
    }

    /// The queue name the workload reads from `source` now.
    ///
    /// # Errors
    /// The workload, its variable or a referenced key is missing, or its
    /// containers disagree.
    pub async fn queue_name(
        &self,
        workload: &WorkloadRef,
        source: &QueueNameSource,
    ) -> Result<String> {
        let (kind, object) = self.template_owner(workload).await?;
        let mut names = BTreeMap::new();
        for (container, value) in self.settings(kind, &object, source).await? {
            names.insert(value, container);
        }
        if names.len() > 1 {
            return Err(SplitError::Value(format!(
                "{kind:?} {}: containers disagree on {}: {names:?}",
                workload.name, source.env
            )));
        }
        Ok(names
            .into_keys()
            .next()
            .expect("settings returns at least one"))
    }

    /// A ConfigMap's or Secret's key; `None` when the object or key is absent.
    async fn key(&self, key: &KeyRef) -> Result<Option<String>> {
        let api_error = |source| SplitError::Api {
            what: format!("reading {}", describe(key)),
            source,
        };
        match key {
            KeyRef::ConfigMap { name, key } => {
                let cm = Api::<ConfigMap>::namespaced(self.client.clone(), &self.namespace)
                    .get_opt(name)
                    .await
                    .map_err(api_error)?;
                Ok(cm.and_then(|cm| cm.data).and_then(|d| d.get(key).cloned()))
            }
            KeyRef::Secret { name, key } => {
                let secret = Api::<Secret>::namespaced(self.client.clone(), &self.namespace)
                    .get_opt(name)
                    .await
                    .map_err(api_error)?;
                match secret
                    .and_then(|s| s.data)
                    .and_then(|d| d.get(key).cloned())
                {
                    None => Ok(None),
                    Some(bytes) => String::from_utf8(bytes.0).map(Some).map_err(|_| {
                        SplitError::Value(format!("Secret {name} key {key:?} is not text"))
                    }),
                }
            }
        }
    }

    /// Points every `(source, queue)` variable of the workload at `queue`
    /// and marks it with [`PATCHED_ANNOTATION`]; the originals go into
    /// `saved` (kept where already there). The change rolls the workload.
    ///
    /// # Errors
    /// As [`Self::queue_name`], or the API server refused the update.
    pub async fn point_at(
        &self,
        split: &str,
        workload: &WorkloadRef,
        targets: &[(QueueNameSource, String)],
        saved: &mut BTreeMap<String, String>,
    ) -> Result<()> {
        let (kind, object) = self.template_owner(workload).await?;
        let mut containers = Vec::new();
        for (source, _) in targets {
            let names: Vec<String> = self
                .settings(kind, &object, source)
                .await?
                .into_iter()
                .map(|(c, _)| c)
                .collect();
            containers.push(names);
        }
        self.edit(workload, |kind, object, pod_spec| {
            for ((source, queue), names) in targets.iter().zip(&containers) {
                template::point_at(pod_spec, &source.env, names, queue, saved)
                    .map_err(Self::template_error(kind, object))?;
            }
            Ok(Some(split.to_owned()))
        })
        .await
    }

    /// Waits until the workload's rollout is over: every replica runs the
    /// current template and no pod of an older one is left (what `kubectl
    /// rollout status` waits for).
    ///
    /// # Errors
    /// The API failed, or `wait` passed first.
    pub async fn wait_rolled_out(
        &self,
        workload: &WorkloadRef,
        wait: std::time::Duration,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let object = self
                .api(workload.kind)
                .get(&workload.name)
                .await
                .map_err(|source| SplitError::Api {
                    what: format!("reading {:?} {}", workload.kind, workload.name),
                    source,
                })?;
            let int = |path: &str| object.data.pointer(path).and_then(Value::as_i64);
            let generation = object.metadata.generation.unwrap_or(0);
            let wanted = int("/spec/replicas").unwrap_or(1);
            let done = int("/status/observedGeneration").unwrap_or(0) >= generation
                && int("/status/updatedReplicas").unwrap_or(0) >= wanted
                && int("/status/replicas").unwrap_or(0) <= wanted
                && int("/status/availableReplicas")
                    .or_else(|| int("/status/readyReplicas"))
                    .unwrap_or(0)
                    >= wanted;
            if done {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SplitError::Value(format!(
                    "{:?} {} did not finish rolling onto its temporary queues within {}s",
                    workload.kind,
                    workload.name,
                    wait.as_secs()
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }

    /// Puts the saved variables back and removes [`PATCHED_ANNOTATION`]
    /// (another rollout).
    ///
    /// # Errors
    /// The API server refused the update.
    pub async fn restore(
        &self,
        workload: &WorkloadRef,
        saved: &BTreeMap<String, String>,
    ) -> Result<()> {
        self.edit(workload, |_, _, pod_spec| {
            template::restore(pod_spec, saved);
            Ok(None)
        })
        .await
    }

    /// GET, edit the template's pod spec, set or clear the annotation, PUT;
    /// again from a fresh read when someone else updated it meanwhile.
    async fn edit(
        &self,
        workload: &WorkloadRef,
        mut change: impl FnMut(WorkloadKind, &DynamicObject, &mut Value) -> Result<Option<String>>,
    ) -> Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (kind, mut object) = self.template_owner(workload).await?;
            let Some(mut pod_spec) = object.data.pointer("/spec/template/spec").cloned() else {
                return Err(Self::template_error(kind, &object)(
                    TemplateError::NoContainers,
                ));
            };
            let annotation = change(kind, &object, &mut pod_spec)?;
            if let Some(slot) = object.data.pointer_mut("/spec/template/spec") {
                *slot = pod_spec;
            }
            let annotations = object
                .metadata
                .annotations
                .get_or_insert_with(BTreeMap::new);
            match annotation {
                Some(split) => {
                    annotations.insert(PATCHED_ANNOTATION.to_owned(), split);
                }
                None => {
                    annotations.remove(PATCHED_ANNOTATION);
                }
            }
            let name = object.metadata.name.clone().unwrap_or_default();
            match self
                .api(kind)
                .replace(&name, &PostParams::default(), &object)
                .await
            {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(status))
                    if status.code == 409 && attempt < CONFLICT_RETRIES =>
                {
                    continue;
                }
                Err(source) => {
                    return Err(SplitError::Api {
                        what: format!("updating {kind:?} {name} in namespace {}", self.namespace),
                        source,
                    });
                }
            }
        }
    }
}

fn describe(key: &KeyRef) -> String {
    match key {
        KeyRef::ConfigMap { name, key } => format!("ConfigMap {name} key {key:?}"),
        KeyRef::Secret { name, key } => format!("Secret {name} key {key:?}"),
    }
}

#[cfg(test)]
mod tests;
