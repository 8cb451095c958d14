//! `remora-operator serve`: the local platform through the operator
//! library, or the Kubernetes mode: targets through the Kubernetes platform,
//! clients authenticated by TokenReview and authorised by
//! SubjectAccessReview ([`crate::access`]), sessions mirrored as
//! RemoraSession objects ([`crate::session_objects`]), policies from
//! RemoraPolicy / RemoraClusterPolicy objects ([`crate::policy_objects`]).

use crate::access::{ApiReviewer, KubeAccess};
use crate::error::{Error, Result};
use crate::leader::Election;
use crate::policy_objects::PolicyObjects;
use crate::queue_splits::controller::{KubeQueueSplitter, Splits};
use crate::session_objects;
use remora_kube::{AgentSettings, ClientOptions, KubeClient, KubePlatform};
use remora_operator::args::{Command, PlatformKind, ServeArgs};
use remora_operator::policy::PolicyStore;
use remora_operator::{Args, Operator, OperatorConfig, Signals};
use remora_protocol::SessionToken;
use remora_queues::router::RouterConfig;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Environment variable naming the operator's own namespace (set by the
/// install manifests from the pod's metadata); its agents run there.
pub const NAMESPACE_ENV: &str = "REMORA_OPERATOR_NAMESPACE";

/// Run the operator as the binary does.
///
/// # Errors
/// A one-line, user-facing error.
pub async fn run(args: Args) -> Result<()> {
    let Command::Serve(serve) = &args.command;
    match serve.platform {
        PlatformKind::Local => Ok(remora_operator::run(args).await?),
        PlatformKind::Kubernetes => kubernetes(serve.clone()).await,
    }
}

async fn kubernetes(serve: ServeArgs) -> Result<()> {
    let mut signals = Signals::install()?;
    let options = ClientOptions {
        kubeconfig: serve.kubeconfig.clone(),
        context: None,
        namespace: serve.namespace.clone(),
    };
    let kube = KubeClient::connect(&options).await?;
    let namespace = kube.namespace.clone();
    let own_namespace = std::env::var(NAMESPACE_ENV).ok().filter(|n| !n.is_empty());
    let platform = KubePlatform {
        options: ClientOptions {
            namespace: Some(namespace.clone()),
            ..options
        },
        settings: AgentSettings {
            // Agents run next to the operator: its Role covers them there.
            namespace: own_namespace.clone(),
            // So that the next operator finds them if this one is killed.
            labels: crate::leftover_agents::agent_labels(),
            ..AgentSettings::default()
        },
    };
    if serve.policy.is_some() {
        return Err(Error::Usage(
            "--policy is the local platform's TOML file; with --platform kubernetes, policies \
             are RemoraPolicy and RemoraClusterPolicy objects"
                .into(),
        ));
    }
    // In force before the first session is accepted.
    let policies = PolicyStore::empty();
    let policy_objects = PolicyObjects::new(kube.client.clone(), &namespace);
    policy_objects.load(&policies).await.map_err(|e| {
        Error::Usage(format!(
            "{e} (are the CRDs installed? `remora operator manifests | kubectl apply -f -`)"
        ))
    })?;
    let (observer, objects) = session_objects::session_objects(kube.client.clone(), &namespace);
    let splits = Splits::new(kube.client.clone(), RouterConfig::default());
    let config = OperatorConfig {
        listen: serve.listen,
        // Unused: clients present their Kubernetes token instead.
        token: SessionToken(String::new()),
        policies: policies.clone(),
        state_dir: serve.state_dir.clone(),
        // Branches as RemoraDbBranch objects next to the operator, so that
        // its successor (a new pod) drops them at their TTL.
        branch_store: Some(Arc::new(crate::db_branch_objects::DbBranchObjects::new(
            kube.client.clone(),
            own_namespace.as_deref().unwrap_or(&namespace),
        ))),
        branch_pods: Some(Arc::new(crate::branch_pods::KubeBranchPods::new(
            kube.client.clone(),
            own_namespace.as_deref().unwrap_or(&namespace),
        ))),
        pg_bindirs: serve.pg_bindir.clone(),
        db_settings: remora_operator::branches::settings::DbSettings::load(
            serve.db_config.as_deref(),
        )?,
        access: Some(Arc::new(KubeAccess {
            reviewer: Arc::new(ApiReviewer {
                client: kube.client.clone(),
            }),
            namespace: namespace.clone(),
        })),
        observer: Some(Arc::new(observer)),
        queue_splitter: Some(Arc::new(KubeQueueSplitter {
            splits: splits.clone(),
            namespace: namespace.clone(),
        })),
    };
    // Of several replicas, only the Lease holder serves.
    let me = format!(
        "{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "remora-operator".into()),
        &remora_operator::token::random_token().unwrap_or_default()[..6]
    );
    let lease_namespace = std::env::var(NAMESPACE_ENV)
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| namespace.clone());
    let election = Election::new(kube.client.clone(), &lease_namespace, me);
    let waiting = CancellationToken::new();
    tokio::select! {
        leader = election.acquire(&waiting) => if !leader { return Ok(()); },
        signal = signals.wait() => {
            tracing::info!(signal, "stopping before serving (not the leader)");
            return Ok(());
        }
    }
    tracing::info!(me = %election.me, "leader lease {} acquired", crate::leader::LEASE_NAME);
    // Agents a killed operator left: deleted, so their rules go with them.
    let agent_namespace = own_namespace.unwrap_or_else(|| namespace.clone());
    match crate::leftover_agents::sweep(kube.client.clone(), &agent_namespace).await {
        0 => {}
        n => tracing::info!(objects = n, "deleted the agents a previous operator left"),
    }
    // Splits the previous operator left active lost their sessions with it:
    // their messages go back to the workloads (in the background) before
    // anyone joins them again.
    match splits.resume_all().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            splits = n,
            "ending the queue splits a previous operator left"
        ),
        Err(e) => tracing::warn!(error = %e, "queue splits left by a previous operator"),
    }
    let operator = Operator::bind(config, Arc::new(platform)).await?;
    let cancel = CancellationToken::new();
    if let Some(listen) = serve.api_listen {
        let files = serve.tls_cert.as_deref().zip(serve.tls_key.as_deref());
        let names = crate::aggregated::tls::service_names(crate::manifests::NAME, &lease_namespace);
        let api =
            crate::aggregated::AggregatedApi::setup(kube.client.clone(), listen, files, &names)
                .await
                .map_err(Error::Usage)?;
        tracing::info!(addr = ?api.local_addr(), "serving the aggregated API operator.remora.dev/v1alpha1");
        tokio::spawn(api.serve(operator.connections(), cancel.clone()));
    }
    let lost = CancellationToken::new();
    let leadership = tokio::spawn(election.keep(cancel.clone(), lost.clone()));
    let objects = tokio::spawn(objects.run(operator.sessions().clone(), cancel.clone()));
    tokio::spawn(policy_objects.watch(policies, cancel.clone()));
    // A split whose RemoraQueueSplit is edited or deleted ends, and so do
    // its sessions (their variables name queues that go away).
    let sessions = operator.sessions().clone();
    let end_session: crate::queue_splits::controller::EndSession =
        Arc::new(move |key: &str, reason: String| {
            if let Some(id) = crate::queue_splits::controller::session_id(key) {
                let _ = sessions.kill(id, reason);
            }
        });
    tokio::spawn(splits.clone().watch(end_session, cancel.clone()));
    tracing::info!(%namespace, "serving Kubernetes targets");
    remora_operator::announce(&operator)?;
    let reason = tokio::select! {
        signal = signals.wait() => format!("the operator received {signal}"),
        _ = lost.cancelled() => "the operator lost its leader lease".to_owned(),
    };
    tracing::info!(%reason, "operator stopping");
    operator.shutdown(&reason).await;
    cancel.cancel();
    let _ = objects.await;
    let _ = leadership.await;
    if lost.is_cancelled() {
        return Err(Error::Usage(format!(
            "{reason}: another replica serves now (this one exits to be restarted)"
        )));
    }
    Ok(())
}
