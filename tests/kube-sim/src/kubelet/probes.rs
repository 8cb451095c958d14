//! Probes: httpGet and tcpSocket to the pod's address (this machine reaches every pod's
//! address), exec in the container (its cgroup, namespaces and mounts, through the container
//! init), run as a kubelet runs them:
//! - a startup probe runs first; until it has succeeded the container is not `started` and no
//!   other probe runs; `failureThreshold` failures kill the container;
//! - then the readiness probe sets `ready` (once `successThreshold` successes, not ready again
//!   after `failureThreshold` failures) and the liveness probe kills the container after
//!   `failureThreshold` failures in a row. A killed container restarts as its pod's
//!   restartPolicy says, with `restartCount` counting it.
use std::{net::IpAddr, sync::Arc, time::Duration};

use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::{Kubelet, s};

/// What a probe checks.
#[derive(Debug, Clone)]
enum Check {
    Http {
        port: u16,
        path: String,
        host: Option<String>,
    },
    Tcp {
        port: u16,
    },
    Exec {
        command: Vec<String>,
    },
}

/// A parsed probe with Kubernetes' defaults.
#[derive(Debug, Clone)]
pub(super) struct Probe {
    check: Check,
    initial_delay: Duration,
    period: Duration,
    timeout: Duration,
    success_threshold: u64,
    failure_threshold: u64,
}

fn seconds(v: &Value, default: u64) -> Duration {
    Duration::from_secs(v.as_u64().unwrap_or(default))
}

/// A port given as a number or as the name of one of the container's ports.
fn port(v: &Value, container: &Value) -> Option<u16> {
    if let Some(n) = v.as_u64() {
        return u16::try_from(n).ok();
    }
    let name = v.as_str()?;
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    container["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| u16::try_from(p["containerPort"].as_u64()?).ok())
}

impl Probe {
    pub(super) fn parse(probe: &Value, container: &Value) -> Option<Self> {
        let check = if probe["httpGet"].is_object() {
            let h = &probe["httpGet"];
            Check::Http {
                port: port(&h["port"], container)?,
                path: h["path"].as_str().unwrap_or("/").to_owned(),
                host: h["host"].as_str().map(str::to_owned),
            }
        } else if probe["tcpSocket"].is_object() {
            Check::Tcp {
                port: port(&probe["tcpSocket"]["port"], container)?,
            }
        } else if probe["exec"].is_object() {
            Check::Exec {
                command: probe["exec"]["command"]
                    .as_array()?
                    .iter()
                    .map(|c| s(c).to_owned())
                    .collect(),
            }
        } else {
            return None;
        };
        Some(Self {
            check,
            initial_delay: seconds(&probe["initialDelaySeconds"], 0),
            period: seconds(&probe["periodSeconds"], 10).max(Duration::from_secs(1)),
            timeout: seconds(&probe["timeoutSeconds"], 1).max(Duration::from_secs(1)),
            success_threshold: probe["successThreshold"].as_u64().unwrap_or(1).max(1),
            failure_threshold: probe["failureThreshold"].as_u64().unwrap_or(3).max(1),
        })
    }
}

/// Runs an exec probe's command in the container; its exit status.
pub(super) type Exec =
    Arc<dyn Fn(Vec<String>) -> std::io::Result<tokio::process::Child> + Send + Sync>;

async fn check(check: &Check, ip: IpAddr, exec: &Exec) -> bool {
    match check {
        Check::Tcp { port } => TcpStream::connect((ip, *port)).await.is_ok(),
        Check::Http { port, path, host } => {
            let target = match host {
                Some(h) => h.parse().unwrap_or(ip),
                None => ip,
            };
            let Ok(mut stream) = TcpStream::connect((target, *port)).await else {
                return false;
            };
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {target}:{port}\r\nUser-Agent: kube-probe/1.32\r\nConnection: close\r\n\r\n"
            );
            if stream.write_all(request.as_bytes()).await.is_err() {
                return false;
            }
            let mut head = [0u8; 16];
            let mut n = 0;
            while n < 12 {
                match stream.read(&mut head[n..]).await {
                    Ok(0) | Err(_) => return false,
                    Ok(m) => n += m,
                }
            }
            // "HTTP/1.x NNN": success is 200–399.
            std::str::from_utf8(&head[9..12])
                .ok()
                .and_then(|code| code.parse::<u16>().ok())
                .is_some_and(|code| (200..400).contains(&code))
        }
        Check::Exec { command } => match exec(command.clone()) {
            Ok(mut child) => child.wait().await.is_ok_and(|st| st.success()),
            Err(_) => false,
        },
    }
}

/// A container's probes, parsed from its spec.
#[derive(Debug, Clone, Default)]
pub(super) struct Probes {
    pub startup: Option<Probe>,
    pub readiness: Option<Probe>,
    pub liveness: Option<Probe>,
}

impl Probes {
    pub(super) fn parse(container: &Value) -> Self {
        Self {
            startup: Probe::parse(&container["startupProbe"], container),
            readiness: Probe::parse(&container["readinessProbe"], container),
            liveness: Probe::parse(&container["livenessProbe"], container),
        }
    }

    pub(super) fn any(&self) -> bool {
        self.startup.is_some() || self.readiness.is_some() || self.liveness.is_some()
    }
}

/// Which probe had a container killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failed {
    Startup,
    Liveness,
}

impl Failed {
    pub(super) fn name(self) -> &'static str {
        match self {
            Failed::Startup => "Startup",
            Failed::Liveness => "Liveness",
        }
    }
}

async fn probe_once(probe: &Probe, ip: IpAddr, exec: &Exec) -> bool {
    tokio::time::timeout(probe.timeout, check(&probe.check, ip, exec))
        .await
        .unwrap_or(false)
}

/// Probes until `successThreshold` successes in a row (`true`) or `failureThreshold`
/// failures in a row (`false`).
async fn until_decided(probe: &Probe, ip: IpAddr, exec: &Exec, succeed: bool) -> bool {
    tokio::time::sleep(probe.initial_delay).await;
    let (mut successes, mut failures) = (0, 0);
    loop {
        if probe_once(probe, ip, exec).await {
            successes += 1;
            failures = 0;
            if succeed && successes >= probe.success_threshold {
                return true;
            }
        } else {
            failures += 1;
            successes = 0;
            if failures >= probe.failure_threshold {
                return false;
            }
        }
        tokio::time::sleep(probe.period).await;
    }
}

impl Kubelet {
    /// Runs container `index`'s probes until aborted or until one of them has the container
    /// killed: then returns which.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn probe_container(
        self,
        pod: Value,
        index: usize,
        probes: Probes,
        ip: IpAddr,
        exec: Exec,
        statuses: Arc<Mutex<Vec<Value>>>,
    ) -> Failed {
        if let Some(startup) = &probes.startup {
            if !until_decided(startup, ip, &exec, true).await {
                return Failed::Startup;
            }
            {
                let mut st = statuses.lock();
                st[index]["started"] = json!(true);
                if probes.readiness.is_none() {
                    st[index]["ready"] = json!(true);
                }
            }
            self.publish(&pod, &statuses);
        }
        let readiness = async {
            match probes.readiness.clone() {
                Some(probe) => {
                    self.clone()
                        .readiness(
                            pod.clone(),
                            index,
                            probe,
                            ip,
                            exec.clone(),
                            statuses.clone(),
                        )
                        .await
                }
                None => std::future::pending().await,
            }
        };
        let liveness = async {
            match &probes.liveness {
                Some(probe) => {
                    until_decided(probe, ip, &exec, false).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = readiness => unreachable!("readiness probes run until aborted"),
            () = liveness => Failed::Liveness,
        }
    }

    /// Probes until aborted, setting `ready` of container `index` on transitions.
    async fn readiness(
        self,
        pod: Value,
        index: usize,
        probe: Probe,
        ip: IpAddr,
        exec: Exec,
        statuses: Arc<Mutex<Vec<Value>>>,
    ) {
        tokio::time::sleep(probe.initial_delay).await;
        let (mut successes, mut failures, mut ready) = (0, 0, false);
        loop {
            let ok = probe_once(&probe, ip, &exec).await;
            if ok {
                successes += 1;
                failures = 0;
            } else {
                failures += 1;
                successes = 0;
            }
            let now_ready = if ready {
                failures < probe.failure_threshold
            } else {
                successes >= probe.success_threshold
            };
            if now_ready != ready {
                ready = now_ready;
                statuses.lock()[index]["ready"] = json!(ready);
                self.publish(&pod, &statuses);
            }
            tokio::time::sleep(probe.period).await;
        }
    }
}
