//! The Kubernetes implementation of the operator's [`Platform`] seam: resolve
//! a target to its pod, start the agent (a Job on the pod's node, or an
//! ephemeral container), wait for it with a deadline and a clear error, reach
//! it through the API server's port-forward, and delete it on stop.

use futures::future::BoxFuture;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use remora_operator::platform::{AgentHandle, Platform, ResolvedTarget, StartedAgent};
use remora_protocol::SessionToken;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::manifest::{AGENT_PORT, AgentMode, AgentSettings, AgentSpec, RUN_LABEL, owned_by};
use crate::portforward::PortForward;
use crate::resolve;
use crate::{ClientOptions, Error, Result};

/// How often the agent's pod is looked at while waiting for it (at most).
const POLL: Duration = Duration::from_millis(500);
/// The first wait between two looks; it doubles up to [`POLL`].
const FIRST_POLL: Duration = Duration::from_millis(25);
/// How long deleting the agent may take before `stop` gives up waiting.
const DELETE_TIMEOUT: Duration = Duration::from_secs(30);

/// Targets in a Kubernetes cluster.
#[derive(Debug, Clone)]
pub struct KubePlatform {
    /// How to reach the cluster.
    pub options: ClientOptions,
    /// The `agent.*` settings.
    pub settings: AgentSettings,
}

fn agent_start(target: &str, e: impl std::fmt::Display) -> remora_operator::Error {
    remora_operator::Error::AgentStart {
        target: target.to_owned(),
        reason: e.to_string(),
    }
}

/// A short random id for object names.
fn run_id() -> std::result::Result<String, String> {
    let token = remora_operator::token::random_token()?;
    Ok(token[..10].to_owned())
}

impl Platform for KubePlatform {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn dial(&self, _target: &str, program: &str) -> std::process::Command {
        // The operator runs in the cluster: its own network is the targets'.
        std::process::Command::new(program)
    }

    fn resolve(&self, target: &str) -> remora_operator::Result<ResolvedTarget> {
        // `namespace/<ns>/<target>`: another namespace than the default.
        let (name, _) = crate::namespaced::canonical(target, self.options.namespace.as_deref())
            .map_err(|e| remora_operator::Error::Target {
                target: target.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(ResolvedTarget { name })
    }

    fn target_labels(
        &self,
        target: &ResolvedTarget,
    ) -> BoxFuture<'static, Option<std::collections::BTreeMap<String, String>>> {
        let this = self.clone();
        let name = target.name.clone();
        Box::pin(async move {
            this.pod_labels(&name)
                .await
                .map_err(|e| tracing::warn!(target = %name, error = %e, "cannot read the target's labels"))
                .ok()
        })
    }

    fn start_agent(
        &self,
        target: &ResolvedTarget,
    ) -> BoxFuture<'static, remora_operator::Result<StartedAgent>> {
        let this = self.clone();
        let name = target.name.clone();
        Box::pin(async move {
            this.start_with(&name, &|_| {}, &CancellationToken::new())
                .await
                .map_err(|e| agent_start(&name, e))
        })
    }
}

/// What starting the agent is busy with, for a spinner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Reading the kubeconfig and resolving the target to a pod.
    Resolving {
        /// The target string.
        target: String,
        /// The namespace it is looked up in.
        namespace: String,
    },
    /// Creating the agent Job.
    CreatingJob {
        /// The Job's name.
        name: String,
        /// Its namespace.
        namespace: String,
    },
    /// Adding the agent as an ephemeral container.
    AddingEphemeral {
        /// The target pod.
        pod: String,
    },
    /// Creating the targetless agent pod.
    CreatingPod {
        /// The pod's name.
        name: String,
    },
    /// The Job exists; its pod does not yet.
    WaitingForPod,
    /// The pod is not on a node yet.
    Scheduling {
        /// The agent's pod.
        pod: String,
    },
    /// The pod is on its node; the image is being pulled and the container created.
    PullingImage {
        /// The agent's pod.
        pod: String,
        /// The agent image.
        image: String,
    },
    /// The agent's container runs; waiting for the agent to say it listens.
    WaitingForAgent {
        /// The agent's pod.
        pod: String,
    },
    /// The agent runs; the port-forward relay is being set up.
    Connecting {
        /// The agent's pod.
        pod: String,
    },
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Phase::Resolving { target, namespace } => {
                write!(f, "resolving {target} in namespace {namespace}")
            }
            Phase::CreatingJob { name, namespace } => {
                write!(f, "creating the agent job {name} in namespace {namespace}")
            }
            Phase::AddingEphemeral { pod } => {
                write!(f, "adding the agent as an ephemeral container to pod {pod}")
            }
            Phase::CreatingPod { name } => write!(f, "creating the agent pod {name}"),
            Phase::WaitingForPod => f.write_str("waiting for the agent's pod"),
            Phase::Scheduling { pod } => write!(f, "waiting for pod {pod} to be scheduled"),
            Phase::PullingImage { pod, image } => {
                write!(f, "pulling the image {image} and starting pod {pod}")
            }
            Phase::WaitingForAgent { pod } => {
                write!(
                    f,
                    "agent container running in pod {pod}; waiting for it to listen"
                )
            }
            Phase::Connecting { pod } => {
                write!(
                    f,
                    "agent running in pod {pod}; connecting through port-forward"
                )
            }
        }
    }
}

/// Where phases are reported.
pub type Report<'a> = &'a (dyn Fn(&Phase) + Send + Sync);

/// The phase a pod's state means while its agent container does not run yet.
fn phase_of(pod: &Pod, container: &str, image: &str) -> Phase {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let scheduled = pod.spec.as_ref().is_some_and(|s| s.node_name.is_some());
    let has_status = pod
        .status
        .iter()
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.ephemeral_container_statuses.iter().flatten())
        })
        .any(|c| c.name == container);
    if scheduled || has_status {
        Phase::PullingImage {
            pod: name,
            image: image.to_owned(),
        }
    } else {
        Phase::Scheduling { pod: name }
    }
}

/// The wait before look number `attempt` (from 0): short at first (a pod
/// often appears or starts within a fraction of a second), then [`POLL`].
fn poll_delay(attempt: u32) -> Duration {
    FIRST_POLL.saturating_mul(1 << attempt.min(10)).min(POLL)
}

/// Sleep before look number `attempt`, or fail at once when `cancel` fires.
async fn pause(cancel: &CancellationToken, attempt: &mut u32) -> Result<()> {
    let delay = poll_delay(*attempt);
    *attempt += 1;
    tokio::select! {
        () = tokio::time::sleep(delay) => Ok(()),
        () = cancel.cancelled() => Err(Error::Resolve(
            "cancelled while starting the agent (remora was interrupted)".to_owned(),
        )),
    }
}

/// What is waited for, for the timeout message.
fn describe_wait(pod: Option<&Pod>, image: &str) -> String {
    match pod {
        None => {
            "its pod to be created (is the Job controller running? `kubectl describe job` tells)"
                .to_owned()
        }
        Some(pod) => {
            let state = resolve::pod_state(pod);
            let name = pod.metadata.name.as_deref().unwrap_or("?");
            if state.contains("ImagePull") || state.contains("ErrImage") {
                format!("pod {name} to pull image {image} ({state})")
            } else {
                format!("pod {name} to run ({state})")
            }
        }
    }
}

/// The first line of the agent's stdout once it listens (as on the local
/// platform); the readiness signal, which an ephemeral container (no probes
/// allowed) can give too.
pub const AGENT_READY_LINE: &str = "REMORA_AGENT_LISTENING";

/// How much of the agent's log is read while looking for [`AGENT_READY_LINE`]
/// (it is among the first lines).
const READY_LOG_BYTES: i64 = 64 * 1024;

/// Whether the agent container of `pod` runs (it may not listen yet: see
/// [`AGENT_READY_LINE`]).
fn agent_running(pod: &Pod, container: &str) -> bool {
    let status = pod.status.as_ref();
    status
        .into_iter()
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.ephemeral_container_statuses.iter().flatten())
        })
        .any(|c| c.name == container && c.state.as_ref().is_some_and(|s| s.running.is_some()))
}

/// A terminal failure while waiting: the image cannot be pulled or the agent exited.
fn agent_failed(pod: &Pod, container: &str, image: &str) -> Option<String> {
    let status = pod.status.as_ref()?;
    let c = status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.ephemeral_container_statuses.iter().flatten())
        .find(|c| c.name == container)?;
    let state = c.state.as_ref()?;
    if let Some(w) = &state.waiting {
        let reason = w.reason.as_deref().unwrap_or_default();
        if matches!(
            reason,
            "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull"
        ) {
            return Some(format!(
                "cannot pull the agent image {image}: {reason}: {}",
                w.message.as_deref().unwrap_or("")
            ));
        }
        if matches!(
            reason,
            "CreateContainerConfigError" | "CreateContainerError" | "RunContainerError"
        ) {
            return Some(format!(
                "the agent container of image {image} cannot start: {reason}: {}",
                w.message.as_deref().unwrap_or("")
            ));
        }
    }
    let t = state.terminated.as_ref()?;
    Some(format!(
        "the agent exited with code {}: {}",
        t.exit_code,
        t.message
            .as_deref()
            .or(t.reason.as_deref())
            .unwrap_or("see `kubectl logs`")
    ))
}

/// An agent started in the cluster, reached by the caller through
/// port-forwards of its own ([`AgentForward::open`]): no local socket
/// between the client and the WebSocket.
#[derive(Debug)]
pub struct DirectAgent {
    /// Opens port-forwards to the agent's port.
    pub forward: Arc<AgentForward>,
    /// The token the agent accepts.
    pub token: SessionToken,
    /// Stops it (deletes its Job or pod).
    pub handle: Box<dyn AgentHandle>,
}

/// The agent's port in its pod, reached through the API server's
/// port-forward: the first one was opened while starting (so a refusal was
/// the start's error), later ones are opened on demand.
pub struct AgentForward {
    pods: Api<Pod>,
    pod: String,
    first: std::sync::Mutex<Option<PortForward>>,
}

impl std::fmt::Debug for AgentForward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentForward")
            .field("pod", &self.pod)
            .finish_non_exhaustive()
    }
}

impl AgentForward {
    /// The agent's pod.
    pub fn pod(&self) -> &str {
        &self.pod
    }

    /// A port-forward to the agent's port (the one opened at start, the
    /// first time).
    ///
    /// # Errors
    /// The API server refused it (RBAC names the verb and resource).
    pub async fn open(&self) -> Result<PortForward> {
        let first = self
            .first
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match first {
            Some(f) => Ok(f),
            None => open_forward(&self.pods, &self.pod).await,
        }
    }
}

impl KubePlatform {
    /// Start the agent for `target`, reporting each phase; `cancel` stops the
    /// waits, and whatever was created is deleted before the error returns.
    /// The agent is reached through a local address: each connection to it
    /// is relayed through its own port-forward.
    ///
    /// # Errors
    /// Why the target did not resolve or the agent did not start, saying what
    /// was being waited for.
    pub async fn start_with(
        &self,
        target: &str,
        report: Report<'_>,
        cancel: &CancellationToken,
    ) -> Result<StartedAgent> {
        let (forward, token, mut agent) = self.start_agent_pod(target, report, cancel).await?;
        let (addr, relay) = match listen(forward).await {
            Ok(r) => r,
            Err(e) => {
                agent.cleanup.run().await;
                return Err(e);
            }
        };
        agent.relay = Some(relay);
        Ok(StartedAgent {
            addr,
            token,
            handle: Box::new(agent),
        })
    }

    /// [`KubePlatform::start_with`] for a client that speaks to the agent
    /// over the port-forward WebSocket itself (the intproxy).
    ///
    /// # Errors
    /// As [`KubePlatform::start_with`].
    pub async fn start_direct(
        &self,
        target: &str,
        report: Report<'_>,
        cancel: &CancellationToken,
    ) -> Result<DirectAgent> {
        let (forward, token, agent) = self.start_agent_pod(target, report, cancel).await?;
        Ok(DirectAgent {
            forward: Arc::new(forward),
            token,
            handle: Box::new(agent),
        })
    }

    async fn start_agent_pod(
        &self,
        target: &str,
        report: Report<'_>,
        cancel: &CancellationToken,
    ) -> Result<(AgentForward, SessionToken, KubeAgent)> {
        let (client, parsed) = self.client_for(target).await?;
        report(&Phase::Resolving {
            target: parsed.to_string(),
            namespace: client.namespace.clone(),
        });
        let resolved = client.resolve(&parsed).await?;
        let run_id = run_id().map_err(Error::Resolve)?;
        let token = remora_operator::token::random_token().map_err(Error::Resolve)?;
        let namespace = match (&resolved, self.settings.mode()) {
            (Some(r), AgentMode::Ephemeral) => r.namespace.clone(),
            _ => self
                .settings
                .namespace
                .clone()
                .unwrap_or_else(|| client.namespace.clone()),
        };
        let spec = AgentSpec {
            settings: &self.settings,
            target: resolved.as_ref(),
            run_id: &run_id,
            token: &token,
        };
        let pods: Api<Pod> = Api::namespaced(client.client.clone(), &namespace);
        let secrets: Api<Secret> = Api::namespaced(client.client.clone(), &namespace);
        let mut cleanup = Cleanup::default();
        let created = async {
            // The token's Secret first, so the agent's container finds it when it starts;
            // then it is made a dependent of what runs the agent.
            secrets.create(&PostParams::default(), &spec.token_secret(&namespace))
                .await
                .map_err(|e| Error::api(format!("creating secret {} in namespace {namespace}", spec.name()), e))?;
            cleanup.secret = Some((secrets.clone(), spec.name()));
            let (pod_name, container) = match (&resolved, self.settings.mode()) {
                (Some(r), AgentMode::Ephemeral) => {
                    report(&Phase::AddingEphemeral { pod: r.pod.clone() });
                    let patch = serde_json::json!({"spec": {"ephemeralContainers": [spec.ephemeral_container()]}});
                    let pod = pods.patch_ephemeral_containers(&r.pod, &PatchParams::default(), &Patch::Strategic(&patch))
                        .await
                        .map_err(|e| Error::api(format!("adding an ephemeral container to pod {}", r.pod), e))?;
                    // Owned by the target pod, which stays: deleted by the
                    // cleanup too, and by the collector if the CLI cannot.
                    own_secret(&secrets, &spec.name(), owned_by(&pod)).await?;
                    (r.pod.clone(), spec.name())
                }
                (Some(_), AgentMode::Job) => {
                    let jobs: Api<Job> = Api::namespaced(client.client.clone(), &namespace);
                    report(&Phase::CreatingJob { name: spec.name(), namespace: namespace.clone() });
                    let job = jobs.create(&PostParams::default(), &spec.job(&namespace))
                        .await
                        .map_err(|e| Error::api(format!("creating job {} in namespace {namespace}", spec.name()), e))?;
                    cleanup.agent = AgentObject::Job(jobs, spec.name());
                    own_secret(&secrets, &spec.name(), owned_by(&job)).await?;
                    // Deleted with the Job from now on.
                    cleanup.secret = None;
                    report(&Phase::WaitingForPod);
                    (self.wait_for_job_pod(&pods, &run_id, cancel).await?, "agent".to_owned())
                }
                (None, _) => {
                    report(&Phase::CreatingPod { name: spec.name() });
                    let pod = pods.create(&PostParams::default(), &spec.targetless_pod(&namespace))
                        .await
                        .map_err(|e| Error::api(format!("creating pod {} in namespace {namespace}", spec.name()), e))?;
                    cleanup.agent = AgentObject::Pod(pods.clone(), spec.name());
                    own_secret(&secrets, &spec.name(), owned_by(&pod)).await?;
                    // Deleted with the pod from now on.
                    cleanup.secret = None;
                    (spec.name(), "agent".to_owned())
                }
            };
            self.wait_running(&pods, &pod_name, &container, report, cancel).await?;
            report(&Phase::Connecting { pod: pod_name.clone() });
            Ok::<_, Error>(pod_name)
        }
        .await;
        let pod_name = match created {
            Ok(p) => p,
            Err(e) => {
                cleanup.run().await;
                return Err(e);
            }
        };
        // The first port-forward is opened now, so a refusal (RBAC, an API
        // server without the subresource) is the start's error, not a failed
        // handshake later; the first connection uses it.
        let first = match open_forward(&pods, &pod_name).await {
            Ok(f) => f,
            Err(e) => {
                cleanup.run().await;
                return Err(e);
            }
        };
        let running = Arc::new(AtomicBool::new(true));
        let watcher = tokio::spawn(watch(pods.clone(), pod_name.clone(), running.clone()));
        let forward = AgentForward {
            pods,
            pod: pod_name,
            first: std::sync::Mutex::new(Some(first)),
        };
        Ok((
            forward,
            SessionToken(token),
            KubeAgent {
                running,
                relay: None,
                watcher,
                cleanup,
            },
        ))
    }

    async fn wait_for_job_pod(
        &self,
        pods: &Api<Pod>,
        run_id: &str,
        cancel: &CancellationToken,
    ) -> Result<String> {
        let mut attempt = 0;
        let deadline = tokio::time::Instant::now()
            + Duration::from_secs(u64::from(self.settings.startup_timeout));
        let params = ListParams::default().labels(&format!("{RUN_LABEL}={run_id}"));
        loop {
            let list = pods
                .list(&params)
                .await
                .map_err(|e| Error::api("listing the agent's pods", e))?;
            if let Some(name) = list.items.into_iter().find_map(|p| p.metadata.name) {
                return Ok(name);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Resolve(format!(
                    "the agent did not start within {}s (agent.startup_timeout): waiting for {}",
                    self.settings.startup_timeout,
                    describe_wait(None, &self.settings.image)
                )));
            }
            pause(cancel, &mut attempt).await?;
        }
    }

    async fn wait_running(
        &self,
        pods: &Api<Pod>,
        pod_name: &str,
        container: &str,
        report: Report<'_>,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let timeout = Duration::from_secs(u64::from(self.settings.startup_timeout));
        let mut attempt = 0;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last_phase = None;
        loop {
            let pod = pods
                .get_opt(pod_name)
                .await
                .map_err(|e| Error::api(format!("getting pod {pod_name}"), e))?;
            let mut running = false;
            if let Some(pod) = &pod {
                if let Some(failure) = agent_failed(pod, container, &self.settings.image) {
                    return Err(Error::Resolve(failure));
                }
                running = agent_running(pod, container);
                if running && agent_listens(pods, pod_name, container).await? {
                    return Ok(());
                }
                let phase = if running {
                    Phase::WaitingForAgent {
                        pod: pod_name.to_owned(),
                    }
                } else {
                    phase_of(pod, container, &self.settings.image)
                };
                if last_phase.as_ref() != Some(&phase) {
                    report(&phase);
                    last_phase = Some(phase);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let waiting_for = if running {
                    format!(
                        "the agent in pod {pod_name} to listen on port {AGENT_PORT} \
                         (it runs, but its log has no {AGENT_READY_LINE} line; \
                         `kubectl logs {pod_name} -c {container}` shows what it does)"
                    )
                } else {
                    describe_wait(pod.as_ref(), &self.settings.image)
                };
                return Err(Error::Resolve(format!(
                    "the agent did not start within {}s (agent.startup_timeout): waiting for {waiting_for}",
                    timeout.as_secs(),
                )));
            }
            pause(cancel, &mut attempt).await?;
        }
    }
}

/// Whether the agent in `pod` said it listens. When the log may not be read
/// (RBAC without `pods/log`), the running container has to do: the
/// port-forward then finds out.
async fn agent_listens(pods: &Api<Pod>, pod: &str, container: &str) -> Result<bool> {
    let params = LogParams {
        container: Some(container.to_owned()),
        limit_bytes: Some(READY_LOG_BYTES),
        ..LogParams::default()
    };
    match pods.logs(pod, &params).await {
        Ok(log) => Ok(log.lines().any(|l| l.starts_with(AGENT_READY_LINE))),
        Err(kube::Error::Api(status)) if status.code == 403 => {
            tracing::debug!(%pod, "the agent's log may not be read; not waiting for its ready line");
            Ok(true)
        }
        // Not there yet (a container that just started), or a passing error.
        Err(e) => {
            tracing::debug!(%pod, error = %e, "reading the agent's log");
            Ok(false)
        }
    }
}

/// Listen on loopback and relay each connection through a port-forward to
/// the agent's port ([`crate::portforward`]).
async fn listen(forward: AgentForward) -> Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::Resolve(format!("binding the port-forward listener: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Resolve(e.to_string()))?;
    let forward = Arc::new(forward);
    let relay = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let forward = forward.clone();
            tokio::spawn(async move {
                match forward.open().await {
                    Ok(f) => f.relay(stream).await,
                    Err(e) => {
                        tracing::warn!(pod = %forward.pod, error = %e, "port-forward to the agent failed");
                    }
                }
            });
        }
    });
    Ok((addr, relay))
}

async fn open_forward(pods: &Api<Pod>, pod: &str) -> Result<PortForward> {
    PortForward::open(pods, pod, AGENT_PORT).await.map_err(|e| {
        Error::api(
            format!("port-forwarding to port {AGENT_PORT} of pod {pod}"),
            e,
        )
    })
}

/// Mark the agent gone once its pod has finished or disappeared.
async fn watch(pods: Api<Pod>, pod: String, running: Arc<AtomicBool>) {
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let gone = match pods.get_opt(&pod).await {
            Ok(None) => true,
            Ok(Some(p)) => p
                .status
                .and_then(|s| s.phase)
                .is_some_and(|phase| phase == "Succeeded" || phase == "Failed"),
            Err(_) => false,
        };
        if gone {
            running.store(false, Ordering::SeqCst);
            return;
        }
    }
}

/// Make the token Secret `name` a dependent of `owner`, so the garbage
/// collector deletes it with the agent's Job or pod even when the CLI cannot.
async fn own_secret(
    secrets: &Api<Secret>,
    name: &str,
    owner: std::result::Result<
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
        String,
    >,
) -> Result<()> {
    let owner = owner.map_err(|e| Error::Resolve(format!("the owner of secret {name}: {e}")))?;
    let action = format!(
        "making {} {} the owner of secret {name}",
        owner.kind, owner.name
    );
    let patch = serde_json::json!({"metadata": {"ownerReferences": [owner]}});
    secrets
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::api(action, e))?;
    Ok(())
}

/// What runs the agent, deleted when it stops.
#[derive(Debug, Default)]
enum AgentObject {
    /// Nothing: an ephemeral container cannot be removed; it exits on its own.
    #[default]
    None,
    /// The agent Job (and its pods).
    Job(Api<Job>, String),
    /// The targetless agent pod.
    Pod(Api<Pod>, String),
}

/// What to delete when the agent stops: what runs it, and the token's
/// Secret while nothing that goes away with the agent owns it (before its
/// Job or pod owns it, or for an ephemeral container, whose Secret the
/// target pod owns). Once the Job or pod owns it, the garbage collector
/// deletes it with them.
#[derive(Debug, Default)]
struct Cleanup {
    agent: AgentObject,
    secret: Option<(Api<Secret>, String)>,
}

impl Cleanup {
    async fn run(&self) {
        let params = DeleteParams {
            propagation_policy: Some(kube::api::PropagationPolicy::Foreground),
            ..DeleteParams::default()
        };
        let deadline = tokio::time::Instant::now() + DELETE_TIMEOUT;
        match &self.agent {
            AgentObject::None => {}
            AgentObject::Job(jobs, name) => {
                let _ = jobs.delete(name, &params).await;
                while tokio::time::Instant::now() < deadline
                    && matches!(jobs.get_opt(name).await, Ok(Some(_)))
                {
                    tokio::time::sleep(POLL).await;
                }
            }
            AgentObject::Pod(pods, name) => {
                let _ = pods.delete(name, &params).await;
                while tokio::time::Instant::now() < deadline
                    && matches!(pods.get_opt(name).await, Ok(Some(_)))
                {
                    tokio::time::sleep(POLL).await;
                }
            }
        }
        if let Some((secrets, name)) = &self.secret {
            let _ = secrets.delete(name, &DeleteParams::default()).await;
        }
    }
}

/// An agent started in the cluster.
#[derive(Debug)]
struct KubeAgent {
    running: Arc<AtomicBool>,
    /// The local listener's relay, when the agent is reached through one.
    relay: Option<JoinHandle<()>>,
    watcher: JoinHandle<()>,
    cleanup: Cleanup,
}

impl AgentHandle for KubeAgent {
    fn is_running(&mut self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    fn stop(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Some(relay) = &self.relay {
                relay.abort();
            }
            self.watcher.abort();
            self.cleanup.run().await;
        })
    }
}

#[cfg(test)]
mod tests;
