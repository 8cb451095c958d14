//! The node agent: runs pods' containers as local processes, each in its own cgroup, and
//! serves their logs.

mod cgroup;
pub mod containerd;
mod env;
pub mod init;
mod logs;
mod mounts;
pub mod network;
mod probes;
pub mod sandbox;
pub mod security;
mod volumes;

use std::{collections::HashMap, path::Path, process::Stdio, sync::Arc, time::Duration};

use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::watch;

pub use cgroup::{Cgroups, sweep as cgroup_sweep};
pub use logs::Logs;
pub use network::Network;

use crate::{
    resources::ResourceType,
    selector::{FieldSelector, LabelSelector},
    store::{NODE_NAME, Store},
    time,
};

/// The node's address as pods see it in `status.hostIP` (the API server listens there).
pub const HOST_IP: &str = "127.0.0.1";

/// What the containers of a running pod share.
#[derive(Debug, Clone)]
pub(crate) struct PodContext {
    /// The sandbox holding the pod's namespaces.
    sandbox_pid: u32,
    /// Volume name → its directory on this machine.
    volumes: Arc<HashMap<String, Option<std::path::PathBuf>>>,
    /// Mounted in every container: the pod's `/etc/resolv.conf` and `/etc/hosts`.
    pod_files: Arc<Vec<mounts::MountSpec>>,
    pod_ip: String,
    /// Where the pod reaches the API server (`KUBERNETES_SERVICE_HOST`).
    api_host: String,
}

/// Why `image` cannot be pulled: images are not pulled here, but one from a
/// registry under the reserved `.invalid` domain (RFC 2606) fails as it would
/// on a real node, for tests of image pull errors.
fn unpullable(image: &str) -> Option<String> {
    let registry = image.split_once('/')?.0;
    let host = registry.split(':').next().unwrap_or(registry);
    host.ends_with(".invalid").then(|| {
        format!(
            "failed to pull and unpack image \"{image}\": failed to resolve reference \"{image}\": \
             dial tcp: lookup {host}: no such host"
        )
    })
}

/// First restart back-off; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Grace between SIGTERM and SIGKILL when a pod stops.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The node agent. Runs each container as a local process group (the image is recorded,
/// not pulled); see docs/kube-sim.md for the conventions.
#[derive(Debug, Clone)]
pub struct Kubelet {
    store: Store,
    logs: Logs,
    cgroups: Cgroups,
    network: Network,
    /// The cluster DNS server's address, if it runs.
    dns: Option<std::net::Ipv4Addr>,
    execs: Execs,
    api_port: u16,
    /// `--runtime containerd`: the run's containerd; `None`: containers are process groups.
    containerd: Option<Arc<containerd::Containerd>>,
    /// pod uid → stop signal of its task.
    pods: Arc<Mutex<HashMap<String, watch::Sender<bool>>>>,
    /// Tasks still running (to wait for at shutdown).
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

impl Kubelet {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        logs: Logs,
        cgroups: Cgroups,
        network: Network,
        dns: Option<std::net::Ipv4Addr>,
        execs: Execs,
        api_port: u16,
        containerd: Option<Arc<containerd::Containerd>>,
    ) -> Self {
        Self {
            store,
            logs,
            cgroups,
            network,
            dns,
            execs,
            api_port,
            containerd,
            pods: Arc::default(),
            tasks: Arc::default(),
        }
    }

    /// The `<runtime>` of container ids `<runtime>://<id>`.
    fn runtime_name(&self) -> &'static str {
        if self.containerd.is_some() {
            "containerd"
        } else {
            "remora-sim"
        }
    }

    fn pod_rt(&self) -> ResourceType {
        self.store
            .registry()
            .find("", "v1", "pods")
            .cloned()
            .expect("pods")
    }

    /// Watches pods and starts/stops them until `shutdown` flips.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut events_rx = self.store.subscribe();
        loop {
            self.sync();
            tokio::select! {
                _ = events_rx.recv() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => break,
            }
        }
        self.stop_all().await;
    }

    fn sync(&self) {
        let rt = self.pod_rt();
        let (pods, _) = self.store.list(
            &rt,
            None,
            &LabelSelector::default(),
            &FieldSelector::default(),
        );
        let mut running = self.pods.lock();
        let live: Vec<String> = pods
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| s(&p["metadata"]["uid"]).to_owned())
            .collect();
        running.retain(|uid, stop| {
            let keep = live.contains(uid);
            if !keep {
                let _ = stop.send(true);
            }
            keep
        });
        for pod in pods {
            let uid = s(&pod["metadata"]["uid"]).to_owned();
            let node = s(&pod["spec"]["nodeName"]);
            if running.contains_key(&uid) || pod["metadata"]["deletionTimestamp"].is_string() {
                continue;
            }
            if !node.is_empty() && node != NODE_NAME {
                continue;
            }
            if matches!(s(&pod["status"]["phase"]), "Succeeded" | "Failed") {
                continue;
            }
            let (stop_tx, stop_rx) = watch::channel(false);
            running.insert(uid, stop_tx);
            let me = self.clone();
            let handle = tokio::spawn(async move { me.run_pod(pod, stop_rx).await });
            let mut tasks = self.tasks.lock();
            tasks.retain(|t| !t.is_finished());
            tasks.push(handle);
        }
    }

    async fn stop_all(&self) {
        for (_, stop) in self.pods.lock().drain() {
            let _ = stop.send(true);
        }
        let tasks: Vec<_> = self.tasks.lock().drain(..).collect();
        for t in tasks {
            let _ = t.await;
        }
    }

    fn write_status(&self, pod: &Value, f: impl FnOnce(&mut Value)) {
        let rt = self.pod_rt();
        let ns = pod["metadata"]["namespace"].as_str();
        let _ = self.store.modify(
            &rt,
            ns,
            s(&pod["metadata"]["name"]),
            true,
            false,
            None,
            |old| {
                let mut new = old.clone();
                f(&mut new["status"]);
                Ok(new)
            },
        );
    }

    async fn run_pod(self, pod: Value, stop_rx: watch::Receiver<bool>) {
        let rt = self.pod_rt();
        let ns = pod["metadata"]["namespace"].as_str().map(str::to_owned);
        let name = s(&pod["metadata"]["name"]).to_owned();
        let uid = s(&pod["metadata"]["uid"]).to_owned();
        let _ = self
            .store
            .modify(&rt, ns.as_deref(), &name, false, false, None, |old| {
                let mut new = old.clone();
                new["spec"]["nodeName"] = json!(NODE_NAME);
                Ok(new)
            });
        let containers: Vec<Value> = pod["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let now = time::now_rfc3339();
        let statuses: Arc<Mutex<Vec<Value>>> = Arc::new(Mutex::new(
            containers
                .iter()
                .map(|c| {
                    json!({"name": c["name"], "image": c["image"], "imageID": "", "ready": false,
                                "restartCount": 0, "started": false,
                                "state": {"waiting": {"reason": "ContainerCreating"}}})
                })
                .collect(),
        ));
        let _ = std::fs::create_dir_all(self.logs.dir.join(&uid));
        self.write_status(&pod, |st| {
            st["phase"] = json!("Pending");
            st["hostIP"] = json!(HOST_IP);
            st["hostIPs"] = json!([{"ip": HOST_IP}]);
            st["startTime"] = json!(now);
            st["conditions"] =
                json!([{"type": "PodScheduled", "status": "True", "lastTransitionTime": now}]);
            st["containerStatuses"] = json!(*statuses.lock());
        });
        let Some((sandbox, volumes)) = self.setup_pod(&pod, &statuses, stop_rx.clone()).await
        else {
            self.finish_pod(&uid, &stop_rx).await;
            return;
        };
        let ctx = PodContext {
            sandbox_pid: sandbox.pid,
            volumes: Arc::new(volumes),
            pod_files: Arc::new(self.pod_files(&pod, &sandbox)),
            pod_ip: sandbox
                .addr
                .as_ref()
                .map_or(HOST_IP.to_owned(), |a| a.ip.to_string()),
            api_host: if sandbox.isolated {
                self.network.gateway().to_string()
            } else {
                HOST_IP.to_owned()
            },
        };
        self.write_status(&pod, |st| {
            st["podIP"] = json!(ctx.pod_ip);
            st["podIPs"] = json!([{"ip": ctx.pod_ip}]);
        });
        let mut handles = Vec::new();
        for (i, c) in containers.into_iter().enumerate() {
            let me = self.clone();
            let pod = pod.clone();
            let statuses = statuses.clone();
            let stop_rx = stop_rx.clone();
            let ctx = ctx.clone();
            handles.push(tokio::spawn(async move {
                me.run_container(pod, i, c, statuses, ctx, stop_rx, None)
                    .await
            }));
        }
        // Ephemeral containers come later, through the pod's ephemeralcontainers subresource.
        let ephemeral = tokio::spawn(self.clone().run_ephemeral(
            pod.clone(),
            statuses.clone(),
            ctx.clone(),
            stop_rx.clone(),
        ));
        for h in handles {
            let _ = h.await;
        }
        ephemeral.abort();
        sandbox.stop(&self.network).await;
        self.finish_pod(&uid, &stop_rx).await;
    }

    /// Prepares the pod's volumes and starts its sandbox, retrying with back-off until both
    /// work or the pod stops.
    async fn setup_pod(
        &self,
        pod: &Value,
        statuses: &Mutex<Vec<Value>>,
        mut stop_rx: watch::Receiver<bool>,
    ) -> Option<(
        sandbox::Sandbox,
        HashMap<String, Option<std::path::PathBuf>>,
    )> {
        let uid = s(&pod["metadata"]["uid"]);
        let mut backoff = FIRST_BACKOFF;
        loop {
            let volumes = match self.prepare_volumes(pod) {
                Ok(volumes) => Some(volumes),
                Err(e) => {
                    self.waiting(
                        pod,
                        statuses,
                        "CreateContainerConfigError",
                        &format!("preparing the pod's volumes: {e}"),
                    );
                    None
                }
            };
            let started = async {
                let cgroup = self.cgroups.container(uid, "sandbox")?;
                let stderr = std::fs::File::create(self.logs.dir.join(uid).join(".sandbox.log"))?;
                sandbox::Sandbox::start(sandbox::SandboxSpec {
                    cgroup: cgroup.dir,
                    hostname: s(&pod["metadata"]["name"]),
                    host_network: pod["spec"]["hostNetwork"] == json!(true),
                    network: &self.network,
                    env: vec![(
                        STATE_ENV.to_owned(),
                        self.logs
                            .dir
                            .parent()
                            .unwrap_or(&self.logs.dir)
                            .display()
                            .to_string(),
                    )],
                    stderr,
                })
                .await
            };
            if let Some(volumes) = volumes {
                match started.await {
                    Ok(sandbox) => {
                        record_pid(&self.logs.dir, sandbox.pid);
                        return Some((sandbox, volumes));
                    }
                    Err(e) => self.waiting(
                        pod,
                        statuses,
                        "CreatePodSandboxError",
                        &format!("failed to create the pod sandbox: {e}"),
                    ),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop_rx.changed() => return None,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// The pod's own `/etc/hosts` (its name at its address) and, with the cluster DNS,
    /// `/etc/resolv.conf`, as files to mount in every container.
    fn pod_files(&self, pod: &Value, sandbox: &sandbox::Sandbox) -> Vec<mounts::MountSpec> {
        let dir = self.volumes_dir(s(&pod["metadata"]["uid"]));
        let ns = match s(&pod["metadata"]["namespace"]) {
            "" => "default",
            ns => ns,
        };
        let policy = s(&pod["spec"]["dnsPolicy"]);
        let mut files = Vec::new();
        if let Some(addr) = &sandbox.addr {
            let hosts = format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{}\n",
                addr.ip,
                s(&pod["metadata"]["name"])
            );
            files.push(("hosts", hosts));
        }
        let cluster_dns = match policy {
            "Default" | "None" => false,
            "ClusterFirstWithHostNet" => true,
            _ => sandbox.addr.is_some(),
        };
        if let Some(dns) = self.dns.filter(|_| cluster_dns) {
            let d = crate::dns::DOMAIN;
            files.push((
                "resolv.conf",
                format!("nameserver {dns}\nsearch {ns}.svc.{d} svc.{d} {d}\noptions ndots:5\n"),
            ));
        }
        files
            .into_iter()
            .filter_map(|(name, content)| {
                let source = dir.join(format!(".{name}"));
                std::fs::create_dir_all(&dir).ok()?;
                std::fs::write(&source, content).ok()?;
                Some(mounts::MountSpec {
                    source,
                    target: std::path::Path::new("/etc").join(name),
                    read_only: false,
                })
            })
            .collect()
    }

    /// Marks every container of the pod as waiting for `reason`.
    fn waiting(&self, pod: &Value, statuses: &Mutex<Vec<Value>>, reason: &str, message: &str) {
        for st in statuses.lock().iter_mut() {
            st["state"] = json!({"waiting": {"reason": reason, "message": message}});
        }
        self.publish(pod, statuses);
    }

    /// Removes what is left of a pod: its cgroups (and any process in them), its volumes, and
    /// its logs if it was deleted.
    async fn finish_pod(&self, uid: &str, stop_rx: &watch::Receiver<bool>) {
        let cgroups = self.cgroups.clone();
        let pod_uid = uid.to_owned();
        let _ = tokio::task::spawn_blocking(move || cgroups.remove_pod(&pod_uid)).await;
        // No mount of the host's namespace lies under it: the containers' died with them.
        let _ = std::fs::remove_dir_all(self.volumes_dir(uid));
        if *stop_rx.borrow() {
            let _ = std::fs::remove_dir_all(self.logs.dir.join(uid));
        }
    }

    /// Records a core Event about `pod` from the kubelet (`kubectl describe`, `get events`).
    fn event(&self, pod: &Value, reason: &str, message: &str) {
        let Some(rt) = self.store.registry().find("", "v1", "events").cloned() else {
            return;
        };
        let ns = s(&pod["metadata"]["namespace"]).to_owned();
        let now = time::now_rfc3339();
        let event = json!({
            "metadata": {"generateName": format!("{}.", s(&pod["metadata"]["name"]))},
            "involvedObject": {"kind": "Pod", "apiVersion": "v1", "namespace": ns,
                               "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]},
            "reason": reason, "message": message, "type": "Normal", "count": 1,
            "source": {"component": "kubelet", "host": NODE_NAME},
            "firstTimestamp": now, "lastTimestamp": now,
            "reportingComponent": "kubelet", "reportingInstance": NODE_NAME,
        });
        let _ = self.store.create(&rt, Some(&ns), event, false);
    }

    /// [`Self::publish`], or for ephemeral containers their `ephemeralContainerStatuses`.
    fn publish_as(&self, pod: &Value, statuses: &Mutex<Vec<Value>>, ephemeral: bool) {
        if ephemeral {
            self.write_status(pod, |st| {
                st["ephemeralContainerStatuses"] = json!(*statuses.lock());
            });
        } else {
            self.publish(pod, statuses);
        }
    }

    /// Writes the containers' statuses and what follows from them (phase,
    /// conditions). The statuses are read under the store's lock, so of two
    /// containers publishing at once the later write holds both changes (a
    /// copy taken before would let an older one land last and lose the other).
    fn publish(&self, pod: &Value, statuses: &Mutex<Vec<Value>>) {
        let policy = s(&pod["spec"]["restartPolicy"]).to_owned();
        self.write_status(pod, |st| {
            let list = statuses.lock().clone();
            let all_ready = list.iter().all(|c| c["ready"] == json!(true));
            let all_done = list.iter().all(|c| c["state"]["terminated"].is_object());
            let any_failed = list.iter().any(|c| {
                c["state"]["terminated"]["exitCode"]
                    .as_i64()
                    .is_some_and(|e| e != 0)
            });
            let phase = if all_done && policy != "Always" {
                if any_failed && policy == "Never" {
                    "Failed"
                } else if any_failed {
                    "Running"
                } else {
                    "Succeeded"
                }
            } else if list.iter().any(|c| {
                c["state"]["running"].is_object() || c["restartCount"].as_i64().unwrap_or(0) > 0
            }) {
                "Running"
            } else {
                "Pending"
            };
            let now = time::now_rfc3339();
            let ready = if all_ready { "True" } else { "False" };
            st["phase"] = json!(phase);
            st["containerStatuses"] = json!(list);
            st["conditions"] = json!([
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
                {"type": "Ready", "status": ready, "lastTransitionTime": now},
            ]);
        });
    }

    /// Starts every ephemeral container added to the pod's spec (once each, never
    /// restarted), until aborted or the pod stops. Under containerd one with a
    /// `targetContainerName` joins that container's PID namespace.
    async fn run_ephemeral(
        self,
        pod: Value,
        statuses: Arc<Mutex<Vec<Value>>>,
        ctx: PodContext,
        mut stop_rx: watch::Receiver<bool>,
    ) {
        let rt = self.pod_rt();
        let ns = pod["metadata"]["namespace"].as_str().map(str::to_owned);
        let name = s(&pod["metadata"]["name"]).to_owned();
        let uid = s(&pod["metadata"]["uid"]).to_owned();
        let list: Arc<Mutex<Vec<Value>>> = Arc::default();
        let mut events = self.store.subscribe();
        loop {
            let current = self
                .store
                .get(&rt, ns.as_deref(), &name)
                .ok()
                .filter(|p| s(&p["metadata"]["uid"]) == uid);
            for c in current
                .as_ref()
                .and_then(|p| p["spec"]["ephemeralContainers"].as_array())
                .into_iter()
                .flatten()
            {
                let index = {
                    let mut list = list.lock();
                    if list.iter().any(|st| st["name"] == c["name"]) {
                        continue;
                    }
                    list.push(
                        json!({"name": c["name"], "image": c["image"], "imageID": "",
                        "ready": false, "restartCount": 0,
                        "state": {"waiting": {"reason": "ContainerCreating"}}}),
                    );
                    list.len() - 1
                };
                let pid_ns = c["targetContainerName"]
                    .as_str()
                    .filter(|_| self.containerd.is_some())
                    .and_then(|target| {
                        let id = statuses
                            .lock()
                            .iter()
                            .find(|st| st["name"] == json!(target))
                            .and_then(|st| st["containerID"].as_str())
                            .and_then(|id| id.split_once("://"))
                            .map(|(_, id)| id.to_owned())?;
                        let pid = self.cgroups.container_pids(&uid, &id).into_iter().next()?;
                        Some(format!("/proc/{pid}/ns/pid"))
                    });
                tokio::spawn(self.clone().run_container(
                    current.clone().unwrap_or_else(|| pod.clone()),
                    index,
                    c.clone(),
                    list.clone(),
                    ctx.clone(),
                    stop_rx.clone(),
                    Some(pid_ns),
                ));
            }
            // Until this pod changes (or a second passes).
            let this_pod = async {
                loop {
                    match events.recv().await {
                        Ok(e) if e.key.1 != "pods" || e.object["metadata"]["uid"] != json!(uid) => {
                            continue;
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await;
                        }
                        _ => break,
                    }
                }
            };
            tokio::select! {
                () = this_pod => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop_rx.changed() => return,
            }
        }
    }

    /// Container `index` of `statuses` (`ephemeral`: `Some(its target's PID namespace, if
    /// it joins one)`, for an ephemeral container: never restarted, no probes, its status
    /// in `ephemeralContainerStatuses`).
    #[allow(clippy::too_many_arguments)]
    async fn run_container(
        self,
        pod: Value,
        index: usize,
        container: Value,
        statuses: Arc<Mutex<Vec<Value>>>,
        ctx: PodContext,
        mut stop_rx: watch::Receiver<bool>,
        ephemeral: Option<Option<String>>,
    ) {
        let uid = s(&pod["metadata"]["uid"]).to_owned();
        let cname = s(&container["name"]).to_owned();
        let policy = if ephemeral.is_some() {
            "Never".to_owned()
        } else {
            s(&pod["spec"]["restartPolicy"]).to_owned()
        };
        let mut argv: Vec<String> = container["command"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(container["args"].as_array().into_iter().flatten())
            .map(|v| s(v).to_owned())
            .collect();
        if argv.is_empty() {
            // No command: the image's entrypoint is not run; the container idles.
            argv = vec!["sleep".to_owned(), "infinity".to_owned()];
        }
        let probes = if ephemeral.is_some() {
            probes::Probes::default()
        } else {
            probes::Probes::parse(&container)
        };
        let security = match security::Security::of(&pod, &container) {
            Ok(security) => security,
            Err(message) => {
                // As a kubelet: the container waits (its spec cannot change) until the pod goes.
                statuses.lock()[index]["state"] = json!({"waiting": {"reason": "CreateContainerConfigError", "message": message}});
                self.publish_as(&pod, &statuses, ephemeral.is_some());
                let _ = stop_rx.changed().await;
                return;
            }
        };
        let mut backoff = FIRST_BACKOFF;
        if let Some(message) = unpullable(s(&container["image"])) {
            // As a kubelet whose registry does not resolve: ErrImagePull, then
            // ImagePullBackOff between retries, until the pod goes.
            let mut reason = "ErrImagePull";
            loop {
                statuses.lock()[index]["state"] =
                    json!({"waiting": {"reason": reason, "message": message}});
                self.publish_as(&pod, &statuses, ephemeral.is_some());
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop_rx.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                reason = if reason == "ErrImagePull" {
                    "ImagePullBackOff"
                } else {
                    "ErrImagePull"
                };
            }
        }
        let mut restarts = 0;
        loop {
            if *stop_rx.borrow() {
                return;
            }
            let log_path = self.logs.path(&uid, &cname, false);
            if restarts > 0 {
                let _ = std::fs::rename(&log_path, self.logs.path(&uid, &cname, true));
            }
            let _ = std::fs::remove_file(self.logs.done_path(&uid, &cname));
            // 64 hex digits, like containerd's ids.
            let container_id = crate::store::random_hex(32);
            let cgroup = self.cgroups.container(&uid, &container_id);
            let path_var =
                std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
            let workdir = container["workingDir"].as_str();
            let mut init_cmd = None;
            let spawned = cgroup.as_ref().map_err(clone_err).and_then(|cg| {
                init::check_program(&argv[0], &path_var, workdir)?;
                let mut mounts = ctx.pod_files.to_vec();
                mounts.extend(Self::container_mounts(&container, &ctx.volumes)?);
                let out = std::fs::File::create(&log_path)?;
                let err = out.try_clone()?;
                // The init's arguments and environment, also for exec probes.
                let mut args = vec![
                    init::SUBCOMMAND.to_owned(),
                    "--cgroup".to_owned(),
                    cg.dir.display().to_string(),
                    "--sandbox".to_owned(),
                    ctx.sandbox_pid.to_string(),
                    "--scratch".to_owned(),
                    self.volumes_dir(&uid)
                        .join(".scratch")
                        .join(&container_id)
                        .display()
                        .to_string(),
                ];
                for m in &mounts {
                    args.extend(["--mount".to_owned(), m.to_arg()]);
                }
                if let Some(dir) = workdir {
                    args.extend(["--workdir".to_owned(), dir.to_owned()]);
                }
                args.extend(security.to_args());
                let limits = &container["resources"]["limits"];
                let quantity = |name: &str| {
                    limits[name]
                        .as_str()
                        .map(str::to_owned)
                        .or_else(|| limits[name].as_f64().map(|n| n.to_string()))
                        .and_then(|q| cgroup::parse_quantity(&q))
                };
                if let Some(bytes) = quantity("memory") {
                    args.extend(["--memory-limit".to_owned(), (bytes as u64).to_string()]);
                }
                if let Some(cores) = quantity("cpu") {
                    let milli = (cores * 1000.0).ceil() as u64;
                    args.extend(["--cpu-limit-milli".to_owned(), milli.to_string()]);
                }
                args.push("--".to_owned());
                let mut env = vec![("PATH".to_owned(), path_var.clone())];
                env.extend(self.env(&pod, &container, &ctx));
                env.push((
                    STATE_ENV.to_owned(),
                    self.logs
                        .dir
                        .parent()
                        .unwrap_or(&self.logs.dir)
                        .display()
                        .to_string(),
                ));
                let cmd = match &self.containerd {
                    // ctr runs the container through containerd and runc, and ends with it.
                    Some(ctrd) => {
                        // hostPID: the node's PID namespace, the simulator's own.
                        let pid_ns = match &ephemeral {
                            Some(target) => target.clone(),
                            None => (pod["spec"]["hostPID"] == json!(true))
                                .then(|| format!("/proc/{}/ns/pid", std::process::id())),
                        };
                        let prefix = containerd::user_prefix(&security);
                        let mut run = ctrd.run_args(
                            &container_id,
                            &uid,
                            ctx.sandbox_pid,
                            pid_ns.as_deref(),
                            &security,
                            &env,
                            &mounts,
                            workdir,
                        );
                        run.extend(prefix.iter().cloned());
                        let marker = env.last().cloned().into_iter();
                        InitCommand {
                            exe: "ctr".into(),
                            args: run,
                            env: std::iter::once(("PATH".to_owned(), path_var.clone()))
                                .chain(marker)
                                .collect(),
                            containerd: Some((ctrd.clone(), container_id.clone(), prefix)),
                        }
                    }
                    None => InitCommand {
                        exe: init::current_exe()?,
                        args,
                        env,
                        containerd: None,
                    },
                };
                let child = cmd
                    .command(&argv)
                    .stdout(out)
                    .stderr(err)
                    .process_group(0)
                    .spawn();
                init_cmd = Some(cmd);
                child
            });
            let mut child = match spawned {
                Ok(child) => child,
                Err(e) => {
                    if let Ok(cgroup) = cgroup {
                        let _ = tokio::task::spawn_blocking(move || cgroup.remove()).await;
                    }
                    let _ = std::fs::write(
                        &log_path,
                        format!("remora-kube-sim: starting {argv:?}: {e}\n"),
                    );
                    statuses.lock()[index]["state"] = json!({"waiting": {"reason": "RunContainerError", "message": e.to_string()}});
                    self.publish_as(&pod, &statuses, ephemeral.is_some());
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop_rx.changed() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            let pid = child.id().unwrap_or(0);
            record_pid(&self.logs.dir, pid);
            let started = time::now_rfc3339();
            {
                let mut st = statuses.lock();
                st[index]["state"] = json!({"running": {"startedAt": started}});
                // Without a startup probe a running container has started; without a
                // readiness probe either, it is ready.
                st[index]["started"] = json!(probes.startup.is_none());
                st[index]["ready"] = json!(probes.startup.is_none() && probes.readiness.is_none());
                st[index]["containerID"] =
                    json!(format!("{}://{container_id}", self.runtime_name()));
                st[index]["restartCount"] = json!(restarts);
            }
            self.publish_as(&pod, &statuses, ephemeral.is_some());
            let init_cmd = init_cmd.map(Arc::new);
            if let Some(cmd) = &init_cmd {
                self.execs
                    .lock()
                    .insert((uid.clone(), cname.clone()), cmd.clone());
            }
            let mut prober = init_cmd.filter(|_| probes.any()).map(|cmd| {
                let exec: probes::Exec = Arc::new(move |argv: Vec<String>| {
                    cmd.exec_command(&argv)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                });
                tokio::spawn(
                    self.clone().probe_container(
                        pod.clone(),
                        index,
                        probes.clone(),
                        ctx.pod_ip
                            .parse()
                            .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
                        exec,
                        statuses.clone(),
                    ),
                )
            });
            let prober_abort = prober.as_ref().map(tokio::task::JoinHandle::abort_handle);
            let probe_failed = async {
                match prober.as_mut() {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            };
            let exit = tokio::select! {
                status = child.wait() => status.ok(),
                Ok(failed) = probe_failed => {
                    // As a kubelet does: SIGTERM, SIGKILL after the grace period, then the
                    // restartPolicy decides.
                    let message = format!(
                        "Container {cname} failed {} probe, will be restarted",
                        failed.name().to_lowercase()
                    );
                    let _ = std::fs::OpenOptions::new()
                        .append(true)
                        .open(&log_path)
                        .and_then(|mut f| {
                            std::io::Write::write_all(&mut f, format!("remora-kube-sim: {message}\n").as_bytes())
                        });
                    self.event(&pod, "Killing", &message);
                    kill_group(pid, "TERM");
                    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                        Ok(status) => status.ok(),
                        Err(_) => {
                            kill_group(pid, "KILL");
                            child.wait().await.ok()
                        }
                    }
                }
                _ = stop_rx.changed() => {
                    kill_group(pid, "TERM");
                    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                        Ok(_) => {}
                        Err(_) => {
                            kill_group(pid, "KILL");
                            let _ = child.wait().await;
                        }
                    }
                    kill_group(pid, "KILL");
                    if let Some(r) = prober_abort {
                        r.abort();
                    }
                    self.execs.lock().remove(&(uid.clone(), cname.clone()));
                    remove_cgroup(cgroup).await;
                    let _ = std::fs::write(self.logs.done_path(&uid, &cname), "");
                    return;
                }
            };
            kill_group(pid, "KILL");
            if let Some(r) = prober {
                r.abort();
            }
            self.execs.lock().remove(&(uid.clone(), cname.clone()));
            remove_cgroup(cgroup).await;
            let _ = std::fs::write(self.logs.done_path(&uid, &cname), "");
            // A process killed by a signal exits with 128 + the signal, as a runtime reports.
            let code = exit
                .and_then(|s| {
                    use std::os::unix::process::ExitStatusExt;
                    s.code().or_else(|| s.signal().map(|sig| 128 + sig))
                })
                .unwrap_or(137);
            {
                let mut st = statuses.lock();
                let mut terminated = json!({"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" },
                                        "startedAt": started, "finishedAt": time::now_rfc3339(),
                                        "containerID": format!("{}://{container_id}", self.runtime_name())});
                if code != 0 && container["terminationMessagePolicy"] == "FallbackToLogsOnError" {
                    if let Some(tail) = log_tail(&self.logs.path(&uid, &cname, false)) {
                        terminated["message"] = json!(tail);
                    }
                }
                st[index]["ready"] = json!(false);
                st[index]["lastState"] = json!({"terminated": terminated.clone()});
                let restart = policy == "Always" || (policy == "OnFailure" && code != 0);
                st[index]["state"] = if restart {
                    json!({"waiting": {"reason": "CrashLoopBackOff", "message": format!("back-off restarting failed container {cname}")}})
                } else {
                    json!({"terminated": terminated})
                };
                if !restart {
                    drop(st);
                    self.publish_as(&pod, &statuses, ephemeral.is_some());
                    return;
                }
            }
            self.publish_as(&pod, &statuses, ephemeral.is_some());
            restarts += 1;
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop_rx.changed() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// Every container process carries this variable (the run's state dir), so a later run can
/// tell the leftovers of a SIGKILLed simulator from unrelated processes.
pub const STATE_ENV: &str = "REMORA_KUBE_SIM_STATE";

/// Appends a container's pid to `<state>/pids`.
fn record_pid(logs_dir: &Path, pid: u32) {
    use std::io::Write;
    let Some(state) = logs_dir.parent() else {
        return;
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state.join("pids"))
    {
        let _ = writeln!(f, "{pid}");
    }
}

/// Kills the process groups a dead run left (those whose environment names `state`).
pub fn kill_leftovers(state: &Path) {
    let Ok(pids) = std::fs::read_to_string(state.join("pids")) else {
        return;
    };
    let marker = format!("{STATE_ENV}={}", state.display());
    for pid in pids.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let ours = environ.split(|b| *b == 0).any(|kv| kv == marker.as_bytes());
        if ours {
            kill_group(pid, "KILL");
        }
    }
}

/// The running containers' init commands, by (pod uid, container name): what
/// `pods/exec` runs commands through.
pub type Execs = Arc<Mutex<HashMap<(String, String), Arc<InitCommand>>>>;

/// How a container's init is started: for the container itself, its exec probes and
/// `pods/exec` (in the container's cgroup, namespaces and mounts).
#[derive(Debug)]
pub struct InitCommand {
    exe: std::path::PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Under `--runtime containerd`: the containerd and the container id, for `task exec`.
    /// (and the `setpriv` prefix of its user).
    containerd: Option<(Arc<containerd::Containerd>, String, Vec<String>)>,
}

impl InitCommand {
    /// A command run in the running container (exec, exec probes).
    pub fn exec_command(&self, argv: &[String]) -> tokio::process::Command {
        match &self.containerd {
            Some((ctrd, id, prefix)) => {
                let mut cmd = tokio::process::Command::new("ctr");
                cmd.args(ctrd.exec_args(id))
                    .args(prefix)
                    .args(argv)
                    .env_clear()
                    .envs(self.env.iter().map(|(k, v)| (k, v)))
                    .stdin(Stdio::null())
                    .kill_on_drop(true);
                cmd
            }
            None => self.command(argv),
        }
    }

    pub fn command(&self, argv: &[String]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.args(&self.args)
            .args(argv)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }
}

/// Kills what is left in a container's cgroup (processes that left its process group too)
/// and removes it.
async fn remove_cgroup(cgroup: std::io::Result<cgroup::ContainerCgroup>) {
    if let Ok(cgroup) = cgroup {
        let _ = tokio::task::spawn_blocking(move || cgroup.remove()).await;
    }
}

fn clone_err(e: &std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), e.to_string())
}

/// Signals the process group a container leads (only processes this kubelet started).
fn kill_group(pid: u32, signal: &str) {
    if pid == 0 {
        return;
    }
    let _ = std::process::Command::new("kill")
        .args([format!("-{signal}"), "--".to_owned(), format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
}

/// What a kubelet puts in `terminated.message` under `terminationMessagePolicy:
/// FallbackToLogsOnError` when a container fails without writing a termination
/// message: the end of its log, at most 80 lines and 2048 bytes.
fn log_tail(path: &std::path::Path) -> Option<String> {
    const MAX_LINES: usize = 80;
    const MAX_BYTES: usize = 2048;
    let log = std::fs::read(path).ok()?;
    let mut start = log.len().saturating_sub(MAX_BYTES);
    let lines: Vec<usize> = log[start..]
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| start + i + 1)
        .collect();
    // The last MAX_LINES lines: start after the newline that precedes them.
    if lines.len() > MAX_LINES {
        start = lines[lines.len() - MAX_LINES - 1];
    }
    let tail = String::from_utf8_lossy(&log[start..]).trim_end().to_owned();
    (!tail.is_empty()).then_some(tail)
}
