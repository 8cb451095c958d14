//! Branch pods: one database server per branch, from the image of the
//! operator's `[[branch_pod]]` settings, in the operator's namespace (the
//! operator's [`BranchPods`]). For each: a Pod (an `emptyDir` for its data,
//! an exec readiness probe), a Secret with the generated superuser
//! password (the official images' `POSTGRES_PASSWORD` /
//! `MARIADB_ROOT_PASSWORD`, by reference, so it is not in the Pod's spec)
//! and a Service selecting it, both owned by the Pod: deleting the Pod
//! deletes them too (the garbage collector).

use crate::session_objects::MANAGED_BY;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction, Pod, PodSpec,
    Probe, ResourceRequirements, Secret, SecretKeySelector, Service, ServicePort, ServiceSpec,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use remora_operator::branches::pods::{BranchPods, PodMade, PodRequest};
use remora_protocol::db::DbKind;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The label every branch pod carries (`app.kubernetes.io/name`).
pub const APP: &str = "remora-db-branch";
/// The label selecting one branch pod (its name).
pub const POD_LABEL: &str = "remora.dev/branch-pod";
/// How long a branch pod may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// The Secret's key holding the password.
pub const PASSWORD_KEY: &str = "password";

/// The operator's [`BranchPods`] on Kubernetes.
#[derive(Clone)]
pub struct KubeBranchPods {
    client: kube::Client,
    namespace: String,
}

impl std::fmt::Debug for KubeBranchPods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeBranchPods")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl KubeBranchPods {
    /// Branch pods in `namespace` (the operator's own).
    pub fn new(client: kube::Client, namespace: &str) -> KubeBranchPods {
        KubeBranchPods {
            client,
            namespace: namespace.to_owned(),
        }
    }
}

fn labels(name: &str, branch: &str) -> BTreeMap<String, String> {
    let mut branch_label: String = branch
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    branch_label.truncate(63);
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), APP.to_owned()),
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        (POD_LABEL.to_owned(), name.to_owned()),
        (
            "remora.dev/branch".to_owned(),
            branch_label.trim_matches(['-', '_', '.']).to_owned(),
        ),
    ])
}

/// The Pod for `request` (pure).
pub fn pod(request: &PodRequest) -> Pod {
    let s = &request.settings;
    let (data_dir, password_vars, probe): (&str, &[&str], Vec<String>) = match s.kind {
        DbKind::Postgres => (
            "/var/lib/postgresql/data",
            &["POSTGRES_PASSWORD"],
            vec![
                "pg_isready".into(),
                "-h".into(),
                "127.0.0.1".into(),
                "-p".into(),
                s.port.to_string(),
                "-U".into(),
                "postgres".into(),
            ],
        ),
        DbKind::Mysql => (
            "/var/lib/mysql",
            &["MARIADB_ROOT_PASSWORD", "MYSQL_ROOT_PASSWORD"],
            vec![
                "sh".into(),
                "-c".into(),
                format!(
                    "mariadb-admin ping -h 127.0.0.1 -P {} -uroot -p\"$MARIADB_ROOT_PASSWORD\"",
                    s.port
                ),
            ],
        ),
    };
    let mut env: Vec<EnvVar> = password_vars
        .iter()
        .map(|var| EnvVar {
            name: (*var).to_owned(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: request.name.clone(),
                    key: PASSWORD_KEY.to_owned(),
                    optional: None,
                }),
                ..EnvVarSource::default()
            }),
        })
        .collect();
    if s.kind == DbKind::Postgres {
        env.push(EnvVar {
            name: "PGDATA".to_owned(),
            value: Some(data_dir.to_owned()),
            value_from: None,
        });
    }
    let limits: BTreeMap<String, Quantity> = [("memory", &s.memory), ("cpu", &s.cpu)]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_owned(), Quantity(v.clone()))))
        .collect();
    let container = Container {
        name: "db".to_owned(),
        image: Some(s.image.clone()),
        command: s.command.clone(),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("db".to_owned()),
            container_port: i32::from(s.port),
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(probe),
            }),
            period_seconds: Some(1),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        resources: (!limits.is_empty()).then(|| ResourceRequirements {
            limits: Some(limits),
            ..ResourceRequirements::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "data".to_owned(),
            mount_path: data_dir.to_owned(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(request.name.clone()),
            labels: Some(labels(&request.name, &request.branch)),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(vec![Volume {
                name: "data".to_owned(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            }]),
            automount_service_account_token: Some(false),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

fn owned_by(pod: &Pod) -> Vec<OwnerReference> {
    vec![OwnerReference {
        api_version: "v1".to_owned(),
        kind: "Pod".to_owned(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: None,
    }]
}

/// The Secret with the password, owned by `pod` (pure).
pub fn secret(request: &PodRequest, pod: &Pod) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(request.name.clone()),
            labels: Some(labels(&request.name, &request.branch)),
            owner_references: Some(owned_by(pod)),
            ..ObjectMeta::default()
        },
        immutable: Some(true),
        type_: Some("Opaque".to_owned()),
        string_data: Some(BTreeMap::from([(
            PASSWORD_KEY.to_owned(),
            request.password.clone(),
        )])),
        ..Secret::default()
    }
}

/// The Service in front of `pod` (pure).
pub fn service(request: &PodRequest, pod: &Pod) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(request.name.clone()),
            labels: Some(labels(&request.name, &request.branch)),
            owner_references: Some(owned_by(pod)),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([(
                POD_LABEL.to_owned(),
                request.name.clone(),
            )])),
            ports: Some(vec![ServicePort {
                name: Some("db".to_owned()),
                port: i32::from(request.settings.port),
                target_port: Some(IntOrString::Int(i32::from(request.settings.port))),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Whether the pod is ready; or why it will not be.
fn readiness(pod: &Pod) -> Result<bool, String> {
    let Some(status) = &pod.status else {
        return Ok(false);
    };
    if matches!(status.phase.as_deref(), Some("Failed" | "Succeeded")) {
        return Err(format!(
            "it ended ({})",
            status.phase.as_deref().unwrap_or_default()
        ));
    }
    Ok(status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// What the pod's container waits for, for an error message.
fn waiting(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.as_ref())
        .map(|w| {
            format!(
                " (waiting: {}{})",
                w.reason.as_deref().unwrap_or("?"),
                w.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            )
        })
        .unwrap_or_default()
}

impl KubeBranchPods {
    async fn create_one(&self, request: PodRequest) -> Result<PodMade, String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let name = request.name.clone();
        let ns = self.namespace.clone();
        let made = pods
            .create(&PostParams::default(), &pod(&request))
            .await
            .map_err(|e| format!("cannot create the branch pod {ns}/{name}: {e}"))?;
        let result = self.finish(&request, &made).await;
        if result.is_err() {
            let _ = pods.delete(&name, &DeleteParams::default()).await;
        }
        result
    }

    async fn finish(&self, request: &PodRequest, made: &Pod) -> Result<PodMade, String> {
        let (name, ns) = (&request.name, &self.namespace);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        secrets
            .create(&PostParams::default(), &secret(request, made))
            .await
            .map_err(|e| format!("cannot create the Secret {ns}/{name}: {e}"))?;
        let services: Api<Service> = Api::namespaced(self.client.clone(), ns);
        services
            .create(&PostParams::default(), &service(request, made))
            .await
            .map_err(|e| format!("cannot create the Service {ns}/{name}: {e}"))?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let start = Instant::now();
        loop {
            let now = pods
                .get(name)
                .await
                .map_err(|e| format!("the branch pod {ns}/{name}: {e}"))?;
            match readiness(&now) {
                Ok(true) => break,
                Ok(false) if start.elapsed() < READY_TIMEOUT => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Ok(false) => {
                    return Err(format!(
                        "the branch pod {ns}/{name} (image {}) was not ready after {} s{}",
                        request.settings.image,
                        READY_TIMEOUT.as_secs(),
                        waiting(&now)
                    ));
                }
                Err(why) => return Err(format!("the branch pod {ns}/{name}: {why}")),
            }
        }
        Ok(PodMade {
            host: format!("{name}.{ns}.svc.cluster.local"),
            port: request.settings.port,
            handle: format!("{ns}/{name}"),
        })
    }

    async fn delete_one(&self, handle: String) -> Result<(), String> {
        let (ns, name) = handle
            .split_once('/')
            .ok_or_else(|| format!("bad branch pod handle {handle:?}"))?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        match pods.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(format!("cannot delete the branch pod {handle}: {e}")),
        }
    }
}

impl KubeBranchPods {
    async fn sweep_all(&self, keep: Vec<String>) -> Result<Vec<String>, String> {
        let ns = &self.namespace;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let selector = format!(
            "app.kubernetes.io/name={APP},{}={}",
            MANAGED_BY.0, MANAGED_BY.1
        );
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| format!("cannot list the branch pods in {ns}: {e}"))?;
        let mut gone = Vec::new();
        for pod in list {
            let Some(name) = pod.metadata.name else {
                continue;
            };
            let handle = format!("{ns}/{name}");
            if keep.contains(&handle) || pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            self.delete_one(handle.clone()).await?;
            gone.push(handle);
        }
        Ok(gone)
    }
}

impl BranchPods for KubeBranchPods {
    fn sweep(&self, keep: Vec<String>) -> BoxFuture<'static, Result<Vec<String>, String>> {
        let this = self.clone();
        Box::pin(async move { this.sweep_all(keep).await })
    }

    fn create(&self, request: PodRequest) -> BoxFuture<'static, Result<PodMade, String>> {
        let this = self.clone();
        Box::pin(async move { this.create_one(request).await })
    }

    fn delete(&self, handle: String) -> BoxFuture<'static, Result<(), String>> {
        let this = self.clone();
        Box::pin(async move { this.delete_one(handle).await })
    }
}

#[cfg(test)]
mod tests;
