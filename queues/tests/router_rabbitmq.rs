//! The router against the real RabbitMQ: exact counts with two sessions and
//! the workload, a session killed and removed, the router killed and
//! resumed, and the temporary queues' properties.

#[path = "support/rabbit.rs"]
mod support;

use lapin::types::{AMQPValue, FieldTable};
use remora_queues::broker::{Broker, BrokerError, QueueName};
use remora_queues::filter::MessageFilter;
use remora_queues::rabbitmq::RabbitBroker;
use remora_queues::router::{
    MemoryStore, Owner, RouterApi, RouterConfig, RouterError, RouterTask, SplitSessionKey,
    temp_queue_name,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use support::{Cleanup, Sent, connect, declare, eventually, publish_range, sent, take_all, unique};
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(120);

fn key(k: &str) -> SplitSessionKey {
    SplitSessionKey::new(k).unwrap()
}

fn filter(user_regex: &str) -> MessageFilter {
    MessageFilter::new([("x-user", user_regex)]).unwrap()
}

/// The temporary queues of `original`, registered for cleanup up front (a
/// test that fails midway leaves none behind).
fn temp_queues(cleanup: &mut Cleanup, original: &QueueName, keys: &[&SplitSessionKey]) {
    let kind = remora_queues::broker::BrokerKind::Rabbitmq;
    cleanup.add(&temp_queue_name(kind, original, Owner::Workload));
    for k in keys {
        cleanup.add(&temp_queue_name(kind, original, Owner::Session(k)));
    }
}

async fn routed_total(api: &RouterApi) -> u64 {
    let stats = api.stats().await.unwrap();
    stats.workload.routed + stats.sessions.iter().map(|s| s.queue.routed).sum::<u64>()
}

/// Waits until the router took `n` messages and the original is empty.
async fn wait_routed(api: &RouterApi, broker: &RabbitBroker, original: &QueueName, n: u64) {
    eventually(LIMIT, "every message to be routed", || async {
        let done = routed_total(api).await == n && broker.depth(original).await.unwrap().ready == 0;
        done.then_some(())
    })
    .await;
}

fn assert_in_order(what: &str, got: &[Sent]) {
    for w in got.windows(2) {
        assert!(
            w[0].seq < w[1].seq,
            "{what}: {} came before {}",
            w[0].seq,
            w[1].seq
        );
    }
}

#[tokio::test]
async fn ten_thousand_messages_go_exactly_where_their_filters_say() {
    const N: u64 = 10_000;
    let mut cleanup = Cleanup::default();
    let original = unique("split");
    let (alice, bob) = (key("alice"), key("bob"));
    cleanup.add(&original);
    temp_queues(&mut cleanup, &original, &[&alice, &bob]);
    let conn = connect().await;
    declare(&conn, &original, true, FieldTable::default()).await;
    let broker = Arc::new(RabbitBroker::connect(&support::url()).await.unwrap());
    let store = Arc::new(MemoryStore::default());
    let (task, api) = RouterTask::start(
        broker.clone(),
        store.clone(),
        original.clone(),
        BTreeMap::new(),
        RouterConfig::default(),
    )
    .await
    .unwrap();
    let cancel = CancellationToken::new();
    let running = tokio::spawn(task.run(cancel.clone()));
    let alice_q = api
        .add_session(alice.clone(), filter("^alice$"))
        .await
        .unwrap();
    // `alice` would also match "alice2": refused, naming the holder.
    let err = api
        .add_session(bob.clone(), filter("alice"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RouterError::Overlap { holder, .. } if *holder == alice),
        "{err}"
    );
    assert!(err.to_string().contains("session alice's"), "{err}");
    let bob_q = api.add_session(bob.clone(), filter("^bob$")).await.unwrap();
    assert!(matches!(
        api.add_session(bob.clone(), filter("^bobby$")).await,
        Err(RouterError::DuplicateSession(_))
    ));

    publish_range(&conn, &original, 0..N).await;
    wait_routed(&api, &broker, &original, N).await;
    let stats = api.stats().await.unwrap();
    assert_eq!((stats.requeued, stats.ack_failures), (0, 0));

    let got_alice = take_all(&conn, &alice_q).await;
    let got_bob = take_all(&conn, &bob_q).await;
    let got_workload = take_all(&conn, api.workload_queue()).await;
    let expect = |pred: &dyn Fn(&Sent) -> bool| -> Vec<Sent> {
        (0..N).map(sent).filter(|m| pred(m)).collect()
    };
    // Exactly the expected messages, each once, in the original order.
    assert_eq!(got_alice, expect(&|m| m.user == Some("alice")));
    assert_eq!(got_bob, expect(&|m| m.user == Some("bob")));
    assert_eq!(
        got_workload,
        expect(&|m| !matches!(m.user, Some("alice" | "bob")))
    );
    assert_eq!(
        (got_alice.len() + got_bob.len() + got_workload.len()) as u64,
        N
    );
    // Order kept per destination, hence per order key.
    assert_in_order("alice", &got_alice);
    assert_in_order("bob", &got_bob);
    assert_in_order("workload", &got_workload);
    assert_eq!(stats.sessions[0].queue.routed, got_alice.len() as u64);
    assert_eq!(stats.sessions[1].queue.routed, got_bob.len() as u64);
    assert_eq!(stats.workload.routed, got_workload.len() as u64);

    // Clean stop: nothing in flight is left behind.
    cancel.cancel();
    let state = running.await.unwrap();
    assert_eq!(state.sessions.len(), 2);
    assert_eq!(store.load(), Some(state));
}

#[tokio::test]
async fn a_killed_sessions_unconsumed_messages_move_to_the_workload() {
    const N: u64 = 2_000;
    let mut cleanup = Cleanup::default();
    let original = unique("killed");
    let alice = key("alice");
    cleanup.add(&original);
    temp_queues(&mut cleanup, &original, &[&alice]);
    let conn = connect().await;
    declare(&conn, &original, true, FieldTable::default()).await;
    let broker = Arc::new(RabbitBroker::connect(&support::url()).await.unwrap());
    let (task, api) = RouterTask::start(
        broker.clone(),
        Arc::new(MemoryStore::default()),
        original.clone(),
        BTreeMap::new(),
        RouterConfig::default(),
    )
    .await
    .unwrap();
    let cancel = CancellationToken::new();
    let running = tokio::spawn(task.run(cancel.clone()));
    let alice_q = api
        .add_session(alice.clone(), filter("^alice$"))
        .await
        .unwrap();
    publish_range(&conn, &original, 0..N).await;
    wait_routed(&api, &broker, &original, N).await;

    // The session's process consumes (and acks) 150 messages, takes 40
    // more without acking, and dies with its connection.
    let acked = {
        let session = RabbitBroker::connect(&support::url()).await.unwrap();
        let mut c = session.consume(&alice_q, 40).await.unwrap();
        let mut acked = Vec::new();
        for _ in 0..150 {
            let d = c.next().await.unwrap().unwrap();
            acked.push(d.message.headers["x-seq"].parse::<u64>().unwrap());
            c.ack(d).await.unwrap();
        }
        let mut held = Vec::new();
        for _ in 0..40 {
            held.push(c.next().await.unwrap().unwrap());
        }
        drop(held);
        acked
        // `session` and `c` drop here: the connection closes, unacked.
    };
    let report = api.remove_session(&alice).await.unwrap();
    let alice_total = (0..N).filter(|s| sent(*s).user == Some("alice")).count() as u64;
    assert_eq!(report.moved, alice_total - 150);
    assert!(matches!(
        broker.depth(&alice_q).await,
        Err(BrokerError::NoQueue { .. })
    ));
    assert!(api.state().await.unwrap().draining.is_empty());

    let got = take_all(&conn, api.workload_queue()).await;
    let mut all: Vec<u64> = got.iter().map(|m| m.seq).chain(acked).collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..N).collect::<Vec<_>>(),
        "every message exactly once"
    );
    cancel.cancel();
    running.await.unwrap();
}

#[tokio::test]
async fn a_router_killed_midway_resumes_from_its_saved_state() {
    const N: u64 = 6_000;
    let config = RouterConfig {
        prefetch: 32,
        ..RouterConfig::default()
    };
    let mut cleanup = Cleanup::default();
    let original = unique("resume");
    let (alice, bob) = (key("alice"), key("bob"));
    cleanup.add(&original);
    temp_queues(&mut cleanup, &original, &[&alice, &bob]);
    let conn = connect().await;
    declare(&conn, &original, true, FieldTable::default()).await;
    publish_range(&conn, &original, 0..N).await;
    let store = Arc::new(MemoryStore::default());
    let (alice_q, bob_q) = {
        // The first operator: its own connections, killed with its task.
        let broker = Arc::new(RabbitBroker::connect(&support::url()).await.unwrap());
        let (task, api) = RouterTask::start(
            broker.clone(),
            store.clone(),
            original.clone(),
            BTreeMap::new(),
            config.clone(),
        )
        .await
        .unwrap();
        let running = tokio::spawn(task.run(CancellationToken::new()));
        let alice_q = api
            .add_session(alice.clone(), filter("^alice$"))
            .await
            .unwrap();
        let bob_q = api.add_session(bob.clone(), filter("^bob$")).await.unwrap();
        eventually(LIMIT, "the router to be midway", || async {
            (routed_total(&api).await >= N / 4).then_some(())
        })
        .await;
        running.abort();
        assert!(running.await.unwrap_err().is_cancelled());
        (alice_q, bob_q)
        // The broker handle drops: its connections close, the original
        // queue gets its unacked deliveries back.
    };
    let saved = store.load().expect("the router saved its state");
    assert_eq!(saved.sessions.len(), 2);

    // The restarted operator: bob's session ended while it was down.
    let broker = Arc::new(RabbitBroker::connect(&support::url()).await.unwrap());
    let live = BTreeSet::from([alice.clone()]);
    let (task, api) =
        RouterTask::resume(broker.clone(), store.clone(), saved, &live, config.clone())
            .await
            .unwrap();
    let cancel = CancellationToken::new();
    let running = tokio::spawn(task.run(cancel.clone()));
    eventually(
        LIMIT,
        "the original to be empty and bob's queue drained",
        || async {
            let state = api.state().await.unwrap();
            let empty = broker.depth(&original).await.unwrap().ready == 0;
            (empty && state.draining.is_empty()).then_some(())
        },
    )
    .await;
    assert!(matches!(
        broker.depth(&bob_q).await,
        Err(BrokerError::NoQueue { .. })
    ));
    cancel.cancel();
    let state = running.await.unwrap();
    assert_eq!(
        state.sessions.iter().map(|s| &s.key).collect::<Vec<_>>(),
        [&alice]
    );
    assert_eq!(store.load(), Some(state));

    let got_alice = take_all(&conn, &alice_q).await;
    let got_workload = take_all(&conn, api.workload_queue()).await;
    // Nothing lost: every message is where its filter says (bob's went to
    // the workload with his session).
    let distinct = |v: &[Sent]| v.iter().cloned().collect::<BTreeSet<_>>();
    let expect = |pred: &dyn Fn(&Sent) -> bool| -> BTreeSet<Sent> {
        (0..N).map(sent).filter(|m| pred(m)).collect()
    };
    assert_eq!(distinct(&got_alice), expect(&|m| m.user == Some("alice")));
    assert_eq!(
        distinct(&got_workload),
        expect(&|m| m.user != Some("alice"))
    );
    // Duplicates only from the crash: at most the deliveries the killed
    // router held unacknowledged (its prefetch).
    let duplicates = got_alice.len() + got_workload.len() - N as usize;
    assert!(
        duplicates <= usize::from(config.prefetch),
        "{duplicates} duplicates after one crash, more than the prefetch of {}",
        config.prefetch
    );
}

#[tokio::test]
async fn temporary_queues_copy_a_quorum_queues_properties() {
    let mut cleanup = Cleanup::default();
    let original = unique("props");
    let alice = key("a1");
    cleanup.add(&original);
    temp_queues(&mut cleanup, &original, &[&alice]);
    let conn = connect().await;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString("parking".into()),
    );
    args.insert("x-delivery-limit".into(), AMQPValue::LongInt(3));
    declare(&conn, &original, true, args).await;
    let broker = Arc::new(RabbitBroker::connect(&support::url()).await.unwrap());
    // The registration adds what the broker cannot report (a custom argument).
    let registered = BTreeMap::from([("x-team".to_owned(), "payments".to_owned())]);
    let (task, api) = RouterTask::start(
        broker.clone(),
        Arc::new(MemoryStore::default()),
        original.clone(),
        registered,
        RouterConfig::default(),
    )
    .await
    .unwrap();
    let cancel = CancellationToken::new();
    let running = tokio::spawn(task.run(cancel.clone()));
    let alice_q = api
        .add_session(alice.clone(), filter("^alice$"))
        .await
        .unwrap();
    let state = api.state().await.unwrap();
    assert_eq!(state.props.props["x-queue-type"], "quorum");
    assert_eq!(state.props.props["x-dead-letter-routing-key"], "parking");
    assert_eq!(state.props.props["x-team"], "payments");
    for q in [&alice_q, api.workload_queue()] {
        let copied = broker.inspect(q).await.unwrap();
        for k in [
            "durable",
            "x-queue-type",
            "x-dead-letter-exchange",
            "x-dead-letter-routing-key",
            "x-delivery-limit",
        ] {
            assert_eq!(copied.props.get(k), state.props.props.get(k), "{q}: {k}");
        }
    }
    assert!(matches!(
        api.remove_session(&key("nobody")).await,
        Err(RouterError::UnknownSession(_))
    ));
    assert_eq!(api.remove_session(&alice).await.unwrap().moved, 0);
    cancel.cancel();
    running.await.unwrap();
}
