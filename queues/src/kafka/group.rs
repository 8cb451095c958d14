//! Membership in the broker's consumer group (Kafka's classic group
//! protocol, the one every client library speaks): FindCoordinator,
//! JoinGroup, SyncGroup, Heartbeat, LeaveGroup.
//!
//! A [`Membership`] is one member subscribed to one topic. A task of its own
//! joins, heartbeats every [`KafkaConfig::heartbeat_interval`], rejoins when
//! the coordinator says the group rebalances (or a commit found the
//! generation stale), and leaves the group when the membership is dropped.
//! It publishes the current [`Generation`] (the generation id, the member
//! id and the partitions of the topic assigned to it) on a watch channel:
//! the consumer fetches only those partitions and commits with that
//! generation and member id.
//!
//! # Assigning, as the group's leader
//! The coordinator makes one member the leader, which assigns the
//! partitions of every member's subscription. When that is us, the
//! assignment is balanced and sticky, and valid for every protocol we
//! announce (`range`, `roundrobin`, `sticky`, `cooperative-sticky`: a client
//! follows the assignment it is given, whichever assignor computed it):
//! per topic, each subscriber keeps the partitions it owned (reported in
//! its subscription) up to its fair share, and the others go to the
//! subscribers with the fewest. Under `cooperative-sticky`, a partition
//! released by its owner is assigned to nobody in that round (the owner
//! revokes it and rejoins; the next round assigns it), so no partition ever
//! has two owners.
//!
//! [`KafkaConfig::heartbeat_interval`]: super::KafkaConfig::heartbeat_interval

use super::KafkaBroker;
use super::client::{
    COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, CoordError, NOT_COORDINATOR, code_text,
};
use super::conn::{Conn, ConnError};
use crate::broker::{BrokerError, BrokerKind, QueueName, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, DescribeGroupsRequest, GroupId,
    HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest, SyncGroupRequest, TopicName,
    consumer_protocol_assignment::TopicPartition as AssignedPartitions,
    consumer_protocol_subscription::TopicPartition as OwnedPartitions,
    join_group_request::JoinGroupRequestProtocol, join_group_response::JoinGroupResponseMember,
    leave_group_request::MemberIdentity, sync_group_request::SyncGroupRequestAssignment,
};
use kafka_protocol::protocol::{Decodable, Encodable, Message, Request, StrBytes};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, oneshot, watch};

/// The group's members are consumers.
const PROTOCOL_TYPE: &str = "consumer";
/// The assignors we announce, in our order of preference (a group already
/// running one of them gets that one first: see [`Membership::join`]).
const PROTOCOLS: [&str; 4] = ["range", "roundrobin", "sticky", "cooperative-sticky"];
/// The incremental protocol: released partitions wait one round.
const COOPERATIVE: &str = "cooperative-sticky";
/// The subscription and assignment versions we write (v2: with the
/// generation, which sticky assignors use to rank owned partitions).
const SUBSCRIPTION_VERSION: i16 = 2;
const ASSIGNMENT_VERSION: i16 = 1;

/// Kafka's error codes the membership reacts to.
const ILLEGAL_GENERATION: i16 = 22;
const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
const UNKNOWN_MEMBER_ID: i16 = 25;
const INVALID_SESSION_TIMEOUT: i16 = 26;
/// The group is rebalancing: rejoin.
pub(super) const REBALANCE_IN_PROGRESS: i16 = 27;
const GROUP_AUTHORIZATION_FAILED: i16 = 30;
const FENCED_INSTANCE_ID: i16 = 82;
const MEMBER_ID_REQUIRED: i16 = 79;
const GROUP_MAX_SIZE_REACHED: i16 = 81;

/// True for the codes with which a commit says our generation is over.
pub(super) fn stale_generation(code: i16) -> bool {
    matches!(
        code,
        REBALANCE_IN_PROGRESS | ILLEGAL_GENERATION | UNKNOWN_MEMBER_ID | FENCED_INSTANCE_ID
    )
}

/// One generation of our membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// The generation id commits carry.
    pub id: i32,
    /// Our member id, which commits carry.
    pub member_id: String,
    /// The assignor the group runs.
    pub protocol: String,
    /// The partitions of our topic assigned to us.
    pub partitions: BTreeSet<i32>,
}

/// What the membership task publishes.
#[derive(Debug, Clone)]
pub(super) enum MemberState {
    /// Joining or rejoining: no generation to commit with.
    Joining,
    /// A member of this generation.
    Member(Arc<Generation>),
    /// The first join failed for good (the message says why).
    Failed(String),
}

/// One member of the broker's group, subscribed to one topic. Dropping it
/// leaves the group.
#[derive(Debug)]
pub(super) struct Membership {
    state_rx: watch::Receiver<MemberState>,
    /// Rejoin now (a commit found the generation stale).
    rejoin: Arc<Notify>,
    /// Dropped with the membership: the task leaves the group and ends.
    _stop_tx: oneshot::Sender<()>,
}

impl Membership {
    /// Joins the group subscribed to `topic` and returns once a generation
    /// is complete (the group may wait for its other members to rejoin:
    /// up to the rebalance timeout).
    ///
    /// # Errors
    /// The coordinator refused us for good (an assignor the group's members
    /// do not share, authorisation, a full group) or the group could not be
    /// joined within the rebalance timeout.
    pub async fn join(broker: Arc<KafkaBroker>, topic: QueueName) -> Result<Self> {
        let (state_tx, mut state_rx) = watch::channel(MemberState::Joining);
        let (stop_tx, stop_rx) = oneshot::channel();
        let rejoin = Arc::new(Notify::new());
        let protocols = protocols_for(&broker, &topic).await;
        let task = MemberTask {
            broker: broker.clone(),
            topic: topic.clone(),
            protocols,
            conn: None,
            member_id: String::new(),
            owned: BTreeSet::new(),
            generation: -1,
            state_tx,
            rejoin: rejoin.clone(),
        };
        tokio::spawn(task.run(stop_rx));
        let deadline = broker.config.rebalance_timeout + broker.config.session_timeout;
        let first = tokio::time::timeout(deadline, async {
            loop {
                match &*state_rx.borrow_and_update() {
                    MemberState::Member(_) => return Ok(()),
                    MemberState::Failed(m) => return Err(m.clone()),
                    MemberState::Joining => {}
                }
                if state_rx.changed().await.is_err() {
                    return Err("the membership task ended".to_owned());
                }
            }
        })
        .await;
        let err = |message: String| BrokerError::Operation {
            kind: BrokerKind::Kafka,
            queue: topic.clone(),
            op: "join group",
            message: format!("group {}: {message}", broker.config.group),
        };
        match first {
            Ok(Ok(())) => Ok(Self {
                state_rx,
                rejoin,
                _stop_tx: stop_tx,
            }),
            Ok(Err(m)) => Err(err(m)),
            Err(_) => Err(err(format!("no generation within {deadline:?}"))),
        }
    }

    /// The current generation, `None` while (re)joining.
    pub fn current(&self) -> Option<Arc<Generation>> {
        match &*self.state_rx.borrow() {
            MemberState::Member(g) => Some(g.clone()),
            _ => None,
        }
    }

    /// The generation has changed since the last call (marks it seen).
    pub fn has_changed(&mut self) -> bool {
        let changed = self.state_rx.has_changed().unwrap_or(false);
        self.state_rx.mark_unchanged();
        changed
    }

    /// Waits for the state to change (a rejoin completing).
    pub async fn changed(&mut self) {
        if self.state_rx.changed().await.is_err() {
            // The task ended (never, while we hold the stop sender).
            std::future::pending::<()>().await;
        }
    }

    /// Waits for a generation other than `stale` (after a commit found it
    /// over: asks the task to rejoin now if it still is in `stale`).
    pub async fn next_generation(&mut self, stale: i32) -> Arc<Generation> {
        if self.current().is_some_and(|g| g.id == stale) {
            self.rejoin.notify_one();
        }
        loop {
            if let MemberState::Member(g) = &*self.state_rx.borrow_and_update()
                && g.id != stale
            {
                return g.clone();
            }
            self.changed().await;
        }
    }
}

/// The assignors to announce: the one the group runs first, if it is one
/// of ours (DescribeGroups), so that joining does not change it.
async fn protocols_for(broker: &KafkaBroker, topic: &QueueName) -> Vec<&'static str> {
    let mut protocols = PROTOCOLS.to_vec();
    let running = match describe(broker, topic).await {
        Ok(d) => d.protocol,
        Err(e) => {
            tracing::debug!(group = %broker.config.group, error = %e, "describing the group failed");
            String::new()
        }
    };
    if let Some(i) = protocols.iter().position(|p| *p == running) {
        let p = protocols.remove(i);
        protocols.insert(0, p);
    }
    protocols
}

/// A group as DescribeGroups shows it.
#[derive(Debug, Clone, Default)]
pub struct GroupDescription {
    /// `Stable`, `PreparingRebalance`, `CompletingRebalance`, `Empty`, `Dead`.
    pub state: String,
    /// `consumer` for a consumer group.
    pub protocol_type: String,
    /// The assignor it runs (tansu 0.6 leaves it empty).
    pub protocol: String,
    /// Per member: its id and its assignment, topic -> partitions (tansu
    /// 0.6 reports no assignments: empty there).
    pub members: Vec<(String, BTreeMap<String, Vec<i32>>)>,
}

/// DescribeGroups of the broker's group.
pub(super) async fn describe(broker: &KafkaBroker, topic: &QueueName) -> Result<GroupDescription> {
    let req = DescribeGroupsRequest::default().with_groups(vec![GroupId(StrBytes::from_string(
        broker.config.group.clone(),
    ))]);
    let resp = broker
        .to_coordinator(topic, "describe group", &req, 0, 5, |r| {
            r.groups.first().map_or(0, |g| g.error_code)
        })
        .await?;
    let Some(g) = resp.groups.into_iter().next() else {
        return Ok(GroupDescription::default());
    };
    if g.error_code != 0 {
        return Err(BrokerError::Operation {
            kind: BrokerKind::Kafka,
            queue: topic.clone(),
            op: "describe group",
            message: code_text(g.error_code),
        });
    }
    let members = g
        .members
        .into_iter()
        .map(|m| {
            let assigned = decode_assignment(&m.member_assignment)
                .map(|a| {
                    a.assigned_partitions
                        .into_iter()
                        .map(|t| (t.topic.0.to_string(), t.partitions))
                        .collect()
                })
                .unwrap_or_default();
            (m.member_id.to_string(), assigned)
        })
        .collect();
    Ok(GroupDescription {
        state: g.group_state.to_string(),
        protocol_type: g.protocol_type.to_string(),
        protocol: g.protocol_data.to_string(),
        members,
    })
}

/// Why a join did not complete.
enum JoinError {
    /// Join again at once (the group moved on meanwhile).
    Again,
    /// Join again after a pause.
    Retry(String),
    /// The coordinator refuses us; retrying will not help.
    Fatal(String),
}

/// How a run of heartbeats ended.
enum Beats {
    /// The membership was dropped.
    Stop,
    /// Rejoin (a rebalance, or a commit found the generation stale).
    Rejoin,
    /// The coordinator no longer knows us: join as a new member.
    Fenced,
}

struct MemberTask {
    broker: Arc<KafkaBroker>,
    topic: QueueName,
    protocols: Vec<&'static str>,
    /// Our own connection to the coordinator: a JoinGroup waits for the
    /// other members, and must not hold up shared requests meanwhile.
    conn: Option<Arc<Conn>>,
    member_id: String,
    /// The partitions we owned in the last generation.
    owned: BTreeSet<i32>,
    generation: i32,
    state_tx: watch::Sender<MemberState>,
    rejoin: Arc<Notify>,
}

impl MemberTask {
    async fn run(mut self, mut stop_rx: oneshot::Receiver<()>) {
        let mut joined = false;
        loop {
            self.state_tx.send_replace(MemberState::Joining);
            let attempt = tokio::select! {
                r = self.join_and_sync() => r,
                _ = &mut stop_rx => break,
            };
            match attempt {
                Ok(generation) => {
                    joined = true;
                    // Under cooperative-sticky, revoked partitions are
                    // assigned once we rejoin without them.
                    let revoked = self.owned.difference(&generation.partitions).count() > 0;
                    self.owned = generation.partitions.clone();
                    self.generation = generation.id;
                    let cooperative = generation.protocol == COOPERATIVE;
                    self.state_tx
                        .send_replace(MemberState::Member(Arc::new(generation)));
                    if revoked && cooperative {
                        continue;
                    }
                    match self.heartbeats(&mut stop_rx).await {
                        Beats::Stop => break,
                        Beats::Rejoin => {}
                        Beats::Fenced => self.forget(),
                    }
                }
                Err(JoinError::Again) => {}
                Err(JoinError::Fatal(m)) if !joined => {
                    self.state_tx.send_replace(MemberState::Failed(m));
                    return;
                }
                Err(JoinError::Fatal(m) | JoinError::Retry(m)) => {
                    tracing::warn!(group = %self.broker.config.group, topic = %self.topic, error = %m, "joining the consumer group failed; retrying");
                    self.conn = None;
                    tokio::select! {
                        () = tokio::time::sleep(super::RETRY_PAUSE) => {}
                        _ = &mut stop_rx => break,
                    }
                }
            }
        }
        self.leave().await;
    }

    /// Forgets our member id: the next join is a new member's.
    fn forget(&mut self) {
        self.member_id.clear();
        self.owned.clear();
        self.generation = -1;
    }

    /// The connection to the coordinator (found again after a failure).
    async fn conn(&mut self) -> std::result::Result<Arc<Conn>, JoinError> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let addr = match self
            .broker
            .cluster()
            .coordinator_addr(&self.broker.config.group)
            .await
        {
            Ok(a) => a,
            Err(CoordError::Code(GROUP_AUTHORIZATION_FAILED)) => {
                return Err(JoinError::Fatal(code_text(GROUP_AUTHORIZATION_FAILED)));
            }
            Err(e) => return Err(JoinError::Retry(e.to_string())),
        };
        let conn = Arc::new(
            Conn::connect(&addr)
                .await
                .map_err(|e| JoinError::Retry(e.to_string()))?,
        );
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    /// Sends on our coordinator connection at the highest version in
    /// `min..=max`, built by `build` for that version.
    async fn send<R: Request>(
        &mut self,
        min: i16,
        max: i16,
        build: impl FnOnce(i16) -> R,
    ) -> std::result::Result<R::Response, JoinError> {
        let conn = self.conn().await?;
        let version = conn
            .version::<R>(min, max)
            .map_err(|e| JoinError::Fatal(e.to_string()))?;
        match conn.send(&build(version), version).await {
            Ok(r) => Ok(r),
            Err(e @ ConnError::Io { .. }) => {
                self.conn = None;
                Err(JoinError::Retry(e.to_string()))
            }
            Err(e) => Err(JoinError::Fatal(e.to_string())),
        }
    }

    /// A coordinator error: find it again.
    fn coordinator_moved(&mut self, code: i16) -> Option<JoinError> {
        matches!(
            code,
            NOT_COORDINATOR | COORDINATOR_NOT_AVAILABLE | COORDINATOR_LOAD_IN_PROGRESS
        )
        .then(|| {
            self.conn = None;
            JoinError::Retry(code_text(code))
        })
    }

    async fn join_and_sync(&mut self) -> std::result::Result<Generation, JoinError> {
        let config = self.broker.config.clone();
        let group = GroupId(StrBytes::from_string(config.group.clone()));
        let metadata = subscription(&self.topic, &self.owned, self.generation)?;
        let session = millis(config.session_timeout);
        let rebalance = millis(config.rebalance_timeout);
        let join = loop {
            let member_id = StrBytes::from_string(self.member_id.clone());
            let protocols = self
                .protocols
                .iter()
                .map(|p| {
                    JoinGroupRequestProtocol::default()
                        .with_name(StrBytes::from_static_str(p))
                        .with_metadata(metadata.clone())
                })
                .collect::<Vec<_>>();
            // v2..=7: v8 adds a reason, v9 is for static members.
            let resp = self
                .send(2, 7, |_| {
                    JoinGroupRequest::default()
                        .with_group_id(group.clone())
                        .with_session_timeout_ms(session)
                        .with_rebalance_timeout_ms(rebalance)
                        .with_member_id(member_id)
                        .with_protocol_type(StrBytes::from_static_str(PROTOCOL_TYPE))
                        .with_protocols(protocols)
                })
                .await?;
            match resp.error_code {
                0 => break resp,
                MEMBER_ID_REQUIRED => self.member_id = resp.member_id.to_string(),
                UNKNOWN_MEMBER_ID => self.forget(),
                INCONSISTENT_GROUP_PROTOCOL => {
                    return Err(JoinError::Fatal(format!(
                        "{}: the group's members announce no assignor in common with ours \
                         ({}), or the group is not a consumer group",
                        code_text(resp.error_code),
                        self.protocols.join(", ")
                    )));
                }
                code @ (GROUP_AUTHORIZATION_FAILED
                | INVALID_SESSION_TIMEOUT
                | GROUP_MAX_SIZE_REACHED) => {
                    return Err(JoinError::Fatal(code_text(code)));
                }
                code => {
                    return Err(self
                        .coordinator_moved(code)
                        .unwrap_or_else(|| JoinError::Retry(code_text(code))));
                }
            }
        };
        self.member_id = join.member_id.to_string();
        let protocol = join
            .protocol_name
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let assignments = if join.leader == join.member_id {
            self.assign(&join.members, &protocol).await?
        } else {
            Vec::new()
        };
        let member_id = join.member_id.clone();
        let protocol_name = join.protocol_name.clone();
        let resp = self
            .send(1, 5, |version| {
                let req = SyncGroupRequest::default()
                    .with_group_id(group.clone())
                    .with_generation_id(join.generation_id)
                    .with_member_id(member_id)
                    .with_assignments(assignments);
                if version >= 5 {
                    req.with_protocol_type(Some(StrBytes::from_static_str(PROTOCOL_TYPE)))
                        .with_protocol_name(protocol_name)
                } else {
                    req
                }
            })
            .await?;
        match resp.error_code {
            0 => {}
            REBALANCE_IN_PROGRESS | ILLEGAL_GENERATION => return Err(JoinError::Again),
            UNKNOWN_MEMBER_ID | FENCED_INSTANCE_ID => {
                self.forget();
                return Err(JoinError::Again);
            }
            code => {
                return Err(self
                    .coordinator_moved(code)
                    .unwrap_or_else(|| JoinError::Retry(code_text(code))));
            }
        }
        let partitions = decode_assignment(&resp.assignment)
            .map_err(JoinError::Retry)?
            .assigned_partitions
            .into_iter()
            .filter(|t| t.topic.0.as_str() == self.topic.0)
            .flat_map(|t| t.partitions)
            .collect();
        tracing::debug!(group = %config.group, topic = %self.topic, generation = join.generation_id, member = %self.member_id, ?partitions, "joined the consumer group");
        Ok(Generation {
            id: join.generation_id,
            member_id: self.member_id.clone(),
            protocol,
            partitions,
        })
    }

    /// As the leader: every member's assignment (see the module docs).
    async fn assign(
        &mut self,
        members: &[JoinGroupResponseMember],
        protocol: &str,
    ) -> std::result::Result<Vec<SyncGroupRequestAssignment>, JoinError> {
        let mut subs: Vec<(String, ConsumerProtocolSubscription)> = Vec::new();
        for m in members {
            let sub = decode_subscription(&m.metadata).map_err(|e| {
                JoinError::Retry(format!("member {}'s subscription: {e}", m.member_id))
            })?;
            subs.push((m.member_id.to_string(), sub));
        }
        subs.sort_by(|a, b| a.0.cmp(&b.0));
        let topics: BTreeSet<String> = subs
            .iter()
            .flat_map(|(_, s)| s.topics.iter().map(ToString::to_string))
            .collect();
        let mut counts = BTreeMap::new();
        for t in &topics {
            let count = match self.broker.cluster().layout(t, true).await {
                Ok(Some(l)) => i32::try_from(l.leaders.len()).unwrap_or(0),
                Ok(None) => 0,
                Err(e) => return Err(JoinError::Retry(e.to_string())),
            };
            counts.insert(t.clone(), count);
        }
        let plan = plan_assignment(&subs, &counts, protocol == COOPERATIVE);
        let mut out = Vec::new();
        for (member, _) in &subs {
            let assigned = plan
                .get(member)
                .map(|by_topic| {
                    by_topic
                        .iter()
                        .map(|(t, ps)| {
                            AssignedPartitions::default()
                                .with_topic(TopicName(StrBytes::from_string(t.clone())))
                                .with_partitions(ps.iter().copied().collect())
                        })
                        .collect()
                })
                .unwrap_or_default();
            let assignment =
                ConsumerProtocolAssignment::default().with_assigned_partitions(assigned);
            let mut buf = BytesMut::new();
            buf.put_i16(ASSIGNMENT_VERSION);
            assignment
                .encode(&mut buf, ASSIGNMENT_VERSION)
                .map_err(|e| JoinError::Fatal(format!("encoding an assignment: {e}")))?;
            out.push(
                SyncGroupRequestAssignment::default()
                    .with_member_id(StrBytes::from_string(member.clone()))
                    .with_assignment(buf.freeze()),
            );
        }
        Ok(out)
    }

    async fn heartbeats(&mut self, stop_rx: &mut oneshot::Receiver<()>) -> Beats {
        let interval = self.broker.config.heartbeat_interval;
        let group = GroupId(StrBytes::from_string(self.broker.config.group.clone()));
        loop {
            tokio::select! {
                _ = &mut *stop_rx => return Beats::Stop,
                () = self.rejoin.notified() => return Beats::Rejoin,
                () = tokio::time::sleep(interval) => {}
            }
            let (generation, member_id) = (
                self.generation,
                StrBytes::from_string(self.member_id.clone()),
            );
            let resp = self
                .send(0, 4, |_| {
                    HeartbeatRequest::default()
                        .with_group_id(group.clone())
                        .with_generation_id(generation)
                        .with_member_id(member_id)
                })
                .await;
            let code = match resp {
                Ok(r) => r.error_code,
                Err(JoinError::Retry(m) | JoinError::Fatal(m)) => {
                    // The coordinator is found again at the next beat; past
                    // the session timeout it answers UNKNOWN_MEMBER_ID.
                    tracing::debug!(group = %self.broker.config.group, error = %m, "heartbeat failed");
                    continue;
                }
                Err(JoinError::Again) => continue,
            };
            match code {
                0 => {}
                REBALANCE_IN_PROGRESS | ILLEGAL_GENERATION => return Beats::Rejoin,
                UNKNOWN_MEMBER_ID | FENCED_INSTANCE_ID => return Beats::Fenced,
                code => {
                    if self.coordinator_moved(code).is_none() {
                        tracing::debug!(group = %self.broker.config.group, error = %code_text(code), "heartbeat refused");
                    }
                }
            }
        }
    }

    /// Before leaving: if the group is rebalancing, rejoin first (bounded
    /// by the rebalance timeout), so that we leave a formed group. tansu
    /// (0.6, and its successor's coordinator) keeps a leader that leaves a
    /// group while it rebalances as the group's leader: every later
    /// generation names the departed member as leader, nobody assigns, and
    /// every SyncGroup is answered `REBALANCE_IN_PROGRESS` for good. A
    /// leader leaving a formed group is replaced. Kafka needs none of this
    /// (it is one Heartbeat there).
    async fn settle_before_leaving(&mut self) {
        let group = GroupId(StrBytes::from_string(self.broker.config.group.clone()));
        let (generation, member_id) = (
            self.generation,
            StrBytes::from_string(self.member_id.clone()),
        );
        let code = match self
            .send(0, 4, |_| {
                HeartbeatRequest::default()
                    .with_group_id(group)
                    .with_generation_id(generation)
                    .with_member_id(member_id)
            })
            .await
        {
            Ok(r) => r.error_code,
            Err(_) => return,
        };
        if !matches!(code, REBALANCE_IN_PROGRESS | ILLEGAL_GENERATION) {
            return;
        }
        let wait = self.broker.config.rebalance_timeout;
        match tokio::time::timeout(wait, self.join_and_sync()).await {
            Ok(Ok(g)) => {
                tracing::debug!(group = %self.broker.config.group, generation = g.id, "rejoined the rebalancing group before leaving it");
                self.generation = g.id;
            }
            Ok(Err(_)) | Err(_) => {
                tracing::debug!(group = %self.broker.config.group, "could not rejoin the rebalancing group before leaving it");
            }
        }
    }

    /// LeaveGroup, best effort: the coordinator would otherwise drop us
    /// after the session timeout, delaying the other members' rebalance.
    async fn leave(&mut self) {
        if self.member_id.is_empty() {
            return;
        }
        self.settle_before_leaving().await;
        let group = GroupId(StrBytes::from_string(self.broker.config.group.clone()));
        let member_id = StrBytes::from_string(self.member_id.clone());
        let resp = self
            .send(0, 4, |version| {
                let req = LeaveGroupRequest::default().with_group_id(group);
                if version >= 3 {
                    req.with_members(vec![MemberIdentity::default().with_member_id(member_id)])
                } else {
                    req.with_member_id(member_id)
                }
            })
            .await;
        match resp {
            Ok(r) if r.error_code == 0 => {
                tracing::debug!(group = %self.broker.config.group, member = %self.member_id, "left the consumer group");
            }
            Ok(r) => {
                tracing::debug!(group = %self.broker.config.group, error = %code_text(r.error_code), "leaving the group refused");
            }
            Err(JoinError::Retry(m) | JoinError::Fatal(m)) => {
                tracing::debug!(group = %self.broker.config.group, error = %m, "leaving the group failed");
            }
            Err(JoinError::Again) => {}
        }
    }
}

/// Per member, per topic: the partitions it gets (see the module docs).
fn plan_assignment(
    subs: &[(String, ConsumerProtocolSubscription)],
    counts: &BTreeMap<String, i32>,
    cooperative: bool,
) -> BTreeMap<String, BTreeMap<String, BTreeSet<i32>>> {
    let mut plan: BTreeMap<String, BTreeMap<String, BTreeSet<i32>>> = BTreeMap::new();
    for (topic, count) in counts {
        let subscribers: Vec<&(String, ConsumerProtocolSubscription)> = subs
            .iter()
            .filter(|(_, s)| s.topics.iter().any(|t| t.as_str() == topic))
            .collect();
        if subscribers.is_empty() || *count <= 0 {
            continue;
        }
        let n = usize::try_from(*count).unwrap_or(0);
        // The fair share, rounded up.
        let quota = n.div_ceil(subscribers.len());
        let mut taken: BTreeSet<i32> = BTreeSet::new();
        let mut released: BTreeSet<i32> = BTreeSet::new();
        let mut got: BTreeMap<&str, BTreeSet<i32>> = BTreeMap::new();
        for (member, sub) in &subscribers {
            let mine = got.entry(member.as_str()).or_default();
            let owned = sub
                .owned_partitions
                .iter()
                .filter(|o| o.topic.0.as_str() == topic)
                .flat_map(|o| o.partitions.iter().copied());
            for p in owned {
                if p < 0 || p >= *count || taken.contains(&p) {
                    continue;
                }
                if mine.len() < quota {
                    mine.insert(p);
                    taken.insert(p);
                } else {
                    released.insert(p);
                }
            }
        }
        for p in 0..*count {
            if taken.contains(&p) || (cooperative && released.contains(&p)) {
                continue;
            }
            // The subscriber with the fewest, the first in member order on a tie.
            if let Some(mine) = got.values_mut().min_by_key(|s| s.len()) {
                mine.insert(p);
            }
        }
        for (member, partitions) in got {
            if !partitions.is_empty() {
                plan.entry(member.to_owned())
                    .or_default()
                    .insert(topic.clone(), partitions);
            }
        }
    }
    plan
}

/// Our subscription: the topic, the partitions we own, our generation.
fn subscription(
    topic: &QueueName,
    owned: &BTreeSet<i32>,
    generation: i32,
) -> std::result::Result<Bytes, JoinError> {
    let name = StrBytes::from_string(topic.0.clone());
    let owned = if owned.is_empty() {
        Vec::new()
    } else {
        vec![
            OwnedPartitions::default()
                .with_topic(TopicName(name.clone()))
                .with_partitions(owned.iter().copied().collect()),
        ]
    };
    let sub = ConsumerProtocolSubscription::default()
        .with_topics(vec![name])
        .with_owned_partitions(owned)
        .with_generation_id(generation);
    let mut buf = BytesMut::new();
    buf.put_i16(SUBSCRIPTION_VERSION);
    sub.encode(&mut buf, SUBSCRIPTION_VERSION)
        .map_err(|e| JoinError::Fatal(format!("encoding the subscription: {e}")))?;
    Ok(buf.freeze())
}

/// A member's subscription; a newer version than we know is read as the
/// newest we know (later versions only append fields).
fn decode_subscription(bytes: &Bytes) -> std::result::Result<ConsumerProtocolSubscription, String> {
    let mut buf = bytes.clone();
    if buf.remaining() < 2 {
        return Err("empty".into());
    }
    let version = buf
        .get_i16()
        .clamp(0, <ConsumerProtocolSubscription as Message>::VERSIONS.max);
    ConsumerProtocolSubscription::decode(&mut buf, version).map_err(|e| e.to_string())
}

/// An assignment; empty bytes are no partitions.
fn decode_assignment(bytes: &Bytes) -> std::result::Result<ConsumerProtocolAssignment, String> {
    let mut buf = bytes.clone();
    if buf.remaining() < 2 {
        return Ok(ConsumerProtocolAssignment::default());
    }
    let version = buf
        .get_i16()
        .clamp(0, <ConsumerProtocolAssignment as Message>::VERSIONS.max);
    ConsumerProtocolAssignment::decode(&mut buf, version).map_err(|e| e.to_string())
}

/// Milliseconds as the protocol's i32.
fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(topics: &[&str], owned: &[(&str, &[i32])]) -> ConsumerProtocolSubscription {
        ConsumerProtocolSubscription::default()
            .with_topics(
                topics
                    .iter()
                    .map(|t| StrBytes::from_string((*t).to_owned()))
                    .collect(),
            )
            .with_owned_partitions(
                owned
                    .iter()
                    .map(|(t, ps)| {
                        OwnedPartitions::default()
                            .with_topic(TopicName(StrBytes::from_string((*t).to_owned())))
                            .with_partitions(ps.to_vec())
                    })
                    .collect(),
            )
    }

    fn of(
        plan: &BTreeMap<String, BTreeMap<String, BTreeSet<i32>>>,
        member: &str,
        topic: &str,
    ) -> Vec<i32> {
        plan.get(member)
            .and_then(|t| t.get(topic))
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    #[test]
    fn each_member_gets_only_the_partitions_of_its_own_topics() {
        let subs = vec![
            ("pod-a".to_owned(), sub(&["orders.remora.workload"], &[])),
            ("pod-b".to_owned(), sub(&["orders.remora.workload"], &[])),
            ("router".to_owned(), sub(&["orders"], &[])),
        ];
        let counts = BTreeMap::from([
            ("orders".to_owned(), 3),
            ("orders.remora.workload".to_owned(), 3),
        ]);
        let plan = plan_assignment(&subs, &counts, false);
        assert_eq!(of(&plan, "router", "orders"), vec![0, 1, 2]);
        assert_eq!(
            of(&plan, "router", "orders.remora.workload"),
            Vec::<i32>::new()
        );
        let a = of(&plan, "pod-a", "orders.remora.workload");
        let b = of(&plan, "pod-b", "orders.remora.workload");
        assert_eq!((a.len(), b.len()), (2, 1));
        assert!(of(&plan, "pod-a", "orders").is_empty());
    }

    #[test]
    fn owned_partitions_stay_up_to_the_fair_share() {
        // pod-a owned all three; the router joins on the same topic.
        let subs = vec![
            (
                "pod-a".to_owned(),
                sub(&["orders"], &[("orders", &[0, 1, 2])]),
            ),
            ("router".to_owned(), sub(&["orders"], &[])),
        ];
        let counts = BTreeMap::from([("orders".to_owned(), 3)]);
        // Eager: the released one goes to the router at once.
        let plan = plan_assignment(&subs, &counts, false);
        assert_eq!(of(&plan, "pod-a", "orders"), vec![0, 1]);
        assert_eq!(of(&plan, "router", "orders"), vec![2]);
        // Cooperative: it waits one round (pod-a revokes it first).
        let plan = plan_assignment(&subs, &counts, true);
        assert_eq!(of(&plan, "pod-a", "orders"), vec![0, 1]);
        assert!(of(&plan, "router", "orders").is_empty());
        // A partition claimed twice goes to the first claimer only.
        let subs = vec![
            ("a".to_owned(), sub(&["t"], &[("t", &[0])])),
            ("b".to_owned(), sub(&["t"], &[("t", &[0])])),
        ];
        let plan = plan_assignment(&subs, &BTreeMap::from([("t".to_owned(), 2)]), true);
        assert_eq!(of(&plan, "a", "t"), vec![0]);
        assert_eq!(of(&plan, "b", "t"), vec![1]);
    }

    #[test]
    fn subscriptions_and_assignments_round_trip() {
        let bytes = subscription(&QueueName("orders".into()), &BTreeSet::from([1, 2]), 7)
            .ok()
            .unwrap();
        let sub = decode_subscription(&bytes).unwrap();
        assert_eq!(sub.topics[0].as_str(), "orders");
        assert_eq!(sub.owned_partitions[0].partitions, vec![1, 2]);
        assert_eq!(sub.generation_id, 7);
        assert!(
            decode_assignment(&Bytes::new())
                .unwrap()
                .assigned_partitions
                .is_empty()
        );
    }
}
