//! The thin client layer: build a `kube::Client` from flags, config keys,
//! `KUBECONFIG` or the in-cluster service account, then fetch the objects
//! [`crate::resolve`] decides over.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DynamicObject, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Config};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::path::PathBuf;

use crate::resolve::{self, Owners, ResolvedPod, RolloutPods};
use crate::target::{KubeTarget, TargetKind};
use crate::{Error, Result};

/// How to reach the cluster: `--kubeconfig`, `--context`, `-n/--namespace`
/// (or the config keys `kubeconfig`, `context`, `namespace`). Unset fields
/// fall back to `KUBECONFIG`, `~/.kube/config`, then the in-cluster service account.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientOptions {
    /// A kubeconfig file.
    pub kubeconfig: Option<PathBuf>,
    /// A context of the kubeconfig.
    pub context: Option<String>,
    /// The namespace; unset: the context's, else `default`.
    pub namespace: Option<String>,
}

/// A connected client and the namespace targets are looked up in.
#[derive(Clone)]
pub struct KubeClient {
    /// The client.
    pub client: Client,
    /// The namespace in effect.
    pub namespace: String,
}

impl Debug for KubeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeClient")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// Build the client configuration the way kubectl does.
///
/// # Errors
/// [`Error::Config`] saying which source failed.
pub async fn config(options: &ClientOptions) -> Result<Config> {
    let kube_options = KubeConfigOptions {
        context: options.context.clone(),
        ..KubeConfigOptions::default()
    };
    let mut config = match &options.kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).map_err(|e| {
                Error::Config(format!("reading kubeconfig {}: {e}", path.display()))
            })?;
            Config::from_custom_kubeconfig(file, &kube_options)
                .await
                .map_err(|e| Error::Config(format!("kubeconfig {}: {e}", path.display())))?
        }
        None if options.context.is_some() => {
            Config::from_kubeconfig(&kube_options).await.map_err(|e| {
                Error::Config(format!("kubeconfig (KUBECONFIG or ~/.kube/config): {e}"))
            })?
        }
        None => Config::infer().await.map_err(|e| {
            Error::Config(format!(
                "no cluster: {e} (give --kubeconfig, set KUBECONFIG, or run inside a pod)"
            ))
        })?,
    };
    if let Some(ns) = &options.namespace {
        config.default_namespace.clone_from(ns);
    }
    Ok(config)
}

impl KubeClient {
    /// Connect with `options`.
    ///
    /// # Errors
    /// [`Error::Config`] when no configuration is usable.
    pub async fn connect(options: &ClientOptions) -> Result<KubeClient> {
        let config = config(options).await?;
        let namespace = config.default_namespace.clone();
        let client = Client::try_from(config)
            .map_err(|e| Error::Config(format!("building the client: {e}")))?;
        Ok(KubeClient { client, namespace })
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + Debug,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn get<K>(&self, kind: TargetKind, name: &str) -> Result<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + Debug,
    {
        let what = format!("{kind}/{name}");
        self.api::<K>()
            .get_opt(name)
            .await
            .map_err(|e| Error::api(format!("getting {what} in namespace {}", self.namespace), e))?
            .ok_or_else(|| Error::NotFound {
                target: what,
                namespace: self.namespace.clone(),
            })
    }

    async fn list<K>(&self, what: &str, params: &ListParams) -> Result<Vec<K>>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + Debug,
    {
        Ok(self
            .api::<K>()
            .list(params)
            .await
            .map_err(|e| Error::api(format!("listing {what} in namespace {}", self.namespace), e))?
            .items)
    }

    async fn pods_of(&self, target: &str, selector: &LabelSelector) -> Result<Pod> {
        self.owned_pods_of(target, selector, Owners::Any).await
    }

    /// The first ready pod `selector` matches that `owners` owns.
    async fn owned_pods_of(
        &self,
        target: &str,
        selector: &LabelSelector,
        owners: Owners<'_>,
    ) -> Result<Pod> {
        let pods: Vec<Pod> = self
            .list(
                "pods",
                &ListParams::default().labels(&resolve::selector_string(selector)),
            )
            .await?;
        let pod = resolve::pick_owned_pod(target, &self.namespace, selector, owners, &pods)?;
        Ok(pod.clone())
    }

    /// The first ready pod of a controller that owns its pods directly
    /// (StatefulSet, ReplicaSet, Job): matched by its selector and owned by its uid.
    async fn pods_owned_by(
        &self,
        target: &str,
        selector: &LabelSelector,
        uid: Option<&str>,
    ) -> Result<Pod> {
        match uid {
            Some(uid) => {
                self.owned_pods_of(target, selector, Owners::Uids(&[uid]))
                    .await
            }
            None => self.pods_of(target, selector).await,
        }
    }

    /// The first ready pod of a Deployment: one of its own ReplicaSets' pods,
    /// not a pod of another owner with the same labels (an Argo Rollout
    /// with a `workloadRef` to it).
    async fn deployment_pod(&self, target: &str, d: &Deployment) -> Result<Pod> {
        let sel = resolve::require_selector(target, resolve::deployment_selector(d))?;
        if d.metadata.uid.is_none() {
            return self.pods_of(target, &sel).await;
        }
        let sets: Vec<ReplicaSet> = self
            .list(
                "replicasets",
                &ListParams::default().labels(&resolve::selector_string(&sel)),
            )
            .await?;
        let uids: Vec<&str> = resolve::deployment_replicasets(d, &sets)
            .into_iter()
            .filter_map(|r| r.metadata.uid.as_deref())
            .collect();
        self.owned_pods_of(target, &sel, Owners::Uids(&uids)).await
    }

    fn rollout_api(&self) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Rollout");
        let resource = ApiResource::from_gvk_with_plural(&gvk, "rollouts");
        Api::namespaced_with(self.client.clone(), &self.namespace, &resource)
    }

    /// Resolve a target to its pod and container.
    ///
    /// # Errors
    /// What [`crate::resolve`] reports, [`Error::NotFound`], or [`Error::Api`].
    pub async fn resolve(&self, target: &KubeTarget) -> Result<Option<ResolvedPod>> {
        let KubeTarget::Object {
            kind,
            name,
            container,
        } = target
        else {
            return Ok(None);
        };
        let what = target.object();
        let selector = |s: Option<LabelSelector>| resolve::require_selector(&what, s);
        let pod = match kind {
            TargetKind::Pod => {
                let pod: Pod = self.get(*kind, name).await?;
                resolve::check_pod(&what, &self.namespace, &pod)?.clone()
            }
            TargetKind::Deployment => {
                let d: Deployment = self.get(*kind, name).await?;
                self.deployment_pod(&what, &d).await?
            }
            TargetKind::StatefulSet => {
                let s: StatefulSet = self.get(*kind, name).await?;
                let sel = selector(resolve::statefulset_selector(&s))?;
                self.pods_owned_by(&what, &sel, s.metadata.uid.as_deref())
                    .await?
            }
            TargetKind::ReplicaSet => {
                let r: ReplicaSet = self.get(*kind, name).await?;
                let sel = selector(resolve::replicaset_selector(&r))?;
                self.pods_owned_by(&what, &sel, r.metadata.uid.as_deref())
                    .await?
            }
            TargetKind::Job => {
                let j: Job = self.get(*kind, name).await?;
                let sel = selector(resolve::job_selector(&j))?;
                self.pods_owned_by(&what, &sel, j.metadata.uid.as_deref())
                    .await?
            }
            TargetKind::Service => {
                let s: Service = self.get(*kind, name).await?;
                self.pods_of(&what, &selector(resolve::service_selector(&s))?)
                    .await?
            }
            TargetKind::CronJob => {
                let c: CronJob = self.get(*kind, name).await?;
                let jobs: Vec<Job> = self.list("jobs", &ListParams::default()).await?;
                let job =
                    resolve::cronjob_newest_job(&c, &jobs).ok_or_else(|| Error::NoReadyPod {
                        target: what.clone(),
                        namespace: self.namespace.clone(),
                        found: "it has no job yet".to_owned(),
                    })?;
                let sel = selector(resolve::job_selector(job))?;
                self.pods_owned_by(&what, &sel, job.metadata.uid.as_deref())
                    .await?
            }
            TargetKind::Rollout => {
                let rollout = self
                    .rollout_api()
                    .get_opt(name)
                    .await
                    .map_err(|e| {
                        Error::api(format!("getting {what} in namespace {}", self.namespace), e)
                    })?
                    .ok_or_else(|| Error::NotFound {
                        target: what.clone(),
                        namespace: self.namespace.clone(),
                    })?;
                let json = serde_json::to_value(&rollout)
                    .map_err(|e| Error::Resolve(format!("{what}: {e}")))?;
                let sel = match resolve::rollout_pods(&what, &json)? {
                    RolloutPods::Selector(s) => s,
                    RolloutPods::WorkloadRef { kind, name } if kind == "ReplicaSet" => {
                        let r: ReplicaSet = self.get(TargetKind::ReplicaSet, &name).await?;
                        selector(resolve::replicaset_selector(&r))?
                    }
                    RolloutPods::WorkloadRef { name, .. } => {
                        let d: Deployment = self.get(TargetKind::Deployment, &name).await?;
                        selector(resolve::deployment_selector(&d))?
                    }
                };
                // The rollout's own ReplicaSets (Argo creates them, also for a
                // workloadRef); before it has any, the pods its selector matches.
                let sets: Vec<ReplicaSet> =
                    self.list("replicasets", &ListParams::default()).await?;
                let owned = resolve::rollout_replicasets(&json, &sets);
                if owned.is_empty() {
                    self.pods_of(&what, &sel).await?
                } else {
                    let pods: Vec<Pod> = self
                        .list(
                            "pods",
                            &ListParams::default().labels(&resolve::selector_string(&sel)),
                        )
                        .await?;
                    resolve::pick_rollout_pod(&what, &self.namespace, &owned, &pods)?.clone()
                }
            }
        };
        let container = resolve::pick_container(&pod, container.as_deref())?;
        Ok(Some(resolve::resolved(&pod, container)))
    }

    /// The targets a user can pick in the namespace, as target strings:
    /// ready pods with each of their containers, then the owners that have
    /// a selector, sorted within each kind. Rollouts are listed when the CRD exists.
    ///
    /// # Errors
    /// [`Error::Api`] when pods cannot be listed.
    pub async fn list_targets(&self) -> Result<Vec<String>> {
        let all = ListParams::default();
        let mut out = Vec::new();
        let mut pods: Vec<Pod> = self.list("pods", &all).await?;
        pods.retain(resolve::pod_is_ready);
        pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        for pod in &pods {
            let name = pod.metadata.name.clone().unwrap_or_default();
            out.push(format!("pod/{name}"));
            let containers = pod.spec.iter().flat_map(|s| &s.containers);
            if pod.spec.as_ref().is_some_and(|s| s.containers.len() > 1) {
                out.extend(containers.map(|c| format!("pod/{name}/container/{}", c.name)));
            }
        }
        let mut names = |kind: TargetKind, mut list: Vec<Option<String>>| {
            list.sort();
            out.extend(list.into_iter().flatten().map(|n| format!("{kind}/{n}")));
        };
        names(
            TargetKind::Deployment,
            self.list::<Deployment>("deployments", &all)
                .await?
                .into_iter()
                .map(|o| o.metadata.name)
                .collect(),
        );
        names(
            TargetKind::StatefulSet,
            self.list::<StatefulSet>("statefulsets", &all)
                .await?
                .into_iter()
                .map(|o| o.metadata.name)
                .collect(),
        );
        names(
            TargetKind::Job,
            self.list::<Job>("jobs", &all)
                .await?
                .into_iter()
                .map(|o| o.metadata.name)
                .collect(),
        );
        names(
            TargetKind::CronJob,
            self.list::<CronJob>("cronjobs", &all)
                .await?
                .into_iter()
                .map(|o| o.metadata.name)
                .collect(),
        );
        if let Ok(rollouts) = self.rollout_api().list(&all).await {
            names(
                TargetKind::Rollout,
                rollouts
                    .items
                    .into_iter()
                    .map(|o| o.metadata.name)
                    .collect(),
            );
        }
        names(
            TargetKind::Service,
            self.list::<Service>("services", &all)
                .await?
                .into_iter()
                .filter(|s| resolve::service_selector(s).is_some())
                .map(|o| o.metadata.name)
                .collect(),
        );
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
