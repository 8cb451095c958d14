//! Reaching the operator installed in a cluster as kubectl reaches a pod:
//! through the API server's `pods/portforward` to a ready pod behind the
//! operator's Service (never an open port), presenting the kubeconfig
//! user's own bearer token, which the operator reviews (TokenReview). Users
//! without a bearer token go through the operator's aggregated API instead
//! ([`crate::operator_api`]).
//!
//! [`OperatorRef`] is the `operator = "kube[:NAMESPACE[/SERVICE]]"` form of
//! the config; [`OperatorForward::listen`] relays local connections, each
//! through its own port-forward to whichever operator pod is ready at that
//! moment (so a client reconnecting after an operator restart reaches the
//! new pod); [`bearer_token`] reads the user's token from the kubeconfig.

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::portforward::PortForward;
use crate::resolve;
use crate::{ClientOptions, Error, Result};

/// The namespace `remora operator manifests` installs into by default.
pub const DEFAULT_NAMESPACE: &str = "remora";
/// The operator's Service (and Deployment) name in the install manifests.
pub const DEFAULT_SERVICE: &str = "remora-operator";
/// The `operator` value (and its prefix) naming an operator in the cluster.
pub const SCHEME: &str = "kube";

/// The operator installed in the cluster: its Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorRef {
    /// The operator's namespace.
    pub namespace: String,
    /// Its Service.
    pub service: String,
}

impl Default for OperatorRef {
    fn default() -> Self {
        OperatorRef {
            namespace: DEFAULT_NAMESPACE.to_owned(),
            service: DEFAULT_SERVICE.to_owned(),
        }
    }
}

impl OperatorRef {
    /// `kube`, `kube:NAMESPACE` or `kube:NAMESPACE/SERVICE`; `None` for
    /// anything else (a `host:port` address).
    ///
    /// # Errors
    /// The form is `kube:` but a part is empty or malformed.
    pub fn parse(value: &str) -> Option<std::result::Result<OperatorRef, String>> {
        if value == SCHEME {
            return Some(Ok(OperatorRef::default()));
        }
        let rest = value.strip_prefix("kube:")?;
        let (namespace, service) = match rest.split_once('/') {
            Some((ns, svc)) => (ns, svc),
            None => (rest, DEFAULT_SERVICE),
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        Some(if valid(namespace) && valid(service) {
            Ok(OperatorRef {
                namespace: namespace.to_owned(),
                service: service.to_owned(),
            })
        } else {
            Err(format!(
                "{value:?}: expected kube, kube:NAMESPACE or kube:NAMESPACE/SERVICE \
                 (DNS labels: lowercase letters, digits and '-')"
            ))
        })
    }
}

impl std::fmt::Display for OperatorRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "service/{} in namespace {}",
            self.service, self.namespace
        )
    }
}

/// The bearer token the kubeconfig user presents to the API server: its
/// `token`, `tokenFile` or the token its `exec` credential plugin prints;
/// `None` when it authenticates otherwise (a client certificate, from the
/// kubeconfig or an exec plugin): such a user reaches the operator through
/// its aggregated API ([`crate::operator_api`]), where the API server
/// vouches for it.
///
/// # Errors
/// The kubeconfig cannot be read, the token file cannot be read, or the
/// exec plugin fails.
pub async fn bearer_token(options: &ClientOptions) -> Result<Option<String>> {
    let config = crate::client::config(options).await?;
    let auth = &config.auth_info;
    if let Some(token) = &auth.token {
        return Ok(Some(secrecy::ExposeSecret::expose_secret(token).to_owned()));
    }
    if let Some(path) = &auth.token_file {
        let token = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!("reading the kubeconfig's tokenFile {path}: {e}"))
        })?;
        return Ok(Some(token.trim().to_owned()));
    }
    if let Some(exec) = &auth.exec {
        return exec_token(exec);
    }
    Ok(None)
}

/// Run a kubeconfig `exec` credential plugin as kubectl does and take the
/// `status.token` of the ExecCredential it prints (none: it prints a
/// client certificate).
fn exec_token(exec: &kube::config::ExecConfig) -> Result<Option<String>> {
    let command = exec
        .command
        .as_deref()
        .ok_or_else(|| Error::Config("the kubeconfig's exec plugin has no command".to_owned()))?;
    let mut cmd = std::process::Command::new(command);
    cmd.args(exec.args.iter().flatten());
    for var in exec.env.iter().flatten() {
        if let (Some(name), Some(value)) = (var.get("name"), var.get("value")) {
            cmd.env(name, value);
        }
    }
    let out = cmd.output().map_err(|e| {
        Error::Config(format!(
            "running the kubeconfig's exec plugin {command}: {e}"
        ))
    })?;
    if !out.status.success() {
        return Err(Error::Config(format!(
            "the kubeconfig's exec plugin {command} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let credential: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::Config(format!("the exec plugin {command} printed no JSON: {e}")))?;
    let status = &credential["status"];
    match status["token"].as_str() {
        Some(token) => Ok(Some(token.to_owned())),
        None if status["clientCertificateData"].is_string() => Ok(None),
        None => Err(Error::Config(format!(
            "the exec plugin {command} gave neither status.token nor \
             status.clientCertificateData"
        ))),
    }
}

/// Local connections relayed to the operator through port-forwards.
#[derive(Clone)]
pub struct OperatorForward {
    pods: Api<Pod>,
    services: Api<Service>,
    operator: OperatorRef,
}

impl std::fmt::Debug for OperatorForward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorForward")
            .field("operator", &self.operator)
            .finish_non_exhaustive()
    }
}

impl OperatorForward {
    /// For `operator`, with the user's own client (`options`).
    ///
    /// # Errors
    /// [`Error::Config`] when no kubeconfig is usable.
    pub async fn connect(options: &ClientOptions, operator: OperatorRef) -> Result<Self> {
        let client = crate::KubeClient::connect(options).await?.client;
        Ok(OperatorForward {
            pods: Api::namespaced(client.clone(), &operator.namespace),
            services: Api::namespaced(client, &operator.namespace),
            operator,
        })
    }

    /// The ready operator pod now, and the port its Service leads to.
    ///
    /// # Errors
    /// No such Service (the operator is not installed), or no ready pod.
    pub async fn pick(&self) -> Result<(String, u16)> {
        let op = &self.operator;
        let service = self
            .services
            .get_opt(&op.service)
            .await
            .map_err(|e| Error::api(format!("getting {op}"), e))?
            .ok_or_else(|| {
                Error::Resolve(format!(
                    "no remora operator: {op} does not exist (install it with `remora operator \
                     manifests | kubectl apply -f -`, or name it with --operator \
                     kube:NAMESPACE/SERVICE)"
                ))
            })?;
        let selector = resolve::service_selector(&service)
            .ok_or_else(|| Error::Resolve(format!("{op} has no pod selector")))?;
        let pods = self
            .pods
            .list(&ListParams::default().labels(&resolve::selector_string(&selector)))
            .await
            .map_err(|e| Error::api(format!("listing the pods of {op}"), e))?
            .items;
        let what = format!("service/{}", op.service);
        let pod = resolve::pick_ready_pod(&what, &op.namespace, &selector, &pods)?;
        let port = target_port(&service, pod).ok_or_else(|| {
            Error::Resolve(format!(
                "{op}: its port does not name a port of pod {}",
                name(pod)
            ))
        })?;
        Ok((name(pod), port))
    }

    /// Listen on loopback; every connection is relayed through a new
    /// port-forward to the operator pod ready at that moment. The first pod
    /// is looked up and a port-forward opened now, so that a missing
    /// operator or a refused port-forward is this call's error.
    ///
    /// # Errors
    /// [`OperatorForward::pick`]'s, or the port-forward's, naming the
    /// missing permission.
    pub async fn listen(self) -> Result<(SocketAddr, JoinHandle<()>)> {
        let (pod, port) = self.pick().await?;
        let mut first = Some(self.open(&pod, port).await?);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::Resolve(format!("binding the operator relay: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Resolve(e.to_string()))?;
        let relay = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let this = self.clone();
                let opened = first.take();
                tokio::spawn(async move {
                    let forward = match opened {
                        Some(f) => Ok(f),
                        None => match this.pick().await {
                            Ok((pod, port)) => this.open(&pod, port).await,
                            Err(e) => Err(e),
                        },
                    };
                    match forward {
                        Ok(f) => f.relay(stream).await,
                        Err(e) => tracing::warn!(error = %e, "cannot reach the operator"),
                    }
                });
            }
        });
        Ok((addr, relay))
    }

    /// A port-forward to the operator pod ready now.
    ///
    /// # Errors
    /// As [`OperatorForward::pick`], or the refused port-forward.
    pub async fn dial(&self) -> Result<PortForward> {
        let (pod, port) = self.pick().await?;
        self.open(&pod, port).await
    }

    async fn open(&self, pod: &str, port: u16) -> Result<PortForward> {
        let ns = &self.operator.namespace;
        PortForward::open(&self.pods, pod, port).await.map_err(|e| {
            Error::api(
                format!(
                    "port-forwarding to the operator (pod {pod} port {port} in namespace {ns}; \
                     your kubeconfig user needs create on pods/portforward there)"
                ),
                e,
            )
        })
    }
}

fn name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// The container port `service`'s first port leads to in `pod`: its
/// `targetPort` by number, or by name among the pod's container ports, or
/// the port itself.
fn target_port(service: &Service, pod: &Pod) -> Option<u16> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let port = service.spec.as_ref()?.ports.as_ref()?.first()?;
    match &port.target_port {
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
        Some(IntOrString::String(named)) => pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(named.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
        None => u16::try_from(port.port).ok(),
    }
}

#[cfg(test)]
mod tests;
