//! The cluster as the broker sees it: bootstrap addresses, one shared
//! connection per broker, topic metadata (partitions and their leaders) and
//! the consumer group's coordinator, each looked up again when a broker says
//! it moved.

use super::conn::{Conn, ConnError};
use kafka_protocol::messages::{
    BrokerId, FindCoordinatorRequest, MetadataRequest, MetadataResponse, TopicName,
    metadata_request::MetadataRequestTopic,
};
use kafka_protocol::protocol::{Request, StrBytes};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Kafka's error code for a topic that does not exist.
pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
/// The partition's leader moved.
pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
/// The group's coordinator is loading its state.
pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
/// The group has no coordinator right now.
pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
/// The broker asked is not the group's coordinator.
pub const NOT_COORDINATOR: i16 = 16;
/// CreateTopics of a topic that exists.
pub const TOPIC_ALREADY_EXISTS: i16 = 36;
/// Fetch of an offset outside the partition's log.
pub const OFFSET_OUT_OF_RANGE: i16 = 1;
/// The broker did not know the topic id or partition leader epoch yet.
pub const LEADER_NOT_AVAILABLE: i16 = 5;

/// A topic's partitions (partition -> leader broker id) and replication.
#[derive(Debug, Clone)]
pub struct TopicLayout {
    /// Partition number -> the id of its leader.
    pub leaders: BTreeMap<i32, i32>,
    /// How many replicas partition 0 has.
    pub replication: i16,
}

/// Text for a Kafka error code: its name where kafka-protocol knows it.
pub fn code_text(code: i16) -> String {
    match kafka_protocol::ResponseError::try_from_code(code) {
        Some(e) => format!("{e:?} (error code {code})"),
        None => format!("error code {code}"),
    }
}

/// The cluster: bootstrap addresses, a connection per broker, the brokers'
/// addresses by id.
#[derive(Debug)]
pub struct Cluster {
    bootstrap: Vec<String>,
    /// Broker address -> its shared connection.
    conns: Mutex<HashMap<String, Arc<Conn>>>,
    /// Broker id -> address, from the last metadata.
    brokers: Mutex<HashMap<i32, String>>,
    /// Topic -> layout, from the last metadata that named it.
    topics: Mutex<HashMap<String, TopicLayout>>,
    /// The controller's id, from the last metadata.
    controller: Mutex<Option<i32>>,
}

impl Cluster {
    /// A cluster reached through `bootstrap` (`host:port` each). Connects
    /// lazily.
    pub fn new(bootstrap: Vec<String>) -> Self {
        Self {
            bootstrap,
            conns: Mutex::default(),
            brokers: Mutex::default(),
            topics: Mutex::default(),
            controller: Mutex::default(),
        }
    }

    /// The bootstrap addresses, joined (for error messages).
    pub fn endpoint(&self) -> String {
        self.bootstrap.join(",")
    }

    /// The shared connection to `addr`, opened on first use.
    pub async fn conn(&self, addr: &str) -> Result<Arc<Conn>, ConnError> {
        if let Some(c) = lock(&self.conns).get(addr) {
            return Ok(c.clone());
        }
        let conn = Arc::new(Conn::connect(addr).await?);
        Ok(lock(&self.conns)
            .entry(addr.to_owned())
            .or_insert(conn)
            .clone())
    }

    /// A connection to any broker: a known one, else the first bootstrap
    /// address that answers.
    pub async fn any(&self) -> Result<Arc<Conn>, ConnError> {
        let known: Vec<String> = lock(&self.conns).keys().cloned().collect();
        let mut last = None;
        for addr in known.iter().chain(&self.bootstrap) {
            match self.conn(addr).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ConnError::Io {
            addr: String::new(),
            message: "no bootstrap address given".into(),
        }))
    }

    /// Forgets the connection to `addr` (after an I/O error on it, so the
    /// next use connects again and re-negotiates versions).
    pub async fn forget(&self, addr: &str) {
        lock(&self.conns).remove(addr);
    }

    /// Sends `req` to any broker, at the highest version in `min..=max`.
    pub async fn send_any<R: Request>(
        &self,
        req: &R,
        min: i16,
        max: i16,
    ) -> Result<R::Response, ConnError> {
        let conn = self.any().await?;
        self.send_on(&conn, req, min, max).await
    }

    /// Sends `req` on `conn`, forgetting the connection if it broke.
    pub async fn send_on<R: Request>(
        &self,
        conn: &Conn,
        req: &R,
        min: i16,
        max: i16,
    ) -> Result<R::Response, ConnError> {
        let version = conn.version::<R>(min, max)?;
        let result = conn.send(req, version).await;
        if matches!(result, Err(ConnError::Io { .. })) {
            self.forget(conn.addr()).await;
        }
        result
    }

    /// Fetches metadata for `topics` and remembers brokers and layouts. A
    /// topic the broker does not know is left out of the returned map.
    pub async fn refresh(&self, topics: &[&str]) -> Result<MetadataResponse, ConnError> {
        let req = MetadataRequest::default()
            .with_topics(Some(
                topics
                    .iter()
                    .map(|t| {
                        MetadataRequestTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string((*t).to_owned()))))
                    })
                    .collect(),
            ))
            .with_allow_auto_topic_creation(false);
        // v4: the first with allow_auto_topic_creation (before it, asking
        // creates the topic).
        let resp = self.send_any(&req, 4, 12).await?;
        {
            let mut brokers = lock(&self.brokers);
            for b in &resp.brokers {
                brokers.insert(b.node_id.0, format!("{}:{}", b.host.as_str(), b.port));
            }
        }
        *lock(&self.controller) = Some(resp.controller_id.0).filter(|id| *id >= 0);
        let mut layouts = lock(&self.topics);
        for t in &resp.topics {
            let Some(name) = &t.name else { continue };
            if t.error_code != 0 {
                layouts.remove(name.0.as_str());
                continue;
            }
            let leaders = t
                .partitions
                .iter()
                .map(|p| (p.partition_index, p.leader_id.0))
                .collect();
            let replication = t
                .partitions
                .iter()
                .find(|p| p.partition_index == 0)
                .map(|p| i16::try_from(p.replica_nodes.len()).unwrap_or(i16::MAX))
                .unwrap_or(1)
                .max(1);
            layouts.insert(
                name.0.to_string(),
                TopicLayout {
                    leaders,
                    replication,
                },
            );
        }
        Ok(resp)
    }

    /// The layout of `topic`: cached, else from fresh metadata; `None` if
    /// the topic does not exist.
    pub async fn layout(&self, topic: &str, fresh: bool) -> Result<Option<TopicLayout>, ConnError> {
        if !fresh && let Some(l) = lock(&self.topics).get(topic) {
            return Ok(Some(l.clone()));
        }
        let resp = self.refresh(&[topic]).await?;
        let known = resp.topics.iter().find(|t| {
            t.name.as_ref().map(|n| n.0.as_str()) == Some(topic)
                && t.error_code != UNKNOWN_TOPIC_OR_PARTITION
        });
        if known.is_none() {
            return Ok(None);
        }
        Ok(lock(&self.topics).get(topic).cloned())
    }

    /// Forgets `topic`'s layout (it was deleted, or its leaders moved).
    pub async fn forget_topic(&self, topic: &str) {
        lock(&self.topics).remove(topic);
    }

    /// The address of broker `id`, from the last metadata.
    pub async fn broker_addr(&self, id: i32) -> Option<String> {
        lock(&self.brokers).get(&id).cloned()
    }

    /// The connection to broker `id` (metadata is fetched if it is unknown).
    pub async fn broker(&self, id: i32) -> Result<Arc<Conn>, ConnError> {
        if self.broker_addr(id).await.is_none() {
            self.refresh(&[]).await?;
        }
        match self.broker_addr(id).await {
            Some(addr) => self.conn(&addr).await,
            None => Err(ConnError::Io {
                addr: self.endpoint(),
                message: format!("the cluster names no broker {id}"),
            }),
        }
    }

    /// The controller's connection (topic creation and deletion), or any
    /// broker's when none is named (KRaft brokers forward to it).
    pub async fn controller(&self) -> Result<Arc<Conn>, ConnError> {
        let id = *lock(&self.controller);
        let id = match id {
            Some(id) => Some(id),
            None => {
                self.refresh(&[]).await?;
                *lock(&self.controller)
            }
        };
        match id {
            Some(id) => self.broker(id).await,
            None => self.any().await,
        }
    }

    /// The connection to `group`'s coordinator.
    pub async fn coordinator(&self, group: &str) -> Result<Arc<Conn>, CoordError> {
        let addr = self.coordinator_addr(group).await?;
        Ok(self.conn(&addr).await?)
    }

    /// The address of `group`'s coordinator.
    pub async fn coordinator_addr(&self, group: &str) -> Result<String, CoordError> {
        let req = FindCoordinatorRequest::default()
            .with_key(StrBytes::from_string(group.to_owned()))
            .with_key_type(0);
        // v1..=3: one key per request (v4 batches keys in another field).
        let resp = self.send_any(&req, 1, 3).await?;
        if resp.error_code != 0 {
            return Err(CoordError::Code(resp.error_code));
        }
        let addr = format!("{}:{}", resp.host.as_str(), resp.port);
        lock(&self.brokers).insert(resp.node_id.0, addr.clone());
        Ok(addr)
    }
}

/// Finding a coordinator failed: the connection, or the broker's answer.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// The connection failed.
    #[error(transparent)]
    Conn(#[from] ConnError),
    /// The broker answered with an error code.
    #[error("finding the group coordinator: {}", code_text(*.0))]
    Code(i16),
}

/// Locks `m`; these maps hold plain data, consistent after any panic.
/// Never held across an await.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The broker id type kafka-protocol uses, from a plain id.
pub fn broker_id(id: i32) -> BrokerId {
    BrokerId(id)
}
