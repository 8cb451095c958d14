//! Queue splitting benchmark behind `scripts/bench.sh` (issue 12): the
//! router's throughput and the latency it adds, against consuming the
//! original queue directly, per broker, in one run: the local RabbitMQ
//! (`REMORA_RABBITMQ_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`),
//! SQS on a `moto_server` and Kafka on a tansu broker, each started by the
//! bench on a free loopback port and killed by PID at the end (as the
//! tests do: `MOTO_SERVER`, `REMORA_TANSU` override the binaries).
//! `remora-bench-queues rabbitmq sqs kafka` (the default: all three) picks
//! the brokers.
//!
//! * **throughput**: `THROUGHPUT_N` messages wait in a queue; *direct*, one
//!   consumer (the broker seam, prefetch 64 or `REMORA_BENCH_PREFETCH`, one ack each) takes them
//!   all; *router*, a router (the same prefetch) with one session whose
//!   filter takes half of them forwards them and one consumer per temporary
//!   queue takes them. Messages/s from the start until the last one arrived.
//! * **latency**: a publisher sends `LATENCY_N` messages at `LATENCY_RATE`/s,
//!   each stamped with its send time; the same consumers record when each
//!   arrived. p50 and p99 of send-to-receive, direct and through the router.
//!
//! Each measurement runs `RUNS` times, direct and router alternating; the
//! table shows the medians. Every queue is created for the run and deleted
//! at the end (also on failure). SQS and Kafka go through the broker seam
//! only (publishes with `Broker::publish`), with counts of their own
//! ([`Seam::counts`]): moto spends milliseconds of Python per request.

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use remora_queues::broker::{Broker, QueueName};
use remora_queues::filter::MessageFilter;
use remora_queues::rabbitmq::RabbitBroker;
use remora_queues::router::{MemoryStore, RouterConfig, RouterTask, SplitSessionKey};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const THROUGHPUT_N: u64 = 20_000;
const LATENCY_N: u64 = 4_000;
const LATENCY_RATE: u64 = 2_000;
/// Both the direct consumers' and the router's prefetch; `REMORA_BENCH_PREFETCH` overrides.
const DEFAULT_PREFETCH: u16 = 64;
const RUNS: usize = 3;
const BODY: usize = 256;
/// Longest wait for one measurement before the bench gives up.
const LIMIT: Duration = Duration::from_secs(300);

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut wanted: Vec<String> = std::env::args().skip(1).collect();
    if wanted.is_empty() {
        wanted = ["rabbitmq", "sqs", "kafka"].map(str::to_owned).to_vec();
    }
    for broker in &wanted {
        let done = match broker.as_str() {
            "rabbitmq" => rt.block_on(until_stopped(bench())),
            "sqs" => rt.block_on(until_stopped(seam::bench(seam::Which::Sqs))),
            "kafka" => rt.block_on(until_stopped(seam::bench(seam::Which::Kafka))),
            other => Err(format!("unknown broker {other:?}: rabbitmq, sqs or kafka").into()),
        };
        if let Err(e) = done {
            eprintln!("remora-bench-queues: {broker}: {e}");
            return ExitCode::FAILURE;
        }
        println!();
    }
    ExitCode::SUCCESS
}

/// `bench` until it ends, or until SIGTERM, SIGINT or SIGHUP: then it is
/// dropped, which stops the brokers it started (moto, tansu) and deletes
/// what it declared, instead of leaving them running.
async fn until_stopped<T>(bench: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        return bench.await;
    };
    tokio::select! {
        done = bench => done,
        _ = term.recv() => Err("stopped by SIGTERM".into()),
        _ = int.recv() => Err("stopped by SIGINT".into()),
        _ = hup.recv() => Err("stopped by SIGHUP".into()),
    }
}

fn prefetch() -> u16 {
    std::env::var("REMORA_BENCH_PREFETCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_PREFETCH)
}

fn url() -> String {
    std::env::var("REMORA_RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// The queues this run created, deleted (messages and all) on drop.
struct Cleanup(Vec<QueueName>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.0);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime");
            rt.block_on(async move {
                let Ok(conn) = Connection::connect(&url(), ConnectionProperties::default()).await
                else {
                    eprintln!("cleanup: RabbitMQ unreachable; queues left: {names:?}");
                    return;
                };
                for n in names {
                    if let Ok(ch) = conn.create_channel().await {
                        let _ = ch
                            .queue_delete(n.0.as_str().into(), QueueDeleteOptions::default())
                            .await;
                    }
                }
            });
        })
        .join();
    }
}

fn unique(tag: &str) -> QueueName {
    static N: AtomicU32 = AtomicU32::new(0);
    QueueName(format!(
        "remora-bench.{tag}.{}.{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Numbers from one measurement.
#[derive(Debug, Clone, Copy)]
struct Sample {
    per_s: f64,
    p50_us: u64,
    p99_us: u64,
}

struct Bench {
    conn: Connection,
    publisher: Channel,
    epoch: Instant,
    cleanup: Cleanup,
}

impl Bench {
    async fn declare(&mut self, tag: &str) -> Result<QueueName> {
        let q = unique(tag);
        self.cleanup.0.push(q.clone());
        let ch = self.conn.create_channel().await?;
        ch.queue_declare(
            q.0.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
        Ok(q)
    }

    fn properties(&self, seq: u64) -> BasicProperties {
        let mut headers = FieldTable::default();
        // Half the messages are the session's.
        let user = if seq.is_multiple_of(2) {
            "alice"
        } else {
            "bob"
        };
        headers.insert("x-user".into(), AMQPValue::LongString(user.into()));
        let sent = self.epoch.elapsed().as_nanos() as i64;
        headers.insert("x-sent-ns".into(), AMQPValue::LongLongInt(sent));
        BasicProperties::default()
            .with_headers(headers)
            .with_delivery_mode(2)
    }

    /// Publishes `n` messages to `q`, all confirmed.
    async fn preload(&self, q: &QueueName, n: u64) -> Result<()> {
        let body = vec![b'x'; BODY];
        for seq in 0..n {
            self.publisher
                .basic_publish(
                    "".into(),
                    q.0.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    self.properties(seq),
                )
                .await?;
        }
        self.publisher.wait_for_confirms().await?;
        Ok(())
    }

    /// Publishes `n` messages to `q` at `rate` per second.
    async fn paced(&self, q: &QueueName, n: u64, rate: u64) -> Result<()> {
        let body = vec![b'x'; BODY];
        let start = Instant::now();
        for seq in 0..n {
            let due = start + Duration::from_nanos(seq * 1_000_000_000 / rate);
            tokio::time::sleep_until(due.into()).await;
            self.publisher
                .basic_publish(
                    "".into(),
                    q.0.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    self.properties(seq),
                )
                .await?;
        }
        self.publisher.wait_for_confirms().await?;
        Ok(())
    }
}

/// Consumes `queues` until `n` messages arrived in all; returns each one's
/// send-to-receive latency in µs and the instant the last arrived.
async fn receive(
    broker: &RabbitBroker,
    queues: &[QueueName],
    n: u64,
    epoch: Instant,
) -> Result<(Vec<u64>, Instant)> {
    let mut consumers = Vec::new();
    for q in queues {
        consumers.push(broker.consume(q, prefetch()).await?);
    }
    receive_from(consumers, n, epoch).await
}

/// [`receive`] from consumers already open.
async fn receive_from(
    consumers: Vec<Box<dyn remora_queues::broker::Consumer>>,
    n: u64,
    epoch: Instant,
) -> Result<(Vec<u64>, Instant)> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(1024);
    let mut tasks = tokio::task::JoinSet::new();
    for mut consumer in consumers {
        let tx = tx.clone();
        tasks.spawn(async move {
            while let Ok(Some(d)) = consumer.next().await {
                let now = epoch.elapsed().as_nanos() as u64;
                let sent: u64 = d
                    .message
                    .headers
                    .get("x-sent-ns")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(now);
                if consumer.ack(d).await.is_err()
                    || tx.send(now.saturating_sub(sent) / 1000).await.is_err()
                {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut latencies = Vec::with_capacity(n as usize);
    let deadline = tokio::time::Instant::now() + LIMIT;
    while (latencies.len() as u64) < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(l)) => latencies.push(l),
            Ok(None) => return Err("a consumer stopped early".into()),
            Err(_) => {
                return Err(format!("only {} of {n} messages arrived", latencies.len()).into());
            }
        }
    }
    let last = Instant::now();
    tasks.abort_all();
    Ok((latencies, last))
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(0)
}

fn sample(mut latencies: Vec<u64>, n: u64, elapsed: Duration) -> Sample {
    latencies.sort_unstable();
    Sample {
        per_s: n as f64 / elapsed.as_secs_f64(),
        p50_us: percentile(&latencies, 0.5),
        p99_us: percentile(&latencies, 0.99),
    }
}

/// A router on `original` with session `alice` (`x-user = ^alice$`),
/// running; returns its queues and the token that stops it.
async fn router(
    broker: Arc<RabbitBroker>,
    bench: &mut Bench,
    original: &QueueName,
) -> Result<(
    Vec<QueueName>,
    CancellationToken,
    tokio::task::JoinHandle<()>,
)> {
    let (task, api) = RouterTask::start(
        broker,
        Arc::new(MemoryStore::default()),
        original.clone(),
        BTreeMap::new(),
        RouterConfig {
            prefetch: prefetch(),
            ..RouterConfig::default()
        },
    )
    .await?;
    bench.cleanup.0.push(api.workload_queue().clone());
    let cancel = CancellationToken::new();
    let running = tokio::spawn({
        let cancel = cancel.clone();
        async move {
            task.run(cancel).await;
        }
    });
    let key = SplitSessionKey::new("alice")?;
    let alice = api
        .add_session(key, MessageFilter::new([("x-user", "^alice$")])?)
        .await?;
    bench.cleanup.0.push(alice.clone());
    Ok((vec![alice, api.workload_queue().clone()], cancel, running))
}

async fn throughput(bench: &mut Bench, routed: bool) -> Result<Sample> {
    let broker = Arc::new(RabbitBroker::connect(&url()).await?);
    let original = bench.declare("tput").await?;
    bench.preload(&original, THROUGHPUT_N).await?;
    let start = Instant::now();
    let (latencies, last) = if routed {
        let (queues, cancel, running) = router(broker.clone(), bench, &original).await?;
        let r = receive(&broker, &queues, THROUGHPUT_N, bench.epoch).await?;
        cancel.cancel();
        running.await?;
        r
    } else {
        receive(
            &broker,
            std::slice::from_ref(&original),
            THROUGHPUT_N,
            bench.epoch,
        )
        .await?
    };
    Ok(sample(latencies, THROUGHPUT_N, last - start))
}

async fn latency(bench: &mut Bench, routed: bool) -> Result<Sample> {
    let broker = Arc::new(RabbitBroker::connect(&url()).await?);
    let original = bench.declare("lat").await?;
    let (queues, stop) = if routed {
        let (queues, cancel, running) = router(broker.clone(), bench, &original).await?;
        (queues, Some((cancel, running)))
    } else {
        (vec![original.clone()], None)
    };
    let start = Instant::now();
    let (received, published) = tokio::join!(
        receive(&broker, &queues, LATENCY_N, bench.epoch),
        bench.paced(&original, LATENCY_N, LATENCY_RATE)
    );
    published?;
    let (latencies, last) = received?;
    if let Some((cancel, running)) = stop {
        cancel.cancel();
        running.await?;
    }
    Ok(sample(latencies, LATENCY_N, last - start))
}

/// The result table of one broker: medians of the direct and routed runs
/// (`[direct, router]`), throughput and latency.
fn print_table(tput: &[Vec<Sample>; 2], lat: &[Vec<Sample>; 2]) {
    let med = |v: &[Sample], f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
    println!("| measure | direct | router | router / direct |");
    println!("| --- | --- | --- | --- |");
    let (d, r) = (med(&tput[0], |s| s.per_s), med(&tput[1], |s| s.per_s));
    println!("| throughput (msg/s) | {d:.0} | {r:.0} | {:.2} |", r / d);
    for (name, f) in [
        (
            "latency p50 (µs)",
            (|s: &Sample| s.p50_us as f64) as fn(&Sample) -> f64,
        ),
        ("latency p99 (µs)", |s: &Sample| s.p99_us as f64),
    ] {
        let (d, r) = (med(&lat[0], f), med(&lat[1], f));
        println!(
            "| {name} | {d:.0} | {r:.0} | {:.2} ({:+.0} µs) |",
            r / d,
            r - d
        );
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

async fn bench() -> Result<()> {
    let conn = Connection::connect(&url(), ConnectionProperties::default())
        .await
        .map_err(|e| format!("RabbitMQ is not reachable ({e}): run scripts/setup.sh"))?;
    let publisher = conn.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut bench = Bench {
        conn,
        publisher,
        epoch: Instant::now(),
        cleanup: Cleanup(Vec::new()),
    };
    let load_before = load();
    let mut tput: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
    let mut lat: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
    for run in 0..RUNS {
        for (i, routed) in [false, true].into_iter().enumerate() {
            let t = throughput(&mut bench, routed).await?;
            eprintln!(
                "run {run} throughput {}: {:.0} msg/s",
                if routed { "router" } else { "direct" },
                t.per_s
            );
            tput[i].push(t);
            let l = latency(&mut bench, routed).await?;
            eprintln!(
                "run {run} latency {}: p50 {} us, p99 {} us",
                if routed { "router" } else { "direct" },
                l.p50_us,
                l.p99_us
            );
            lat[i].push(l);
        }
    }
    println!("## Queue splitting (RabbitMQ)");
    println!();
    println!(
        "remora-bench-queues: {RUNS} runs alternating, medians; {THROUGHPUT_N} queued \
         messages for throughput, {LATENCY_N} at {LATENCY_RATE}/s for latency; {BODY}-byte \
         bodies, prefetch {}; router: one session taking half, the workload the rest; \
         load average before {load_before}, after {}.",
        prefetch(),
        load()
    );
    println!();
    print_table(&tput, &lat);
    Ok(())
}

/// SQS and Kafka, through the broker seam.
#[path = "bench_queues/seam.rs"]
mod seam;
