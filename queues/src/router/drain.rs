//! Emptying one queue into another (confirm, then ack) and deleting the
//! emptied queue: what happens to an ended session's queue.

use super::RouterConfig;
use crate::broker::{Broker, BrokerError, QueueName};
use std::time::Duration;

/// The pause between attempts to delete a queue the broker still considers
/// in use (a consumer that is going away, a message that just came back).
const DELETE_RETRY: Duration = Duration::from_millis(100);

/// Moves every message of `from` to `to`, one at a time in `from`'s order:
/// each is acknowledged on `from` only after `to` confirmed it. Stops when
/// `from` delivered nothing for `idle`; returns how many moved. A queue
/// `from` that does not exist holds nothing.
///
/// # Errors
/// The first broker error; the message being moved then stays on `from`
/// (or, if only its ack failed, is on both: `from` delivers it again).
pub async fn move_messages(
    broker: &dyn Broker,
    from: &QueueName,
    to: &QueueName,
    idle: Duration,
    prefetch: u16,
) -> Result<u64, BrokerError> {
    let mut consumer = match broker.consume(from, prefetch).await {
        Ok(c) => c,
        Err(BrokerError::NoQueue { .. }) => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut moved = 0;
    while let Some(d) = consumer.next_within(idle).await? {
        if let Err(e) = broker.publish(to, &d.message).await {
            // Best effort: a consumer that goes away gives it back anyway.
            let _ = consumer.requeue(d).await;
            return Err(e);
        }
        consumer.ack(d).await?;
        moved += 1;
    }
    Ok(moved)
}

/// Empties `from` into `to` and deletes it, retrying after every failure
/// (pausing `config.retry`) until the broker deleted it: the broker only
/// deletes an empty queue without consumers, so this returns once the last
/// consumer of `from` went away and everything it gave back was moved too.
/// Never gives up and never drops a message; cancel it by dropping the
/// future (a resumed router starts it again). Returns how many moved.
pub async fn move_then_delete(
    broker: &dyn Broker,
    from: &QueueName,
    to: &QueueName,
    config: &RouterConfig,
) -> u64 {
    let mut moved = 0;
    loop {
        match move_messages(broker, from, to, config.drain_idle, config.prefetch).await {
            Ok(n) => moved += n,
            Err(e) => {
                tracing::warn!(from = %from, to = %to, error = %e, "moving messages failed; retrying");
                tokio::time::sleep(config.retry).await;
                continue;
            }
        }
        match broker.delete(from).await {
            Ok(()) => return moved,
            Err(BrokerError::Operation {
                op: "delete",
                message,
                ..
            }) => {
                tracing::debug!(queue = %from, %message, "not deleted yet (in use or not empty)");
                tokio::time::sleep(DELETE_RETRY.min(config.retry)).await;
            }
            Err(e) => {
                tracing::warn!(queue = %from, error = %e, "deleting failed; retrying");
                tokio::time::sleep(config.retry).await;
            }
        }
    }
}
