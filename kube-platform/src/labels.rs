//! The labels of a target's pod, which the operator's policy objects may
//! select targets by (`matchLabels`, `matchExpressions`).

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use std::collections::BTreeMap;

use crate::target::KubeTarget;
use crate::{Error, KubeClient, KubePlatform, Result};

impl KubePlatform {
    /// A client for the namespace `target` names (`namespace/<ns>/...`),
    /// else this platform's, and the target without its namespace.
    ///
    /// # Errors
    /// The target does not parse, or no kubeconfig is usable.
    pub async fn client_for(&self, target: &str) -> Result<(KubeClient, KubeTarget)> {
        let (namespace, rest) = crate::namespaced::split(target);
        let parsed: KubeTarget = rest.parse()?;
        let mut options = self.options.clone();
        if let Some(ns) = namespace {
            crate::namespaced::check(ns, target)?;
            options.namespace = Some(ns.to_owned());
        }
        Ok((KubeClient::connect(&options).await?, parsed))
    }

    /// The labels of the pod `target` resolves to now (`targetless`: none).
    ///
    /// # Errors
    /// The target does not parse or resolve, or the pod cannot be read.
    pub async fn pod_labels(&self, target: &str) -> Result<BTreeMap<String, String>> {
        let (client, parsed) = self.client_for(target).await?;
        let Some(resolved) = client.resolve(&parsed).await? else {
            return Ok(BTreeMap::new());
        };
        let pods: Api<Pod> = Api::namespaced(client.client.clone(), &resolved.namespace);
        let pod = pods
            .get(&resolved.pod)
            .await
            .map_err(|e| Error::api(format!("getting pod {}", resolved.pod), e))?;
        Ok(pod.metadata.labels.unwrap_or_default())
    }
}
