//! The operator with Kubernetes identity and session objects, against the
//! test cluster `remora-kube-sim`: the client's bearer token is reviewed
//! (TokenReview), the session authorised (SubjectAccessReviews for create,
//! steal and mirror, as the simulator records them), a RemoraSession object
//! follows the session (created, its status updated on subscribe, deleted
//! when the client leaves), and `kubectl delete remorasession ID` ends the
//! session; RemoraPolicy / RemoraClusterPolicy objects are enforced and
//! named in refusals, and deleting one lifts it.
//!
//! Agents: the simulator cannot port-forward to pods yet (issue 9), so the
//! operator's platform here is a test double whose "agent" is an in-process
//! listener that accepts the handshake, grants subscriptions and swallows
//! everything else. The rest
//! (the operator, the API calls, kubectl) is real.
//!
//! Needs `cargo build -p remora-kube-sim` (or `REMORA_KUBE_SIM_BIN`),
//! `kubectl` and `curl`; fails, not skips, without them.

use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use remora_operator::platform::{AgentHandle, Platform, ResolvedTarget, StartedAgent};
use remora_operator::policy::PolicyStore;
use remora_operator::{Operator, OperatorConfig};
use remora_operator_kube::access::{ApiReviewer, KubeAccess};
use remora_operator_kube::crd::{self, RemoraSession};
use remora_operator_kube::policy_objects::PolicyObjects;
use remora_operator_kube::session_objects;
use remora_protocol::codec::FrameCodec;
use remora_protocol::incoming::{
    HttpFilter, IncomingClient, IncomingMode, IncomingServer, RemotePort,
};
use remora_protocol::{
    Capabilities, ClientIdentity, ClientMessage, Hello, HelloReply, PROTOCOL_VERSION,
    ServerMessage, SessionId, SessionToken,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(30);

/// The simulator process, SIGTERMed and reaped on drop.
struct Sim {
    child: Child,
    _dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Drop for Sim {
    fn drop(&mut self) {
        // SIGTERM our own child by its pid.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Sim {
    fn start() -> Sim {
        let bin = std::env::var_os("REMORA_KUBE_SIM_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/remora-kube-sim")
            });
        assert!(
            bin.exists(),
            "{} missing: run `cargo build -p remora-kube-sim`",
            bin.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let child = Command::new(&bin)
            .args(["serve", "--exit-with-parent", "--kubeconfig"])
            .arg(&kubeconfig)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let sim = Sim {
            child,
            _dir: dir,
            kubeconfig,
        };
        let deadline = Instant::now() + DEADLINE;
        while !sim.kubeconfig.exists() {
            assert!(
                Instant::now() < deadline,
                "the simulator wrote no kubeconfig"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sim
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .expect("running kubectl")
    }

    fn server(&self) -> String {
        let text = std::fs::read_to_string(&self.kubeconfig).unwrap();
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("server:"))
            .unwrap();
        line.trim_start()
            .trim_start_matches("server:")
            .trim()
            .to_owned()
    }

    /// Every TokenReview / SubjectAccessReview the simulator answered.
    fn reviews(&self) -> Vec<serde_json::Value> {
        let out = Command::new("curl")
            .args(["-sf", &format!("{}/remora-sim/reviews", self.server())])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// An "agent": accepts the operator's handshake, grants subscriptions,
/// swallows everything else.
#[derive(Debug)]
struct FakeAgent(tokio::task::JoinHandle<()>);

impl AgentHandle for FakeAgent {
    fn is_running(&mut self) -> bool {
        !self.0.is_finished()
    }
    fn stop(self: Box<Self>) -> BoxFuture<'static, ()> {
        self.0.abort();
        Box::pin(async {})
    }
}

#[derive(Debug)]
struct FakePlatform;

async fn fake_agent(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let mut framed = Framed::new(stream, FrameCodec::<Hello, HelloReply>::default());
            let Some(Ok(hello)) = framed.next().await else {
                return;
            };
            let reply = HelloReply::Accepted {
                version: hello.version,
                capabilities: hello.capabilities,
                session: SessionId(1),
                server_version: "fake".into(),
            };
            if framed.send(reply).await.is_err() {
                return;
            }
            let mut link: Framed<TcpStream, FrameCodec<ClientMessage, ServerMessage>> =
                framed.map_codec(|_| FrameCodec::default());
            while let Some(Ok(message)) = link.next().await {
                match message {
                    ClientMessage::Bye => return,
                    ClientMessage::Incoming(IncomingClient::Subscribe { port, .. }) => {
                        let granted = ServerMessage::Incoming(IncomingServer::Subscribed {
                            port,
                            result: Ok(()),
                        });
                        if link.send(granted).await.is_err() {
                            return;
                        }
                    }
                    _ => {}
                }
            }
        });
    }
}

impl Platform for FakePlatform {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn resolve(&self, target: &str) -> remora_operator::Result<ResolvedTarget> {
        Ok(ResolvedTarget {
            name: target.to_owned(),
        })
    }
    fn start_agent(
        &self,
        _: &ResolvedTarget,
    ) -> BoxFuture<'static, remora_operator::Result<StartedAgent>> {
        Box::pin(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            Ok(StartedAgent {
                addr,
                token: SessionToken("agent".into()),
                handle: Box::new(FakeAgent(tokio::spawn(fake_agent(listener)))),
            })
        })
    }
    fn dial(&self, _: &str, program: &str) -> std::process::Command {
        std::process::Command::new(program)
    }
}

type Client = Framed<TcpStream, FrameCodec<ServerMessage, ClientMessage>>;

/// Connect as `user` with bearer `token`; the operator's answer.
async fn connect(addr: SocketAddr, token: &str, user: &str) -> (HelloReply, Client) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut framed = Framed::new(stream, FrameCodec::<HelloReply, Hello>::default());
    framed
        .send(Hello {
            version: PROTOCOL_VERSION,
            capabilities: Capabilities::default(),
            token: SessionToken(token.into()),
            client: ClientIdentity {
                user: user.into(),
                hostname: "laptop".into(),
                pid: 1,
                program: "test".into(),
                remora_version: "0.1.0".into(),
            },
            target: Some("deployment/api".into()),
        })
        .await
        .unwrap();
    let reply = framed.next().await.unwrap().unwrap();
    (reply, framed.map_codec(|_| FrameCodec::default()))
}

/// The answer to a subscription of `port`.
async fn subscribed(client: &mut Client, port: RemotePort) -> remora_protocol::RemoteResult<()> {
    tokio::time::timeout(DEADLINE, async {
        loop {
            match client.next().await {
                Some(Ok(ServerMessage::Incoming(IncomingServer::Subscribed {
                    port: p,
                    result,
                }))) if p == port => {
                    break result;
                }
                Some(Ok(_)) => {}
                other => panic!("the session ended: {other:?}"),
            }
        }
    })
    .await
    .expect("no answer to the subscription")
}

/// Poll `get` until it gives `Some`, with a deadline.
async fn eventually<T, F, Fut>(what: &str, mut get: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = get().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_reviewed_mirrored_as_objects_and_ended_by_deleting_them() {
    let sim = Sim::start();
    let kube = remora_kube::KubeClient::connect(&remora_kube::ClientOptions {
        kubeconfig: Some(sim.kubeconfig.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(kube.client.clone());
    for definition in crd::crds() {
        crds.create(&PostParams::default(), &definition)
            .await
            .unwrap();
    }
    let wait = sim.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/remorasessions.remora.dev",
    ]);
    assert!(wait.status.success(), "{wait:?}");

    // Policies: alice may not mirror deployment/api here; a cluster policy
    // for other namespaces blocks every steal, and must not apply here.
    let policy_file = sim._dir.path().join("policies.yaml");
    std::fs::write(
        &policy_file,
        r#"
apiVersion: remora.dev/v1alpha1
kind: RemoraPolicy
metadata: {name: no-mirror, namespace: default}
spec:
  targets: [{kind: deployment, name: api}]
  users: ["system:serviceaccount:default:alice"]
  block: [mirror]
---
apiVersion: remora.dev/v1alpha1
kind: RemoraClusterPolicy
metadata: {name: payments-no-steal}
spec:
  namespaces: ["payments-*"]
  targets: [{}]
  block: [steal]
"#,
    )
    .unwrap();
    let applied = sim.kubectl(&["apply", "-f", policy_file.to_str().unwrap()]);
    assert!(applied.status.success(), "{applied:?}");
    let policies = PolicyStore::empty();
    let policy_objects = PolicyObjects::new(kube.client.clone(), "default");
    policy_objects.load(&policies).await.unwrap();
    // default's policy, and the cluster one for targets in payments-*
    // namespaces (the operator serves every namespace).
    assert_eq!(policies.current().len(), 2);

    let (observer, task) = session_objects::session_objects(kube.client.clone(), "default");
    let config = OperatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: SessionToken(String::new()),
        policies: policies.clone(),
        state_dir: None,
        branch_store: None,
        branch_pods: None,
        pg_bindirs: Vec::new(),
        db_settings: Default::default(),
        access: Some(Arc::new(KubeAccess {
            reviewer: Arc::new(ApiReviewer {
                client: kube.client.clone(),
            }),
            namespace: "default".into(),
        })),
        observer: Some(Arc::new(observer)),
        queue_splitter: None,
    };
    let operator = Operator::bind(config, Arc::new(FakePlatform))
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let objects_task = tokio::spawn(task.run(operator.sessions().clone(), cancel.clone()));
    tokio::spawn(policy_objects.watch(policies.clone(), cancel.clone()));
    let addr = operator.local_addr();
    let sessions: Api<RemoraSession> = Api::namespaced(kube.client.clone(), "default");

    // A token the cluster does not know is refused before anything else.
    let (reply, _) = connect(addr, "not-a-token", "mallory").await;
    let HelloReply::Rejected { reason, .. } = reply else {
        panic!("accepted a wrong token");
    };
    assert!(
        reason.contains("did not accept your token (invalid bearer token)"),
        "{reason}"
    );

    // Alice: a service account token; REMORA_USER is only a display name.
    let (reply, mut alice) = connect(addr, "remora-sim-sa:default:alice", "Alice A.").await;
    let HelloReply::Accepted { session, .. } = reply else {
        panic!("refused: {reply:?}");
    };
    let name = session.to_string();
    let object = eventually("alice's RemoraSession", || async {
        sessions.get_opt(&name).await.unwrap()
    })
    .await;
    assert_eq!(object.spec.id, name);
    assert_eq!(object.spec.user, "Alice A.");
    assert_eq!(
        object.spec.identity.as_deref(),
        Some("system:serviceaccount:default:alice")
    );
    assert_eq!(object.spec.target, "deployment/api");

    // What the cluster was asked: who the token is, then create, steal and
    // mirror on remorasessions.remora.dev in the target's namespace, for
    // that identity.
    let reviews = sim.reviews();
    let token_reviews: Vec<_> = reviews
        .iter()
        .filter(|r| r["kind"] == "TokenReview")
        .map(|r| r["spec"]["token"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        token_reviews,
        ["not-a-token", "remora-sim-sa:default:alice"]
    );
    let mut verbs: Vec<String> = reviews
        .iter()
        .filter(|r| r["kind"] == "SubjectAccessReview")
        .map(|r| {
            let spec = &r["spec"];
            assert_eq!(spec["user"], "system:serviceaccount:default:alice", "{r}");
            assert_eq!(
                spec["groups"],
                serde_json::json!(["system:serviceaccounts", "system:authenticated"])
            );
            let attrs = &spec["resourceAttributes"];
            assert_eq!(attrs["group"], "remora.dev", "{r}");
            assert_eq!(attrs["resource"], "remorasessions", "{r}");
            assert_eq!(attrs["namespace"], "default", "{r}");
            attrs["verb"].as_str().unwrap().to_owned()
        })
        .collect();
    verbs.sort();
    assert_eq!(verbs, ["create", "mirror", "steal"]);

    // A subscription shows in the object's status, and in kubectl's table.
    alice
        .send(ClientMessage::Incoming(IncomingClient::Subscribe {
            port: RemotePort(8080),
            mode: IncomingMode::Steal,
            filter: Some(HttpFilter::Header("^x-user: alice$".into())),
        }))
        .await
        .unwrap();
    let status = eventually("alice's status", || async {
        let object = sessions.get(&name).await.unwrap();
        object.status.filter(|s| !s.subscriptions.is_empty())
    })
    .await;
    assert_eq!(status.ports.as_deref(), Some("8080 steal (filtered)"));
    assert_eq!(
        status.subscriptions[0].filter.as_deref(),
        Some("header:^x-user: alice$")
    );
    let table = sim.kubectl(&["get", "remorasessions", "-A"]);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(
        table.contains(&name)
            && table.contains("Alice A.")
            && table.contains("8080 steal (filtered)"),
        "{table}"
    );

    // Another user with another token and the same filter is refused, and
    // the refusal names the holder.
    let (reply, mut carol) = connect(addr, "remora-sim-sa:default:carol", "carol").await;
    assert!(matches!(reply, HelloReply::Accepted { .. }), "{reply:?}");
    carol
        .send(ClientMessage::Incoming(IncomingClient::Subscribe {
            port: RemotePort(8080),
            mode: IncomingMode::Steal,
            filter: Some(HttpFilter::Header("^X-User: alice$".into())),
        }))
        .await
        .unwrap();
    let refused = subscribed(&mut carol, RemotePort(8080)).await.unwrap_err();
    assert!(
        refused
            .message
            .contains(&format!("is held by Alice A. (session {name}")),
        "{refused:?}"
    );
    drop(carol);

    // The policy object refuses alice's mirror, and the refusal names it.
    alice
        .send(ClientMessage::Incoming(IncomingClient::Subscribe {
            port: RemotePort(9090),
            mode: IncomingMode::Mirror,
            filter: None,
        }))
        .await
        .unwrap();
    let refused = subscribed(&mut alice, RemotePort(9090)).await.unwrap_err();
    assert_eq!(
        refused.message,
        "mirroring port 9090 on deployment/api is blocked by RemoraPolicy default/no-mirror \
         (block = [\"mirror\"])"
    );
    // Deleting the policy object lifts it (the watch re-reads the policies).
    let deleted = sim.kubectl(&["delete", "remorapolicy", "no-mirror"]);
    assert!(deleted.status.success(), "{deleted:?}");
    // (The cluster policy for payments-* namespaces stays.)
    eventually("the policy to be lifted", || async {
        (policies.current().len() == 1).then_some(())
    })
    .await;
    alice
        .send(ClientMessage::Incoming(IncomingClient::Subscribe {
            port: RemotePort(9090),
            mode: IncomingMode::Mirror,
            filter: None,
        }))
        .await
        .unwrap();
    subscribed(&mut alice, RemotePort(9090)).await.unwrap();

    // kubectl delete ends the session, and the client is told why.
    let deleted = sim.kubectl(&["delete", "remorasession", &name]);
    assert!(deleted.status.success(), "{deleted:?}");
    let closing = tokio::time::timeout(DEADLINE, async {
        loop {
            match alice.next().await {
                Some(Ok(ServerMessage::Closing { reason })) => break Some(reason),
                None | Some(Err(_)) => break None,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("the session did not end")
    .expect("a Closing message before the connection closed");
    assert_eq!(
        closing,
        format!("session ended: its RemoraSession default/{name} was deleted")
    );
    eventually("the session to leave the operator", || async {
        operator.sessions().is_empty().then_some(())
    })
    .await;

    // A session whose client leaves takes its object with it.
    let (reply, bob) = connect(addr, "remora-sim-sa:default:bob", "bob").await;
    let HelloReply::Accepted {
        session: bob_id, ..
    } = reply
    else {
        panic!("refused: {reply:?}");
    };
    let bob_name = bob_id.to_string();
    eventually("bob's RemoraSession", || async {
        sessions.get_opt(&bob_name).await.unwrap()
    })
    .await;
    drop(bob);
    eventually("bob's RemoraSession to be deleted", || async {
        sessions
            .get_opt(&bob_name)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;

    operator.shutdown("test over").await;
    cancel.cancel();
    objects_task.await.unwrap();
}

/// Reviews answered from a table (the simulator allows everything, so
/// denials are tested with this double): every token is the user it names
/// after `user:`; `denied` lists (user, verb) pairs.
#[derive(Debug)]
struct TableReviewer {
    denied: Vec<(&'static str, &'static str)>,
}

impl remora_operator_kube::access::Reviewer for TableReviewer {
    fn token_review(
        &self,
        mut review: k8s_openapi::api::authentication::v1::TokenReview,
    ) -> BoxFuture<'static, Result<k8s_openapi::api::authentication::v1::TokenReview, String>> {
        let user = review.spec.token.strip_prefix("user:").map(str::to_owned);
        review.status = Some(
            serde_json::from_value(match user {
                Some(user) => {
                    serde_json::json!({"authenticated": true, "user": {"username": user}})
                }
                None => serde_json::json!({"authenticated": false, "error": "unknown token"}),
            })
            .unwrap(),
        );
        Box::pin(async move { Ok(review) })
    }

    fn subject_access_review(
        &self,
        mut review: k8s_openapi::api::authorization::v1::SubjectAccessReview,
    ) -> BoxFuture<'static, Result<k8s_openapi::api::authorization::v1::SubjectAccessReview, String>>
    {
        let user = review.spec.user.clone().unwrap_or_default();
        let verb = review
            .spec
            .resource_attributes
            .as_ref()
            .and_then(|a| a.verb.clone())
            .unwrap_or_default();
        let denied = self.denied.iter().any(|(u, v)| *u == user && *v == verb);
        review.status = Some(
            serde_json::from_value(serde_json::json!({
                "allowed": !denied,
                "reason": if denied { "RBAC: no RoleBinding grants it" } else { "" }
            }))
            .unwrap(),
        );
        Box::pin(async move { Ok(review) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_denials_are_explained_naming_the_permission() {
    let config = OperatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: SessionToken(String::new()),
        policies: PolicyStore::empty(),
        state_dir: None,
        branch_store: None,
        branch_pods: None,
        pg_bindirs: Vec::new(),
        db_settings: Default::default(),
        access: Some(Arc::new(KubeAccess {
            reviewer: Arc::new(TableReviewer {
                denied: vec![("bob", "steal"), ("eve", "create")],
            }),
            namespace: "shop".into(),
        })),
        observer: None,
        queue_splitter: None,
    };
    let operator = Operator::bind(config, Arc::new(FakePlatform))
        .await
        .unwrap();
    let addr = operator.local_addr();

    // No create: no session.
    let (reply, _) = connect(addr, "user:eve", "eve").await;
    let HelloReply::Rejected { reason, .. } = reply else {
        panic!("eve got a session");
    };
    assert_eq!(
        reason,
        "eve may not create remorasessions.remora.dev in namespace shop (RBAC: no RoleBinding \
         grants it): ask for a Role granting verb \"create\" on resource \"remorasessions\" of \
         apiGroup \"remora.dev\" there"
    );

    // Bob may mirror but not steal.
    let (reply, mut bob) = connect(addr, "user:bob", "bob").await;
    assert!(matches!(reply, HelloReply::Accepted { .. }), "{reply:?}");
    let mut answers = Vec::new();
    for mode in [IncomingMode::Steal, IncomingMode::Mirror] {
        let port = RemotePort(if mode == IncomingMode::Steal {
            8080
        } else {
            9090
        });
        bob.send(ClientMessage::Incoming(IncomingClient::Subscribe {
            port,
            mode,
            filter: None,
        }))
        .await
        .unwrap();
        let answer = tokio::time::timeout(DEADLINE, async {
            loop {
                match bob.next().await {
                    Some(Ok(ServerMessage::Incoming(IncomingServer::Subscribed {
                        port: p,
                        result,
                    }))) if p == port => break result,
                    Some(Ok(_)) => {}
                    other => panic!("the session ended: {other:?}"),
                }
            }
        })
        .await
        .unwrap();
        answers.push(answer);
    }
    let steal = answers[0].clone().unwrap_err();
    assert!(
        steal
            .message
            .starts_with("bob may not steal remorasessions.remora.dev in namespace shop"),
        "{steal:?}"
    );
    assert!(answers[1].is_ok(), "{:?}", answers[1]);
    assert_eq!(operator.sessions().list()[0].subscriptions.len(), 1);
    operator.shutdown("test over").await;
}

/// The answer to an outgoing connect of `conn`.
async fn connected(
    client: &mut Client,
    conn: remora_protocol::ConnectionId,
) -> remora_protocol::RemoteResult<()> {
    use remora_protocol::outgoing::OutgoingServer;
    tokio::time::timeout(DEADLINE, async {
        loop {
            match client.next().await {
                Some(Ok(ServerMessage::Outgoing(OutgoingServer::Connected {
                    conn: c,
                    result,
                }))) if c == conn => {
                    break result.map(|_| ());
                }
                Some(Ok(_)) => {}
                other => panic!("the session ended: {other:?}"),
            }
        }
    })
    .await
    .expect("no answer to the connect")
}

/// Every rule kind the operator itself enforces, written as policy objects
/// (one per user, so each is seen alone): `block` steal,
/// steal-without-filter, override and outgoing, `requireHeaderFilter` and
/// `outgoingBlock`; each refusal names the object and the rule, and what the
/// rule allows goes through. (`block: [mirror]` is in the test above;
/// `envExclude` and `fsNotFound`, which the agent applies, are in
/// tests/tests/operator_incluster_kube.rs and policy_local.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_kind_of_a_policy_object_is_enforced_and_named() {
    use remora_protocol::ConnectionId;
    use remora_protocol::net::{RemoteAddr, Transport};
    use remora_protocol::outgoing::OutgoingClient;

    let sim = Sim::start();
    let kube = remora_kube::KubeClient::connect(&remora_kube::ClientOptions {
        kubeconfig: Some(sim.kubeconfig.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(kube.client.clone());
    for definition in crd::crds() {
        crds.create(&PostParams::default(), &definition)
            .await
            .unwrap();
    }
    let wait = sim.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/remorapolicies.remora.dev",
    ]);
    assert!(wait.status.success(), "{wait:?}");
    let sa = |user: &str| format!("system:serviceaccount:default:{user}");
    let policy = |name: &str, user: &str, rule: &str| {
        format!(
            "apiVersion: remora.dev/v1alpha1\nkind: RemoraPolicy\nmetadata: {{name: {name}, \
             namespace: default}}\nspec:\n  targets: [{{kind: deployment, name: api}}]\n  users: \
             [\"{}\"]\n  {rule}\n---\n",
            sa(user)
        )
    };
    let yaml = [
        policy("no-steal", "sam", "block: [steal]"),
        policy("filtered-only", "fay", "block: [steal-without-filter]"),
        policy("no-override", "olga", "block: [override]"),
        policy("no-outgoing", "otto", "block: [outgoing]"),
        policy(
            "tenant-header",
            "hank",
            "requireHeaderFilter: \"^x-tenant: .+$\"",
        ),
        policy("no-db", "dora", "outgoingBlock: [\"10.0.0.0/8:5432\"]"),
    ]
    .concat();
    let policy_file = sim._dir.path().join("rules.yaml");
    std::fs::write(&policy_file, yaml).unwrap();
    let applied = sim.kubectl(&["apply", "-f", policy_file.to_str().unwrap()]);
    assert!(applied.status.success(), "{applied:?}");
    let policies = PolicyStore::empty();
    PolicyObjects::new(kube.client.clone(), "default")
        .load(&policies)
        .await
        .unwrap();
    assert_eq!(policies.current().len(), 6);

    let config = OperatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: SessionToken(String::new()),
        policies: policies.clone(),
        state_dir: None,
        branch_store: None,
        branch_pods: None,
        pg_bindirs: Vec::new(),
        db_settings: Default::default(),
        access: Some(Arc::new(KubeAccess {
            reviewer: Arc::new(ApiReviewer {
                client: kube.client.clone(),
            }),
            namespace: "default".into(),
        })),
        observer: None,
        queue_splitter: None,
    };
    let operator = Operator::bind(config, Arc::new(FakePlatform))
        .await
        .unwrap();
    let addr = operator.local_addr();
    let session = |user: &'static str| async move {
        let (reply, client) = connect(addr, &format!("remora-sim-sa:default:{user}"), user).await;
        assert!(matches!(reply, HelloReply::Accepted { .. }), "{reply:?}");
        client
    };
    let steal = |port: u16, filter: Option<&str>| {
        ClientMessage::Incoming(IncomingClient::Subscribe {
            port: RemotePort(port),
            mode: IncomingMode::Steal,
            filter: filter.map(|f| HttpFilter::Header(f.into())),
        })
    };
    let outgoing = |conn: u64, addr: &str| {
        ClientMessage::Outgoing(OutgoingClient::Connect {
            conn: ConnectionId(conn),
            transport: Transport::Tcp,
            remote: RemoteAddr::Ip(addr.parse().unwrap()),
        })
    };

    // block: [steal]
    let mut sam = session("sam").await;
    sam.send(steal(8080, Some("^x-user: sam$"))).await.unwrap();
    assert_eq!(
        subscribed(&mut sam, RemotePort(8080))
            .await
            .unwrap_err()
            .message,
        "stealing port 8080 on deployment/api is blocked by RemoraPolicy default/no-steal \
         (block = [\"steal\"])"
    );

    // block: [steal-without-filter]: filtered steals go through.
    let mut fay = session("fay").await;
    fay.send(steal(8081, None)).await.unwrap();
    assert_eq!(
        subscribed(&mut fay, RemotePort(8081))
            .await
            .unwrap_err()
            .message,
        "stealing port 8081 on deployment/api without an HTTP filter is blocked by RemoraPolicy \
         default/filtered-only (block = [\"steal-without-filter\"])"
    );
    fay.send(steal(8081, Some("^x-user: fay$"))).await.unwrap();
    subscribed(&mut fay, RemotePort(8081)).await.unwrap();

    // block: [override]: a plain steal is fine, taking the port over is not.
    let mut olga = session("olga").await;
    olga.send(ClientMessage::SubscribeOverride {
        port: RemotePort(8082),
        mode: IncomingMode::Steal,
        filter: None,
    })
    .await
    .unwrap();
    assert_eq!(
        subscribed(&mut olga, RemotePort(8082))
            .await
            .unwrap_err()
            .message,
        "taking over port 8082 on deployment/api from other sessions is blocked by RemoraPolicy \
         default/no-override (block = [\"override\"])"
    );
    olga.send(steal(8082, None)).await.unwrap();
    subscribed(&mut olga, RemotePort(8082)).await.unwrap();

    // requireHeaderFilter: only a filter on that header.
    let mut hank = session("hank").await;
    hank.send(steal(8083, Some("^x-user: hank$")))
        .await
        .unwrap();
    let refused = subscribed(&mut hank, RemotePort(8083)).await.unwrap_err();
    assert!(
        refused.message.starts_with(
            "stealing port 8083 on deployment/api needs a header filter matching \
             \"^x-tenant: .+$\" (require_header_filter of RemoraPolicy default/tenant-header)"
        ),
        "{refused:?}"
    );
    hank.send(steal(8083, Some("^x-tenant: blue$")))
        .await
        .unwrap();
    subscribed(&mut hank, RemotePort(8083)).await.unwrap();

    // block: [outgoing]
    let mut otto = session("otto").await;
    otto.send(outgoing(1, "192.0.2.1:80")).await.unwrap();
    assert_eq!(
        connected(&mut otto, ConnectionId(1))
            .await
            .unwrap_err()
            .message,
        "outgoing connections from deployment/api (here to 192.0.2.1:80) are blocked by \
         RemoraPolicy default/no-outgoing (block = [\"outgoing\"])"
    );

    // outgoingBlock: that destination only (another is passed to the
    // agent, which answers nothing here).
    let mut dora = session("dora").await;
    dora.send(outgoing(1, "10.1.2.3:5432")).await.unwrap();
    assert_eq!(
        connected(&mut dora, ConnectionId(1))
            .await
            .unwrap_err()
            .message,
        "connecting to 10.1.2.3:5432 from deployment/api is blocked by RemoraPolicy default/no-db \
         (outgoing_block \"10.0.0.0/8:5432\")"
    );
    // The other users' policies do not apply to dora: her steal goes through.
    dora.send(steal(8084, None)).await.unwrap();
    subscribed(&mut dora, RemotePort(8084)).await.unwrap();

    operator.shutdown("test over").await;
}
