//! The router on SQS (a real `moto_server`): a FIFO queue split between two
//! sessions and the workload while a producer sends to it, one session
//! killed midway (messages in flight, never deleted) and removed, with exact
//! counts on every side and per-group order where it is promised.

#[path = "support/moto.rs"]
mod moto;

use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    SendMessageBatchRequestEntry,
};
use moto::Moto;
use remora_queues::broker::{Broker, BrokerError, QueueName, QueueProps};
use remora_queues::filter::MessageFilter;
use remora_queues::router::{MemoryStore, RouterApi, RouterConfig, RouterTask, SplitSessionKey};
use remora_queues::sqs::SqsBroker;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long anything may take before the test gives up (generous: the CI
/// machine is loaded and moto is slow).
const DEADLINE: Duration = Duration::from_secs(300);

/// How many messages the producer may be ahead of the router (the most the
/// original queue holds, in flight included).
const PRODUCER_WINDOW: u64 = 100;

/// FIFO groups of the test's messages: many more than the router holds at
/// once, so a receive finds a group not in flight (moto spins a CPU in a long
/// poll whose visible messages are all in groups in flight).
const GROUPS: u64 = 64;

fn q(name: &str) -> QueueName {
    QueueName(name.to_owned())
}

fn key(k: &str) -> SplitSessionKey {
    SplitSessionKey::new(k).unwrap()
}

fn filter(user_regex: &str) -> MessageFilter {
    MessageFilter::new([("x-user", user_regex)]).unwrap()
}

/// Who message `seq` is for.
fn user(seq: u64) -> &'static str {
    ["alice", "bob", "carol"][(seq % 3) as usize]
}

fn group(seq: u64) -> String {
    format!("g{}", seq % GROUPS)
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends messages `range` to `url`, ten per SendMessageBatch.
async fn produce(broker: &SqsBroker, url: &str, range: std::ops::Range<u64>) {
    produce_paced(broker, url, range, None).await;
}

/// [`produce`], and with `paced` (the queue and a window) no further batch
/// while the queue holds more than the window: a producer as fast as the
/// router, as a live one would be, rather than 10,000 messages queued at once
/// (moto's receive scans a queue's whole message list).
async fn produce_paced(
    broker: &SqsBroker,
    url: &str,
    range: std::ops::Range<u64>,
    paced: Option<(&QueueName, u64)>,
) {
    let mut seq = range.start;
    while seq < range.end {
        if let Some((queue, window)) = paced {
            eventually("the router to keep up with the producer", || async {
                let depth = broker.depth(queue).await.unwrap();
                depth.ready + depth.unacked.unwrap_or(0) < window
            })
            .await;
        }
        let end = (seq + 10).min(range.end);
        let entries = (seq..end)
            .enumerate()
            .map(|(i, s)| {
                let attr = |t: &str, v: String| {
                    MessageAttributeValue::builder()
                        .data_type(t)
                        .string_value(v)
                        .build()
                        .unwrap()
                };
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(s.to_string())
                    .message_attributes("x-user", attr("String", user(s).to_owned()))
                    .message_attributes("x-seq", attr("Number", s.to_string()))
                    .message_group_id(group(s))
                    .message_deduplication_id(format!("d{s}"))
                    .build()
                    .unwrap()
            })
            .collect();
        let out = broker
            .client()
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .unwrap();
        assert!(out.failed().is_empty(), "{:?}", out.failed());
        seq = end;
    }
}

/// Receives and deletes everything in `name` (after routing ended: no
/// concurrent writer), returning the sequence numbers in receive order.
async fn take_all(broker: &SqsBroker, name: &QueueName) -> Vec<u64> {
    let url = broker.queue_url(name).await.unwrap();
    let mut got = Vec::new();
    let mut empty = 0;
    let start = Instant::now();
    while empty < 2 {
        assert!(start.elapsed() < DEADLINE, "draining {name}");
        let out = broker
            .client()
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap();
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            empty += 1;
            continue;
        }
        empty = 0;
        let mut entries = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let seq: u64 = m.body().unwrap().parse().unwrap();
            let attrs = m.message_attributes().unwrap();
            assert_eq!(attrs["x-user"].string_value(), Some(user(seq)));
            assert_eq!(
                attrs["x-seq"].string_value(),
                Some(seq.to_string().as_str())
            );
            let g = m.attributes().unwrap()[&MessageSystemAttributeName::MessageGroupId].clone();
            assert_eq!(g, group(seq), "message {seq} kept its group");
            got.push(seq);
            entries.push(
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle().unwrap())
                    .build()
                    .unwrap(),
            );
        }
        broker
            .client()
            .delete_message_batch()
            .queue_url(&url)
            .set_entries(Some(entries))
            .send()
            .await
            .unwrap();
    }
    got
}

async fn routed_total(api: &RouterApi) -> u64 {
    let stats = api.stats().await.unwrap();
    stats.workload.routed
        + stats.sessions.iter().map(|s| s.queue.routed).sum::<u64>()
        + stats.draining.iter().map(|s| s.queue.routed).sum::<u64>()
}

/// Messages of one group keep their order within `got`.
fn assert_group_order(what: &str, got: &[u64]) {
    let mut last: HashMap<String, u64> = HashMap::new();
    for &seq in got {
        if let Some(before) = last.insert(group(seq), seq) {
            assert!(
                before < seq,
                "{what}: {before} came before {seq} in {}",
                group(seq)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_split_delivers_exactly_once_with_a_session_killed_midway() {
    // The full count (about 100 s on moto); REMORA_SQS_MESSAGES
    // sets another.
    let n: u64 = std::env::var("REMORA_SQS_MESSAGES").map_or(10_000, |v| v.parse().unwrap());
    let moto = Moto::start();
    let sqs = moto.broker();
    let broker = sqs.clone();
    let original = q("orders.fifo");
    // A short visibility timeout: the killed session's messages come back
    // (and are moved) two seconds after it died.
    let props = QueueProps {
        name: None,
        props: BTreeMap::from([
            ("FifoQueue".to_owned(), "true".to_owned()),
            ("VisibilityTimeout".to_owned(), "2".to_owned()),
            ("tag:team".to_owned(), "orders".to_owned()),
        ]),
    };
    broker.create_like(&props, &original).await.unwrap();
    let url = sqs.queue_url(&original).await.unwrap();

    let store = Arc::new(MemoryStore::default());
    let (task, api) = RouterTask::start(
        broker.clone(),
        store.clone(),
        original.clone(),
        BTreeMap::new(),
        RouterConfig {
            prefetch: 10,
            ..RouterConfig::default()
        },
    )
    .await
    .unwrap();
    let cancel = CancellationToken::new();
    let running = tokio::spawn(task.run(cancel.clone()));
    let (alice, bob) = (key("alice"), key("bob"));
    let alice_q = api
        .add_session(alice.clone(), filter("^alice$"))
        .await
        .unwrap();
    let bob_q = api.add_session(bob.clone(), filter("^bob$")).await.unwrap();
    assert_eq!(alice_q, q("orders-remora-alice.fifo"));
    let workload_q = api.workload_queue().clone();
    for tmp in [&alice_q, &bob_q, &workload_q] {
        let copied = sqs.inspect(tmp).await.unwrap();
        assert_eq!(copied.props["FifoQueue"], "true", "{tmp}");
        assert_eq!(copied.props["VisibilityTimeout"], "2", "{tmp}");
        assert_eq!(copied.props["tag:team"], "orders", "{tmp}");
    }

    let start = Instant::now();
    let producer = {
        let (broker, original) = (broker.clone(), original.clone());
        tokio::spawn(async move {
            produce_paced(&broker, &url, 0..n, Some((&original, PRODUCER_WINDOW))).await
        })
    };

    // Midway, alice's process takes ten messages and is killed: they stay in
    // flight on her queue, never deleted.
    eventually("a third to be routed", || async {
        routed_total(&api).await >= n / 3
    })
    .await;
    let alice_url = sqs.queue_url(&alice_q).await.unwrap();
    let taken = sqs
        .client()
        .receive_message()
        .queue_url(&alice_url)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default()
        .len();
    assert!(taken > 0, "alice's queue had messages");
    let report = api.remove_session(&alice).await.unwrap();
    assert!(
        report.moved >= taken as u64,
        "{report:?} vs {taken} in flight"
    );
    assert!(matches!(
        sqs.depth(&alice_q).await,
        Err(BrokerError::NoQueue { .. })
    ));

    producer.await.unwrap();
    // Everything was sent: the original empty, nothing in flight, means
    // every message was forwarded and acked.
    eventually("every message to be routed", || async {
        let depth = sqs.depth(&original).await.unwrap();
        depth.ready == 0 && depth.unacked == Some(0)
    })
    .await;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let stats = api.stats().await.unwrap();
    assert_eq!((stats.requeued, stats.ack_failures), (0, 0), "{stats:?}");
    cancel.cancel();
    let state = running.await.unwrap();
    assert_eq!(state.sessions.len(), 1);
    assert!(state.draining.is_empty());

    let got_bob = take_all(&sqs, &bob_q).await;
    let got_workload = take_all(&sqs, &workload_q).await;
    eprintln!(
        "routed {n} messages on moto: {rate:.0} messages/s (the test {:.0} s); bob {}, workload {} ({} moved from alice)",
        start.elapsed().as_secs_f64(),
        got_bob.len(),
        got_workload.len(),
        report.moved
    );
    let want_bob: Vec<u64> = (0..n).filter(|s| user(*s) == "bob").collect();
    let mut sorted_bob = got_bob.clone();
    sorted_bob.sort_unstable();
    assert_eq!(
        sorted_bob, want_bob,
        "bob got exactly his messages, once each"
    );
    // Bob's session lived throughout: his messages keep their group order.
    assert_group_order("bob", &got_bob);
    let mut sorted_workload = got_workload.clone();
    sorted_workload.sort_unstable();
    let want_workload: Vec<u64> = (0..n).filter(|s| user(*s) != "bob").collect();
    assert_eq!(
        sorted_workload, want_workload,
        "the workload got everything else (alice's too), once each"
    );
    assert_eq!((got_bob.len() + got_workload.len()) as u64, n);

    for name in [&bob_q, &workload_q, &original] {
        sqs.delete(name).await.unwrap();
    }
}

/// The operator SIGKILLed midway, on SQS: a router with its own client is
/// aborted while messages wait in a FIFO queue, and a router resumed from
/// the saved state (bob's session having ended meanwhile) finishes the
/// split. What the killed router had received but not deleted comes back
/// after the visibility timeout. Nothing is lost; messages forwarded twice
/// are at most what the killed router held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_killed_midway_resumes_from_its_saved_state() {
    const N: u64 = 200;
    let config = RouterConfig {
        prefetch: 10,
        ..RouterConfig::default()
    };
    let moto = Moto::start();
    let sqs = moto.broker();
    let original = q("payments.fifo");
    let props = QueueProps {
        name: None,
        props: BTreeMap::from([
            ("FifoQueue".to_owned(), "true".to_owned()),
            ("VisibilityTimeout".to_owned(), "2".to_owned()),
        ]),
    };
    sqs.create_like(&props, &original).await.unwrap();
    let url = sqs.queue_url(&original).await.unwrap();
    produce(&sqs, &url, 0..N).await;
    let store = Arc::new(MemoryStore::default());
    let (alice, bob) = (key("alice"), key("bob"));
    let (alice_q, bob_q) = {
        // The first operator: its own client, gone with its task.
        let broker = moto.broker();
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
        eventually("the router to be midway", || async {
            routed_total(&api).await >= N / 4
        })
        .await;
        running.abort();
        assert!(running.await.unwrap_err().is_cancelled());
        (alice_q, bob_q)
    };
    let saved = store.load().expect("the router saved its state");
    assert_eq!(saved.sessions.len(), 2);

    // The restarted operator: bob's session ended while it was down.
    let broker = moto.broker();
    let live = std::collections::BTreeSet::from([alice.clone()]);
    let (task, api) =
        RouterTask::resume(broker.clone(), store.clone(), saved, &live, config.clone())
            .await
            .unwrap();
    let cancel = CancellationToken::new();
    let running = tokio::spawn(task.run(cancel.clone()));
    eventually("the original emptied and bob's queue drained", || async {
        let state = api.state().await.unwrap();
        let depth = sqs.depth(&original).await.unwrap();
        depth.ready == 0 && depth.unacked.unwrap_or(0) == 0 && state.draining.is_empty()
    })
    .await;
    assert!(matches!(
        sqs.inspect(&bob_q).await,
        Err(BrokerError::NoQueue { .. })
    ));
    cancel.cancel();
    let state = running.await.unwrap();
    assert_eq!(
        state.sessions.iter().map(|s| &s.key).collect::<Vec<_>>(),
        [&alice]
    );

    let got_alice = take_all(&sqs, &alice_q).await;
    let got_workload = take_all(&sqs, api.workload_queue()).await;
    let distinct = |got: &[u64]| {
        got.iter()
            .copied()
            .collect::<std::collections::BTreeSet<u64>>()
    };
    let want = |pred: &dyn Fn(u64) -> bool| -> std::collections::BTreeSet<u64> {
        (0..N).filter(|s| pred(*s)).collect()
    };
    assert_eq!(distinct(&got_alice), want(&|s| user(s) == "alice"));
    assert_eq!(
        distinct(&got_workload),
        want(&|s| user(s) != "alice"),
        "the workload got everything else (bob's with his session)"
    );
    let duplicates = got_alice.len() + got_workload.len() - N as usize;
    eprintln!("{duplicates} messages forwarded twice after the router's crash");
    assert!(
        duplicates <= usize::from(config.prefetch) + 1,
        "{duplicates} duplicates after one crash, more than the prefetch of {}",
        config.prefetch
    );
}
