//! The Kubernetes side of `remora ls`: the ready pods (with their containers)
//! and the workloads of one namespace, from [`remora_kube::KubeClient::list_targets`].

use super::{Platform, TargetEntry};
use crate::args::LsArgs;
use crate::error::Result;
use remora_config::{Config, Overrides};
use remora_kube::{ClientOptions, KubeClient};
use serde_json::json;

/// The `platform` of the entries listed here.
pub const PLATFORM: &str = "kubernetes";

/// One namespace of one cluster.
#[derive(Debug, Clone)]
pub struct KubeListing {
    pub options: ClientOptions,
}

impl KubeListing {
    /// The cluster and namespace from the flags, then the config (file and
    /// `REMORA_*` variables).
    ///
    /// # Errors
    /// An invalid config.
    pub fn from_args(args: &LsArgs) -> Result<KubeListing> {
        let overrides = Overrides {
            namespace: args.namespace.clone(),
            context: args.context.clone(),
            kubeconfig: args.kubeconfig.clone(),
            ..Overrides::default()
        };
        let config: Config = Config::from_env_and_overrides(args.config.clone(), overrides)?.config;
        Ok(KubeListing {
            options: ClientOptions {
                kubeconfig: config.kubeconfig,
                context: config.context,
                namespace: config.namespace,
            },
        })
    }

    /// Whether a cluster is named anywhere: the options, `KUBECONFIG`,
    /// `~/.kube/config`, or a pod's service account environment.
    pub fn cluster_configured(&self) -> bool {
        let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
        self.options.kubeconfig.is_some()
            || self.options.context.is_some()
            || set("KUBECONFIG")
            || set("KUBERNETES_SERVICE_HOST")
            || std::env::var_os("HOME")
                .is_some_and(|home| std::path::Path::new(&home).join(".kube/config").is_file())
    }
}

impl Platform for KubeListing {
    fn name(&self) -> &str {
        PLATFORM
    }

    fn targets(&self) -> std::result::Result<Vec<TargetEntry>, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting a runtime: {e}"))?;
        runtime.block_on(async {
            let client = KubeClient::connect(&self.options)
                .await
                .map_err(|e| e.to_string())?;
            let targets = client.list_targets().await.map_err(|e| e.to_string())?;
            Ok(entries(&client.namespace, targets))
        })
    }
}

/// Entries for target strings listed in `namespace`.
pub fn entries(namespace: &str, targets: Vec<String>) -> Vec<TargetEntry> {
    targets
        .into_iter()
        .map(|target| {
            let kind = target.split('/').next().unwrap_or_default().to_owned();
            let description = if kind == "pod" {
                "ready pod".to_owned()
            } else {
                format!("{kind} (its first ready pod)")
            };
            TargetEntry {
                details: json!({"namespace": namespace, "kind": kind}),
                platform: PLATFORM.to_owned(),
                description,
                target,
            }
        })
        .collect()
}

/// The table of cluster targets.
pub fn table(entries: &[&TargetEntry]) -> String {
    let width = entries
        .iter()
        .map(|e| e.target.len())
        .max()
        .unwrap_or(0)
        .max("TARGET".len());
    let mut out = format!("{:<width$} {:<20} {}\n", "TARGET", "NAMESPACE", "WHAT");
    for e in entries {
        let namespace = e.details["namespace"].as_str().unwrap_or("");
        out.push_str(&format!(
            "{:<width$} {:<20} {}\n",
            e.target, namespace, e.description
        ));
    }
    out
}
