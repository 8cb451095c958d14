//! Kafka (and Kafka-protocol brokers: tansu in tests, Redpanda) behind the
//! [`Broker`] seam, with `rdkafka` (librdkafka, built from the source the
//! crate ships).
//!
//! # Queues on a log
//! A Kafka topic is a log, not a queue: reading a message does not remove
//! it. The seam's queue operations map onto one consumer group, the
//! *split's group* ([`KafkaConfig::group`]), normally the group the
//! workload itself consumes with:
//!
//! * what a queue "holds" ([`Broker::depth`]) is that group's lag on the
//!   topic: the messages after its committed offsets;
//! * [`Broker::consume`] joins the group on the topic and starts at its
//!   committed offsets (the earliest message where it has none);
//! * [`Consumer::ack`] commits, per partition, the offset below which every
//!   delivered message is acknowledged (messages of different keys finish
//!   out of order; the commit never passes one still in flight);
//! * [`Broker::delete`] refuses while the group still lags on the topic, so
//!   a temporary topic is never deleted with messages nobody took.
//!
//! So the router consuming the original topic in the workload's group takes
//! over exactly where the workload stopped, and when the split ends the
//! workload resumes where the router stopped: no message is read twice or
//! skipped across the switch.
//!
//! # Order
//! A message keeps its key, headers and timestamp, and is produced to the
//! partition of the same number it came from (the temporary topics copy the
//! original's partition count), so each key stays on one partition and, with
//! the router forwarding one message of a key after the other, per-key order
//! holds. A message from another broker is partitioned by its key.

mod consumer;

pub use consumer::KafkaConsumer;

use crate::broker::{
    Broker, BrokerError, BrokerKind, Consumer, Message, QueueDepth, QueueName, QueueProps, Result,
};
use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The property of [`QueueProps`] that holds a topic's partition count.
pub const PARTITIONS_PROP: &str = "partitions";
/// The property of [`QueueProps`] that holds a topic's replication factor.
pub const REPLICATION_PROP: &str = "replication.factor";

/// How long one metadata, offset or admin request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and as whom to reach Kafka.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `host:port[,host:port]`.
    pub bootstrap_servers: String,
    /// The split's consumer group (see the module docs): the group the
    /// workload consumes with.
    pub group: String,
    /// SASL PLAIN user and password, if the broker wants them.
    pub sasl: Option<(String, String)>,
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("group", &self.group)
            .field("sasl_user", &self.sasl.as_ref().map(|(u, _)| u))
            .finish_non_exhaustive()
    }
}

impl KafkaConfig {
    /// The librdkafka settings every client of this config shares.
    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", "remora-queues")
            // Never create a topic by asking about it.
            .set("allow.auto.create.topics", "false")
            .set("log_level", "3");
        if let Some((user, password)) = &self.sasl {
            c.set("security.protocol", "SASL_PLAINTEXT")
                .set("sasl.mechanisms", "PLAIN")
                .set("sasl.username", user)
                .set("sasl.password", password);
        }
        c
    }

    /// A consumer in the split's group that has not subscribed: offsets
    /// and metadata only.
    fn group_client(&self) -> Result<BaseConsumer> {
        self.client()
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| self.connection("creating a client", &e))
    }

    fn connection(&self, what: &str, e: &KafkaError) -> BrokerError {
        BrokerError::Connection {
            kind: BrokerKind::Kafka,
            endpoint: self.bootstrap_servers.clone(),
            message: format!("{what}: {e}"),
        }
    }
}

/// What [`Message::native`] holds for a message read from Kafka.
#[derive(Debug, Clone)]
pub(crate) struct KafkaNative {
    /// The key, as bytes (the order key is its text form).
    pub key: Option<Vec<u8>>,
    /// Every header, in order, with its raw value.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The partition it was read from.
    pub partition: i32,
    /// Its timestamp (ms since the epoch), if it had one.
    pub timestamp: Option<i64>,
}

/// A Kafka cluster.
pub struct KafkaBroker {
    config: KafkaConfig,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// Offsets and metadata, in the split's group.
    offsets: Arc<BaseConsumer>,
}

impl fmt::Debug for KafkaBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaBroker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl KafkaBroker {
    /// Connects (checks the cluster answers a metadata request).
    ///
    /// # Errors
    /// [`BrokerError::Connection`] if the clients cannot be made or the
    /// cluster does not answer within [`REQUEST_TIMEOUT`].
    pub async fn connect(config: KafkaConfig) -> Result<Self> {
        let producer: FutureProducer = config
            .client()
            .set("acks", "all")
            .set("enable.idempotence", "false")
            .set("message.timeout.ms", "60000")
            .set("linger.ms", "1")
            .create()
            .map_err(|e| config.connection("creating a producer", &e))?;
        let admin: AdminClient<DefaultClientContext> = config
            .client()
            .create()
            .map_err(|e| config.connection("creating an admin client", &e))?;
        let offsets = Arc::new(config.group_client()?);
        let probe = offsets.clone();
        blocking(move || probe.fetch_metadata(None, REQUEST_TIMEOUT))
            .await
            .map_err(|e| config.connection("asking for the cluster's metadata", &e))?;
        Ok(Self {
            config,
            producer,
            admin,
            offsets,
        })
    }

    /// The config it was made with.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    fn op(&self, queue: &QueueName, op: &'static str, e: impl fmt::Display) -> BrokerError {
        BrokerError::Operation {
            kind: BrokerKind::Kafka,
            queue: queue.clone(),
            op,
            message: e.to_string(),
        }
    }

    /// The partition count and replication factor of `topic`.
    async fn layout(&self, topic: &QueueName) -> Result<(usize, usize)> {
        let offsets = self.offsets.clone();
        let name = topic.0.clone();
        let metadata = blocking(move || offsets.fetch_metadata(Some(&name), REQUEST_TIMEOUT))
            .await
            .map_err(|e| self.config.connection(&format!("metadata of {topic}"), &e))?;
        let Some(t) = metadata.topics().iter().find(|t| t.name() == topic.0) else {
            return Err(no_topic(topic));
        };
        if let Some(err) = t.error() {
            let code = RDKafkaErrorCode::from(err);
            if code == RDKafkaErrorCode::UnknownTopicOrPartition
                || code == RDKafkaErrorCode::UnknownTopic
            {
                return Err(no_topic(topic));
            }
            return Err(self.op(topic, "metadata", code));
        }
        if t.partitions().is_empty() {
            return Err(no_topic(topic));
        }
        let replication = t
            .partitions()
            .iter()
            .map(|p| p.replicas().len())
            .max()
            .unwrap_or(1)
            .max(1);
        Ok((t.partitions().len(), replication))
    }

    /// Per partition of `topic`: the split group's committed offset (or
    /// the low watermark where it has none) and the high watermark.
    async fn positions(&self, topic: &QueueName) -> Result<Vec<(i64, i64)>> {
        let (partitions, _) = self.layout(topic).await?;
        let offsets = self.offsets.clone();
        let name = topic.0.clone();
        blocking(
            move || -> std::result::Result<Vec<(i64, i64)>, KafkaError> {
                let mut tpl = TopicPartitionList::new();
                for p in 0..partitions {
                    tpl.add_partition(&name, p as i32);
                }
                let committed = offsets.committed_offsets(tpl, REQUEST_TIMEOUT)?;
                let mut out = Vec::new();
                for p in 0..partitions {
                    let (low, high) = offsets.fetch_watermarks(&name, p as i32, REQUEST_TIMEOUT)?;
                    let at = match committed
                        .find_partition(&name, p as i32)
                        .map(|e| e.offset())
                    {
                        Some(Offset::Offset(o)) => o.max(low),
                        _ => low,
                    };
                    out.push((at, high));
                }
                Ok(out)
            },
        )
        .await
        .map_err(|e| self.op(topic, "offsets", e))
    }
}

fn no_topic(topic: &QueueName) -> BrokerError {
    BrokerError::NoQueue {
        kind: BrokerKind::Kafka,
        queue: topic.clone(),
    }
}

/// Runs a blocking librdkafka call off the runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, KafkaError> + Send + 'static,
) -> std::result::Result<T, KafkaError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => {
            tracing::warn!(error = %e, "a librdkafka call panicked");
            Err(KafkaError::Canceled)
        }
    }
}

#[async_trait]
impl Broker for KafkaBroker {
    fn kind(&self) -> BrokerKind {
        BrokerKind::Kafka
    }

    async fn inspect(&self, queue: &QueueName) -> Result<QueueProps> {
        let (partitions, replication) = self.layout(queue).await?;
        Ok(QueueProps {
            name: Some(queue.clone()),
            props: BTreeMap::from([
                (PARTITIONS_PROP.to_owned(), partitions.to_string()),
                (REPLICATION_PROP.to_owned(), replication.to_string()),
            ]),
        })
    }

    async fn create_like(&self, like: &QueueProps, name: &QueueName) -> Result<()> {
        let number = |key: &str| -> Result<i32> {
            like.props
                .get(key)
                .map_or(Ok(1), |v| v.parse())
                .map_err(|_| self.op(name, "create topic", format!("bad {key} in {like:?}")))
        };
        let partitions = number(PARTITIONS_PROP)?;
        let replication = number(REPLICATION_PROP)?;
        let topic = NewTopic::new(&name.0, partitions, TopicReplication::Fixed(replication));
        let results = self
            .admin
            .create_topics(
                [&topic],
                &AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT)),
            )
            .await
            .map_err(|e| self.op(name, "create topic", e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(self.op(name, "create topic", code)),
            }
        }
        // Metadata lags behind creation: wait until the topic shows all its
        // partitions, so a consume or publish right after finds them.
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            match self.layout(name).await {
                Ok((n, _)) if n as i32 >= partitions => return Ok(()),
                Ok(_) | Err(BrokerError::NoQueue { .. })
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok((n, _)) => {
                    return Err(self.op(
                        name,
                        "create topic",
                        format!("it has {n} partitions, not {partitions}"),
                    ));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Refuses (op `delete`) while the split's group lags on the topic.
    async fn delete(&self, name: &QueueName) -> Result<()> {
        let depth = match self.depth(name).await {
            Ok(d) => d,
            Err(BrokerError::NoQueue { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        if depth.ready > 0 {
            return Err(self.op(
                name,
                "delete",
                format!(
                    "not deleted: group {} has not taken {} of its messages",
                    self.config.group, depth.ready
                ),
            ));
        }
        let results = self
            .admin
            .delete_topics(
                &[name.0.as_str()],
                &AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT)),
            )
            .await
            .map_err(|e| self.op(name, "delete", e))?;
        for result in results {
            match result {
                Ok(_)
                | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition))
                | Err((_, RDKafkaErrorCode::UnknownTopic)) => {}
                Err((_, code)) => return Err(self.op(name, "delete", code)),
            }
        }
        Ok(())
    }

    /// The split group's lag; `unacked` is unknown (Kafka does not say what
    /// a consumer holds uncommitted).
    async fn depth(&self, name: &QueueName) -> Result<QueueDepth> {
        let positions = self.positions(name).await?;
        Ok(QueueDepth {
            ready: positions
                .iter()
                .map(|(at, high)| (high - at).max(0) as u64)
                .sum(),
            unacked: None,
        })
    }

    async fn consume(&self, name: &QueueName, prefetch: u16) -> Result<Box<dyn Consumer>> {
        self.layout(name).await?;
        let consumer = KafkaConsumer::subscribe(&self.config, name, prefetch)?;
        Ok(Box::new(consumer))
    }

    async fn publish(&self, name: &QueueName, message: &Message) -> Result<()> {
        let native = message.native.downcast_ref::<KafkaNative>();
        let mut headers = OwnedHeaders::new();
        let key: Option<Vec<u8>>;
        let mut partition = None;
        let mut timestamp = None;
        match native {
            Some(n) => {
                for (k, v) in &n.headers {
                    headers = headers.insert(Header {
                        key: k,
                        value: v.as_deref(),
                    });
                }
                key = n.key.clone();
                partition = Some(n.partition);
                timestamp = n.timestamp;
            }
            None => {
                for (k, v) in &message.headers {
                    headers = headers.insert(Header {
                        key: k,
                        value: Some(v.as_bytes()),
                    });
                }
                key = message.order_key.clone().map(String::into_bytes);
            }
        }
        if let Some(p) = partition {
            // Only if the destination has that partition (a copy has).
            let (partitions, _) = self.layout(name).await?;
            if p as usize >= partitions {
                partition = None;
            }
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&name.0)
            .payload(&message.body[..])
            .headers(headers);
        if let Some(k) = &key {
            record = record.key(&k[..]);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if let Some(t) = timestamp {
            record = record.timestamp(t);
        }
        self.producer
            .send(record, REQUEST_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|(e, _)| match e.rdkafka_error_code() {
                Some(RDKafkaErrorCode::UnknownTopicOrPartition)
                | Some(RDKafkaErrorCode::UnknownTopic) => no_topic(name),
                _ => self.op(name, "publish", e),
            })
    }
}

#[cfg(test)]
mod tests;
