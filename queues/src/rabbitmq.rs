//! RabbitMQ (AMQP 0-9-1, with lapin) behind the [`Broker`] seam.
//!
//! # Connections
//! Two connections per [`RabbitBroker`]: one publishes (with publisher
//! confirms, on one channel), the other consumes and runs the queue
//! operations. RabbitMQ's flow control throttles publishing connections by
//! no longer reading from them; on a shared connection that would also hold
//! back the acks of the consumer. Each consumer has its own channel (its
//! prefetch is per channel). A broken connection is replaced on the next call
//! (never in the middle of one).
//!
//! # What `inspect` can learn without the management plugin
//! AMQP's passive `queue.declare` only says whether a queue exists, how many
//! messages are ready and how many consumers it has. The declared flags and
//! arguments are learned from the broker itself: a redeclaration whose
//! properties differ from the queue's is refused with `PRECONDITION_FAILED -
//! inequivalent arg 'x-queue-type' for queue 'orders' in vhost '/': received
//! none but current is the value 'quorum' of type 'longstr'`. `inspect`
//! redeclares with its current guess, each time on a fresh channel (a refusal
//! closes it), and takes the broker's correction, until the broker accepts
//! the declaration as equivalent (at most [`MAX_PROBES`] rounds). This learns
//! exactly what RabbitMQ compares on redeclaration: `durable`, `auto_delete`,
//! and the arguments it checks (`x-queue-type`, `x-dead-letter-exchange`,
//! `x-dead-letter-routing-key`, `x-dead-letter-strategy`, `x-max-length`,
//! `x-max-length-bytes`, `x-message-ttl`, `x-expires`, `x-max-priority`,
//! `x-overflow`, `x-delivery-limit`, `x-single-active-consumer`, ...).
//! Arguments RabbitMQ does not compare (custom `x-` names, some
//! version-specific ones) and properties applied by *policies* are not
//! declared arguments and cannot be learned this way: the registration
//! supplies them ([`QueueProps`] given to the router instead of, or merged
//! over, what `inspect` read), and a policy whose pattern matches the
//! original's name prefix also matches the temporary queues
//! (`<original>.remora.*`, see `router::temp_queue_name`).
//!
//! # What `create_like` copies
//! `durable` and every `x-` argument of the [`QueueProps`] (typed again by
//! [`props::typed_arg`]), except `x-expires` ([`props::NOT_COPIED`]).
//! Temporary queues are never `exclusive` nor `auto_delete`: they must
//! outlive their consumers, or a SIGKILLed session would take its messages
//! with it. Streams (`x-queue-type = stream`) are refused: consuming one does
//! not remove messages, so there is nothing to split.

pub mod props;

use crate::broker::{
    Broker, BrokerError, BrokerKind, Consumer, Delivery, Message, QueueDepth, QueueName,
    QueueProps, Result,
};
use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;

pub use lapin::BasicProperties as RabbitProperties;
pub use lapin::types::{AMQPValue, FieldTable as RabbitTable};

/// The most redeclarations `inspect` tries before giving up.
pub const MAX_PROBES: usize = 32;

const KIND: BrokerKind = BrokerKind::Rabbitmq;

/// A RabbitMQ endpoint: `amqp://user:password@host:5672/vhost` (the vhost
/// percent-encoded: `%2f` for `/`).
pub struct RabbitBroker {
    /// The URI with credentials; never printed.
    uri: String,
    /// The URI without credentials, for errors and logs.
    endpoint: String,
    /// Consumers and queue operations.
    ops: Mutex<Option<Arc<Connection>>>,
    /// The publishing connection and its confirm-mode channel. Held across
    /// the sending of a publish (not its confirmation): tokio's mutex is
    /// fair, so publishes go on the wire in the order their calls took it.
    publisher: Mutex<Option<Publisher>>,
}

struct Publisher {
    /// Kept so the channel's connection stays open.
    _conn: Connection,
    channel: Channel,
}

impl fmt::Debug for RabbitBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitBroker")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// What a RabbitMQ [`Message::native`] holds: the message's AMQP properties
/// (typed headers, content type, delivery mode, message id, priority,
/// expiration, ...), published again unchanged.
#[derive(Debug, Clone)]
pub struct RabbitNative {
    /// The properties as received.
    pub properties: BasicProperties,
}

/// The message for `body` with `properties`, as a consumer would receive it
/// (headers rendered as text for filters). Publishing it sends `properties`
/// unchanged.
pub fn message(body: Vec<u8>, properties: BasicProperties) -> Message {
    Message {
        headers: props::headers_text(properties.headers().as_ref()),
        body,
        order_key: None,
        native: Box::new(RabbitNative { properties }),
    }
}

/// The AMQP properties `message` carries: its own if it came from RabbitMQ,
/// else its text headers as string headers on a persistent message.
pub fn properties_of(message: &Message) -> BasicProperties {
    if let Some(native) = message.native.downcast_ref::<RabbitNative>() {
        return native.properties.clone();
    }
    let mut headers = FieldTable::default();
    for (k, v) in &message.headers {
        if let Ok(k) = ShortString::try_new(k.as_str()) {
            headers.insert(k, AMQPValue::LongString(v.as_str().into()));
        }
    }
    BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2)
}

impl RabbitBroker {
    /// Connects to `uri` (`amqp://user:password@host:port/vhost`) and
    /// checks that the broker answers.
    ///
    /// # Errors
    /// [`BrokerError::Connection`] when the broker cannot be reached or
    /// refuses the credentials.
    pub async fn connect(uri: &str) -> Result<Self> {
        let broker = Self {
            uri: uri.to_owned(),
            endpoint: redact(uri),
            ops: Mutex::new(None),
            publisher: Mutex::new(None),
        };
        broker.ops_conn().await?;
        Ok(broker)
    }

    /// The URI without its credentials.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn connect_new(&self, role: &str) -> Result<Connection> {
        let props = ConnectionProperties::default()
            .with_connection_name(format!("remora-queues {role}").into());
        Connection::connect(&self.uri, props)
            .await
            .map_err(|e| self.connection_error(format!("connecting: {e}")))
    }

    fn connection_error(&self, message: String) -> BrokerError {
        BrokerError::Connection {
            kind: KIND,
            endpoint: self.endpoint.clone(),
            message,
        }
    }

    /// The operations connection, reconnected if it broke.
    async fn ops_conn(&self) -> Result<Arc<Connection>> {
        let mut guard = self.ops.lock().await;
        if let Some(conn) = guard.as_ref()
            && conn.status().connected()
        {
            return Ok(conn.clone());
        }
        let conn = Arc::new(self.connect_new("ops").await?);
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// A fresh channel for one queue operation (a refused operation closes
    /// its channel, so none is shared).
    async fn ops_channel(&self) -> Result<Channel> {
        let conn = self.ops_conn().await?;
        conn.create_channel()
            .await
            .map_err(|e| self.connection_error(format!("opening a channel: {e}")))
    }

    /// Maps a lapin error on `queue` during `op`.
    fn error(&self, e: &lapin::Error, queue: &QueueName, op: &'static str) -> BrokerError {
        match e.kind() {
            ErrorKind::ProtocolError(amqp)
                if *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) =>
            {
                BrokerError::NoQueue {
                    kind: KIND,
                    queue: queue.clone(),
                }
            }
            ErrorKind::ProtocolError(amqp) => BrokerError::Operation {
                kind: KIND,
                queue: queue.clone(),
                op,
                message: amqp.get_message().as_str().to_owned(),
            },
            ErrorKind::IOError(_)
            | ErrorKind::InvalidConnectionState(_)
            | ErrorKind::MissingHeartbeatError => {
                self.connection_error(format!("{op} on queue {queue}: {e}"))
            }
            _ => BrokerError::Operation {
                kind: KIND,
                queue: queue.clone(),
                op,
                message: e.to_string(),
            },
        }
    }

    fn short(&self, queue: &QueueName, op: &'static str) -> Result<ShortString> {
        ShortString::try_new(queue.0.as_str()).map_err(|_| BrokerError::Operation {
            kind: KIND,
            queue: queue.clone(),
            op,
            message: "a RabbitMQ queue name has at most 255 bytes".into(),
        })
    }

    /// The publishing channel, reconnected if it broke.
    async fn publish_channel(&self, slot: &mut Option<Publisher>) -> Result<Channel> {
        if let Some(p) = slot.as_ref()
            && p.channel.status().connected()
        {
            return Ok(p.channel.clone());
        }
        *slot = None;
        let conn = self.connect_new("publisher").await?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| self.connection_error(format!("opening the publish channel: {e}")))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| self.connection_error(format!("enabling publisher confirms: {e}")))?;
        *slot = Some(Publisher {
            _conn: conn,
            channel: channel.clone(),
        });
        Ok(channel)
    }

    /// One redeclaration of `queue` with the guessed properties; `Ok(None)`
    /// when the broker accepts it as equivalent, else what the broker said
    /// differs.
    async fn probe(
        &self,
        queue: &QueueName,
        durable: bool,
        auto_delete: bool,
        args: &FieldTable,
    ) -> Result<Option<props::Current>> {
        let name = self.short(queue, "inspect")?;
        let channel = self.ops_channel().await?;
        let options = QueueDeclareOptions {
            passive: false,
            durable,
            exclusive: false,
            auto_delete,
            nowait: false,
        };
        match channel.queue_declare(name, options, args.clone()).await {
            Ok(_) => Ok(None),
            Err(e) => {
                if let ErrorKind::ProtocolError(amqp) = e.kind()
                    && *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
                    && let Some(current) = props::parse_inequivalent(amqp.get_message().as_str())
                {
                    return Ok(Some(current));
                }
                Err(self.error(&e, queue, "inspect"))
            }
        }
    }

    /// How many consumers `name` has.
    ///
    /// # Errors
    /// [`BrokerError::NoQueue`] if it does not exist.
    pub async fn consumer_count(&self, name: &QueueName) -> Result<u32> {
        Ok(self.passive(name, "depth").await?.consumer_count())
    }

    async fn passive(&self, name: &QueueName, op: &'static str) -> Result<lapin::Queue> {
        let short = self.short(name, op)?;
        let channel = self.ops_channel().await?;
        channel
            .queue_declare(
                short,
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.error(&e, name, op))
    }
}

/// `amqp://user:secret@host/vhost` without `user:secret@`.
fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}{}", &uri[..scheme + 3], &uri[at + 1..])
        }
        _ => uri.to_owned(),
    }
}

#[async_trait]
impl Broker for RabbitBroker {
    fn kind(&self) -> BrokerKind {
        KIND
    }

    /// See the module docs: passive declare, then redeclarations corrected
    /// by the broker's refusals.
    async fn inspect(&self, queue: &QueueName) -> Result<QueueProps> {
        self.passive(queue, "inspect").await?;
        let mut durable = true;
        let mut auto_delete = false;
        let mut args = FieldTable::default();
        let mut learned: BTreeMap<String, String> = BTreeMap::new();
        for _ in 0..MAX_PROBES {
            let Some(current) = self.probe(queue, durable, auto_delete, &args).await? else {
                let mut props = learned;
                props.insert(props::DURABLE.into(), durable.to_string());
                props.insert(props::AUTO_DELETE.into(), auto_delete.to_string());
                return Ok(QueueProps {
                    name: Some(queue.clone()),
                    props,
                });
            };
            match current {
                props::Current::Flag(flag, value) if flag == props::DURABLE => durable = value,
                props::Current::Flag(flag, value) if flag == props::AUTO_DELETE => {
                    auto_delete = value;
                }
                props::Current::Unset(name) => {
                    let mut kept = FieldTable::default();
                    for (k, v) in args.inner() {
                        if k.as_str() != name {
                            kept.insert(k.clone(), v.clone());
                        }
                    }
                    args = kept;
                    learned.remove(&name);
                }
                props::Current::Value { name, value, ty } => {
                    let Some(typed) = props::value_of_type(&value, &ty) else {
                        return Err(BrokerError::Operation {
                            kind: KIND,
                            queue: queue.clone(),
                            op: "inspect",
                            message: format!(
                                "argument {name} has a value of type {ty} that remora cannot \
                                 copy; give the queue's properties in the registration"
                            ),
                        });
                    };
                    args.insert(name.as_str().into(), typed);
                    learned.insert(name, value);
                }
                props::Current::Flag(flag, _) => {
                    return Err(BrokerError::Operation {
                        kind: KIND,
                        queue: queue.clone(),
                        op: "inspect",
                        message: format!(
                            "the queue is declared with {flag}: it cannot be split (it belongs \
                             to one connection)"
                        ),
                    });
                }
            }
        }
        Err(BrokerError::Operation {
            kind: KIND,
            queue: queue.clone(),
            op: "inspect",
            message: format!(
                "the broker still refused the declaration after {MAX_PROBES} corrections; give \
                 the queue's properties in the registration"
            ),
        })
    }

    async fn create_like(&self, like: &QueueProps, name: &QueueName) -> Result<()> {
        if like.props.get("x-queue-type").map(String::as_str) == Some("stream") {
            return Err(BrokerError::Operation {
                kind: KIND,
                queue: name.clone(),
                op: "declare",
                message: "streams cannot be split: consuming one does not remove messages".into(),
            });
        }
        let durable = like
            .props
            .get(props::DURABLE)
            .is_none_or(|v| v.as_str() != "false");
        let short = self.short(name, "declare")?;
        let channel = self.ops_channel().await?;
        let options = QueueDeclareOptions {
            passive: false,
            durable,
            exclusive: false,
            auto_delete: false,
            nowait: false,
        };
        channel
            .queue_declare(short, options, props::declare_args(&like.props))
            .await
            .map(|_| ())
            .map_err(|e| self.error(&e, name, "declare"))
    }

    /// Deletes only an empty queue without consumers: classic queues with
    /// `if-empty` and `if-unused` (the broker checks atomically); quorum
    /// queues support neither flag (asking is a connection error), so for
    /// them a passive declare checks that no message and no consumer is left
    /// and the delete follows (a message published into the queue between
    /// the two would be lost: nothing publishes into a queue being drained).
    /// A refusal is [`BrokerError::Operation`] with `op: "delete"` and the
    /// caller drains again.
    async fn delete(&self, name: &QueueName) -> Result<()> {
        let short = self.short(name, "delete")?;
        let kind = match self.inspect(name).await {
            Ok(props) => props.props.get("x-queue-type").cloned(),
            Err(BrokerError::NoQueue { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let flags = match kind.as_deref() {
            None | Some("classic") => true,
            Some(_) => {
                let queue = match self.passive(name, "delete").await {
                    Ok(q) => q,
                    Err(BrokerError::NoQueue { .. }) => return Ok(()),
                    Err(e) => return Err(e),
                };
                if queue.message_count() > 0 || queue.consumer_count() > 0 {
                    return Err(BrokerError::Operation {
                        kind: KIND,
                        queue: name.clone(),
                        op: "delete",
                        message: format!(
                            "still holds {} messages and has {} consumers",
                            queue.message_count(),
                            queue.consumer_count()
                        ),
                    });
                }
                false
            }
        };
        let channel = self.ops_channel().await?;
        let options = QueueDeleteOptions {
            if_unused: flags,
            if_empty: flags,
            nowait: false,
        };
        match channel.queue_delete(short, options).await {
            Ok(_) => Ok(()),
            Err(e) => match self.error(&e, name, "delete") {
                BrokerError::NoQueue { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Ready messages from a passive declare; AMQP does not report unacked
    /// ones (`unacked` is `None`).
    async fn depth(&self, name: &QueueName) -> Result<QueueDepth> {
        let queue = self.passive(name, "depth").await?;
        Ok(QueueDepth {
            ready: u64::from(queue.message_count()),
            unacked: None,
        })
    }

    async fn consume(&self, name: &QueueName, prefetch: u16) -> Result<Box<dyn Consumer>> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let short = self.short(name, "consume")?;
        let channel = self.ops_channel().await?;
        channel
            .basic_qos(prefetch.max(1), BasicQosOptions { global: false })
            .await
            .map_err(|e| self.error(&e, name, "consume"))?;
        let stream = channel
            .basic_consume(
                short,
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.error(&e, name, "consume"))?;
        Ok(Box::new(RabbitConsumer {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            queue: name.clone(),
            endpoint: self.endpoint.clone(),
            _channel: channel,
            stream,
        }))
    }

    /// Publishes through the default exchange with `mandatory` set, so a
    /// queue that does not exist is an error ([`BrokerError::NoQueue`]),
    /// not a message silently dropped; a broker nack is
    /// [`BrokerError::Operation`].
    async fn publish(&self, name: &QueueName, message: &Message) -> Result<()> {
        let routing_key = self.short(name, "publish")?;
        let properties = properties_of(message);
        let confirm = {
            let mut slot = self.publisher.lock().await;
            let channel = self.publish_channel(&mut slot).await?;
            let sent = channel
                .basic_publish(
                    ShortString::from(""),
                    routing_key,
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &message.body,
                    properties,
                )
                .await;
            match sent {
                Ok(confirm) => confirm,
                Err(e) => {
                    *slot = None;
                    return Err(self.error(&e, name, "publish"));
                }
            }
        };
        let confirmation = confirm.await.map_err(|e| self.error(&e, name, "publish"))?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_returned)) => Err(BrokerError::NoQueue {
                kind: KIND,
                queue: name.clone(),
            }),
            Confirmation::Nack(_) => Err(BrokerError::Operation {
                kind: KIND,
                queue: name.clone(),
                op: "publish",
                message: "the broker did not store the message (nack)".into(),
            }),
            Confirmation::NotRequested => Err(BrokerError::Operation {
                kind: KIND,
                queue: name.clone(),
                op: "publish",
                message: "the channel is not in confirm mode".into(),
            }),
        }
    }
}

/// A consumer of one RabbitMQ queue, on its own channel.
pub struct RabbitConsumer {
    /// Tells this consumer's deliveries from another's: an ack through the
    /// wrong consumer could hit another message with the same tag.
    id: u64,
    queue: QueueName,
    endpoint: String,
    /// Kept so the channel stays open while the consumer lives; dropping
    /// the consumer closes it and the broker requeues what was not acked.
    _channel: Channel,
    stream: lapin::Consumer,
}

impl fmt::Debug for RabbitConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitConsumer")
            .field("queue", &self.queue)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// The [`Delivery::token`] of a RabbitMQ delivery.
struct Token {
    consumer: u64,
    acker: lapin::Acker,
}

impl RabbitConsumer {
    fn delivery(&self, d: lapin::message::Delivery) -> Delivery {
        let redelivered = d.redelivered;
        let token = Token {
            consumer: self.id,
            acker: d.acker,
        };
        Delivery {
            message: message(d.data, d.properties),
            redelivered,
            token: Box::new(token),
        }
    }

    fn op_error(&self, op: &'static str, message: String) -> BrokerError {
        BrokerError::Operation {
            kind: KIND,
            queue: self.queue.clone(),
            op,
            message,
        }
    }

    fn token(&self, delivery: Delivery, op: &'static str) -> Result<Token> {
        match delivery.token.downcast::<Token>() {
            Ok(token) if token.consumer == self.id => Ok(*token),
            _ => Err(self.op_error(op, "the delivery came from another consumer".into())),
        }
    }

    fn next_result(
        &self,
        item: Option<lapin::Result<lapin::message::Delivery>>,
    ) -> Result<Option<Delivery>> {
        match item {
            None => Ok(None),
            Some(Ok(d)) => Ok(Some(self.delivery(d))),
            Some(Err(e)) => Err(BrokerError::Connection {
                kind: KIND,
                endpoint: self.endpoint.clone(),
                message: format!("consuming {}: {e}", self.queue),
            }),
        }
    }
}

#[async_trait]
impl Consumer for RabbitConsumer {
    async fn next(&mut self) -> Result<Option<Delivery>> {
        let item = self.stream.next().await;
        self.next_result(item)
    }

    async fn next_within(&mut self, wait: Duration) -> Result<Option<Delivery>> {
        match tokio::time::timeout(wait, self.stream.next()).await {
            Ok(item) => self.next_result(item),
            Err(_elapsed) => Ok(None),
        }
    }

    async fn ack(&mut self, delivery: Delivery) -> Result<()> {
        let token = self.token(delivery, "ack")?;
        match token.acker.ack(Default::default()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.op_error(
                "ack",
                "the delivery's channel is closed; the broker delivers the message again".into(),
            )),
            Err(e) => Err(self.op_error("ack", e.to_string())),
        }
    }

    async fn requeue(&mut self, delivery: Delivery) -> Result<()> {
        let token = self.token(delivery, "requeue")?;
        match token
            .acker
            .nack(BasicNackOptions {
                multiple: false,
                requeue: true,
            })
            .await
        {
            // A closed channel requeues by itself.
            Ok(_) => Ok(()),
            Err(e) => Err(self.op_error("requeue", e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests;
