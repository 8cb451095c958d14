//! The operator installed in a cluster (`operator = "kube[:NS[/SVC]]"`):
//! the CLI reads the kubeconfig user's bearer token (its identity, which the
//! operator reviews) and hands both to the intproxy in [`OPERATOR_LAUNCH_ENV`];
//! the intproxy relays its operator connection through the API server's
//! port-forward ([`remora_kube::operator_link`]), a new one per connection,
//! so it reaches whichever operator pod is ready. A user without a bearer
//! token (a client certificate) goes through the operator's aggregated API
//! instead ([`remora_kube::operator_api`]): each connection is an upgrade
//! request the API server authenticates and proxies to the operator.

use crate::error::{Error, Result};
use remora_config::Config;
use remora_intproxy::{AgentDialer, AgentStream, DialFuture};
use remora_kube::ClientOptions;
use remora_kube::operator_api::OperatorApi;
use remora_kube::operator_link::{OperatorForward, OperatorRef};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Environment variable carrying an [`OperatorLaunch`] (JSON) to the intproxy.
pub const OPERATOR_LAUNCH_ENV: &str = "REMORA_INTPROXY_KUBE_OPERATOR";

/// How a session reaches the operator in its cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorLaunch {
    /// The user's kubeconfig, context and namespace.
    pub options: ClientOptions,
    /// The operator's Service.
    pub operator: OperatorRef,
    /// Through the operator's aggregated API (the user has no bearer
    /// token), set by [`OperatorLaunch::token`].
    #[serde(default)]
    pub through_api: bool,
}

impl OperatorLaunch {
    /// For `config` when its `operator` names one in the cluster; `None`
    /// for a `host:port` operator (or none).
    ///
    /// # Errors
    /// [`Error::Operator`] for a malformed `kube:` value.
    pub fn from_config(config: &Config) -> Result<Option<OperatorLaunch>> {
        let Some(value) = config.operator.as_deref() else {
            return Ok(None);
        };
        let options = ClientOptions {
            kubeconfig: config.kubeconfig.clone(),
            context: config.context.clone(),
            namespace: config.namespace.clone(),
        };
        Self::from_value(value, options)
    }

    /// For an `operator` value (`kube...` or `host:port`) and the
    /// kubeconfig `options`.
    ///
    /// # Errors
    /// [`Error::Operator`] for a malformed `kube:` value.
    pub fn from_value(value: &str, options: ClientOptions) -> Result<Option<OperatorLaunch>> {
        let Some(parsed) = OperatorRef::parse(value) else {
            return Ok(None);
        };
        let operator = parsed.map_err(|reason| Error::Operator {
            operator: value.to_owned(),
            reason,
        })?;
        Ok(Some(OperatorLaunch {
            options,
            operator,
            through_api: false,
        }))
    }

    /// [`OperatorLaunch::relay`] on a thread of its own that lives as long
    /// as the process (short commands: `remora session`, `queues`, `db`,
    /// a split's preparation before `exec`).
    ///
    /// # Errors
    /// As [`OperatorLaunch::relay`].
    pub fn relay_in_background(&self) -> Result<SocketAddr> {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let launch = self.clone();
        std::thread::Builder::new()
            .name("operator-relay".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = addr_tx.send(Err(Error::Io(format!(
                            "cannot start the async runtime: {e}"
                        ))));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let _ = addr_tx.send(launch.relay().await);
                    // Relays run on this runtime until the process ends.
                    std::future::pending::<()>().await;
                });
            })
            .map_err(|e| Error::Io(format!("starting the operator relay: {e}")))?;
        addr_rx
            .recv()
            .map_err(|_| Error::Io("the operator relay stopped".into()))?
    }

    /// As the value of [`OPERATOR_LAUNCH_ENV`].
    pub fn to_env_value(&self) -> String {
        // Cannot fail: plain strings.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Read [`OPERATOR_LAUNCH_ENV`].
    ///
    /// # Errors
    /// [`Error::IntproxyStart`] when it is missing or malformed.
    pub fn from_env() -> Result<OperatorLaunch> {
        let value = std::env::var(OPERATOR_LAUNCH_ENV).map_err(|_| Error::IntproxyStart {
            reason: format!("--kube-operator needs {OPERATOR_LAUNCH_ENV}"),
        })?;
        serde_json::from_str(&value).map_err(|e| Error::IntproxyStart {
            reason: format!("{OPERATOR_LAUNCH_ENV}: {e}"),
        })
    }

    /// The user's bearer token: what the operator's TokenReview checks. A
    /// user without one (a client certificate) is relayed through the
    /// operator's aggregated API from now on, and presents no token (the
    /// API server vouches for it).
    ///
    /// # Errors
    /// [`Error::Operator`]: the kubeconfig or its token cannot be read.
    pub fn token(&mut self) -> Result<String> {
        let token =
            block_on(remora_kube::operator_link::bearer_token(&self.options)).map_err(|e| {
                Error::Operator {
                    operator: format!("kube ({})", self.operator),
                    reason: e.to_string(),
                }
            })?;
        self.through_api = token.is_none();
        Ok(token.unwrap_or_default())
    }

    /// The namespace targets are looked up in (flag, config, else the
    /// kubeconfig context's), which the operator is told.
    ///
    /// # Errors
    /// [`Error::Operator`]: no kubeconfig.
    pub fn namespace(&self) -> Result<String> {
        block_on(async {
            remora_kube::client::config(&self.options)
                .await
                .map(|c| c.default_namespace)
        })
        .map_err(|e| Error::Operator {
            operator: format!("kube ({})", self.operator),
            reason: e.to_string(),
        })
    }

    /// Start relaying (in the intproxy's runtime): the local address that
    /// reaches the operator.
    ///
    /// # Errors
    /// No operator installed, no ready operator pod, or a refused
    /// port-forward, as user-facing text.
    pub async fn relay(&self) -> Result<SocketAddr> {
        let failed = |e: remora_kube::Error| Error::Operator {
            operator: format!("kube ({})", self.operator),
            reason: e.to_string(),
        };
        if self.through_api {
            let api = OperatorApi::connect(&self.options).await.map_err(failed)?;
            let (addr, _relay) = api.listen().await.map_err(failed)?;
            return Ok(addr);
        }
        let forward = OperatorForward::connect(&self.options, self.operator.clone())
            .await
            .map_err(failed)?;
        let (addr, _relay) = forward.listen().await.map_err(failed)?;
        Ok(addr)
    }
}

impl OperatorLaunch {
    /// Whether this user reaches the operator through its aggregated API
    /// (no bearer token: a client certificate), see [`OperatorLaunch::relay`].
    pub fn through_api(&self) -> bool {
        self.through_api
    }

    /// The intproxy's way to the operator: a port-forward WebSocket per
    /// connection, to the operator pod ready at that moment, carrying the
    /// remora protocol in its payloads (no local socket and relay in
    /// between). The first one is opened now, so that a missing operator or
    /// a refused port-forward is this call's error.
    ///
    /// # Errors
    /// As [`OperatorLaunch::relay`].
    pub async fn dialer(&self) -> Result<AgentDialer> {
        let failed = |e: remora_kube::Error| Error::Operator {
            operator: format!("kube ({})", self.operator),
            reason: e.to_string(),
        };
        let forward = OperatorForward::connect(&self.options, self.operator.clone())
            .await
            .map_err(failed)?;
        let first = forward.dial().await.map_err(failed)?;
        let first = Arc::new(Mutex::new(Some(first)));
        Ok(AgentDialer {
            describe: format!(
                "the operator ({}, through the API server's port-forward)",
                self.operator
            ),
            dial: Arc::new(move || -> DialFuture {
                let forward = forward.clone();
                let first = first
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take();
                Box::pin(async move {
                    let opened = match first {
                        Some(f) => f,
                        None => forward
                            .dial()
                            .await
                            .map_err(|e| std::io::Error::other(e.to_string()))?,
                    };
                    Ok(Box::new(opened.into_stream()) as Box<dyn AgentStream>)
                })
            }),
        })
    }
}

fn block_on<T>(
    future: impl std::future::Future<Output = remora_kube::Result<T>>,
) -> remora_kube::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| remora_kube::Error::Config(format!("cannot start the async runtime: {e}")))?
        .block_on(future)
}
