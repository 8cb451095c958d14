//! Queue splitting: a shared queue's messages are routed, one at a time, to
//! the first session whose [`filter::MessageFilter`] matches, else to the
//! workload; each session and the workload consume their own temporary queue.
//!
//! * [`filter`]: header/attribute filters and the overlap check that refuses
//!   two sessions that could both want one message.
//! * [`broker`]: the seam to a real broker (RabbitMQ, SQS, Kafka, Pub/Sub):
//!   inspect, copy, consume, publish with confirmation, ack, delete.
//! * [`rabbitmq`]: the RabbitMQ broker (lapin).
//! * [`sqs`]: the Amazon SQS broker (aws-sdk-sqs; moto in tests).
//! * [`kafka`]: Kafka-protocol brokers (kafka-protocol; tansu in tests).
//! * [`router`]: the router of one split queue (an actor: `RouterTask` +
//!   `RouterApi`), its saved state and the temporary queues' names.
//!
//! Delivery contract (every broker and the router keep it): a message is
//! removed from the queue it came from only after the broker confirmed it in
//! the queue it goes to, so a crash at any point loses nothing (at worst one
//! message is delivered twice after a crash, never in normal operation).

pub mod broker;
pub mod filter;
pub mod kafka;
pub mod rabbitmq;
pub mod router;
pub mod sqs;
