//! Kafka-protocol brokers (Apache Kafka, Redpanda, tansu) behind the
//! [`Broker`] seam, on the `kafka-protocol` crate's message types with a
//! small client of our own (`conn`, `client`).
//!
//! # Why not a client crate
//! `rdkafka` builds librdkafka (C, minutes of CI per cold build) and
//! `rskafka` has neither consumer-group offsets nor topic configs, which the
//! seam needs (depth is a group's lag; a copy keeps the original's configs).
//! `kafka-protocol` gives every request and response type and the record
//! batch codec, pure Rust; what is left is framing, version negotiation and
//! finding leaders and the coordinator, a few hundred lines.
//!
//! # A topic as a queue
//! A topic is a log: reading does not remove. The seam's queue operations
//! are defined by one consumer group, the broker's **group**
//! ([`KafkaConfig::group`]: the group the workload consumes with):
//!
//! * `consume` reads every partition from the group's committed offset (the
//!   earliest offset where there is none), and `ack` commits, per
//!   partition, the offset below which every delivered message is acked
//!   (the commit never passes a message in flight);
//! * `requeue` hands the message out again from the consumer;
//! * `depth` is the group's lag (high watermark minus committed offset,
//!   summed over partitions);
//! * `delete` is refused while the group lags on the topic.
//!
//! Every consumer is a **member** of the group (`group`: JoinGroup,
//! SyncGroup, Heartbeat, LeaveGroup), subscribed to its one topic, and
//! commits with its generation id and member id: Apache Kafka refuses a
//! commit from outside a group that has members, and the workload's pods are
//! members of this group throughout a split. See docs/queues.md for why the
//! router reads the original in the workload's group rather than one of its
//! own.
//!
//! # Order
//! A message's [`Message::order_key`] is its partition (`p3`): the router
//! forwards one partition's messages one after the other, and a publish goes
//! to the partition of the same number (the copies have the original's
//! partition count), so each partition's order, and with it each key's, is
//! kept.
//!
//! # What is copied
//! [`Broker::inspect`] reports `partitions`, `replication.factor` and every
//! topic config DescribeConfigs returns that is neither read-only nor
//! sensitive (`config:NAME`), whatever its source: the copy then states
//! explicitly what the original has, set on the topic or inherited from the
//! broker (tansu 0.6 reports a topic's own settings with source
//! `DEFAULT_CONFIG`, so the source cannot tell them apart there).
//! [`Broker::create_like`] creates the copy with them.
//!
//! # Limits
//! Record batches compressed with gzip or snappy are read (pure Rust
//! codecs); lz4 and zstd ones are refused with an error naming the codec.
//! Forwards are sent uncompressed. Transactions: records are read
//! uncommitted (aborted transactional records are forwarded too); control
//! records are skipped. A header key that appears twice in one record keeps
//! its last value.

mod client;
mod conn;
mod consumer;
mod group;

pub use consumer::KafkaConsumer;
pub use group::{Generation, GroupDescription};

use crate::broker::{
    Broker, BrokerError, BrokerKind, Consumer, Message, QueueDepth, QueueName, QueueProps, Result,
};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use client::{
    COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, Cluster, CoordError,
    LEADER_NOT_AVAILABLE, NOT_COORDINATOR, NOT_LEADER_OR_FOLLOWER, TOPIC_ALREADY_EXISTS,
    UNKNOWN_TOPIC_OR_PARTITION, code_text,
};
use conn::ConnError;
use indexmap::IndexMap;
use kafka_protocol::messages::{
    CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest, GroupId, ListOffsetsRequest,
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, ProduceRequest, TopicName,
    create_topics_request::{CreatableTopic, CreatableTopicConfig},
    describe_configs_request::DescribeConfigsResource,
    list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
    offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic},
    offset_fetch_request::OffsetFetchRequestTopic,
    produce_request::{PartitionProduceData, TopicProduceData},
};
use kafka_protocol::protocol::{Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The key of the partition count in [`QueueProps::props`].
pub const PARTITIONS_PROP: &str = "partitions";
/// The key of the replication factor in [`QueueProps::props`].
pub const REPLICATION_PROP: &str = "replication.factor";
/// The prefix of topic configs in [`QueueProps::props`].
pub const CONFIG_PREFIX: &str = "config:";

/// How long the broker may take to create or delete a topic, or to have a
/// produce replicated.
const BROKER_TIMEOUT_MS: i32 = 30_000;
/// Attempts at a request whose coordinator or leader moved.
const ATTEMPTS: u32 = 5;
/// The pause between those attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// DescribeConfigs' resource type of a topic.
const TOPIC_RESOURCE: i8 = 2;
/// ListOffsets' timestamp for the latest offset (the high watermark).
const LATEST: i64 = -1;
/// ListOffsets' timestamp for the earliest offset (the log start).
const EARLIEST: i64 = -2;

/// Where to reach the cluster and which group defines "consumed".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port` each.
    pub bootstrap: Vec<String>,
    /// The consumer group whose committed offsets say what has been
    /// consumed (the workload's group).
    pub group: String,
    /// How long one fetch waits for records at most.
    pub fetch_wait: Duration,
    /// The group's session timeout for our members: a member that sends
    /// no heartbeat for this long is dropped from the group (the broker
    /// bounds it: 6 s to 30 min by default).
    pub session_timeout: Duration,
    /// How long the group waits for its members to rejoin in a rebalance.
    pub rebalance_timeout: Duration,
    /// How often our members heartbeat (a rebalance reaches a member at
    /// its next heartbeat).
    pub heartbeat_interval: Duration,
}

/// A commit that the group refused or that failed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The group says the generation is over (`REBALANCE_IN_PROGRESS`,
    /// `ILLEGAL_GENERATION`, `UNKNOWN_MEMBER_ID`, `FENCED_INSTANCE_ID`;
    /// the Kafka error code).
    #[error("the group's generation is over: {}", code_text(*.0))]
    Stale(i16),
    /// Any other refusal or failure.
    #[error(transparent)]
    Failed(#[from] BrokerError),
}

impl KafkaConfig {
    /// A config for `bootstrap` (comma-separated `host:port`s; a
    /// `kafka://` or `tcp://` prefix is dropped) and `group`.
    pub fn new(bootstrap: &str, group: impl Into<String>) -> Self {
        let bootstrap = bootstrap
            .split(',')
            .map(|a| {
                let a = a.trim();
                let a = a
                    .strip_prefix("kafka://")
                    .or_else(|| a.strip_prefix("tcp://"))
                    .unwrap_or(a);
                a.trim_end_matches('/').to_owned()
            })
            .filter(|a| !a.is_empty())
            .collect();
        Self {
            bootstrap,
            group: group.into(),
            fetch_wait: Duration::from_millis(500),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(1),
        }
    }
}

/// What a Kafka delivery carries besides headers and body, to publish it
/// again unchanged.
#[derive(Debug, Clone)]
pub struct KafkaNative {
    /// The partition it was read from.
    pub partition: i32,
    /// The record's key.
    pub key: Option<Bytes>,
    /// Every header, value as bytes (`None`: a null value).
    pub headers: Vec<(String, Option<Bytes>)>,
    /// The record's timestamp (ms since the epoch).
    pub timestamp: i64,
    /// The record had a null value (a tombstone), not an empty one.
    pub null_value: bool,
}

/// A Kafka cluster, one consumer group. Cheap to share.
pub struct KafkaBroker {
    cluster: Arc<Cluster>,
    config: KafkaConfig,
    /// Partition choice for messages from another broker without a key.
    round_robin: AtomicU32,
}

impl fmt::Debug for KafkaBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaBroker")
            .field("bootstrap", &self.config.bootstrap)
            .field("group", &self.config.group)
            .finish_non_exhaustive()
    }
}

impl KafkaBroker {
    /// A broker for `config`; connects on first use, except for one
    /// metadata request now, so a wrong address fails here.
    ///
    /// # Errors
    /// [`BrokerError::Connection`] when no bootstrap broker answers.
    pub async fn connect(config: KafkaConfig) -> Result<Self> {
        let cluster = Arc::new(Cluster::new(config.bootstrap.clone()));
        let broker = Self {
            cluster,
            config,
            round_robin: AtomicU32::new(0),
        };
        broker
            .cluster
            .refresh(&[])
            .await
            .map_err(|e| broker.conn_err(e))?;
        Ok(broker)
    }

    /// The consumer group this broker commits and measures lag in.
    pub fn group(&self) -> &str {
        &self.config.group
    }

    fn conn_err(&self, e: ConnError) -> BrokerError {
        BrokerError::Connection {
            kind: BrokerKind::Kafka,
            endpoint: self.cluster.endpoint(),
            message: e.to_string(),
        }
    }

    fn op_err(queue: &QueueName, op: &'static str, message: impl Into<String>) -> BrokerError {
        BrokerError::Operation {
            kind: BrokerKind::Kafka,
            queue: queue.clone(),
            op,
            message: message.into(),
        }
    }

    fn no_queue(queue: &QueueName) -> BrokerError {
        BrokerError::NoQueue {
            kind: BrokerKind::Kafka,
            queue: queue.clone(),
        }
    }

    /// The topic's layout, or [`BrokerError::NoQueue`].
    async fn layout(&self, topic: &QueueName, fresh: bool) -> Result<client::TopicLayout> {
        self.cluster
            .layout(&topic.0, fresh)
            .await
            .map_err(|e| self.conn_err(e))?
            .ok_or_else(|| Self::no_queue(topic))
    }

    /// Low (`EARLIEST`) or high (`LATEST`) offsets of every partition.
    async fn list_offsets(
        &self,
        topic: &QueueName,
        layout: &client::TopicLayout,
        at: i64,
    ) -> Result<BTreeMap<i32, i64>> {
        // Grouped by leader: one request each.
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for (p, leader) in &layout.leaders {
            by_leader.entry(*leader).or_default().push(*p);
        }
        let mut out = BTreeMap::new();
        for (leader, parts) in by_leader {
            let conn = self
                .cluster
                .broker(leader)
                .await
                .map_err(|e| self.conn_err(e))?;
            let req = ListOffsetsRequest::default()
                .with_replica_id(client::broker_id(-1))
                .with_topics(vec![
                    ListOffsetsTopic::default()
                        .with_name(topic_name(topic))
                        .with_partitions(
                            parts
                                .iter()
                                .map(|p| {
                                    ListOffsetsPartition::default()
                                        .with_partition_index(*p)
                                        .with_timestamp(at)
                                })
                                .collect(),
                        ),
                ]);
            let resp = self
                .cluster
                .send_on(&conn, &req, 1, 7)
                .await
                .map_err(|e| self.conn_err(e))?;
            for t in resp.topics {
                for p in t.partitions {
                    if p.error_code == UNKNOWN_TOPIC_OR_PARTITION {
                        self.cluster.forget_topic(&topic.0).await;
                        return Err(Self::no_queue(topic));
                    }
                    if p.error_code != 0 {
                        self.cluster.forget_topic(&topic.0).await;
                        return Err(Self::op_err(
                            topic,
                            "list offsets",
                            format!(
                                "partition {}: {}",
                                p.partition_index,
                                code_text(p.error_code)
                            ),
                        ));
                    }
                    out.insert(p.partition_index, p.offset);
                }
            }
        }
        Ok(out)
    }

    /// Sends `req` to the group's coordinator at the highest version in
    /// `min..=max`: finds the coordinator, and tries again (up to
    /// `ATTEMPTS`, pausing `RETRY_PAUSE`) while finding it fails or the
    /// response's code (`code_of`) says it is loading, unavailable or
    /// elsewhere. Any other code is the caller's to read.
    pub(crate) async fn to_coordinator<R: Request>(
        &self,
        topic: &QueueName,
        op: &'static str,
        req: &R,
        min: i16,
        max: i16,
        code_of: impl Fn(&R::Response) -> i16,
    ) -> Result<R::Response> {
        let mut attempt = 1;
        loop {
            let last = attempt >= ATTEMPTS;
            attempt += 1;
            let conn = match self.cluster.coordinator(&self.config.group).await {
                Ok(c) => c,
                Err(CoordError::Code(code)) if retriable_coord(code) && !last => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
                Err(e) => return Err(Self::op_err(topic, op, e.to_string())),
            };
            let resp = self
                .cluster
                .send_on(&conn, req, min, max)
                .await
                .map_err(|e| self.conn_err(e))?;
            if retriable_coord(code_of(&resp)) && !last {
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
            return Ok(resp);
        }
    }

    /// The group's committed offsets on `topic` (partitions without a
    /// commit are absent).
    pub(crate) async fn committed(
        &self,
        topic: &QueueName,
        partitions: &[i32],
    ) -> Result<BTreeMap<i32, i64>> {
        let req = OffsetFetchRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(self.config.group.clone())))
            .with_topics(Some(vec![
                OffsetFetchRequestTopic::default()
                    .with_name(topic_name(topic))
                    .with_partition_indexes(partitions.to_vec()),
            ]));
        // v1..=7: one group per request (v8 batches groups).
        let resp = self
            .to_coordinator(topic, "offset fetch", &req, 1, 7, |r| r.error_code)
            .await?;
        if resp.error_code != 0 {
            return Err(Self::op_err(
                topic,
                "offset fetch",
                code_text(resp.error_code),
            ));
        }
        let mut out = BTreeMap::new();
        for t in resp.topics {
            for p in t.partitions {
                if p.error_code != 0 {
                    return Err(Self::op_err(
                        topic,
                        "offset fetch",
                        format!(
                            "partition {}: {}",
                            p.partition_index,
                            code_text(p.error_code)
                        ),
                    ));
                }
                if p.committed_offset >= 0 {
                    out.insert(p.partition_index, p.committed_offset);
                }
            }
        }
        Ok(out)
    }

    /// Commits `offsets` (partition -> next offset to read) for the group,
    /// as the member `member_id` of generation `generation` (the consumers
    /// of this broker are members: see [`KafkaConsumer`]), or with
    /// generation -1 and no member id, as a client outside the group
    /// (accepted by Apache Kafka only while the group has no member).
    ///
    /// # Errors
    /// [`CommitError::Stale`] when the group says the generation is over
    /// (a rebalance, or the member was dropped); any other refusal or
    /// failure as [`CommitError::Failed`].
    pub async fn commit_as(
        &self,
        topic: &QueueName,
        offsets: &BTreeMap<i32, i64>,
        generation: i32,
        member_id: &str,
    ) -> std::result::Result<(), CommitError> {
        let req = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(self.config.group.clone())))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(StrBytes::from_string(member_id.to_owned()))
            .with_topics(vec![
                OffsetCommitRequestTopic::default()
                    .with_name(topic_name(topic))
                    .with_partitions(
                        offsets
                            .iter()
                            .map(|(p, o)| {
                                OffsetCommitRequestPartition::default()
                                    .with_partition_index(*p)
                                    .with_committed_offset(*o)
                            })
                            .collect(),
                    ),
            ]);
        let first_error = |r: &OffsetCommitResponse| {
            r.topics
                .iter()
                .flat_map(|t| t.partitions.iter())
                .find(|p| p.error_code != 0)
                .map(|p| (p.partition_index, p.error_code))
        };
        // v2..=8: v9 is for the new consumer protocol's members.
        let resp = self
            .to_coordinator(topic, "commit", &req, 2, 8, |r| {
                first_error(r).map_or(0, |(_, c)| c)
            })
            .await?;
        match first_error(&resp) {
            None => Ok(()),
            Some((_, code)) if group::stale_generation(code) => Err(CommitError::Stale(code)),
            Some((p, code)) => Err(CommitError::Failed(Self::op_err(
                topic,
                "commit",
                format!(
                    "group {}, partition {p}: {}",
                    self.config.group,
                    code_text(code)
                ),
            ))),
        }
    }

    /// The group as DescribeGroups shows it: state, assignor, and each
    /// member's assignment.
    ///
    /// # Errors
    /// The coordinator could not be reached or refused.
    pub async fn describe_group(&self) -> Result<GroupDescription> {
        group::describe(self, &QueueName(String::new())).await
    }

    /// The partition a message goes to on a topic of `count` partitions.
    fn partition_for(&self, message: &Message, count: usize) -> i32 {
        let count = count.max(1);
        let n = match message.native.downcast_ref::<KafkaNative>() {
            Some(native) => usize::try_from(native.partition).unwrap_or(0),
            None => match &message.order_key {
                Some(key) => fnv1a(key.as_bytes()) as usize,
                None => self.round_robin.fetch_add(1, Ordering::Relaxed) as usize,
            },
        };
        // A partition number below `count` fits an i32 (counts come from i32).
        i32::try_from(n % count).unwrap_or(0)
    }
}

fn retriable_coord(code: i16) -> bool {
    matches!(
        code,
        COORDINATOR_LOAD_IN_PROGRESS | COORDINATOR_NOT_AVAILABLE | NOT_COORDINATOR
    )
}

fn topic_name(topic: &QueueName) -> TopicName {
    TopicName(StrBytes::from_string(topic.0.clone()))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The record a message is published as.
fn record_of(message: &Message) -> Record {
    let native = message.native.downcast_ref::<KafkaNative>();
    let null_value = native.is_some_and(|n| n.null_value);
    let (key, headers, timestamp) = match native {
        Some(n) => (
            n.key.clone(),
            n.headers
                .iter()
                .map(|(k, v)| (StrBytes::from_string(k.clone()), v.clone()))
                .collect::<IndexMap<_, _>>(),
            n.timestamp,
        ),
        // A message from another broker: its text headers, its order key
        // as the record key, the time now.
        None => (
            message
                .order_key
                .as_ref()
                .map(|k| Bytes::copy_from_slice(k.as_bytes())),
            message
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        StrBytes::from_string(k.clone()),
                        Some(Bytes::copy_from_slice(v.as_bytes())),
                    )
                })
                .collect(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0),
        ),
    };
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp,
        key,
        value: (!null_value).then(|| Bytes::copy_from_slice(&message.body)),
        headers,
    }
}

#[async_trait]
impl Broker for KafkaBroker {
    fn kind(&self) -> BrokerKind {
        BrokerKind::Kafka
    }

    async fn inspect(&self, queue: &QueueName) -> Result<QueueProps> {
        let layout = self.layout(queue, true).await?;
        let mut props = BTreeMap::from([
            (PARTITIONS_PROP.to_owned(), layout.leaders.len().to_string()),
            (REPLICATION_PROP.to_owned(), layout.replication.to_string()),
        ]);
        let req = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(TOPIC_RESOURCE)
                .with_resource_name(StrBytes::from_string(queue.0.clone()))
                .with_configuration_keys(None),
        ]);
        let resp = self
            .cluster
            .send_any(&req, 1, 4)
            .await
            .map_err(|e| self.conn_err(e))?;
        for r in resp.results {
            if r.error_code == UNKNOWN_TOPIC_OR_PARTITION {
                return Err(Self::no_queue(queue));
            }
            if r.error_code != 0 {
                return Err(Self::op_err(
                    queue,
                    "describe configs",
                    code_text(r.error_code),
                ));
            }
            for c in r.configs {
                if c.read_only || c.is_sensitive {
                    continue;
                }
                if let Some(value) = c.value {
                    props.insert(
                        format!("{CONFIG_PREFIX}{}", c.name.as_str()),
                        value.to_string(),
                    );
                }
            }
        }
        Ok(QueueProps {
            name: Some(queue.clone()),
            props,
        })
    }

    async fn create_like(&self, like: &QueueProps, name: &QueueName) -> Result<()> {
        let partitions: i32 = match like.props.get(PARTITIONS_PROP) {
            Some(p) => p.parse().map_err(|_| {
                Self::op_err(
                    name,
                    "create",
                    format!("{PARTITIONS_PROP} = {p:?} is not a number"),
                )
            })?,
            None => -1, // the broker's default
        };
        let replication: i16 = match like.props.get(REPLICATION_PROP) {
            Some(r) => r.parse().map_err(|_| {
                Self::op_err(
                    name,
                    "create",
                    format!("{REPLICATION_PROP} = {r:?} is not a number"),
                )
            })?,
            None => -1,
        };
        let configs = like
            .props
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(CONFIG_PREFIX).map(|k| {
                    CreatableTopicConfig::default()
                        .with_name(StrBytes::from_string(k.to_owned()))
                        .with_value(Some(StrBytes::from_string(v.clone())))
                })
            })
            .collect();
        let req = CreateTopicsRequest::default()
            .with_topics(vec![
                CreatableTopic::default()
                    .with_name(topic_name(name))
                    .with_num_partitions(partitions)
                    .with_replication_factor(replication)
                    .with_configs(configs),
            ])
            .with_timeout_ms(BROKER_TIMEOUT_MS);
        let conn = self
            .cluster
            .controller()
            .await
            .map_err(|e| self.conn_err(e))?;
        // v4..=7: v4 is the first that takes -1 for the broker's defaults.
        let resp = self
            .cluster
            .send_on(&conn, &req, 2, 7)
            .await
            .map_err(|e| self.conn_err(e))?;
        for t in resp.topics {
            match t.error_code {
                0 => {}
                TOPIC_ALREADY_EXISTS => {
                    // Idempotent: fine if it has the same partition count.
                    let layout = self.layout(name, true).await?;
                    if partitions > 0 && layout.leaders.len() != partitions as usize {
                        return Err(Self::op_err(
                            name,
                            "create",
                            format!(
                                "it exists with {} partitions, not {partitions}",
                                layout.leaders.len()
                            ),
                        ));
                    }
                }
                code => {
                    let detail = t
                        .error_message
                        .map(|m| format!(": {}", m.as_str()))
                        .unwrap_or_default();
                    return Err(Self::op_err(
                        name,
                        "create",
                        format!("{}{detail}", code_text(code)),
                    ));
                }
            }
        }
        // Metadata may lag a new topic by a moment: wait until it has leaders.
        for _ in 0..50 {
            match self.cluster.layout(&name.0, true).await {
                Ok(Some(l)) if !l.leaders.is_empty() && l.leaders.values().all(|id| *id >= 0) => {
                    return Ok(());
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => return Err(self.conn_err(e)),
            }
        }
        Err(Self::op_err(
            name,
            "create",
            "created, but it has no partition leaders after 5 s",
        ))
    }

    async fn delete(&self, name: &QueueName) -> Result<()> {
        match self.depth(name).await {
            Err(BrokerError::NoQueue { .. }) => return Ok(()),
            Err(e) => return Err(e),
            Ok(d) if d.ready > 0 => {
                return Err(Self::op_err(
                    name,
                    "delete",
                    format!(
                        "group {} has {} messages to read on it",
                        self.config.group, d.ready
                    ),
                ));
            }
            Ok(_) => {}
        }
        let req = DeleteTopicsRequest::default()
            .with_topic_names(vec![topic_name(name)])
            .with_timeout_ms(BROKER_TIMEOUT_MS);
        let conn = self
            .cluster
            .controller()
            .await
            .map_err(|e| self.conn_err(e))?;
        // v1..=5: by name (v6 takes names or ids in another field).
        let resp = self
            .cluster
            .send_on(&conn, &req, 1, 5)
            .await
            .map_err(|e| self.conn_err(e))?;
        self.cluster.forget_topic(&name.0).await;
        for r in resp.responses {
            if r.error_code != 0 && r.error_code != UNKNOWN_TOPIC_OR_PARTITION {
                return Err(Self::op_err(name, "delete", code_text(r.error_code)));
            }
        }
        Ok(())
    }

    async fn depth(&self, name: &QueueName) -> Result<QueueDepth> {
        let layout = self.layout(name, false).await?;
        let high = self.list_offsets(name, &layout, LATEST).await?;
        let low = self.list_offsets(name, &layout, EARLIEST).await?;
        let parts: Vec<i32> = layout.leaders.keys().copied().collect();
        let committed = self.committed(name, &parts).await?;
        let ready = parts
            .iter()
            .map(|p| {
                let hw = high.get(p).copied().unwrap_or(0);
                let from = committed
                    .get(p)
                    .copied()
                    .unwrap_or_else(|| low.get(p).copied().unwrap_or(0))
                    .max(low.get(p).copied().unwrap_or(0));
                u64::try_from(hw - from).unwrap_or(0)
            })
            .sum();
        Ok(QueueDepth {
            ready,
            unacked: None,
        })
    }

    async fn consume(&self, name: &QueueName, prefetch: u16) -> Result<Box<dyn Consumer>> {
        Ok(Box::new(self.consumer(name, prefetch).await?))
    }

    async fn publish(&self, name: &QueueName, message: &Message) -> Result<()> {
        let record = record_of(message);
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            std::iter::once(&record),
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .map_err(|e| Self::op_err(name, "publish", format!("encoding the record: {e}")))?;
        let records = buf.freeze();
        let mut fresh = false;
        for attempt in 1..=ATTEMPTS {
            let layout = self.layout(name, fresh).await?;
            let partition = self.partition_for(message, layout.leaders.len());
            let leader = layout.leaders.get(&partition).copied().unwrap_or(-1);
            if leader < 0 {
                fresh = true;
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
            let conn = self
                .cluster
                .broker(leader)
                .await
                .map_err(|e| self.conn_err(e))?;
            let req = ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(BROKER_TIMEOUT_MS)
                .with_topic_data(vec![
                    TopicProduceData::default()
                        .with_name(topic_name(name))
                        .with_partition_data(vec![
                            PartitionProduceData::default()
                                .with_index(partition)
                                .with_records(Some(records.clone())),
                        ]),
                ]);
            // v3..=9: by topic name (v13 names topics by id).
            let resp = self
                .cluster
                .send_on(&conn, &req, 3, 9)
                .await
                .map_err(|e| self.conn_err(e))?;
            let code = resp
                .responses
                .iter()
                .flat_map(|t| t.partition_responses.iter())
                .map(|p| p.error_code)
                .find(|c| *c != 0)
                .unwrap_or(0);
            match code {
                0 => return Ok(()),
                NOT_LEADER_OR_FOLLOWER | LEADER_NOT_AVAILABLE if attempt < ATTEMPTS => {
                    fresh = true;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                UNKNOWN_TOPIC_OR_PARTITION => {
                    self.cluster.forget_topic(&name.0).await;
                    if self
                        .cluster
                        .layout(&name.0, true)
                        .await
                        .ok()
                        .flatten()
                        .is_none()
                    {
                        return Err(Self::no_queue(name));
                    }
                    fresh = true;
                    if attempt == ATTEMPTS {
                        return Err(Self::op_err(name, "publish", code_text(code)));
                    }
                }
                code => return Err(Self::op_err(name, "publish", code_text(code))),
            }
        }
        Err(Self::op_err(
            name,
            "publish",
            "the partition's leader kept moving",
        ))
    }
}

impl KafkaBroker {
    /// [`Broker::consume`], typed: a member of the group subscribed to
    /// `name` (its [`KafkaConsumer::generation`] tells the member id and
    /// the partitions assigned).
    ///
    /// # Errors
    /// The topic does not exist ([`BrokerError::NoQueue`]), or the group
    /// could not be joined.
    pub async fn consumer(&self, name: &QueueName, prefetch: u16) -> Result<KafkaConsumer> {
        KafkaConsumer::start(self.clone_handle(), name.clone(), prefetch).await
    }

    /// Another handle on the same cluster and group (consumers hold one).
    fn clone_handle(&self) -> Arc<KafkaBroker> {
        Arc::new(Self {
            cluster: self.cluster.clone(),
            config: self.config.clone(),
            round_robin: AtomicU32::new(0),
        })
    }

    /// The cluster (for the consumer's own connections).
    fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }
}
