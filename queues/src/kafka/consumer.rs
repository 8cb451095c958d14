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

/// The acknowledgement book of one partition: Kafka commits one offset per
/// partition (everything below it is done), while the router finishes
/// messages of different keys out of order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct PartitionAcks {
    /// Offsets handed out and not acked (requeued ones stay here).
    outstanding: BTreeSet<i64>,
    /// One past the highest offset handed out. A rebalance makes the group
    /// start again at its committed offset; what lies below this was handed
    /// out already (in flight or acked) and is skipped.
    delivered: Option<i64>,
    /// One past the highest offset acked.
    acked: i64,
    /// The offset last committed.
    committed: Option<i64>,
}

impl PartitionAcks {
    /// Records that `offset` was read; `false` if it was handed out before
    /// (a re-read after a rebalance): skip it.
    pub(crate) fn deliver(&mut self, offset: i64) -> bool {
        if self.delivered.is_some_and(|hi| offset < hi) {
            return false;
        }
        self.delivered = Some(offset + 1);
        self.outstanding.insert(offset);
        true
    }

    /// Records that `offset` is done; the offset to commit now, if the
    /// commit moves: below the lowest offset still outstanding, else one
    /// past the highest acked.
    pub(crate) fn ack(&mut self, offset: i64) -> Option<i64> {
        self.outstanding.remove(&offset);
        self.acked = self.acked.max(offset + 1);
        let at = self.outstanding.first().copied().unwrap_or(self.acked);
        (self.committed.is_none_or(|c| c < at)).then_some(at)
    }

    /// Records a commit that succeeded.
    pub(crate) fn committed(&mut self, at: i64) {
        self.committed = Some(self.committed.map_or(at, |c| c.max(at)));
    }
}

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
    /// Per partition: what was handed out, acked and committed.
    partitions: BTreeMap<i32, PartitionAcks>,
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
            partitions: BTreeMap::new(),
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
            let acks = self.partitions.entry(message.partition()).or_default();
            if acks.deliver(message.offset()) {
                return Ok(delivery(&message));
            }
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
        let acks = self.partitions.entry(partition).or_default();
        let Some(commit_at) = acks.ack(offset) else {
            return Ok(());
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic.0, partition, Offset::Offset(commit_at))
            .map_err(|e| op(&self.topic, "ack", e))?;
        let consumer = self.consumer.clone();
        blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(|e: KafkaError| op(&self.topic, "ack", e))?;
        self.partitions
            .entry(partition)
            .or_default()
            .committed(commit_at);
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
