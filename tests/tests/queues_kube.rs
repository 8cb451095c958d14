//! Queue splitting end to end on the test cluster with the real RabbitMQ:
//! a platform team's `RemoraQueueSplit` registers `deployment/worker`'s
//! queue; `remora run --operator … -t deployment/worker -f config` with
//! `split_queues` gets its own temporary queue in the variable the workload
//! reads, while the workload rolls onto its own temporary queue; messages
//! matching the session's filter reach only the session, the rest only the
//! workload; `kubectl delete remorasession` of a second session ends it
//! (its command is told why) and moves the messages it did not take to the
//! workload's queue; a third session's `remora run` SIGKILLed gives the
//! messages it did not take to the workload's queue the same way; when the
//! first command ends, the messages it did not take go back to the original
//! queue and the workload rolls back onto it.
//! Then the operator is SIGKILLed while a fourth session holds a split: the
//! next operator ends that split from the object's status, and nothing is
//! lost.
//!
//! A second test runs a split under the installed operator's service
//! account, held to the RBAC `remora operator manifests` grants: refused
//! without the queue-split Role, naming what is missing; working with it.
//!
//! Needs root, RabbitMQ on 127.0.0.1:5672 (scripts/setup.sh) and the
//! workspace binaries `remora`, `remora-operator`, `remora-agent`,
//! `libremora_layer.so` and `remora-kube-sim`.

use remora_queues::broker::{Broker, Message, QueueName, QueueProps};
use remora_queues::rabbitmq::RabbitBroker;
use remora_queues::router::{Owner, temp_queue_name};
use remora_tests::{bin_path, require_sandbox};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

#[path = "support/kube_sim.rs"]
mod kube_sim;
#[path = "support/operator_users.rs"]
mod operator_users;

use kube_sim::*;
use operator_users::{kubeconfig_for, remora_as, sessions};

const RABBIT: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The test's RabbitMQ side: a runtime of its own (the test is blocking).
struct Rabbit {
    rt: tokio::runtime::Runtime,
    broker: RabbitBroker,
    queues: Vec<QueueName>,
}

impl Rabbit {
    fn connect() -> Rabbit {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let broker = rt
            .block_on(RabbitBroker::connect(RABBIT))
            .unwrap_or_else(|e| panic!("{e}: RabbitMQ must run (scripts/setup.sh starts it)"));
        Rabbit {
            rt,
            broker,
            queues: Vec::new(),
        }
    }

    fn publish(&self, queue: &QueueName, user: &str, n: usize) {
        let message = Message {
            headers: BTreeMap::from([("x-user".to_owned(), user.to_owned())]),
            body: format!("{user}-{n}").into_bytes(),
            order_key: None,
            native: Box::new(()),
        };
        self.rt
            .block_on(self.broker.publish(queue, &message))
            .unwrap();
    }

    /// Everything `queue` holds now (acked), waiting `idle` for each next one.
    fn take_all(&self, queue: &QueueName, idle: Duration) -> Vec<String> {
        self.rt.block_on(async {
            let mut bodies = Vec::new();
            let Ok(mut consumer) = self.broker.consume(queue, 100).await else {
                return bodies;
            };
            while let Ok(Some(d)) = consumer.next_within(idle).await {
                bodies.push(String::from_utf8_lossy(&d.message.body).into_owned());
                if consumer.ack(d).await.is_err() {
                    break;
                }
            }
            bodies
        })
    }

    /// Whether `queue` exists (a passive declare: `inspect` redeclares,
    /// which would create a queue deleted meanwhile).
    fn exists(&self, queue: &QueueName) -> bool {
        self.rt.block_on(self.broker.depth(queue)).is_ok()
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        for queue in std::mem::take(&mut self.queues) {
            self.take_all(&queue, Duration::from_millis(100));
            let _ = self.rt.block_on(self.broker.delete(&queue));
        }
    }
}

/// Waits until `take` has returned `count` bodies in all; returns them.
fn collect(mut take: impl FnMut() -> Vec<String>, count: usize, what: &str) -> Vec<String> {
    let mut all = Vec::new();
    poll(
        || {
            all.extend(take());
            all.len() >= count
        },
        what,
    );
    all
}

/// One `remora run` with `split_queues` for `user` (filter `^user$`) whose
/// command prints its queue variable, then waits for the file `go`.
struct Run {
    child: Reaped,
    out: std::sync::mpsc::Receiver<String>,
    err: std::sync::mpsc::Receiver<String>,
    go: std::path::PathBuf,
    /// The session's own queue, as its command's variable names it.
    queue: QueueName,
}

impl Run {
    /// Through the operator at `addr`, with `user`'s token.
    fn start(sim: &Sim, addr: &str, user: &str) -> Run {
        let mut remora = Command::new(bin_path("remora").unwrap());
        remora
            .args(["run", "--operator", addr])
            .env(
                "REMORA_OPERATOR_TOKEN",
                format!("remora-sim-sa:default:{user}"),
            )
            .env("REMORA_USER", user);
        Self::start_with(sim, user, remora)
    }

    /// `remora`, a `remora run` with its operator flags, for `user`'s
    /// split of `deployment/worker`: the config file and the file `go`.
    fn command(sim: &Sim, user: &str, mut remora: Command) -> (Command, std::path::PathBuf) {
        let config = sim.dir.path().join(format!("remora-{user}.toml"));
        std::fs::write(
            &config,
            format!(
                "split_queues = {{ orders = {{ type = \"rabbitmq\", message_filter = {{ \"x-user\" = \"^{user}$\" }} }} }}\n"
            ),
        )
        .unwrap();
        let go = sim.dir.path().join(format!("go-{user}"));
        let script = format!(
            "echo QUEUE=$ORDERS_QUEUE; while [ ! -e {} ]; do sleep 0.1; done; echo done",
            go.display()
        );
        remora
            .args(["-t", "deployment/worker", "-f"])
            .arg(&config)
            .args(["--", "sh", "-c", &script]);
        (remora, go)
    }

    /// [`Run::start`] with `remora` (a `remora run` and its operator flags).
    fn start_with(sim: &Sim, user: &str, remora: Command) -> Run {
        let (mut remora, go) = Self::command(sim, user, remora);
        let mut child = remora
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = lines(child.stdout.take().unwrap());
        let err = lines(child.stderr.take().unwrap());
        let child = Reaped(child);
        let line = out.recv_timeout(DEADLINE).unwrap_or_else(|e| {
            let said: Vec<String> = err.try_iter().collect();
            panic!("no line: {user}'s queue variable: {e}; stderr: {said:#?}")
        });
        let queue = QueueName(
            line.strip_prefix("QUEUE=")
                .unwrap_or_else(|| panic!("{line:?}"))
                .to_owned(),
        );
        Run {
            child,
            out,
            err,
            go,
            queue,
        }
    }

    /// The session's id: its queue is `<original>.remora.s<id>`.
    fn session(&self) -> String {
        self.queue
            .0
            .rsplit_once(".remora.s")
            .unwrap_or_else(|| panic!("{}", self.queue))
            .1
            .to_owned()
    }

    /// Waits for a line of its stderr containing `wanted`.
    fn says(&self, wanted: &str) {
        let deadline = std::time::Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.err.recv_timeout(left) {
                Ok(line) if line.contains(wanted) => return,
                Ok(line) => {
                    eprintln!("{line}");
                    seen.push(line);
                }
                Err(e) => panic!("no {wanted:?} on stderr ({e}): {seen:#?}"),
            }
        }
    }

    /// Lets its command end; its exit status.
    fn finish(mut self) -> std::process::ExitStatus {
        std::fs::write(&self.go, "").unwrap();
        // The rest of its stderr, for the test's log.
        let err = std::mem::replace(&mut self.err, std::sync::mpsc::channel().1);
        std::thread::spawn(move || {
            for line in err {
                eprintln!("{line}");
            }
        });
        self.child.0.wait().unwrap()
    }
}

#[test]
fn a_session_with_split_queues_gets_only_its_messages_and_gives_back_the_rest() {
    require_sandbox!();
    let mut rabbit = Rabbit::connect();
    let original = QueueName(format!("remora-test.queues-kube.{}", std::process::id()));
    let workload_queue = temp_queue_name(rabbit.broker.kind(), &original, Owner::Workload);
    rabbit.queues = vec![original.clone(), workload_queue.clone()];
    rabbit
        .rt
        .block_on(rabbit.broker.create_like(&QueueProps::default(), &original))
        .unwrap();

    let sim = Sim::start(true);
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../operator-kube/deploy/crds.yaml");
    sim.kubectl(&["apply", "-f", crds.to_str().unwrap()]);
    sim.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/remorasessions.remora.dev",
        "crd/remorapolicies.remora.dev",
        "crd/remoraclusterpolicies.remora.dev",
        "crd/remoraqueuesplits.remora.dev",
    ]);
    sim.apply(&format!(
        r#"{}---
apiVersion: remora.dev/v1alpha1
kind: RemoraQueueSplit
metadata: {{name: orders}}
spec:
  workload: {{kind: Deployment, name: worker}}
  drainTimeout: 1s
  queues:
    orders:
      type: rabbitmq
      nameFrom: {{env: ORDERS_QUEUE}}
      brokerEndpoint: {{url: "{RABBIT}"}}
"#,
        worker_deployment(&original)
    ));
    wait_ready(&sim, "worker");
    let worker_says = || {
        let pods = sim.kubectl(&[
            "get",
            "pods",
            "-l",
            "app=worker",
            "--field-selector=status.phase=Running",
            "--sort-by=.metadata.creationTimestamp",
            "-o",
            "name",
        ]);
        let Some(newest) = pods.lines().last() else {
            return String::new();
        };
        // The pod may be gone by now (a rollout): then it says nothing.
        let logs = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&sim.kubeconfig)
            .args(["logs", newest])
            .output()
            .unwrap();
        text(&logs.stdout).lines().next().unwrap_or("").to_owned()
    };

    let (operator, addr) = start_operator(&sim);

    let alice_run = Run::start(&sim, &addr, "alice");
    let mine = alice_run.queue.clone();
    rabbit.queues.push(mine.clone());
    assert!(
        mine.0.starts_with(&format!("{original}.remora.s")),
        "the session's own queue: {mine}"
    );
    let split_line = format!("QUEUE={workload_queue}");
    poll(
        || worker_says() == split_line,
        "the worker to roll onto its temporary queue",
    );

    for n in 0..50 {
        rabbit.publish(&original, "alice", n);
        rabbit.publish(&original, "bob", n);
    }
    let idle = Duration::from_millis(300);
    let alice = collect(|| rabbit.take_all(&mine, idle), 50, "alice's messages");
    let workload = collect(
        || rabbit.take_all(&workload_queue, idle),
        50,
        "bob's messages at the workload",
    );
    let expect = |user: &str| (0..50).map(|n| format!("{user}-{n}")).collect::<Vec<_>>();
    assert_eq!(alice, expect("alice"), "only alice's, in order, once");
    assert_eq!(workload, expect("bob"), "only bob's, in order, once");

    // `remora queues ls` shows the split, the session's filter and queues.
    let ls = Command::new(bin_path("remora").unwrap())
        .args(["queues", "ls", "--operator", &addr, "--json"])
        .env("REMORA_OPERATOR_TOKEN", "remora-sim-sa:default:alice")
        .output()
        .unwrap();
    assert!(ls.status.success(), "{ls:?}");
    let listed: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    let split = &listed[0];
    assert_eq!(split["name"], "orders", "{listed:#}");
    assert_eq!(split["workload"], "Deployment/worker", "{listed:#}");
    let queue = &split["queues"][0];
    assert_eq!(queue["id"], "orders", "{listed:#}");
    assert_eq!(queue["original"], original.0.as_str(), "{listed:#}");
    let temps = queue["queues"].as_array().unwrap();
    assert_eq!(temps.len(), 2, "the workload's and alice's: {listed:#}");
    assert_eq!(temps[0]["owner"], "workload");
    assert_eq!(temps[0]["queue"], workload_queue.0.as_str());
    assert_eq!(temps[0]["routed"], 50);
    assert_eq!(temps[1]["queue"], mine.0.as_str());
    assert_eq!(temps[1]["filter"], "{x-user = \"^alice$\"}");
    assert_eq!(temps[1]["routed"], 50);
    assert_eq!(temps[1]["depth"], 0, "alice took all hers");

    // Carol's session holds five messages she never takes; `kubectl delete
    // remorasession` ends it: her command is told why, and the five move to
    // the workload's queue (alice still holds the split).
    let carol = Run::start(&sim, &addr, "carol");
    rabbit.queues.push(carol.queue.clone());
    for n in 0..5 {
        rabbit.publish(&original, "carol", n);
    }
    poll(
        || {
            rabbit
                .rt
                .block_on(rabbit.broker.depth(&carol.queue))
                .is_ok_and(|d| d.ready == 5)
        },
        "carol's five to reach her queue",
    );
    sim.kubectl(&["delete", "remorasession", &carol.session()]);
    carol.says(&format!(
        "its RemoraSession default/{} was deleted",
        carol.session()
    ));
    let moved = collect(
        || rabbit.take_all(&workload_queue, idle),
        5,
        "carol's five at the workload's queue",
    );
    assert_eq!(
        moved,
        (0..5).map(|n| format!("carol-{n}")).collect::<Vec<_>>()
    );
    poll(
        || !rabbit.exists(&carol.queue),
        "carol's queue to be deleted",
    );
    carol.finish();

    // Frank's `remora run` is SIGKILLed (the process it exec'd into, its
    // command, holding the intproxy's lifeline) while five of his messages
    // wait in his queue: the intproxy's connection to the operator drops,
    // his session ends, and the five move to the workload's queue (alice
    // still holds the split).
    let mut frank = Run::start(&sim, &addr, "frank");
    rabbit.queues.push(frank.queue.clone());
    for n in 0..5 {
        rabbit.publish(&original, "frank", n);
    }
    poll(
        || {
            rabbit
                .rt
                .block_on(rabbit.broker.depth(&frank.queue))
                .is_ok_and(|d| d.ready == 5)
        },
        "frank's five to reach his queue",
    );
    frank.child.0.kill().unwrap();
    let killed = frank.child.0.wait().unwrap();
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(killed.signal(), Some(9), "{killed:?}");
    }
    let moved = collect(
        || rabbit.take_all(&workload_queue, idle),
        5,
        "frank's five at the workload's queue",
    );
    assert_eq!(
        moved,
        (0..5).map(|n| format!("frank-{n}")).collect::<Vec<_>>(),
        "none lost, none twice"
    );
    poll(
        || !rabbit.exists(&frank.queue),
        "frank's queue to be deleted",
    );
    // Reaped: its drop must not signal a pid that may be reused.
    std::mem::forget(frank.child);

    // Five more for alice that the command never takes; then it ends.
    for n in 50..55 {
        rabbit.publish(&original, "alice", n);
    }
    poll(
        || {
            rabbit
                .rt
                .block_on(rabbit.broker.depth(&mine))
                .is_ok_and(|d| d.ready == 5)
        },
        "the five to reach the session's queue",
    );
    std::fs::write(&alice_run.go, "").unwrap();
    assert_eq!(next_line(&alice_run.out, "the command's end"), "done");
    assert!(alice_run.finish().success());

    let original_line = format!("QUEUE={original}");
    poll(
        || worker_says() == original_line,
        "the worker to roll back onto the original queue",
    );
    split_ended(&rabbit, &sim, &original, [&mine, &workload_queue], 50..55);

    // The operator SIGKILLed while dave's session holds a split with five
    // of his and five for the workload: the next operator ends the split
    // from the object's status (dave's session went with the old one).
    let dave = Run::start(&sim, &addr, "dave");
    rabbit.queues.push(dave.queue.clone());
    poll(
        || worker_says() == split_line,
        "the worker to roll onto its temporary queue again",
    );
    for n in 0..5 {
        rabbit.publish(&original, "dave", n);
        rabbit.publish(&original, "erin", n);
    }
    let depth = |queue: &QueueName| {
        rabbit
            .rt
            .block_on(rabbit.broker.depth(queue))
            .map(|d| d.ready)
            .unwrap_or(0)
    };
    poll(
        || depth(&dave.queue) == 5 && depth(&workload_queue) == 5,
        "dave's five and erin's five routed",
    );
    let mut operator = operator;
    operator.0.kill().unwrap();
    operator.0.wait().unwrap();
    // Reaped: its drop must not signal a pid that may be reused.
    std::mem::forget(operator);
    let (_operator, _addr) = start_operator(&sim);
    poll(
        || worker_says() == original_line,
        "the worker to roll back after the operator's restart",
    );
    let phase = || sim.kubectl(&["get", "rqs", "orders", "-o", "jsonpath={.status.phase}"]);
    poll(|| phase() == "Idle", "the split to be Idle again");
    let mut back = collect(
        || rabbit.take_all(&original, idle),
        10,
        "dave's and erin's five back on the original queue",
    );
    back.sort();
    let mut want: Vec<String> = ["dave", "erin"]
        .iter()
        .flat_map(|u| (0..5).map(move |n| format!("{u}-{n}")))
        .collect();
    want.sort();
    assert_eq!(back, want, "none lost, none twice");
    poll(
        || !rabbit.exists(&dave.queue) && !rabbit.exists(&workload_queue),
        "the temporary queues to be deleted again",
    );
    dave.finish();
}

/// Relays TCP connections from `listen` (an address on the pods' bridge,
/// port chosen here) to `to` on the host's loopback: the installed
/// operator's pod has a network of its own, and RabbitMQ listens on
/// 127.0.0.1 only. Stops accepting when dropped; a relayed connection ends
/// with either side.
struct Relay {
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    fn start(listen: &str, to: &'static str) -> Relay {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind((listen, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let (Ok(client), Ok(server)) = (client, std::net::TcpStream::connect(to)) else {
                    continue;
                };
                let pipe = |mut from: std::net::TcpStream, mut into: std::net::TcpStream| {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut into);
                        let _ = into.shutdown(std::net::Shutdown::Write);
                    });
                };
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Relay { addr, stop }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the accept loop, which then returns (closing the listener).
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

/// The queue split as the installed operator runs it: `remora operator
/// manifests` applied with kubectl, the operator's pod authenticated as its
/// ServiceAccount, whose token the test cluster holds to RBAC (`serve
/// --rbac-service-account`): it may do exactly what the install's
/// ClusterRole and Roles grant. Without the queue-split Role the session is
/// refused naming the verb, resource and service account, and nothing
/// changes; with the Role `--queue-split-namespace default` adds, the split
/// works end to end (session queue, workload rolled, messages routed, all
/// back at the end).
#[test]
fn a_split_runs_under_the_installed_operators_service_account_with_only_the_manifests_rbac() {
    require_sandbox!();
    let mut rabbit = Rabbit::connect();
    let original = QueueName(format!(
        "remora-test.queues-kube-rbac.{}",
        std::process::id()
    ));
    let workload_queue = temp_queue_name(rabbit.broker.kind(), &original, Owner::Workload);
    rabbit.queues = vec![original.clone(), workload_queue.clone()];
    rabbit
        .rt
        .block_on(rabbit.broker.create_like(&QueueProps::default(), &original))
        .unwrap();

    let operator_sa = format!("{OPERATOR_NS}:remora-operator");
    let sim = Sim::start_with(true, &["--rbac-service-account", &operator_sa]);
    sim.apply(&worker_deployment(&original));
    wait_ready(&sim, "worker");
    let relay = Relay::start(&bridge_ip(&sim), "127.0.0.1:5672");
    // The install as printed, without `--queue-split-namespace`.
    install_operator(&sim);
    sim.apply(&format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: rabbit}}
stringData: {{url: "amqp://guest:guest@{}/%2f"}}
---
apiVersion: remora.dev/v1alpha1
kind: RemoraQueueSplit
metadata: {{name: orders}}
spec:
  workload: {{kind: Deployment, name: worker}}
  drainTimeout: 1s
  queues:
    orders:
      type: rabbitmq
      nameFrom: {{env: ORDERS_QUEUE}}
      brokerEndpoint:
        urlFrom: {{name: rabbit, key: url}}
"#,
        relay.addr
    ));
    let kc = kubeconfig_for(&sim, "alice", "remora-sim-sa:default:alice");
    let template_queue = || {
        sim.kubectl(&[
            "get",
            "deployment",
            "worker",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].env[0].value}",
        ])
    };

    // Without the queue-split Role: refused, naming what is missing.
    let (mut refused, _) = Run::command(&sim, "alice", remora_as(&kc, "alice"));
    let out = refused.output().unwrap();
    let err = text(&out.stderr);
    eprintln!("without the queue-split Role: {err}");
    assert!(!out.status.success(), "{err}");
    assert!(
        says(
            &err,
            "User \"system:serviceaccount:remora:remora-operator\" cannot get resource \
             \"secrets\" in API group \"\" in the namespace \"default\""
        ),
        "{err}"
    );
    assert!(
        says(&err, "remora operator manifests --queue-split-namespace"),
        "{err}"
    );
    assert_eq!(template_queue(), original.0, "the workload untouched");
    assert!(!rabbit.exists(&workload_queue), "no temporary queue");
    poll(|| sessions(&sim).is_empty(), "no RemoraSession left");

    // The Role and RoleBinding `--queue-split-namespace default` adds, and
    // nothing else of the install changed.
    let manifests = Command::new(bin_path("remora").unwrap())
        .args(["operator", "manifests", "--namespace", OPERATOR_NS])
        .args(["--queue-split-namespace", "default"])
        .output()
        .unwrap();
    assert!(manifests.status.success(), "{}", text(&manifests.stderr));
    let printed = text(&manifests.stdout);
    let split_rbac: Vec<&str> = printed
        .split("---\n")
        .filter(|doc| doc.contains("name: remora-queue-splits"))
        .collect();
    assert_eq!(split_rbac.len(), 2, "{split_rbac:#?}");
    sim.apply(&split_rbac.join("\n---\n"));

    let alice = Run::start_with(&sim, "alice", remora_as(&kc, "alice"));
    let mine = alice.queue.clone();
    rabbit.queues.push(mine.clone());
    assert!(
        mine.0.starts_with(&format!("{original}.remora.s")),
        "the session's own queue: {mine}"
    );
    assert_eq!(template_queue(), workload_queue.0, "the workload patched");
    for n in 0..20 {
        rabbit.publish(&original, "alice", n);
        rabbit.publish(&original, "bob", n);
    }
    let idle = Duration::from_millis(300);
    let got = collect(|| rabbit.take_all(&mine, idle), 20, "alice's messages");
    let workload = collect(
        || rabbit.take_all(&workload_queue, idle),
        20,
        "bob's messages at the workload",
    );
    let expect = |user: &str| (0..20).map(|n| format!("{user}-{n}")).collect::<Vec<_>>();
    assert_eq!(got, expect("alice"), "only alice's, in order, once");
    assert_eq!(workload, expect("bob"), "only bob's, in order, once");
    let listed = sessions(&sim);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        listed[0]["spec"]["identity"],
        "system:serviceaccount:default:alice"
    );

    // Five she never takes go back to the original when she ends.
    for n in 20..25 {
        rabbit.publish(&original, "alice", n);
    }
    poll(
        || {
            rabbit
                .rt
                .block_on(rabbit.broker.depth(&mine))
                .is_ok_and(|d| d.ready == 5)
        },
        "the five to reach alice's queue",
    );
    assert!(alice.finish().success());
    poll(|| template_queue() == original.0, "the workload restored");
    split_ended(&rabbit, &sim, &original, [&mine, &workload_queue], 20..25);
}

/// The end of a split whose session gave back alice's messages `back`:
/// exactly those are on the original queue again, the temporary queues
/// (`temps`) are deleted and the split is `Idle`.
fn split_ended(
    rabbit: &Rabbit,
    sim: &Sim,
    original: &QueueName,
    temps: [&QueueName; 2],
    back: std::ops::Range<usize>,
) {
    let idle = Duration::from_millis(300);
    let got = collect(
        || rabbit.take_all(original, idle),
        back.len(),
        "the session's messages back on the original queue",
    );
    assert_eq!(got, back.map(|n| format!("alice-{n}")).collect::<Vec<_>>());
    poll(
        || temps.iter().all(|q| !rabbit.exists(q)),
        "the temporary queues to be deleted",
    );
    let phase = || sim.kubectl(&["get", "rqs", "orders", "-o", "jsonpath={.status.phase}"]);
    poll(|| phase() == "Idle", "the split to be Idle");
}

/// The workload of the split tests: a Deployment `worker` whose
/// `ORDERS_QUEUE` names `original`, and which prints it.
fn worker_deployment(original: &impl std::fmt::Display) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: worker}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: worker}}}}
  template:
    metadata: {{labels: {{app: worker}}}}
    spec:
      containers:
      - name: app
        image: python:3
        command: [sh, -c, "echo QUEUE=$ORDERS_QUEUE; exec sleep 300"]
        env: [{{name: ORDERS_QUEUE, value: "{original}"}}]
"#
    )
}
