//! Consuming a topic as a queue: a fetcher task reads every partition from
//! the group's committed offsets into a bounded channel; the consumer hands
//! records out, takes them back (requeue) and commits, per partition, the
//! offset below which every handed-out record was acked.

use super::client::{
    Cluster, NOT_LEADER_OR_FOLLOWER, OFFSET_OUT_OF_RANGE, TopicLayout, UNKNOWN_TOPIC_OR_PARTITION,
    code_text,
};
use super::conn::Conn;
use super::group::{Generation, Membership};
use super::{CommitError, EARLIEST, KafkaBroker, KafkaNative, RETRY_PAUSE};
use crate::broker::{BrokerError, BrokerKind, Consumer, Delivery, Message, QueueName, Result};
use async_trait::async_trait;
use bytes::{Buf, Bytes};
use kafka_protocol::messages::{
    FetchRequest, TopicName,
    fetch_request::{FetchPartition, FetchTopic},
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The most bytes one fetch asks for per partition.
const PARTITION_MAX_BYTES: i32 = 1 << 20;
/// The most bytes one fetch asks for in all.
const FETCH_MAX_BYTES: i32 = 4 << 20;

/// Where a delivered record sits, to ack it.
#[derive(Debug, Clone, Copy)]
struct KafkaToken {
    partition: i32,
    offset: i64,
}

/// fetcher --records (or the error that stopped it)--> consumer
type Fetched = Result<Delivery>;

/// A consumer of one topic in the broker's group (see the module docs of
/// `kafka`): a member of the group, subscribed to the topic, reading the
/// partitions the group assigns it.
///
/// # Guarantees
/// A record is committed only once it and every record before it in its
/// partition that this consumer handed out were acked; a record requeued or
/// dropped unacked is never committed past, and comes again (requeued: from
/// this consumer; dropped with the consumer: from the next consumer of the
/// group). Commits carry the generation and member id; one refused because
/// the group rebalanced is made again in the next generation, unless the
/// partition went to another member, which then reads it from the last
/// commit (a duplicate, never a loss). Dropping the consumer stops its
/// fetcher and leaves the group.
pub struct KafkaConsumer {
    broker: Arc<KafkaBroker>,
    topic: QueueName,
    prefetch: u16,
    membership: Membership,
    /// The generation whose partitions the fetcher reads.
    generation: Arc<Generation>,
    /// A newer generation seen, not yet followed (the fetcher restarted).
    pending: Option<Arc<Generation>>,
    /// fetcher --records--> consumer
    records_rx: mpsc::Receiver<Fetched>,
    fetcher: JoinHandle<()>,
    /// Requeued deliveries, handed out again first.
    again: VecDeque<Delivery>,
    /// Per partition: offsets handed out and neither acked nor lost.
    outstanding: BTreeMap<i32, BTreeSet<i64>>,
    /// Per partition: the next offset to hand out (one past the last
    /// handed out; where reading started before that).
    handed_end: BTreeMap<i32, i64>,
    /// Per partition: the last offset committed.
    committed: BTreeMap<i32, i64>,
}

impl std::fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("topic", &self.topic)
            .field("group", &self.broker.group())
            .field("generation", &self.generation)
            .field("committed", &self.committed)
            .finish_non_exhaustive()
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        // The membership, dropped next, leaves the group.
        self.fetcher.abort();
    }
}

impl KafkaConsumer {
    /// Joins the group for `topic` and starts reading the partitions it
    /// assigns, from the group's committed offsets.
    pub(super) async fn start(
        broker: Arc<KafkaBroker>,
        topic: QueueName,
        prefetch: u16,
    ) -> Result<Self> {
        // A missing topic is reported before joining for it.
        broker.layout(&topic, true).await?;
        let mut membership = Membership::join(broker.clone(), topic.clone()).await?;
        let generation = match membership.current() {
            Some(g) => g,
            None => membership.next_generation(-1).await,
        };
        membership.has_changed();
        let (_, records_rx) = mpsc::channel(1);
        let mut consumer = Self {
            broker,
            topic,
            prefetch,
            membership,
            generation: generation.clone(),
            pending: Some(generation),
            records_rx,
            fetcher: tokio::spawn(async {}),
            again: VecDeque::new(),
            outstanding: BTreeMap::new(),
            handed_end: BTreeMap::new(),
            committed: BTreeMap::new(),
        };
        consumer.follow(true).await?;
        Ok(consumer)
    }

    /// The generation this consumer reads for (tests: the member id and
    /// the partitions assigned).
    pub fn generation(&self) -> Arc<Generation> {
        self.generation.clone()
    }

    /// Follows a new generation seen by [`Self::watch`]: the partitions it
    /// no longer has are forgotten (their records in flight are committed
    /// by their new owner's reading them again), the new ones are read from
    /// the group's committed offsets, the kept ones from where they were.
    /// Cancel safe: nothing changes before the last await.
    async fn follow(&mut self, first: bool) -> Result<()> {
        let Some(next) = self.pending.clone() else {
            return Ok(());
        };
        if !first && next.partitions == self.generation.partitions {
            self.generation = next;
            self.pending = None;
            return Ok(());
        }
        let layout = self.broker.layout(&self.topic, true).await?;
        let added: Vec<i32> = next
            .partitions
            .iter()
            .copied()
            .filter(|p| first || !self.generation.partitions.contains(p))
            .collect();
        let committed = self.broker.committed(&self.topic, &added).await?;
        let earliest = self
            .broker
            .list_offsets(&self.topic, &layout, EARLIEST)
            .await?;
        // No await from here on.
        self.fetcher.abort();
        let revoked: Vec<i32> = self
            .generation
            .partitions
            .difference(&next.partitions)
            .copied()
            .collect();
        for p in &revoked {
            self.outstanding.remove(p);
            self.handed_end.remove(p);
            self.committed.remove(p);
        }
        self.again.retain(|d| {
            d.token
                .downcast_ref::<KafkaToken>()
                .is_some_and(|t| next.partitions.contains(&t.partition))
        });
        for p in &added {
            let low = earliest.get(p).copied().unwrap_or(0);
            let from = committed.get(p).copied().unwrap_or(low).max(low);
            self.handed_end.insert(*p, from);
            if let Some(c) = committed.get(p) {
                self.committed.insert(*p, *c);
            }
        }
        // Records fetched but not handed out are read again.
        let positions: BTreeMap<i32, i64> = next
            .partitions
            .iter()
            .map(|p| (*p, self.handed_end.get(p).copied().unwrap_or(0)))
            .collect();
        if !revoked.is_empty() || !added.is_empty() {
            tracing::debug!(topic = %self.topic, group = %self.broker.group(), generation = next.id, ?revoked, ?added, "assignment changed");
        }
        let (records_tx, records_rx) = mpsc::channel(usize::from(self.prefetch.max(1)));
        let fetcher = Fetcher {
            broker: self.broker.clone(),
            cluster: self.broker.cluster().clone(),
            topic: self.topic.clone(),
            layout,
            positions,
            conns: HashMap::new(),
            records_tx,
        };
        self.fetcher = tokio::spawn(fetcher.run());
        self.records_rx = records_rx;
        self.generation = next;
        self.pending = None;
        Ok(())
    }

    /// Notes a new generation, if any, to follow.
    fn watch(&mut self) {
        if self.membership.has_changed()
            && let Some(g) = self.membership.current()
            && g.id != self.generation.id
        {
            self.pending = Some(g);
        }
    }

    fn hand_out(&mut self, d: Delivery) -> Delivery {
        if let Some(t) = d.token.downcast_ref::<KafkaToken>() {
            self.outstanding
                .entry(t.partition)
                .or_default()
                .insert(t.offset);
            let end = self.handed_end.entry(t.partition).or_insert(0);
            *end = (*end).max(t.offset + 1);
        }
        d
    }

    fn token(&self, d: &Delivery, op: &'static str) -> Result<KafkaToken> {
        d.token
            .downcast_ref::<KafkaToken>()
            .copied()
            .ok_or_else(|| BrokerError::Operation {
                kind: BrokerKind::Kafka,
                queue: self.topic.clone(),
                op,
                message: "the delivery is not from this consumer".into(),
            })
    }

    /// Commits `upto` on `partition` as the current generation's member,
    /// again in the next generation if the group rebalanced meanwhile.
    /// False if the partition is no longer ours.
    async fn commit(&mut self, partition: i32, upto: i64) -> Result<bool> {
        let wait = self.broker.config.rebalance_timeout + self.broker.config.session_timeout;
        let mut generation = match self.membership.current() {
            Some(g) => g,
            None => self.next_generation(-1, wait).await?,
        };
        loop {
            if !generation.partitions.contains(&partition) {
                return Ok(false);
            }
            let offsets = BTreeMap::from([(partition, upto)]);
            match self
                .broker
                .commit_as(&self.topic, &offsets, generation.id, &generation.member_id)
                .await
            {
                Ok(()) => return Ok(true),
                Err(CommitError::Stale(code)) => {
                    tracing::debug!(topic = %self.topic, generation = generation.id, error = %code_text(code), "commit in a finished generation: committing in the next one");
                    generation = self.next_generation(generation.id, wait).await?;
                }
                Err(CommitError::Failed(e)) => return Err(e),
            }
        }
    }

    async fn next_generation(&mut self, stale: i32, wait: Duration) -> Result<Arc<Generation>> {
        tokio::time::timeout(wait, self.membership.next_generation(stale))
            .await
            .map_err(|_| BrokerError::Operation {
                kind: BrokerKind::Kafka,
                queue: self.topic.clone(),
                op: "commit",
                message: format!(
                    "group {}: no new generation within {wait:?} after a rebalance",
                    self.broker.group()
                ),
            })
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn next(&mut self) -> Result<Option<Delivery>> {
        loop {
            self.watch();
            self.follow(false).await?;
            if let Some(d) = self.again.pop_front() {
                return Ok(Some(d));
            }
            // Cancel safe: a record stays in the channel until received, and
            // a new generation stays pending until followed.
            tokio::select! {
                r = self.records_rx.recv() => return match r {
                    Some(Ok(d)) => Ok(Some(self.hand_out(d))),
                    Some(Err(e)) => Err(e),
                    None => Ok(None),
                },
                () = self.membership.changed() => {
                    if let Some(g) = self.membership.current()
                        && g.id != self.generation.id
                    {
                        self.pending = Some(g);
                    }
                }
            }
        }
    }

    async fn next_within(&mut self, wait: Duration) -> Result<Option<Delivery>> {
        match tokio::time::timeout(wait, self.next()).await {
            Ok(r) => r,
            Err(_) => Ok(None),
        }
    }

    async fn ack(&mut self, delivery: Delivery) -> Result<()> {
        let t = self.token(&delivery, "ack")?;
        // A record of a partition taken from us since (its new owner reads
        // it again from the last commit), or acked twice: nothing to commit.
        let Some(out) = self.outstanding.get_mut(&t.partition) else {
            return Ok(());
        };
        if !out.remove(&t.offset) || !self.generation.partitions.contains(&t.partition) {
            return Ok(());
        }
        let upto = out
            .first()
            .copied()
            .unwrap_or_else(|| self.handed_end.get(&t.partition).copied().unwrap_or(0));
        if self.committed.get(&t.partition).is_some_and(|c| *c >= upto) {
            return Ok(());
        }
        if self.commit(t.partition, upto).await? {
            self.committed.insert(t.partition, upto);
        } else {
            tracing::debug!(topic = %self.topic, partition = t.partition, "acked a record of a partition now another member's: it reads it again from the last commit");
        }
        Ok(())
    }

    async fn requeue(&mut self, mut delivery: Delivery) -> Result<()> {
        self.token(&delivery, "requeue")?;
        delivery.redelivered = true;
        self.again.push_back(delivery);
        Ok(())
    }
}

/// The fetch loop of one consumer.
struct Fetcher {
    broker: Arc<KafkaBroker>,
    cluster: Arc<Cluster>,
    topic: QueueName,
    layout: TopicLayout,
    /// Per partition: the next offset to fetch.
    positions: BTreeMap<i32, i64>,
    /// Leader address -> a connection of this fetcher's own (a fetch
    /// long-polls; shared connections must not wait behind it).
    conns: HashMap<String, Arc<Conn>>,
    /// fetcher --records--> consumer
    records_tx: mpsc::Sender<Fetched>,
}

/// What one fetch round says about going on.
enum Round {
    Continue,
    Refresh,
    Stop,
}

impl Fetcher {
    async fn run(mut self) {
        loop {
            let round = self.round().await;
            match round {
                Ok(Round::Continue) => {}
                Ok(Round::Refresh) => {
                    if let Err(e) = self.refresh().await {
                        if matches!(e, BrokerError::NoQueue { .. }) {
                            // Deleted: the consumer is closed.
                            return;
                        }
                        tracing::debug!(topic = %self.topic, error = %e, "refreshing metadata failed");
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
                Ok(Round::Stop) => return,
                Err(e) => {
                    tracing::debug!(topic = %self.topic, error = %e, "fetch failed; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    async fn refresh(&mut self) -> Result<()> {
        // Only the partitions assigned are read (a partition added to the
        // topic is assigned at the group's next rebalance).
        self.layout = self.broker.layout(&self.topic, true).await?;
        Ok(())
    }

    async fn conn(&mut self, leader: i32) -> Result<Arc<Conn>, String> {
        let addr = match self.cluster.broker_addr(leader).await {
            Some(a) => a,
            None => {
                self.cluster.refresh(&[]).await.map_err(|e| e.to_string())?;
                self.cluster
                    .broker_addr(leader)
                    .await
                    .ok_or_else(|| format!("the cluster names no broker {leader}"))?
            }
        };
        if let Some(c) = self.conns.get(&addr) {
            return Ok(c.clone());
        }
        let c = Arc::new(Conn::connect(&addr).await.map_err(|e| e.to_string())?);
        self.conns.insert(addr, c.clone());
        Ok(c)
    }

    /// One fetch per leader; hands every record on.
    async fn round(&mut self) -> Result<Round, String> {
        if self.positions.is_empty() {
            // Nothing assigned to us (another member reads the topic).
            tokio::time::sleep(self.broker.config.fetch_wait).await;
            return Ok(Round::Continue);
        }
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for p in self.positions.keys() {
            match self.layout.leaders.get(p) {
                Some(leader) if *leader >= 0 => by_leader.entry(*leader).or_default().push(*p),
                _ => return Ok(Round::Refresh),
            }
        }
        for (leader, parts) in by_leader {
            let conn = self.conn(leader).await?;
            let req = FetchRequest::default()
                .with_replica_id(super::client::broker_id(-1))
                .with_max_wait_ms(
                    i32::try_from(self.broker.config.fetch_wait.as_millis()).unwrap_or(500),
                )
                .with_min_bytes(1)
                .with_max_bytes(FETCH_MAX_BYTES)
                .with_isolation_level(0)
                .with_session_epoch(-1)
                .with_topics(vec![
                    FetchTopic::default()
                        .with_topic(TopicName(StrBytes::from_string(self.topic.0.clone())))
                        .with_partitions(
                            parts
                                .iter()
                                .map(|p| {
                                    FetchPartition::default()
                                        .with_partition(*p)
                                        .with_current_leader_epoch(-1)
                                        .with_fetch_offset(self.positions[p])
                                        .with_log_start_offset(-1)
                                        .with_partition_max_bytes(PARTITION_MAX_BYTES)
                                })
                                .collect(),
                        ),
                ]);
            // v4..=12: by topic name (v13 names topics by id).
            let version = conn
                .version::<FetchRequest>(4, 12)
                .map_err(|e| e.to_string())?;
            let resp = match conn.send(&req, version).await {
                Ok(r) => r,
                Err(e) => {
                    self.conns.remove(conn.addr());
                    return Err(e.to_string());
                }
            };
            if resp.error_code != 0 {
                return Err(code_text(resp.error_code));
            }
            for t in resp.responses {
                for p in t.partitions {
                    match p.error_code {
                        0 => {}
                        OFFSET_OUT_OF_RANGE => {
                            let low = self
                                .broker
                                .list_offsets(&self.topic, &self.layout, EARLIEST)
                                .await
                                .map_err(|e| e.to_string())?;
                            let to = low.get(&p.partition_index).copied().unwrap_or(0);
                            tracing::warn!(
                                topic = %self.topic,
                                partition = p.partition_index,
                                from = self.positions.get(&p.partition_index).copied(),
                                to,
                                "offset out of range (retention removed it?): reading from the log start"
                            );
                            self.positions.insert(p.partition_index, to);
                            continue;
                        }
                        UNKNOWN_TOPIC_OR_PARTITION | NOT_LEADER_OR_FOLLOWER => {
                            return Ok(Round::Refresh);
                        }
                        code => return Err(code_text(code)),
                    }
                    let Some(records) = p.records else { continue };
                    if !self.hand_on(p.partition_index, records).await {
                        return Ok(Round::Stop);
                    }
                }
            }
        }
        Ok(Round::Continue)
    }

    /// Decodes the whole batches in `records` and sends their records at or
    /// past the partition's position. False once the consumer is gone.
    async fn hand_on(&mut self, partition: i32, mut records: Bytes) -> bool {
        // A fetch may end in part of a batch: stop before it.
        while records.len() >= 12 {
            let batch_len = (&records[8..12]).get_i32();
            let total = 12 + usize::try_from(batch_len).unwrap_or(0);
            if batch_len <= 0 || records.len() < total {
                break;
            }
            let mut batch = records.split_to(total);
            let set = match RecordBatchDecoder::decode(&mut batch) {
                Ok(s) => s,
                Err(e) => {
                    let err = BrokerError::Operation {
                        kind: BrokerKind::Kafka,
                        queue: self.topic.clone(),
                        op: "consume",
                        message: format!(
                            "partition {partition}: a record batch did not decode \
                             (lz4 and zstd batches are not supported): {e}"
                        ),
                    };
                    // The consumer sees the error; the fetcher stops.
                    let _ = self.records_tx.send(Err(err)).await;
                    return false;
                }
            };
            for r in set.records {
                let pos = self.positions.get(&partition).copied().unwrap_or(0);
                if r.offset < pos {
                    continue;
                }
                self.positions.insert(partition, r.offset + 1);
                if r.control {
                    continue;
                }
                let headers = r
                    .headers
                    .iter()
                    .filter_map(|(k, v)| {
                        let v = std::str::from_utf8(v.as_ref()?).ok()?;
                        Some((k.as_str().to_owned(), v.to_owned()))
                    })
                    .collect();
                let native = KafkaNative {
                    partition,
                    key: r.key.clone(),
                    headers: r
                        .headers
                        .iter()
                        .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
                        .collect(),
                    timestamp: r.timestamp,
                    null_value: r.value.is_none(),
                };
                let delivery = Delivery {
                    message: Message {
                        headers,
                        body: r.value.map(|v| v.to_vec()).unwrap_or_default(),
                        order_key: Some(format!("p{partition}")),
                        native: Box::new(native),
                    },
                    redelivered: false,
                    token: Box::new(KafkaToken {
                        partition,
                        offset: r.offset,
                    }),
                };
                if self.records_tx.send(Ok(delivery)).await.is_err() {
                    return false;
                }
            }
        }
        true
    }
}
