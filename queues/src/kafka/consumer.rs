//! [`KafkaConsumer`]: one topic read in the split's consumer group, with
//! queue-like acknowledgements (see the module docs of [`super`]).

use super::{KafkaConfig, KafkaNative, REQUEST_TIMEOUT, blocking};
use crate::broker::{BrokerError, BrokerKind, Consumer, Delivery, Message, QueueName, Result};
use async_trait::async_trait;
use rdkafka::Message as _;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// How long [`Consumer::next_within`] keeps waiting, at most, for a group
/// assignment or a fetch while the topic still has unread messages.
pub const CATCH_UP_LIMIT: Duration = Duration::from_secs(120);

/// Which message a [`Delivery`] was.
#[derive(Debug, Clone, Copy)]
struct KafkaToken {
    partition: i32,
    offset: i64,
}

/// A consumer of one topic in the split's group.
pub struct KafkaConsumer {
    consumer: Arc<StreamConsumer>,
    topic: QueueName,
    config: KafkaConfig,
    /// Per partition: offsets delivered and neither acked nor given up.
    outstanding: BTreeMap<i32, BTreeSet<i64>>,
    /// Per partition: one past the highest offset delivered. A rebalance
    /// makes the group start again at its committed offset; messages below
    /// this were handed out already (in flight or acked) and are skipped.
    delivered: BTreeMap<i32, i64>,
    /// Per partition: one past the highest offset acked.
    acked: BTreeMap<i32, i64>,
    /// Per partition: the offset last committed.
    committed: BTreeMap<i32, i64>,
    /// Deliveries given back with [`Consumer::requeue`], handed out again
    /// first.
    again: VecDeque<Delivery>,
}

impl fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("topic", &self.topic)
            .field("group", &self.config.group)
            .finish_non_exhaustive()
    }
}

impl KafkaConsumer {
    /// Joins the split's group on `topic`.
    pub(super) fn subscribe(
        config: &KafkaConfig,
        topic: &QueueName,
        prefetch: u16,
    ) -> Result<Self> {
        let consumer: StreamConsumer = config
            .client()
            .set("group.id", &config.group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // Keep what librdkafka fetches ahead small, like a prefetch.
            .set("queued.min.messages", prefetch.max(1).to_string())
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .create()
            .map_err(|e| config.connection("creating a consumer", &e))?;
        consumer
            .subscribe(&[topic.0.as_str()])
            .map_err(|e| op(topic, "subscribe", e))?;
        Ok(Self {
            consumer: Arc::new(consumer),
            topic: topic.clone(),
            config: config.clone(),
            outstanding: BTreeMap::new(),
            delivered: BTreeMap::new(),
            acked: BTreeMap::new(),
            committed: BTreeMap::new(),
            again: VecDeque::new(),
        })
    }

    /// The next message not handed out before. Cancel safe: nothing is
    /// awaited after a message is taken from librdkafka.
    async fn fresh(&mut self) -> Result<Delivery> {
        loop {
            let message = self
                .consumer
                .recv()
                .await
                .map_err(|e| op(&self.topic, "consume", e))?;
            let (partition, offset) = (message.partition(), message.offset());
            if self
                .delivered
                .get(&partition)
                .is_some_and(|hi| offset < *hi)
            {
                continue;
            }
            self.delivered.insert(partition, offset + 1);
            self.outstanding
                .entry(partition)
                .or_default()
                .insert(offset);
            return Ok(delivery(&message));
        }
    }

    /// Whether every assigned partition has been read to its end (the
    /// group's committed offset where nothing was read yet). `false` while
    /// the group has assigned nothing yet.
    async fn caught_up(&self) -> Result<bool> {
        let consumer = self.consumer.clone();
        let topic = self.topic.0.clone();
        blocking(move || {
            let assignment = consumer.assignment()?;
            if assignment.count() == 0 {
                return Ok(false);
            }
            let position = consumer.position()?;
            let committed = consumer.committed_offsets(assignment.clone(), REQUEST_TIMEOUT)?;
            for element in assignment.elements() {
                let p = element.partition();
                let (low, high) = consumer.fetch_watermarks(&topic, p, REQUEST_TIMEOUT)?;
                let read = |list: &TopicPartitionList| match list
                    .find_partition(&topic, p)
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(o)) => Some(o),
                    _ => None,
                };
                let at = read(&position)
                    .or_else(|| read(&committed))
                    .unwrap_or(low)
                    .max(low);
                if at < high {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .await
        .map_err(|e| op(&self.topic, "offsets", e))
    }
}

fn op(topic: &QueueName, op: &'static str, e: impl fmt::Display) -> BrokerError {
    BrokerError::Operation {
        kind: BrokerKind::Kafka,
        queue: topic.clone(),
        op,
        message: e.to_string(),
    }
}

/// The seam's view of a message read from Kafka.
fn delivery(message: &BorrowedMessage<'_>) -> Delivery {
    let mut text = BTreeMap::new();
    let mut raw = Vec::new();
    if let Some(headers) = message.headers() {
        for h in headers.iter() {
            if let Some(v) = h.value
                && let Ok(s) = std::str::from_utf8(v)
            {
                text.insert(h.key.to_owned(), s.to_owned());
            }
            raw.push((h.key.to_owned(), h.value.map(<[u8]>::to_vec)));
        }
    }
    let key = message.key().map(<[u8]>::to_vec);
    Delivery {
        message: Message {
            headers: text,
            body: message.payload().unwrap_or_default().to_vec(),
            order_key: key
                .as_deref()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            native: Box::new(KafkaNative {
                key,
                headers: raw,
                partition: message.partition(),
                timestamp: message.timestamp().to_millis(),
            }),
        },
        redelivered: false,
        token: Box::new(KafkaToken {
            partition: message.partition(),
            offset: message.offset(),
        }),
    }
}

fn token(delivery: &Delivery, topic: &QueueName) -> Result<KafkaToken> {
    delivery
        .token
        .downcast_ref::<KafkaToken>()
        .copied()
        .ok_or_else(|| op(topic, "ack", "not a delivery of this consumer"))
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn next(&mut self) -> Result<Option<Delivery>> {
        if let Some(d) = self.again.pop_front() {
            return Ok(Some(d));
        }
        self.fresh().await.map(Some)
    }

    /// Waits up to `wait` for a message; when none came, `None` only once
    /// the group has an assignment and every assigned partition is read to
    /// its end (joining a group and the first fetch take longer than a
    /// short `wait`), or after [`CATCH_UP_LIMIT`].
    async fn next_within(&mut self, wait: Duration) -> Result<Option<Delivery>> {
        if let Some(d) = self.again.pop_front() {
            return Ok(Some(d));
        }
        let limit = tokio::time::Instant::now() + CATCH_UP_LIMIT;
        loop {
            match tokio::time::timeout(wait, self.fresh()).await {
                Ok(d) => return d.map(Some),
                Err(_) => {
                    if self.caught_up().await? || tokio::time::Instant::now() >= limit {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Commits, on the message's partition, the offset below which every
    /// delivered message is acked.
    async fn ack(&mut self, delivery: Delivery) -> Result<()> {
        let KafkaToken { partition, offset } = token(&delivery, &self.topic)?;
        let pending = self.outstanding.entry(partition).or_default();
        pending.remove(&offset);
        let acked = self.acked.entry(partition).or_insert(0);
        *acked = (*acked).max(offset + 1);
        let commit_at = pending.first().copied().unwrap_or(*acked);
        if self
            .committed
            .get(&partition)
            .is_some_and(|c| *c >= commit_at)
        {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic.0, partition, Offset::Offset(commit_at))
            .map_err(|e| op(&self.topic, "ack", e))?;
        let consumer = self.consumer.clone();
        blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(|e: KafkaError| op(&self.topic, "ack", e))?;
        self.committed.insert(partition, commit_at);
        Ok(())
    }

    /// Hands the message out again (before any new one); its offset stays
    /// uncommitted until it is acked.
    async fn requeue(&mut self, mut delivery: Delivery) -> Result<()> {
        token(&delivery, &self.topic)?;
        delivery.redelivered = true;
        self.again.push_back(delivery);
        Ok(())
    }
}
