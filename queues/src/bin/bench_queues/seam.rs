//! The benchmark for SQS (a `moto_server`) and Kafka (a tansu broker):
//! the same two measurements as for RabbitMQ, through the broker seam only.
//!
//! * Publishing uses `Broker::publish` (one SendMessage, one Produce with
//!   `acks=all` per message), several at once for the preload, one task per
//!   message at its due time for the paced latency run.
//! * **SQS**: a standard queue on moto as the tests run it (requests made
//!   atomic, its per-message scans removed: `tests/support/moto_server.py`,
//!   docs/queues.md "moto, mended"); every request runs concurrently, as
//!   against real SQS.
//! * **Kafka**: a three-partition topic, messages keyed over 16 keys. The
//!   direct consumer, the router and each reader of a temporary topic read
//!   in consumer groups of their own, so no measurement waits for a
//!   rebalance.

#[path = "../../../tests/support/moto.rs"]
mod moto;
#[path = "../../../tests/support/tansu.rs"]
mod tansu;

use super::{BODY, LIMIT, RUNS, Result, Sample, load, print_table, receive_from, sample};
use remora_queues::broker::{Broker, Consumer, Message, QueueName, QueueProps};
use remora_queues::filter::MessageFilter;
use remora_queues::kafka::{KafkaBroker, KafkaConfig, PARTITIONS_PROP};
use remora_queues::router::{MemoryStore, RouterConfig, RouterTask, SplitSessionKey};
use remora_queues::sqs::SqsBroker;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Which broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Sqs,
    Kafka,
}

/// How many messages each measurement moves, and the prefetch.
#[derive(Debug, Clone, Copy)]
struct Counts {
    throughput: u64,
    latency: u64,
    rate: u64,
    prefetch: u16,
    /// Publishes in flight at once while preloading.
    preload_parallel: u64,
}

/// The broker's server, running for the bench.
enum Server {
    Sqs {
        _moto: moto::Moto,
        broker: Arc<SqsBroker>,
    },
    Kafka {
        tansu: tansu::Tansu,
        producer: Arc<KafkaBroker>,
    },
}

struct Seam {
    which: Which,
    server: Server,
    epoch: Instant,
}

fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "bench-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl Seam {
    async fn start(which: Which) -> Result<Seam> {
        let server = match which {
            Which::Sqs => {
                let moto = tokio::task::spawn_blocking(moto::Moto::start).await?;
                let broker = moto.broker();
                Server::Sqs {
                    _moto: moto,
                    broker,
                }
            }
            Which::Kafka => {
                let tansu = tokio::task::spawn_blocking(tansu::Tansu::start).await?;
                let producer = kafka(&tansu, "bench-producer").await?;
                Server::Kafka { tansu, producer }
            }
        };
        Ok(Seam {
            which,
            server,
            epoch: Instant::now(),
        })
    }

    fn counts(&self) -> Counts {
        match self.which {
            // moto: a few ms of Python per request, one request at a time.
            // The latency rate stays well under what the router forwards on
            // moto (about 100 messages/s on a loaded machine): above it the
            // queue grows and the latency measures the backlog.
            Which::Sqs => Counts {
                throughput: 2_000,
                latency: 300,
                rate: 20,
                prefetch: 10,
                preload_parallel: 4,
            },
            Which::Kafka => Counts {
                throughput: 5_000,
                latency: 1_000,
                rate: 200,
                prefetch: 64,
                preload_parallel: 16,
            },
        }
    }

    fn title(&self) -> &'static str {
        match self.which {
            Which::Sqs => "SQS (moto_server)",
            Which::Kafka => "Kafka (tansu)",
        }
    }

    /// A broker for `group` (Kafka: a consumer group of its own; SQS: the
    /// one shared broker, whose locks must be common to every writer).
    async fn broker(&self, group: &str) -> Result<Arc<dyn Broker>> {
        Ok(match &self.server {
            Server::Sqs { broker, .. } => broker.clone(),
            Server::Kafka { tansu, .. } => kafka(tansu, group).await?,
        })
    }

    fn producer(&self) -> Arc<dyn Broker> {
        match &self.server {
            Server::Sqs { broker, .. } => broker.clone(),
            Server::Kafka { producer, .. } => producer.clone(),
        }
    }

    async fn declare(&self, tag: &str) -> Result<QueueName> {
        let q = QueueName(unique(tag));
        let props = match self.which {
            Which::Sqs => QueueProps::default(),
            Which::Kafka => QueueProps {
                name: None,
                props: BTreeMap::from([(PARTITIONS_PROP.to_owned(), "3".to_owned())]),
            },
        };
        self.producer().create_like(&props, &q).await?;
        Ok(q)
    }

    fn message(&self, seq: u64) -> Message {
        // Half the messages are the session's.
        let user = if seq.is_multiple_of(2) {
            "alice"
        } else {
            "bob"
        };
        let sent = self.epoch.elapsed().as_nanos() as u64;
        Message {
            headers: BTreeMap::from([
                ("x-user".to_owned(), user.to_owned()),
                ("x-sent-ns".to_owned(), sent.to_string()),
            ]),
            body: vec![b'x'; BODY],
            order_key: match self.which {
                Which::Sqs => None,
                Which::Kafka => Some(format!("k{}", seq % 16)),
            },
            native: Box::new(()),
        }
    }

    /// Publishes `n` messages to `q`, `preload_parallel` at a time.
    async fn preload(&self, q: &QueueName, n: u64) -> Result<()> {
        let parallel = self.counts().preload_parallel;
        let producer = self.producer();
        let mut tasks = tokio::task::JoinSet::new();
        for lane in 0..parallel {
            let messages: Vec<Message> = (lane..n)
                .step_by(parallel as usize)
                .map(|seq| self.message(seq))
                .collect();
            let (producer, q) = (producer.clone(), q.clone());
            tasks.spawn(async move {
                for m in messages {
                    producer.publish(&q, &m).await?;
                }
                Ok::<(), remora_queues::broker::BrokerError>(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        Ok(())
    }

    /// Publishes `n` messages to `q` at `rate` per second, each when due
    /// (stamped then), none waiting for the one before.
    async fn paced(&self, q: &QueueName, n: u64, rate: u64) -> Result<()> {
        let producer = self.producer();
        let mut tasks = tokio::task::JoinSet::new();
        let start = Instant::now();
        for seq in 0..n {
            let due = start + Duration::from_nanos(seq * 1_000_000_000 / rate);
            tokio::time::sleep_until(due.into()).await;
            let m = self.message(seq);
            let (producer, q) = (producer.clone(), q.clone());
            tasks.spawn(async move { producer.publish(&q, &m).await });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        Ok(())
    }

    async fn consumer(&self, group: &str, q: &QueueName) -> Result<Box<dyn Consumer>> {
        let broker = self.broker(group).await?;
        Ok(broker.consume(q, self.counts().prefetch).await?)
    }

    /// A router on `original` with session `alice` (`x-user = ^alice$`),
    /// running, and a consumer of each temporary queue (each in a group of
    /// its own).
    async fn router(
        &self,
        original: &QueueName,
    ) -> Result<(
        Vec<Box<dyn Consumer>>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    )> {
        let group = unique("split");
        let (task, api) = RouterTask::start(
            self.broker(&group).await?,
            Arc::new(MemoryStore::default()),
            original.clone(),
            BTreeMap::new(),
            RouterConfig {
                prefetch: self.counts().prefetch,
                ..RouterConfig::default()
            },
        )
        .await?;
        let cancel = CancellationToken::new();
        let running = tokio::spawn({
            let cancel = cancel.clone();
            async move {
                task.run(cancel).await;
            }
        });
        let alice = api
            .add_session(
                SplitSessionKey::new("alice")?,
                MessageFilter::new([("x-user", "^alice$")])?,
            )
            .await?;
        let consumers = vec![
            self.consumer(&unique("read"), &alice).await?,
            self.consumer(&unique("read"), api.workload_queue()).await?,
        ];
        Ok((consumers, cancel, running))
    }

    async fn throughput(&self, routed: bool) -> Result<Sample> {
        let n = self.counts().throughput;
        let original = self.declare("tput").await?;
        self.preload(&original, n).await?;
        let start = Instant::now();
        let (latencies, last) = if routed {
            let (consumers, cancel, running) = self.router(&original).await?;
            let r = receive_from(consumers, n, self.epoch).await?;
            cancel.cancel();
            running.await?;
            r
        } else {
            let consumer = self.consumer(&unique("direct"), &original).await?;
            receive_from(vec![consumer], n, self.epoch).await?
        };
        Ok(sample(latencies, n, last - start))
    }

    async fn latency(&self, routed: bool) -> Result<Sample> {
        let Counts { latency, rate, .. } = self.counts();
        let original = self.declare("lat").await?;
        let (consumers, stop) = if routed {
            let (consumers, cancel, running) = self.router(&original).await?;
            (consumers, Some((cancel, running)))
        } else {
            let consumer = self.consumer(&unique("direct"), &original).await?;
            (vec![consumer], None)
        };
        let start = Instant::now();
        let (received, published) = tokio::join!(
            receive_from(consumers, latency, self.epoch),
            self.paced(&original, latency, rate)
        );
        published?;
        let (latencies, last) = received?;
        if let Some((cancel, running)) = stop {
            cancel.cancel();
            running.await?;
        }
        Ok(sample(latencies, latency, last - start))
    }
}

async fn kafka(tansu: &tansu::Tansu, group: &str) -> Result<Arc<KafkaBroker>> {
    Ok(Arc::new(
        KafkaBroker::connect(KafkaConfig::new(&tansu.addr, group)).await?,
    ))
}

/// Runs the measurements on `which` and prints its table.
pub async fn bench(which: Which) -> Result<()> {
    let seam = Seam::start(which).await?;
    let counts = seam.counts();
    let load_before = load();
    let mut tput: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
    let mut lat: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
    let name = seam.title();
    for run in 0..RUNS {
        for (i, routed) in [false, true].into_iter().enumerate() {
            let how = if routed { "router" } else { "direct" };
            let t = tokio::time::timeout(LIMIT, seam.throughput(routed))
                .await
                .map_err(|_| format!("{name} throughput {how}: over {LIMIT:?}"))??;
            eprintln!("{name} run {run} throughput {how}: {:.0} msg/s", t.per_s);
            tput[i].push(t);
            let l = tokio::time::timeout(LIMIT, seam.latency(routed))
                .await
                .map_err(|_| format!("{name} latency {how}: over {LIMIT:?}"))??;
            eprintln!(
                "{name} run {run} latency {how}: p50 {} us, p99 {} us",
                l.p50_us, l.p99_us
            );
            lat[i].push(l);
        }
    }
    println!("## Queue splitting ({name})");
    println!();
    println!(
        "remora-bench-queues: {RUNS} runs alternating, medians; {} queued messages for \
         throughput, {} at {}/s for latency; {BODY}-byte bodies, prefetch {}; router: one \
         session taking half, the workload the rest; load average before {load_before}, \
         after {}.",
        counts.throughput,
        counts.latency,
        counts.rate,
        counts.prefetch,
        load()
    );
    println!();
    print_table(&tput, &lat);
    Ok(())
}
