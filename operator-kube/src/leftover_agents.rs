//! Agents a previous operator left behind. An operator that stops normally
//! (SIGTERM, its pod deleted) ends every session with a message and deletes
//! its agents; one that is killed cannot. Its agents' Jobs (and targetless
//! agent pods) carry [`MANAGED_BY`], so the next leader deletes them before
//! it serves: each agent gets SIGTERM and removes its traffic rules, and no
//! stolen port keeps pointing at a session that is gone. (The agent also
//! gives a port back as soon as the connection of its session closes.)

use crate::session_objects::MANAGED_BY;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PropagationPolicy};
use std::collections::BTreeMap;

/// The labels every agent this operator starts carries.
pub fn agent_labels() -> BTreeMap<String, String> {
    BTreeMap::from([(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())])
}

/// Delete the agent Jobs and pods an operator left in `namespace` (where
/// this operator starts its own); returns how many objects were deleted.
pub async fn sweep(client: kube::Client, namespace: &str) -> usize {
    let params = ListParams::default().labels(&format!(
        "{}={},{}={}",
        MANAGED_BY.0,
        MANAGED_BY.1,
        remora_kube::manifest::AGENT_LABEL,
        remora_kube::manifest::AGENT_LABEL_VALUE
    ));
    let delete = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    let mut deleted = 0;
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    match jobs.list(&params).await {
        Ok(list) => {
            for job in list.items {
                let name = job.metadata.name.unwrap_or_default();
                tracing::info!(%namespace, %name, "deleting an agent Job a previous operator left");
                if jobs.delete(&name, &delete).await.is_ok() {
                    deleted += 1;
                }
            }
        }
        Err(e) => tracing::warn!(%namespace, error = %e, "cannot list leftover agent Jobs"),
    }
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    match pods.list(&params).await {
        Ok(list) => {
            // A Job's pods go with their Job; targetless agents are bare pods.
            for pod in list.items.into_iter().filter(|p| {
                !p.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.kind == "Job")
            }) {
                let name = pod.metadata.name.unwrap_or_default();
                tracing::info!(%namespace, %name, "deleting an agent pod a previous operator left");
                if pods.delete(&name, &delete).await.is_ok() {
                    deleted += 1;
                }
            }
        }
        Err(e) => tracing::warn!(%namespace, error = %e, "cannot list leftover agent pods"),
    }
    deleted
}
