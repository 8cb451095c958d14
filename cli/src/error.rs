//! Errors of the CLI, each saying what failed, why, and what to do next.

use miette::Diagnostic;

#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] remora_config::Error),
    #[error("target {target} not found: no such process (is the workload running?)")]
    TargetNotFound { target: String },
    #[error("{}", kube_message(target, reason))]
    #[diagnostic(help(
        "check the cluster with kubectl (`kubectl get pods -n <namespace>`, `kubectl describe job -l app.kubernetes.io/name=remora-agent`); flags: -n/--namespace, --context, --kubeconfig"
    ))]
    KubeStart { target: String, reason: String },
    #[error("no target given")]
    #[diagnostic(help("pass --target pid/<PID> (or set `target` in remora.toml / REMORA_TARGET)"))]
    NoTarget,
    #[error("remora needs privileges to enter the namespaces of {target}")]
    #[diagnostic(help(
        "run as root (e.g. with sudo), or give remora CAP_SYS_ADMIN + CAP_NET_ADMIN + CAP_SYS_PTRACE"
    ))]
    NotPrivileged { target: String },
    #[error("cannot find {what} (looked in {looked})")]
    #[diagnostic(help("set {env} to its path, or reinstall remora"))]
    MissingComponent {
        what: String,
        looked: String,
        env: String,
    },
    #[error("the agent for {target} did not start: {reason}")]
    AgentStart { target: String, reason: String },
    #[error("the intproxy did not start: {reason}")]
    IntproxyStart { reason: String },
    #[error("fetching the environment of {target}: {reason}")]
    Env { target: String, reason: String },
    #[error("cannot run `{program}`: {source}")]
    Exec {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("operator address {operator:?}: {reason}")]
    #[diagnostic(help(
        "give the operator as host:port (--operator, REMORA_OPERATOR or `operator` in remora.toml)"
    ))]
    Operator { operator: String, reason: String },
    #[error("no operator token")]
    #[diagnostic(help(
        "set REMORA_OPERATOR_TOKEN to the operator's token (the one it was started with, or the content of its --token-file)"
    ))]
    OperatorToken,
    #[error("operator at {operator}: {reason}")]
    OperatorSession { operator: String, reason: String },
    #[error("listing the {platform} targets: {reason}")]
    #[diagnostic(help(
        "check the cluster with kubectl; flags: -n/--namespace, --context, --kubeconfig, --platform local"
    ))]
    List { platform: String, reason: String },
    #[error("intproxy: {0}")]
    Intproxy(#[from] remora_intproxy::Error),
    #[error("{0}")]
    Io(String),
}

/// The reason alone when it names the target's object already.
fn kube_message(target: &str, reason: &str) -> String {
    let object = target.split("/container/").next().unwrap_or(target);
    if reason.contains(object) {
        reason.to_owned()
    } else {
        format!("{target}: {reason}")
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
