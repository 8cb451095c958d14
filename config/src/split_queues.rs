//! `split_queues`: the queues of the target whose messages this session
//! wants for itself, each with a message filter (see `docs/queues.md`). The
//! operator does the splitting; a platform team registers the queues once.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::Issues;

/// The broker a split queue lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// RabbitMQ (AMQP 0-9-1): the filter matches message headers.
    Rabbitmq,
    /// Amazon SQS: the filter matches message attributes.
    Sqs,
    /// Kafka: the filter matches record headers.
    Kafka,
}

/// One split queue, keyed by the queue id its registration gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitQueueConfig {
    /// The broker type; must agree with the registration.
    #[serde(rename = "type")]
    pub kind: QueueType,
    /// Header (or attribute) name → regex; a message is this session's when
    /// every named header is present and matches (unanchored: write
    /// `^alice$` for a whole value). At least one header.
    pub message_filter: BTreeMap<String, String>,
}

fn is_queue_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// Check every `split_queues` entry.
/// (That they need an operator is checked when the session starts, as for
/// `db_branches`: the operator may come from a later layer or a flag.)
pub(crate) fn check(queues: &BTreeMap<String, SplitQueueConfig>, issues: &mut Issues) {
    for (id, queue) in queues {
        let key = |field: &str| format!("split_queues.{id}.{field}");
        if !is_queue_id(id) {
            issues.push(
                format!("split_queues.{id}"),
                format!(
                    "invalid queue id {id:?}: use 1-63 letters, digits, '_', '-' or '.' \
                     (the id the queue's registration gives it)"
                ),
            );
        }
        if queue.message_filter.is_empty() {
            issues.push(
                key("message_filter"),
                "name at least one header: an empty filter would take every message",
            );
        }
        for (header, pattern) in &queue.message_filter {
            if header.is_empty() {
                issues.push(key("message_filter"), "a header name is empty");
            }
            if let Err(e) = regex::Regex::new(pattern) {
                issues.push(
                    format!("split_queues.{id}.message_filter.{header}"),
                    format!("{pattern:?} is not a valid regex: {e}"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_split_queue_parses_and_bad_ones_are_named_by_key() {
        let config: crate::Config = toml::from_str(
            r#"
            split_queues = { orders = { type = "rabbitmq", message_filter = { "x-user" = "^alice$" } } }
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        let orders = &config.split_queues["orders"];
        assert_eq!(orders.kind, super::QueueType::Rabbitmq);
        assert_eq!(orders.message_filter["x-user"], "^alice$");

        let config: crate::Config = toml::from_str(
            r#"
            [split_queues.orders]
            type = "sqs"
            message_filter = { "x-user" = "(" }
            [split_queues."bad id"]
            type = "kafka"
            message_filter = {}
            "#,
        )
        .unwrap();
        let message = config.validate().unwrap_err().to_string();
        for needle in [
            "split_queues.orders.message_filter.x-user",
            "split_queues.bad id",
            "split_queues.bad id.message_filter",
        ] {
            assert!(message.contains(needle), "{needle} missing in {message}");
        }
        assert!(
            toml::from_str::<crate::Config>(
                r#"split_queues = { q = { type = "nats", message_filter = { a = "b" } } }"#
            )
            .is_err()
        );
    }
}
