//! The agent's Kubernetes objects, as pure functions: a Job pinned to the
//! target's node (the default), an ephemeral container in the target pod
//! (`agent.ephemeral`), or a pod of its own for `targetless`.
//!
//! Tests compare them with golden JSON under `kube-platform/tests/golden/`;
//! `kubernetes-validate` checks those files against the API schema.

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, EphemeralContainer,
    HostPathVolumeSource, Pod, PodSpec, PodTemplateSpec, ResourceRequirements, Secret,
    SecretKeySelector, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use std::collections::BTreeMap;

use crate::ResolvedPod;
pub use remora_config::agent::{
    AgentMode, AgentResources, AgentSettings, AgentToleration, DEFAULT_AGENT_IMAGE,
};

/// The port the agent listens on inside its pod.
pub const AGENT_PORT: u16 = 47101;
/// Label every agent object carries, so leftovers can be found and removed.
pub const AGENT_LABEL: &str = "app.kubernetes.io/name";
/// Value of [`AGENT_LABEL`].
pub const AGENT_LABEL_VALUE: &str = "remora-agent";
/// Label with the run id.
pub const RUN_LABEL: &str = "remora.dev/run";
/// The environment variable carrying the per-run token to the agent.
pub const TOKEN_ENV: &str = "REMORA_AGENT_TOKEN";
/// The key of the token in the agent's Secret ([`AgentSpec::token_secret`]).
pub const TOKEN_KEY: &str = "token";

/// Runtime sockets mounted into the agent (host path = container path):
/// containerd, CRI-O and Docker. Missing ones are created empty by nobody:
/// `DirectoryOrCreate` is not used, the mount type is `""` so a missing
/// socket leaves an empty path the agent skips.
pub const RUNTIME_SOCKETS: &[(&str, &str)] = &[
    ("containerd", "/run/containerd/containerd.sock"),
    ("crio", "/run/crio/crio.sock"),
    ("docker", "/var/run/docker.sock"),
];

/// One agent to start: for which pod (none: targetless), under which run id, with which token.
#[derive(Debug, Clone)]
pub struct AgentSpec<'a> {
    /// The `agent.*` settings.
    pub settings: &'a AgentSettings,
    /// The target, or `None` for a targetless agent.
    pub target: Option<&'a ResolvedPod>,
    /// Short unique id of this run (lowercase alphanumeric), part of object names.
    pub run_id: &'a str,
    /// The per-run token the agent checks: kept in the Secret
    /// [`AgentSpec::token_secret`], which [`TOKEN_ENV`] refers to.
    pub token: &'a str,
}

impl AgentSpec<'_> {
    /// Name of the Job, pod or ephemeral container.
    pub fn name(&self) -> String {
        format!("remora-agent-{}", self.run_id)
    }

    fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.settings.labels.clone();
        labels.insert(AGENT_LABEL.to_owned(), AGENT_LABEL_VALUE.to_owned());
        labels.insert(RUN_LABEL.to_owned(), self.run_id.to_owned());
        labels
    }

    fn metadata(&self, namespace: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.name()),
            namespace: Some(namespace.to_owned()),
            labels: Some(self.labels()),
            annotations: (!self.settings.annotations.is_empty())
                .then(|| self.settings.annotations.clone()),
            ..ObjectMeta::default()
        }
    }

    /// The agent's command line: where to listen, how long to idle, and which
    /// process to serve: the container found by its runtime id (Job mode).
    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--listen".to_owned(),
            format!("0.0.0.0:{AGENT_PORT}"),
            "--idle-timeout-secs".to_owned(),
            self.settings.idle_timeout.to_string(),
        ];
        match (
            self.target,
            self.target.and_then(|t| t.container_id.as_ref()),
        ) {
            (None, _) => args.push("--targetless".to_owned()),
            // The bare id: the agent asks containerd, CRI-O and Docker in
            // turn (absent sockets are skipped), then scans /proc. (With
            // the scheme, `cri-o://<id>`, it would ask that runtime first;
            // not passed, see docs/kubernetes.md.)
            (Some(_), Some(id)) => {
                args.push("--container-id".to_owned());
                args.push(id.clone());
            }
            // A container the runtime has not reported yet: the agent serves
            // the first process of its own PID namespace.
            (Some(_), None) => args.extend(["--target".to_owned(), "pid/1".to_owned()]),
        }
        args
    }

    /// [`TOKEN_ENV`] from the token Secret, so the token is not in the
    /// Job's, pod's or ephemeral container's spec for whoever may read those.
    fn env(&self) -> Vec<EnvVar> {
        vec![EnvVar {
            name: TOKEN_ENV.to_owned(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: self.name(),
                    key: TOKEN_KEY.to_owned(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        }]
    }

    /// The Secret holding the per-run token (key [`TOKEN_KEY`]), named like
    /// the agent and labelled like it. It is created before the object that
    /// runs the agent, then [`owned_by`] that object so the garbage collector
    /// deletes it with it (the CLI also deletes it when it stops).
    pub fn token_secret(&self, namespace: &str) -> Secret {
        Secret {
            metadata: self.metadata(namespace),
            type_: Some("Opaque".to_owned()),
            immutable: Some(true),
            string_data: Some([(TOKEN_KEY.to_owned(), self.token.to_owned())].into()),
            ..Secret::default()
        }
    }

    fn security_context(&self) -> Option<SecurityContext> {
        if self.target.is_none() {
            // Targetless: no host access at all.
            return Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                run_as_non_root: Some(true),
                run_as_user: Some(65532),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".to_owned()]),
                    add: None,
                }),
                ..SecurityContext::default()
            });
        }
        if self.settings.privileged {
            return Some(SecurityContext {
                privileged: Some(true),
                ..SecurityContext::default()
            });
        }
        Some(SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(vec![
                    "SYS_ADMIN".to_owned(),
                    "SYS_PTRACE".to_owned(),
                    "NET_ADMIN".to_owned(),
                ]),
                drop: None,
            }),
            ..SecurityContext::default()
        })
    }

    fn resources(&self) -> Option<ResourceRequirements> {
        let r = &self.settings.resources;
        if r.requests.is_empty() && r.limits.is_empty() {
            return None;
        }
        let q = |m: &BTreeMap<String, String>| {
            (!m.is_empty()).then(|| {
                m.iter()
                    .map(|(k, v)| (k.clone(), Quantity(v.clone())))
                    .collect()
            })
        };
        Some(ResourceRequirements {
            requests: q(&r.requests),
            limits: q(&r.limits),
            ..ResourceRequirements::default()
        })
    }

    fn tolerations(&self) -> Vec<Toleration> {
        match &self.settings.tolerations {
            None => vec![Toleration {
                operator: Some("Exists".to_owned()),
                ..Toleration::default()
            }],
            Some(list) => list
                .iter()
                .map(|t| Toleration {
                    key: t.key.clone(),
                    operator: t.operator.clone(),
                    value: t.value.clone(),
                    effect: t.effect.clone(),
                    toleration_seconds: t.toleration_seconds,
                })
                .collect(),
        }
    }

    fn socket_volumes(&self) -> (Vec<Volume>, Vec<VolumeMount>) {
        RUNTIME_SOCKETS
            .iter()
            .map(|(name, path)| {
                let volume = Volume {
                    name: format!("{name}-sock"),
                    host_path: Some(HostPathVolumeSource {
                        path: (*path).to_owned(),
                        type_: Some(String::new()),
                    }),
                    ..Volume::default()
                };
                let mount = VolumeMount {
                    name: format!("{name}-sock"),
                    mount_path: (*path).to_owned(),
                    ..VolumeMount::default()
                };
                (volume, mount)
            })
            .unzip()
    }

    fn container(&self) -> Container {
        const FALLBACK_TO_LOGS: &str = "FallbackToLogsOnError";
        let (_, mounts) = self.socket_volumes();
        Container {
            name: "agent".to_owned(),
            image: Some(self.settings.image.clone()),
            image_pull_policy: Some("IfNotPresent".to_owned()),
            command: Some(vec!["remora-agent".to_owned()]),
            args: Some(self.args()),
            env: Some(self.env()),
            ports: Some(vec![ContainerPort {
                name: Some("agent".to_owned()),
                container_port: i32::from(AGENT_PORT),
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            }]),
            resources: self.resources(),
            security_context: self.security_context(),
            volume_mounts: self.target.is_some().then_some(mounts),
            // A failing agent's last log lines become its `terminated.message`,
            // which the CLI shows: why it failed, without `kubectl logs`.
            termination_message_policy: Some(FALLBACK_TO_LOGS.to_owned()),
            ..Container::default()
        }
    }

    fn pod_spec(&self) -> PodSpec {
        let (volumes, _) = self.socket_volumes();
        let targeted = self.target.is_some();
        PodSpec {
            containers: vec![self.container()],
            restart_policy: Some("Never".to_owned()),
            node_name: self.target.and_then(|t| t.node.clone()),
            node_selector: (!targeted && !self.settings.node_selector.is_empty())
                .then(|| self.settings.node_selector.clone()),
            host_pid: targeted.then_some(true),
            tolerations: targeted.then(|| self.tolerations()),
            volumes: targeted.then_some(volumes),
            service_account_name: self.settings.service_account.clone(),
            automount_service_account_token: Some(false),
            termination_grace_period_seconds: Some(5),
            ..PodSpec::default()
        }
    }

    /// The agent Job: one pod pinned to the target's node, never retried,
    /// deleted `ttl` seconds after it finished.
    pub fn job(&self, namespace: &str) -> Job {
        Job {
            metadata: self.metadata(namespace),
            spec: Some(JobSpec {
                backoff_limit: Some(0),
                ttl_seconds_after_finished: Some(
                    i32::try_from(self.settings.ttl).unwrap_or(i32::MAX),
                ),
                active_deadline_seconds: None,
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(self.labels()),
                        annotations: (!self.settings.annotations.is_empty())
                            .then(|| self.settings.annotations.clone()),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(self.pod_spec()),
                },
                ..JobSpec::default()
            }),
            status: None,
        }
    }

    /// The targetless agent: a bare pod with no host access.
    pub fn targetless_pod(&self, namespace: &str) -> Pod {
        Pod {
            metadata: self.metadata(namespace),
            spec: Some(self.pod_spec()),
            status: None,
        }
    }

    /// The ephemeral container to add to the target pod (through its
    /// `ephemeralcontainers` subresource). It shares the target container's
    /// process namespace, so it needs no host PID or runtime socket.
    pub fn ephemeral_container(&self) -> EphemeralContainer {
        let c = self.container();
        // It shares the target container's PID namespace: its pid 1 is the target.
        let mut args = c.args.unwrap_or_default();
        if let Some(at) = args.iter().position(|a| a == "--container-id") {
            args.splice(at..at + 2, ["--target".to_owned(), "pid/1".to_owned()]);
        }
        EphemeralContainer {
            name: c.name.replace("agent", &self.name()),
            image: c.image,
            image_pull_policy: c.image_pull_policy,
            command: c.command,
            args: Some(args),
            env: c.env,
            ports: None,
            resources: None,
            security_context: c.security_context,
            target_container_name: self.target.map(|t| t.container.clone()),
            termination_message_policy: c.termination_message_policy,
            ..EphemeralContainer::default()
        }
    }
}

/// The `metadata.ownerReferences` that makes an object a dependent of
/// `owner` (a Job or pod just created or read, so with its uid): deleted by
/// the garbage collector when the owner is. Not `controller` and not
/// `blockOwnerDeletion` (the latter needs the `update` verb on the owner's
/// `finalizers`).
///
/// # Errors
/// The owner has no name or uid.
pub fn owned_by<K: kube::Resource<DynamicType = ()>>(owner: &K) -> Result<OwnerReference, String> {
    let kind = K::kind(&()).into_owned();
    let name = owner.meta().name.clone().ok_or("the owner has no name")?;
    let uid = owner
        .meta()
        .uid
        .clone()
        .ok_or_else(|| format!("{kind} {name} has no uid"))?;
    Ok(OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind,
        name,
        uid,
        controller: None,
        block_owner_deletion: None,
    })
}

#[cfg(test)]
mod tests;
