//! The real `remora-operator serve --platform kubernetes --kubeconfig F`
//! against the test cluster: it starts, removes RemoraSession objects a
//! previous operator left, authenticates clients by TokenReview (a control
//! connection of a service account is accepted and lists sessions, an
//! unknown token is refused with the cluster's reason), and stops on SIGTERM;
//! of two replicas only the holder of the Lease serves, and the other takes
//! over when the holder stops.
//!
//! Sessions with agents are not run here: the simulator cannot port-forward
//! to pods yet (issue 9); `sim_sessions.rs` covers sessions with a test
//! double for agents.

use futures::{SinkExt, StreamExt};
use remora_protocol::codec::FrameCodec;
use remora_protocol::session::{SessionReply, SessionRequest};
use remora_protocol::{
    Capabilities, ClientIdentity, ClientMessage, Hello, HelloReply, PROTOCOL_VERSION, Request,
    RequestId, Response, ServerMessage, SessionToken,
};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

const DEADLINE: Duration = Duration::from_secs(30);

/// A child process, SIGTERMed and reaped on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        // Our own child, by its pid.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("running kubectl")
}

fn ok(kubeconfig: &std::path::Path, args: &[&str]) -> String {
    let out = kubectl(kubeconfig, args);
    assert!(out.status.success(), "kubectl {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

async fn hello(
    addr: &str,
    token: &str,
) -> (
    HelloReply,
    Framed<TcpStream, FrameCodec<ServerMessage, ClientMessage>>,
) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut framed = Framed::new(stream, FrameCodec::<HelloReply, Hello>::default());
    framed
        .send(Hello {
            version: PROTOCOL_VERSION,
            capabilities: Capabilities::default(),
            token: SessionToken(token.into()),
            client: ClientIdentity {
                user: "alice".into(),
                hostname: "laptop".into(),
                pid: 1,
                program: "remora".into(),
                remora_version: "0.1.0".into(),
            },
            target: None,
        })
        .await
        .unwrap();
    let reply = framed.next().await.unwrap().unwrap();
    (reply, framed.map_codec(|_| FrameCodec::default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_kubernetes_authenticates_by_token_review_and_sweeps_leftovers() {
    let sim_bin = std::env::var_os("REMORA_KUBE_SIM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/remora-kube-sim")
        });
    assert!(
        sim_bin.exists(),
        "{} missing: run `cargo build -p remora-kube-sim`",
        sim_bin.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let _sim = Reaped(
        Command::new(&sim_bin)
            .args(["serve", "--exit-with-parent", "--kubeconfig"])
            .arg(&kubeconfig)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + DEADLINE;
    while !kubeconfig.exists() {
        assert!(
            Instant::now() < deadline,
            "the simulator wrote no kubeconfig"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let crds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/crds.yaml");
    ok(&kubeconfig, &["apply", "-f", crds.to_str().unwrap()]);
    ok(
        &kubeconfig,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/remorasessions.remora.dev",
        ],
    );
    // What an operator that was SIGKILLed mid-session leaves behind.
    let leftover = dir.path().join("leftover.yaml");
    std::fs::write(
        &leftover,
        "apiVersion: remora.dev/v1alpha1\nkind: RemoraSession\nmetadata:\n  name: dead\n  \
         namespace: default\n  labels: {app.kubernetes.io/managed-by: remora-operator}\n\
         spec: {id: dead, user: ghost, target: deployment/api, startedAt: \"2026-12-04T00:00:00Z\"}\n",
    )
    .unwrap();
    ok(&kubeconfig, &["apply", "-f", leftover.to_str().unwrap()]);

    let mut operator = Reaped(
        Command::new(env!("CARGO_BIN_EXE_remora-operator"))
            .args([
                "serve",
                "--platform",
                "kubernetes",
                "--listen",
                "127.0.0.1:0",
                "--namespace",
                "default",
                "--kubeconfig",
            ])
            .arg(&kubeconfig)
            .env_remove("REMORA_OPERATOR_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(operator.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("REMORA_OPERATOR_LISTENING ")
        .unwrap_or_else(|| panic!("no ready line: {line:?}"))
        .to_owned();

    let (reply, _) = hello(&addr, "not-a-token").await;
    let HelloReply::Rejected { reason, .. } = reply else {
        panic!("an unknown token was accepted");
    };
    assert!(
        reason.contains("did not accept your token (invalid bearer token)"),
        "{reason}"
    );

    let (reply, mut control) = hello(&addr, "remora-sim-sa:default:alice").await;
    assert!(matches!(reply, HelloReply::Accepted { .. }), "{reply:?}");
    control
        .send(ClientMessage::Request {
            id: RequestId(1),
            request: Request::Session(SessionRequest::List),
        })
        .await
        .unwrap();
    let answer = tokio::time::timeout(DEADLINE, control.next())
        .await
        .unwrap();
    let Some(Ok(ServerMessage::Response {
        result: Ok(Response::Session(SessionReply::Sessions(list))),
        ..
    })) = answer
    else {
        panic!("{answer:?}");
    };
    assert!(list.is_empty(), "{list:?}");

    // The leftover object is gone.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let out = kubectl(&kubeconfig, &["get", "remorasession", "dead"]);
        if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("NotFound") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the leftover RemoraSession stayed: {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SIGTERM: a clean exit.
    drop(control);
    let _ = Command::new("kill")
        .arg(operator.0.id().to_string())
        .status();
    let status = operator.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// Lines of a child's pipe, read on a thread.
fn lines(pipe: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The first line containing `needle`, within the deadline.
fn wait_for(rx: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line with {needle:?}: {e}"),
        }
    }
}

#[test]
fn of_two_replicas_only_the_lease_holder_serves_and_the_other_takes_over() {
    let sim_bin = std::env::var_os("REMORA_KUBE_SIM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/remora-kube-sim")
        });
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let _sim = Reaped(
        Command::new(&sim_bin)
            .args(["serve", "--exit-with-parent", "--kubeconfig"])
            .arg(&kubeconfig)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + DEADLINE;
    while !kubeconfig.exists() {
        assert!(
            Instant::now() < deadline,
            "the simulator wrote no kubeconfig"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let crds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/crds.yaml");
    ok(&kubeconfig, &["apply", "-f", crds.to_str().unwrap()]);
    ok(
        &kubeconfig,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/remorasessions.remora.dev",
            "crd/remorapolicies.remora.dev",
            "crd/remoraclusterpolicies.remora.dev",
        ],
    );
    let replica = |name: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_remora-operator"))
            .args([
                "serve",
                "--platform",
                "kubernetes",
                "--listen",
                "127.0.0.1:0",
                "--namespace",
                "default",
                "--kubeconfig",
            ])
            .arg(&kubeconfig)
            .env("HOSTNAME", name)
            .env("REMORA_OPERATOR_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = lines(child.stdout.take().unwrap());
        let err = lines(child.stderr.take().unwrap());
        (Reaped(child), out, err)
    };
    let (mut first, first_out, _first_err) = replica("op-a");
    wait_for(&first_out, "REMORA_OPERATOR_LISTENING");
    let lease: serde_json::Value = serde_json::from_str(&ok(
        &kubeconfig,
        &["get", "lease", "remora-operator", "-o", "json"],
    ))
    .unwrap();
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap().to_owned();
    assert!(holder.starts_with("op-a-"), "{lease}");

    let (mut second, second_out, second_err) = replica("op-b");
    let waiting = wait_for(&second_err, "waiting for the leader lease");
    assert!(waiting.contains(&holder), "{waiting}");

    // The holder stops: it releases the Lease, the other serves.
    let _ = Command::new("kill").arg(first.0.id().to_string()).status();
    assert!(first.0.wait().unwrap().success());
    wait_for(&second_out, "REMORA_OPERATOR_LISTENING");
    let lease: serde_json::Value = serde_json::from_str(&ok(
        &kubeconfig,
        &["get", "lease", "remora-operator", "-o", "json"],
    ))
    .unwrap();
    assert!(
        lease["spec"]["holderIdentity"]
            .as_str()
            .unwrap()
            .starts_with("op-b-"),
        "{lease}"
    );
    assert_eq!(lease["spec"]["leaseTransitions"], 1, "{lease}");
    let _ = Command::new("kill").arg(second.0.id().to_string()).status();
    assert!(second.0.wait().unwrap().success());
}
