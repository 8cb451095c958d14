//! Policies from `RemoraPolicy` (the operator's namespace of targets) and
//! `RemoraClusterPolicy` objects: turned into the operator's policy specs by
//! pure functions, and put in force whenever an object changes (both kinds
//! are watched; every change re-reads both, so the result never depends on
//! event order).
//!
//! Target selectors become globs over canonical target names: `kind` and
//! `name` (a glob) select `kind/name` and its containers. A selector with
//! `matchLabels` / `matchExpressions` also needs the labels of the target's
//! pod to match, which the operator reads when a session starts
//! (`Platform::target_labels`); when they cannot be read, it applies to
//! every target its kind and name match (restricting more, never less).

use crate::crd::{
    BlockedAction, PolicyRules, RemoraClusterPolicy, RemoraPolicy, SelectorOperator, TargetKind,
    TargetSelector,
};
use futures::StreamExt;
use kube::api::{Api, ListParams};
use kube::runtime::watcher;
use remora_operator::policy::{
    Block, LabelOperator, LabelRequirement, LabelSelector, LabelledTargets, Policies, PolicySpec,
    PolicyStore,
};
use tokio_util::sync::CancellationToken;

const ALL_KINDS: [TargetKind; 8] = [
    TargetKind::Pod,
    TargetKind::Deployment,
    TargetKind::Statefulset,
    TargetKind::Replicaset,
    TargetKind::Job,
    TargetKind::Cronjob,
    TargetKind::Rollout,
    TargetKind::Service,
];

fn kind_name(kind: TargetKind) -> &'static str {
    match kind {
        TargetKind::Pod => "pod",
        TargetKind::Deployment => "deployment",
        TargetKind::Statefulset => "statefulset",
        TargetKind::Replicaset => "replicaset",
        TargetKind::Job => "job",
        TargetKind::Cronjob => "cronjob",
        TargetKind::Rollout => "rollout",
        TargetKind::Service => "service",
    }
}

fn block(action: BlockedAction) -> Block {
    match action {
        BlockedAction::Steal => Block::Steal,
        BlockedAction::StealWithoutFilter => Block::StealWithoutFilter,
        BlockedAction::Mirror => Block::Mirror,
        BlockedAction::Outgoing => Block::Outgoing,
        BlockedAction::Override => Block::Override,
    }
}

/// The operator's spec for a policy object's rules (pure).
pub fn spec_of(rules: &PolicyRules) -> PolicySpec {
    let mut targets = Vec::new();
    let mut labelled_targets = Vec::new();
    for selector in &rules.targets {
        let name = selector.name.as_deref().unwrap_or("*");
        let kinds: Vec<TargetKind> = match selector.kind {
            Some(kind) => vec![kind],
            None => ALL_KINDS.to_vec(),
        };
        let mut globs = Vec::new();
        for kind in kinds {
            let kind = kind_name(kind);
            globs.push(format!("{kind}/{name}"));
            globs.push(format!("{kind}/{name}/container/*"));
        }
        let labels = label_selector(selector);
        if labels.is_empty() {
            targets.extend(globs);
        } else {
            labelled_targets.push(LabelledTargets { globs, labels });
        }
    }
    PolicySpec {
        targets,
        labelled_targets,
        users: rules.users.clone(),
        groups: rules.groups.clone(),
        block: rules.block.iter().copied().map(block).collect(),
        require_header_filter: rules.require_header_filter.clone(),
        env_exclude: rules.env_exclude.clone(),
        fs_not_found: rules.fs_not_found.clone(),
        outgoing_block: rules.outgoing_block.clone(),
    }
}

/// A selector's label requirements, for the operator's policy.
fn label_selector(selector: &TargetSelector) -> LabelSelector {
    LabelSelector {
        match_labels: selector.match_labels.clone(),
        match_expressions: selector
            .match_expressions
            .iter()
            .map(|r| LabelRequirement {
                key: r.key.clone(),
                operator: match r.operator {
                    SelectorOperator::In => LabelOperator::In,
                    SelectorOperator::NotIn => LabelOperator::NotIn,
                    SelectorOperator::Exists => LabelOperator::Exists,
                    SelectorOperator::DoesNotExist => LabelOperator::DoesNotExist,
                },
                values: r.values.clone(),
            })
            .collect(),
    }
}

/// `globs` for targets named with one of `namespaces` (globs), plus the
/// plain `globs` themselves when they also hold in the default namespace
/// (whose targets are named without one).
fn placed(globs: &[String], namespaces: &[String], default: bool) -> Vec<String> {
    let mut out = if default { globs.to_vec() } else { Vec::new() };
    for ns in namespaces {
        out.extend(
            globs
                .iter()
                .map(|g| format!("{}{ns}/{g}", remora_kube::namespaced::PREFIX)),
        );
    }
    out
}

/// `spec` for the targets of `namespaces` (globs) and, with `default`, of
/// the default namespace.
fn place(mut spec: PolicySpec, namespaces: &[String], default: bool) -> PolicySpec {
    spec.targets = placed(&spec.targets, namespaces, default);
    for labelled in &mut spec.labelled_targets {
        labelled.globs = placed(&labelled.globs, namespaces, default);
    }
    spec
}

/// Whether a cluster policy's `namespaces` globs admit `namespace`.
fn namespace_matches(globs: &[String], namespace: &str) -> bool {
    globs.is_empty()
        || globs.iter().any(|g| {
            globset::Glob::new(g)
                .map(|g| g.compile_matcher().is_match(namespace))
                .unwrap_or(false)
        })
}

/// The policies in force (pure), `namespace` being the default one (its
/// targets are named without a namespace; others as `namespace/<ns>/...`):
/// a RemoraPolicy applies to its own namespace's targets, a
/// RemoraClusterPolicy to those of the namespaces its globs admit. Each is
/// labelled as refusals name it (`RemoraPolicy shop/payments`,
/// `RemoraClusterPolicy no-steal`). Invalid ones are left out; their errors
/// are returned.
pub fn policies_of(
    namespaced: &[RemoraPolicy],
    cluster: &[RemoraClusterPolicy],
    namespace: &str,
) -> (Policies, Vec<String>) {
    let name = |meta: &kube::api::ObjectMeta| meta.name.clone().unwrap_or_default();
    let mut specs = Vec::new();
    for policy in namespaced {
        let ns = policy.metadata.namespace.as_deref().unwrap_or(namespace);
        let spec = spec_of(&policy.spec.rules);
        let spec = if ns == namespace {
            spec
        } else {
            place(spec, &[ns.to_owned()], false)
        };
        specs.push((
            format!("RemoraPolicy {ns}/{}", name(&policy.metadata)),
            spec,
        ));
    }
    for policy in cluster {
        let globs = &policy.spec.namespaces;
        let others = if globs.is_empty() {
            vec!["*".to_owned()]
        } else {
            globs.clone()
        };
        specs.push((
            format!("RemoraClusterPolicy {}", name(&policy.metadata)),
            place(
                spec_of(&policy.spec.rules),
                &others,
                namespace_matches(globs, namespace),
            ),
        ));
    }
    Policies::from_specs(specs)
}

/// Reads the policy objects of every namespace.
#[derive(Debug, Clone)]
pub struct PolicyObjects {
    namespaced: Api<RemoraPolicy>,
    cluster: Api<RemoraClusterPolicy>,
    namespace: String,
}

impl PolicyObjects {
    /// `namespace` is the default namespace of targets.
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        PolicyObjects {
            namespaced: Api::all(client.clone()),
            cluster: Api::all(client),
            namespace: namespace.to_owned(),
        }
    }

    /// Read both kinds and put the result in force in `store`.
    ///
    /// # Errors
    /// The objects cannot be listed (the policies in force are kept).
    pub async fn load(&self, store: &PolicyStore) -> Result<(), String> {
        let namespaced = self
            .namespaced
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("listing RemoraPolicy objects: {e}"))?;
        let cluster = self
            .cluster
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("listing RemoraClusterPolicy objects: {e}"))?;
        let (policies, errors) = policies_of(&namespaced.items, &cluster.items, &self.namespace);
        for error in errors {
            tracing::error!(%error, "policy object left out");
        }
        tracing::info!(policies = policies.len(), "policies from objects in force");
        store.replace(policies);
        Ok(())
    }

    /// Re-read on every change of either kind until `cancel`.
    pub async fn watch(self, store: PolicyStore, cancel: CancellationToken) {
        let namespaced =
            watcher(self.namespaced.clone(), watcher::Config::default()).filter_map(changed);
        let cluster = watcher(self.cluster.clone(), watcher::Config::default()).filter_map(changed);
        let mut changes = std::pin::pin!(futures::stream::select(namespaced, cluster));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                change = changes.next() => match change {
                    Some(true) => {
                        if let Err(e) = self.load(&store).await {
                            tracing::warn!(error = %e, "keeping the policies in force");
                        }
                    }
                    Some(false) => {
                        tracing::warn!("watching policy objects failed (retrying)");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                    None => return,
                },
            }
        }
    }
}

/// Whether a watch event means "re-read" (`Some(true)`), "the watch
/// failed" (`Some(false)`), or nothing (a relist in progress: its end is
/// `InitDone`).
async fn changed<K>(event: Result<watcher::Event<K>, watcher::Error>) -> Option<bool> {
    match event {
        Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) => {
            Some(true)
        }
        Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => None,
        Err(_) => Some(false),
    }
}

#[cfg(test)]
mod tests;
