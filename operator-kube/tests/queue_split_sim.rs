//! Queue splitting driven by a `RemoraQueueSplit` on the test cluster with
//! the real RabbitMQ: the first session starts the split and the workload
//! rolls onto its temporary queue; messages go to the session whose filter
//! matches, the rest to the workload, exactly; an overlapping filter is
//! refused naming the holder; when the last session leaves, its unconsumed
//! messages are not lost: the workload is restored (a second rollout), the
//! temporary queues are emptied back into the original and deleted, and the
//! status says Idle.

use remora_kube::{ClientOptions, KubeClient};
use remora_operator_kube::crd::queue_split::{QueueBroker, WorkloadKind, WorkloadRef};
use remora_operator_kube::queue_splits::Workloads;
use remora_operator_kube::queue_splits::controller::{Splits, Wanted};
use remora_queues::broker::{Broker, Message, QueueName, QueueProps};
use remora_queues::rabbitmq::RabbitBroker;
use remora_queues::router::{Owner, RouterConfig, temp_queue_name};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[path = "support/sim.rs"]
mod sim;

use sim::{DEADLINE, Sim, install_queue_split_crds, kubectl, ok, worker_deployment, worker_says};

fn rabbit_url() -> String {
    std::env::var("REMORA_RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// Deletes the test's queues when dropped, also when the test fails.
struct Cleanup(Vec<QueueName>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.0);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(broker) = RabbitBroker::connect(&rabbit_url()).await {
                    for name in names {
                        // A failed test may leave messages: take them first
                        // (the broker deletes only empty queues).
                        let _ = take_all(&broker, &name, Duration::from_millis(100)).await;
                        let _ = broker.delete(&name).await;
                    }
                }
            });
        })
        .join();
    }
}

async fn poll(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn message(user: &str, n: usize) -> Message {
    Message {
        headers: BTreeMap::from([("x-user".to_owned(), user.to_owned())]),
        body: format!("{user}-{n}").into_bytes(),
        order_key: None,
        native: Box::new(()),
    }
}

/// Takes every message `queue` holds (acking them), waiting up to `idle`
/// for each next one; returns the bodies.
async fn take_all(broker: &RabbitBroker, queue: &QueueName, idle: Duration) -> Vec<String> {
    let mut bodies = Vec::new();
    let Ok(mut consumer) = broker.consume(queue, 100).await else {
        return bodies;
    };
    while let Ok(Some(d)) = consumer.next_within(idle).await {
        bodies.push(String::from_utf8_lossy(&d.message.body).into_owned());
        if consumer.ack(d).await.is_err() {
            break;
        }
    }
    bodies
}

/// The test cluster with the CRDs, a `worker` Deployment whose
/// `ORDERS_QUEUE` names `original`, and a `RemoraQueueSplit` `orders` for
/// it (with `extra` spec lines); returns once the worker's first pod runs.
async fn start_split(original: &QueueName, extra: &str) -> Sim {
    let sim = Sim::start();
    let kubeconfig = sim.kubeconfig.clone();
    install_queue_split_crds(&kubeconfig);
    let worker = worker_deployment("ORDERS_QUEUE", &original);
    let objects = format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: rabbit}}
stringData: {{url: "{url}"}}
---
{worker}
---
apiVersion: remora.dev/v1alpha1
kind: RemoraQueueSplit
metadata: {{name: orders}}
spec:
  workload: {{kind: Deployment, name: worker}}
  drainTimeout: 1s
{extra}
  queues:
    orders:
      type: rabbitmq
      nameFrom: {{env: ORDERS_QUEUE}}
      brokerEndpoint: {{urlFrom: {{name: rabbit, key: url}}}}
"#,
        url = rabbit_url()
    );
    ok(&kubeconfig, &["apply", "-f", "-"], Some(&objects));
    let says_original = format!("QUEUE={original}");
    poll("the worker's first pod", async || {
        worker_says(&kubeconfig).as_deref() == Some(says_original.as_str())
    })
    .await;
    sim
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_split_routes_by_filter_and_gives_everything_back_at_the_end() {
    let broker = RabbitBroker::connect(&rabbit_url())
        .await
        .unwrap_or_else(|e| panic!("{e}: RabbitMQ must run (scripts/setup.sh starts it)"));
    let original = QueueName(format!("remora-test.split-sim.{}", std::process::id()));
    let workload_queue = temp_queue_name(broker.kind(), &original, Owner::Workload);
    let mut cleanup = Cleanup(vec![original.clone(), workload_queue.clone()]);
    broker
        .create_like(&QueueProps::default(), &original)
        .await
        .unwrap();

    let sim = start_split(&original, "").await;
    let kubeconfig = sim.kubeconfig.clone();
    let says_original = format!("QUEUE={original}");

    let kube = KubeClient::connect(&ClientOptions {
        kubeconfig: Some(kubeconfig.clone()),
        context: None,
        namespace: Some("default".into()),
    })
    .await
    .unwrap();
    let splits = Splits::new(kube.client.clone(), RouterConfig::default());
    let worker = WorkloadRef {
        kind: WorkloadKind::Deployment,
        name: "worker".into(),
    };
    let want = |pattern: &str| {
        BTreeMap::from([(
            "orders".to_owned(),
            Wanted {
                broker: QueueBroker::Rabbitmq,
                filter: BTreeMap::from([("x-user".to_owned(), pattern.to_owned())]),
            },
        )])
    };

    // A wrong type or id is refused before anything starts.
    let mut wrong = want("^alice$");
    wrong.get_mut("orders").unwrap().broker = QueueBroker::Sqs;
    let err = splits
        .join("default", &worker, "s0", &wrong)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not Sqs"), "{err}");

    let alice_env = splits
        .join("default", &worker, "alice1", &want("^alice$"))
        .await
        .unwrap();
    let alice_queue = QueueName(alice_env["ORDERS_QUEUE"].clone());
    cleanup.0.push(alice_queue.clone());
    assert_ne!(alice_queue, original);
    let says_split = format!("QUEUE={workload_queue}");
    poll("the worker to roll onto its temporary queue", async || {
        worker_says(&kubeconfig).as_deref() == Some(says_split.as_str())
    })
    .await;
    let err = splits
        .join("default", &worker, "bob2", &want("ali"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("alice1"),
        "the refusal names the holder: {err}"
    );
    let phase = ok(
        &kubeconfig,
        &[
            "get",
            "rqs",
            "orders",
            "-o",
            "jsonpath={.status.phase}/{.status.sessionCount}",
        ],
        None,
    );
    assert_eq!(phase, "Active/1");

    // 100 messages each for alice and bob: alice's all reach her queue,
    // bob's all reach the workload's, none twice.
    for n in 0..100 {
        broker
            .publish(&original, &message("alice", n))
            .await
            .unwrap();
        broker.publish(&original, &message("bob", n)).await.unwrap();
    }
    let mut alice = Vec::new();
    poll("alice's 100 messages", async || {
        alice.extend(take_all(&broker, &alice_queue, Duration::from_millis(300)).await);
        alice.len() >= 100
    })
    .await;
    let mut workload = Vec::new();
    poll("bob's 100 messages at the workload", async || {
        workload.extend(take_all(&broker, &workload_queue, Duration::from_millis(300)).await);
        workload.len() >= 100
    })
    .await;
    let expect = |user: &str| (0..100).map(|n| format!("{user}-{n}")).collect::<Vec<_>>();
    assert_eq!(alice, expect("alice"), "in order, exactly once");
    assert_eq!(workload, expect("bob"));

    // Ten more for alice that she never takes; then she leaves, the last one.
    for n in 100..110 {
        broker
            .publish(&original, &message("alice", n))
            .await
            .unwrap();
    }
    poll("the ten to reach alice's queue", async || {
        broker
            .depth(&alice_queue)
            .await
            .map(|d| d.ready)
            .unwrap_or(0)
            == 10
    })
    .await;
    splits.leave("alice1").await;
    poll(
        "the worker to roll back onto the original queue",
        async || worker_says(&kubeconfig).as_deref() == Some(says_original.as_str()),
    )
    .await;
    let phase = ok(
        &kubeconfig,
        &["get", "rqs", "orders", "-o", "jsonpath={.status.phase}"],
        None,
    );
    assert_eq!(phase, "Idle");
    // Nothing lost: the ten are back on the original queue, and the
    // temporary queues are gone.
    let back = take_all(&broker, &original, Duration::from_millis(500)).await;
    assert_eq!(
        back,
        (100..110).map(|n| format!("alice-{n}")).collect::<Vec<_>>()
    );
    for gone in [&alice_queue, &workload_queue] {
        // A passive declare (`inspect` redeclares to learn the arguments).
        assert!(broker.depth(gone).await.is_err(), "{gone} still exists");
    }
}

/// The names of the worker's pods, running or not.
fn worker_pods(kubeconfig: &std::path::Path) -> String {
    ok(
        kubeconfig,
        &["get", "pods", "-l", "app=worker", "-o", "name"],
        None,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_kept_warm_outlives_its_last_session_and_ends_after_keep_warm_ttl() {
    let broker = RabbitBroker::connect(&rabbit_url())
        .await
        .unwrap_or_else(|e| panic!("{e}: RabbitMQ must run (scripts/setup.sh starts it)"));
    let original = QueueName(format!("remora-test.split-warm.{}", std::process::id()));
    let workload_queue = temp_queue_name(broker.kind(), &original, Owner::Workload);
    let mut cleanup = Cleanup(vec![original.clone(), workload_queue.clone()]);
    broker
        .create_like(&QueueProps::default(), &original)
        .await
        .unwrap();
    // Long enough for the checks of the warm split below, however loaded
    // the machine; the test then waits for it to pass.
    let sim = start_split(&original, "  keepWarmTtl: 20s").await;
    let kubeconfig = sim.kubeconfig.clone();
    let kube = KubeClient::connect(&ClientOptions {
        kubeconfig: Some(kubeconfig.clone()),
        context: None,
        namespace: Some("default".into()),
    })
    .await
    .unwrap();
    let splits = Splits::new(kube.client.clone(), RouterConfig::default());
    let worker = WorkloadRef {
        kind: WorkloadKind::Deployment,
        name: "worker".into(),
    };
    let want = |pattern: &str| {
        BTreeMap::from([(
            "orders".to_owned(),
            Wanted {
                broker: QueueBroker::Rabbitmq,
                filter: BTreeMap::from([("x-user".to_owned(), pattern.to_owned())]),
            },
        )])
    };
    let phase = || {
        ok(
            &kubeconfig,
            &[
                "get",
                "rqs",
                "orders",
                "-o",
                "jsonpath={.status.phase}/{.status.sessionCount}",
            ],
            None,
        )
    };

    let alice = splits
        .join("default", &worker, "alice1", &want("^alice$"))
        .await
        .unwrap();
    cleanup.0.push(QueueName(alice["ORDERS_QUEUE"].clone()));
    let says_split = format!("QUEUE={workload_queue}");
    poll("the worker to roll onto its temporary queue", async || {
        worker_says(&kubeconfig).as_deref() == Some(says_split.as_str())
    })
    .await;
    Workloads::new(kube.client.clone(), "default")
        .wait_rolled_out(&worker, Duration::from_secs(300))
        .await
        .unwrap();
    let pods = worker_pods(&kubeconfig);

    // The last session leaves: the split stays set up.
    splits.leave("alice1").await;
    assert_eq!(phase(), "Warm/0");
    let idle_since = ok(
        &kubeconfig,
        &["get", "rqs", "orders", "-o", "jsonpath={.status.idleSince}"],
        None,
    );
    assert!(!idle_since.is_empty(), "idleSince is set");
    broker.publish(&original, &message("bob", 0)).await.unwrap();
    poll("bob's message to reach the workload's queue", async || {
        broker
            .depth(&workload_queue)
            .await
            .map(|d| d.ready)
            .unwrap_or(0)
            == 1
    })
    .await;

    // The next session joins the warm split: no rollout.
    let carol = splits
        .join("default", &worker, "carol2", &want("^carol$"))
        .await
        .unwrap();
    cleanup.0.push(QueueName(carol["ORDERS_QUEUE"].clone()));
    assert_eq!(phase(), "Active/1");
    assert_eq!(
        worker_pods(&kubeconfig),
        pods,
        "the worker was not rolled again"
    );
    splits.leave("carol2").await;
    assert_eq!(phase(), "Warm/0");

    // keepWarmTtl passes with no session: the split ends as usual.
    poll("the split to end after keepWarmTtl", async || {
        phase() == "Idle/0"
    })
    .await;
    poll(
        "the worker to roll back onto the original queue",
        async || worker_says(&kubeconfig).as_deref() == Some(format!("QUEUE={original}").as_str()),
    )
    .await;
    let back = take_all(&broker, &original, Duration::from_millis(500)).await;
    assert_eq!(back, ["bob-0"], "the message nobody took is back");
    assert!(
        broker.depth(&workload_queue).await.is_err(),
        "the workload's queue is gone"
    );
}

/// Registration changes while a session runs (issue 12): an edit of
/// `drainTimeout` is taken as it is; an edit of the broker endpoint ends
/// the split: the session is ended with the reason, the messages of every
/// temporary queue go back to the original (none lost, none twice), the
/// workload rolls back, the finalizer is removed; the next session starts
/// the split under the new registration; deleting the object ends that
/// split the same way, and the object goes only once it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_whose_registration_is_edited_or_deleted_ends_its_sessions_and_loses_nothing() {
    use remora_operator_kube::queue_splits::controller::{EndSession, FINALIZER};
    use std::sync::{Arc, Mutex};

    let broker = RabbitBroker::connect(&rabbit_url())
        .await
        .unwrap_or_else(|e| panic!("{e}: RabbitMQ must run (scripts/setup.sh starts it)"));
    let original = QueueName(format!("remora-test.split-edit.{}", std::process::id()));
    let workload_queue = temp_queue_name(broker.kind(), &original, Owner::Workload);
    let mut cleanup = Cleanup(vec![original.clone(), workload_queue.clone()]);
    broker
        .create_like(&QueueProps::default(), &original)
        .await
        .unwrap();
    let sim = start_split(&original, "").await;
    let kubeconfig = sim.kubeconfig.clone();
    let says_original = format!("QUEUE={original}");
    let says_split = format!("QUEUE={workload_queue}");
    let kube = KubeClient::connect(&ClientOptions {
        kubeconfig: Some(kubeconfig.clone()),
        context: None,
        namespace: Some("default".into()),
    })
    .await
    .unwrap();
    let splits = Splits::new(kube.client.clone(), RouterConfig::default());
    // The sessions the watch ends, with the reason their clients are told.
    let ended: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let end_session: EndSession = {
        let ended = ended.clone();
        Arc::new(move |key: &str, reason: String| {
            ended.lock().unwrap().push((key.to_owned(), reason));
        })
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let watch = tokio::spawn(splits.clone().watch(end_session, cancel.clone()));
    let worker = WorkloadRef {
        kind: WorkloadKind::Deployment,
        name: "worker".into(),
    };
    let want = |pattern: &str| {
        BTreeMap::from([(
            "orders".to_owned(),
            Wanted {
                broker: QueueBroker::Rabbitmq,
                filter: BTreeMap::from([("x-user".to_owned(), pattern.to_owned())]),
            },
        )])
    };
    let get = |path: &str| {
        ok(
            &kubeconfig,
            &["get", "rqs", "orders", "-o", &format!("jsonpath={path}")],
            None,
        )
    };
    let depth = async |queue: &QueueName| broker.depth(queue).await.map(|d| d.ready).unwrap_or(0);
    // Every message of `users` numbered `range`, sorted.
    let expect = |users: &[&str], range: std::ops::Range<usize>| {
        let mut all: Vec<String> = users
            .iter()
            .flat_map(|u| range.clone().map(move |n| format!("{u}-{n}")))
            .collect();
        all.sort();
        all
    };

    // Alice's session starts the split; the object carries the finalizer.
    let alice = splits
        .join("default", &worker, "alice1", &want("^alice$"))
        .await
        .unwrap();
    let alice_queue = QueueName(alice["ORDERS_QUEUE"].clone());
    cleanup.0.push(alice_queue.clone());
    poll("the worker to roll onto its temporary queue", async || {
        worker_says(&kubeconfig).as_deref() == Some(says_split.as_str())
    })
    .await;
    assert!(
        get("{.metadata.finalizers}").contains(FINALIZER),
        "{}",
        get("{.metadata}")
    );
    // Twenty each for alice and bob that nobody consumes.
    for n in 0..20 {
        for user in ["alice", "bob"] {
            broker.publish(&original, &message(user, n)).await.unwrap();
        }
    }
    poll("alice's twenty and bob's twenty routed", async || {
        depth(&alice_queue).await == 20 && depth(&workload_queue).await == 20
    })
    .await;

    // A timing edit is taken as it is; the broker endpoint's edit ends the
    // split (the same broker, written another way: the router of the old
    // registration still reaches it to give everything back).
    ok(
        &kubeconfig,
        &[
            "patch",
            "rqs",
            "orders",
            "--type=merge",
            "-p",
            r#"{"spec":{"drainTimeout":"2s"}}"#,
        ],
        None,
    );
    let endpoint = serde_json::json!({"spec": {"queues": {"orders": {
        "brokerEndpoint": {"urlFrom": null, "url": rabbit_url()}
    }}}})
    .to_string();
    ok(
        &kubeconfig,
        &["patch", "rqs", "orders", "--type=merge", "-p", &endpoint],
        None,
    );
    poll("alice's session to be ended", async || {
        !ended.lock().unwrap().is_empty()
    })
    .await;
    {
        let ended = ended.lock().unwrap();
        assert_eq!(ended.len(), 1, "only alice, once: {ended:?}");
        assert_eq!(ended[0].0, "alice1");
        assert!(
            ended[0].1.starts_with(
                "queue split ended: RemoraQueueSplit default/orders changed (queue orders changed)"
            ),
            "{}",
            ended[0].1
        );
    }
    poll(
        "the worker to roll back onto the original queue",
        async || worker_says(&kubeconfig).as_deref() == Some(says_original.as_str()),
    )
    .await;
    poll("the split to be Idle", async || {
        get("{.status.phase}") == "Idle"
    })
    .await;
    assert_eq!(
        get("{.status.message}"),
        "the split was ended while it ran: RemoraQueueSplit default/orders changed (queue orders changed)"
    );
    assert!(!get("{.metadata.finalizers}").contains(FINALIZER));
    let mut back = take_all(&broker, &original, Duration::from_millis(500)).await;
    back.sort();
    assert_eq!(
        back,
        expect(&["alice", "bob"], 0..20),
        "none lost, none twice"
    );
    for gone in [&alice_queue, &workload_queue] {
        assert!(broker.depth(gone).await.is_err(), "{gone} still exists");
    }

    // The next session starts the split under the new registration.
    let bob = splits
        .join("default", &worker, "bob2", &want("^bob$"))
        .await
        .unwrap();
    let bob_queue = QueueName(bob["ORDERS_QUEUE"].clone());
    cleanup.0.push(bob_queue.clone());
    poll(
        "the worker to roll onto its temporary queue again",
        async || worker_says(&kubeconfig).as_deref() == Some(says_split.as_str()),
    )
    .await;
    for n in 20..30 {
        for user in ["alice", "bob"] {
            broker.publish(&original, &message(user, n)).await.unwrap();
        }
    }
    poll("bob's ten and alice's ten routed", async || {
        depth(&bob_queue).await == 10 && depth(&workload_queue).await == 10
    })
    .await;

    // Deleting the object ends the split before the object goes.
    ok(
        &kubeconfig,
        &["delete", "rqs", "orders", "--wait=false"],
        None,
    );
    poll("bob's session to be ended", async || {
        ended.lock().unwrap().len() == 2
    })
    .await;
    {
        let ended = ended.lock().unwrap();
        assert_eq!(ended[1].0, "bob2");
        assert!(
            ended[1]
                .1
                .starts_with("queue split ended: RemoraQueueSplit default/orders was deleted"),
            "{}",
            ended[1].1
        );
    }
    poll(
        "the worker to roll back onto the original queue",
        async || worker_says(&kubeconfig).as_deref() == Some(says_original.as_str()),
    )
    .await;
    poll("the object to be gone", async || {
        !kubectl(&kubeconfig, &["get", "rqs", "orders"], None)
            .status
            .success()
    })
    .await;
    let mut back = take_all(&broker, &original, Duration::from_millis(500)).await;
    back.sort();
    assert_eq!(
        back,
        expect(&["alice", "bob"], 20..30),
        "none lost, none twice"
    );
    for gone in [&bob_queue, &workload_queue] {
        assert!(broker.depth(gone).await.is_err(), "{gone} still exists");
    }
    // A session for a deleted registration is refused.
    let err = splits
        .join("default", &worker, "carol3", &want("^carol$"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no RemoraQueueSplit"), "{err}");
    assert_eq!(ended.lock().unwrap().len(), 2);
    cancel.cancel();
    watch.await.unwrap();
}
