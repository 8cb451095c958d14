//! The seam to a message broker. The router and the operator only speak
//! [`Broker`] and [`Consumer`]; each broker module (RabbitMQ, SQS, ...)
//! implements them against the real broker, and tests use the real brokers
//! (there is no mock: a broker's delivery semantics are the point).

use async_trait::async_trait;
use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;

/// Which kind of broker a split queue lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// AMQP 0-9-1 (RabbitMQ).
    Rabbitmq,
    /// Amazon SQS (and compatible: moto, ElasticMQ).
    Sqs,
    /// Kafka protocol (Apache Kafka, Redpanda, tansu).
    Kafka,
    /// Google Cloud Pub/Sub.
    Pubsub,
}

impl fmt::Display for BrokerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BrokerKind::Rabbitmq => "rabbitmq",
            BrokerKind::Sqs => "sqs",
            BrokerKind::Kafka => "kafka",
            BrokerKind::Pubsub => "pubsub",
        })
    }
}

/// A queue's (or topic's) name on its broker: the SQS queue name (not URL),
/// the RabbitMQ queue name, the Kafka topic.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct QueueName(pub String);

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a broker reports about a queue, enough to create an equivalent one:
/// the declared properties as the broker names them (RabbitMQ: `durable`,
/// `x-queue-type`, `x-dead-letter-exchange`, ...; SQS: its attributes such as
/// `FifoQueue`, `VisibilityTimeout`, plus tags as `tag:NAME`; Kafka:
/// `partitions` and topic configs). Opaque to the router; only the broker
/// that produced it reads it back in [`Broker::create_like`].
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct QueueProps {
    /// The queue these properties were read from.
    pub name: Option<QueueName>,
    /// The properties, by the broker's own names, as text.
    pub props: BTreeMap<String, String>,
}

/// How many messages a queue holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct QueueDepth {
    /// Ready to be delivered (Kafka: the lag of the split's consumer group).
    pub ready: u64,
    /// Delivered and not yet acknowledged, where the broker knows it.
    pub unacked: Option<u64>,
}

/// One message, as the router sees it.
pub struct Message {
    /// Header (RabbitMQ, Kafka) or message attribute (SQS) values as text,
    /// for filters. Non-text values are rendered in their usual text form
    /// (numbers in decimal, booleans as `true`/`false`); values that have
    /// none (nested tables, binary) are left out.
    pub headers: BTreeMap<String, String>,
    /// The body, unchanged.
    pub body: Vec<u8>,
    /// The ordering key, if the broker orders by one: the Kafka key, the SQS
    /// FIFO message group. Messages with the same key keep their order
    /// through the router.
    pub order_key: Option<String>,
    /// Everything else the broker needs to publish the message again
    /// unchanged (typed headers, properties, deduplication ids): only the
    /// broker that produced it reads it, in [`Broker::publish`].
    pub native: Box<dyn Any + Send + Sync>,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .field("order_key", &self.order_key)
            .finish_non_exhaustive()
    }
}

/// A message received and not yet acknowledged. Dropping it without
/// [`Consumer::ack`] leaves the message on its queue (it is delivered again
/// once the consumer closes or, on SQS, when its visibility timeout ends).
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// Whether the broker says this message was delivered before.
    pub redelivered: bool,
    /// The broker's handle for acknowledging it (delivery tag, receipt
    /// handle, partition and offset); only the consumer that produced it
    /// reads it.
    pub token: Box<dyn Any + Send + Sync>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("redelivered", &self.redelivered)
            .finish_non_exhaustive()
    }
}

/// What went wrong talking to a broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker could not be reached or the connection broke.
    #[error("{kind} broker at {endpoint}: {message}")]
    Connection {
        /// Which broker.
        kind: BrokerKind,
        /// Where it was expected.
        endpoint: String,
        /// What failed.
        message: String,
    },
    /// The queue does not exist.
    #[error("{kind} queue {queue} does not exist")]
    NoQueue {
        /// Which broker.
        kind: BrokerKind,
        /// The queue.
        queue: QueueName,
    },
    /// The broker refused or failed an operation on a queue.
    #[error("{kind} queue {queue}: {op} failed: {message}")]
    Operation {
        /// Which broker.
        kind: BrokerKind,
        /// The queue.
        queue: QueueName,
        /// What was attempted ("publish", "ack", "declare", ...).
        op: &'static str,
        /// The broker's word on it.
        message: String,
    },
}

/// The result type of broker calls.
pub type Result<T, E = BrokerError> = std::result::Result<T, E>;

/// One broker endpoint (with its credentials). Cheap to share: the router
/// and the operator hold it in an `Arc`.
#[async_trait]
pub trait Broker: Send + Sync + fmt::Debug + 'static {
    /// Which kind of broker this is.
    fn kind(&self) -> BrokerKind;

    /// The declared properties of `queue`; [`BrokerError::NoQueue`] if it
    /// does not exist.
    async fn inspect(&self, queue: &QueueName) -> Result<QueueProps>;

    /// Creates `name` with the properties of `like` (durability, type,
    /// dead-lettering, FIFO, attributes, tags, partitions). Idempotent: an
    /// existing queue of that name with the same properties is fine.
    async fn create_like(&self, like: &QueueProps, name: &QueueName) -> Result<()>;

    /// Deletes `name`; a queue that does not exist is fine. A broker that
    /// can refuse to delete a queue that still holds messages or has
    /// consumers (RabbitMQ does: `if-empty`, `if-unused`) returns
    /// [`BrokerError::Operation`] then, and the caller drains and retries:
    /// a temporary queue is never deleted with messages in it.
    async fn delete(&self, name: &QueueName) -> Result<()>;

    /// How many messages `name` holds.
    async fn depth(&self, name: &QueueName) -> Result<QueueDepth>;

    /// Starts consuming `name`. Messages arrive unacknowledged; at most
    /// `prefetch` are outstanding at once.
    async fn consume(&self, name: &QueueName, prefetch: u16) -> Result<Box<dyn Consumer>>;

    /// Publishes `message` to `name` and returns only once the broker has
    /// confirmed it is stored there (publisher confirm, a successful
    /// SendMessage, a produce ack). Publishes of one order key on one broker
    /// handle are stored in the order they were called.
    async fn publish(&self, name: &QueueName, message: &Message) -> Result<()>;
}

/// A consumer of one queue.
#[async_trait]
pub trait Consumer: Send + fmt::Debug {
    /// The next message, waiting for one; `None` once the consumer has been
    /// closed (by the broker, or the queue was deleted).
    ///
    /// # Cancel safety
    /// The router polls this in a `select!` next to its publishes, so
    /// dropping the future before it completes must lose no message: a
    /// message already received is returned by a later call, or stays on the
    /// broker unacknowledged and is delivered again (SQS: when its
    /// visibility timeout ends).
    async fn next(&mut self) -> Result<Option<Delivery>>;

    /// The next message if one arrives within `wait`; `None` if none did.
    /// Used to empty a queue ("move everything from A to B").
    async fn next_within(&mut self, wait: std::time::Duration) -> Result<Option<Delivery>>;

    /// Removes the delivered message from its queue for good.
    async fn ack(&mut self, delivery: Delivery) -> Result<()>;

    /// Gives the message back to its queue, to be delivered again.
    async fn requeue(&mut self, delivery: Delivery) -> Result<()>;

    /// An [`Acker`] for this consumer's deliveries, when an ack is a
    /// request of its own that needs nothing of the consumer (SQS's
    /// DeleteMessage): the router then acks several deliveries at once
    /// instead of one after another. `None` (the default): acks go through
    /// [`Consumer::ack`].
    fn acker(&self) -> Option<std::sync::Arc<dyn Acker>> {
        None
    }
}

/// Acks the deliveries of one consumer without borrowing it; see
/// [`Consumer::acker`]. Valid while its consumer lives.
#[async_trait]
pub trait Acker: Send + Sync + fmt::Debug {
    /// As [`Consumer::ack`].
    async fn ack(&self, delivery: Delivery) -> Result<()>;
}
