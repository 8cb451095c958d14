//! [`SqsConsumer`]: long-polling ReceiveMessage behind the seam's
//! [`Consumer`], with acks as DeleteMessage, requeues as
//! ChangeMessageVisibility 0 and a heartbeat that keeps held messages hidden.

use super::convert::{self, Received};
use super::{MAX_RECEIVE_BATCH, MAX_WAIT, SqsConfig, sdk_error};
use crate::broker::{Acker, BrokerError, BrokerKind, Consumer, Delivery, QueueName, Result};
use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{ChangeMessageVisibilityBatchRequestEntry, MessageSystemAttributeName};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The pause between two empty short polls (a wait under a second).
const SHORT_POLL_PAUSE: Duration = Duration::from_millis(50);

/// The shortest heartbeat period (half the visibility timeout, at least this).
const MIN_HEARTBEAT: Duration = Duration::from_secs(1);

/// The messages this consumer has received and not settled (buffered or
/// handed out): their receipt handles, by a local id.
#[derive(Default)]
struct Held {
    receipts: Mutex<HashMap<u64, String>>,
    /// Receipts of deliveries dropped without an ack or requeue: given back
    /// (made visible) by the consumer's next call, or when it closes.
    abandoned: Mutex<Vec<String>>,
    /// Signalled when a held message is settled or dropped (room to receive).
    released: Notify,
    /// Held while changing visibilities, so the heartbeat never re-hides a
    /// message a requeue has just made visible.
    settle: tokio::sync::Mutex<()>,
}

impl Held {
    fn len(&self) -> usize {
        self.receipts.lock().expect("held receipts").len()
    }

    fn insert(&self, id: u64, receipt: String) {
        self.receipts
            .lock()
            .expect("held receipts")
            .insert(id, receipt);
    }

    fn remove(&self, id: u64) -> Option<String> {
        let out = self.receipts.lock().expect("held receipts").remove(&id);
        if out.is_some() {
            self.released.notify_one();
        }
        out
    }

    fn snapshot(&self) -> Vec<String> {
        self.receipts
            .lock()
            .expect("held receipts")
            .values()
            .cloned()
            .collect()
    }
}

/// The [`Delivery::token`] of an SQS delivery. Dropping it unsettled stops
/// the heartbeat for the message and has the consumer give it back.
struct SqsToken {
    id: u64,
    receipt: String,
    group: Option<String>,
    held: Arc<Held>,
    /// Acked or requeued.
    settled: bool,
}

impl Drop for SqsToken {
    fn drop(&mut self) {
        if let Some(receipt) = self.held.remove(self.id)
            && !self.settled
        {
            self.held
                .abandoned
                .lock()
                .expect("abandoned receipts")
                .push(receipt);
        }
    }
}

/// A consumer of one SQS queue.
///
/// * Receives up to ten messages at a time (long polling, all message and
///   system attributes) into a local buffer; at most `prefetch` messages are
///   received and unsettled at once.
/// * While a message is buffered or handed out and not settled, a heartbeat
///   extends its visibility every half timeout.
/// * [`Consumer::requeue`] of a FIFO message also gives back the buffered
///   messages of its group (they must not overtake it).
/// * Cancel-safe: dropping a [`Consumer::next`] future loses nothing (an
///   outstanding receive is picked up by the next call).
/// * A delivery dropped without an ack or requeue is made visible again by
///   the consumer's next call (or when it closes).
/// * Dropped: buffered and unsettled messages are made visible again at once
///   (best effort, in a background task).
pub struct SqsConsumer {
    client: Client,
    config: SqsConfig,
    queue: QueueName,
    url: String,
    prefetch: usize,
    visibility: Duration,
    buffer: VecDeque<(u64, Received)>,
    pending: Option<JoinHandle<Result<Vec<aws_sdk_sqs::types::Message>>>>,
    held: Arc<Held>,
    next_id: AtomicU64,
    heartbeat: JoinHandle<()>,
    closed: bool,
    acker: Arc<SqsAcker>,
}

impl fmt::Debug for SqsConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsConsumer")
            .field("queue", &self.queue)
            .field("prefetch", &self.prefetch)
            .field("buffered", &self.buffer.len())
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl SqsConsumer {
    pub(crate) fn new(
        client: Client,
        config: SqsConfig,
        queue: QueueName,
        url: String,
        prefetch: u16,
        visibility: Duration,
    ) -> Self {
        let held = Arc::new(Held::default());
        let heartbeat = tokio::spawn(heartbeat(
            client.clone(),
            config.clone(),
            url.clone(),
            queue.clone(),
            visibility,
            held.clone(),
        ));
        let acker = Arc::new(SqsAcker {
            client: client.clone(),
            config: config.clone(),
            queue: queue.clone(),
            url: url.clone(),
        });
        Self {
            acker,
            client,
            config,
            queue,
            url,
            prefetch: usize::from(prefetch.max(1)),
            visibility,
            buffer: VecDeque::new(),
            pending: None,
            held,
            next_id: AtomicU64::new(0),
            heartbeat,
            closed: false,
        }
    }

    fn delivery(&self, id: u64, received: Received) -> Delivery {
        let group = received.message.order_key.clone();
        Delivery {
            message: received.message,
            redelivered: received.receive_count > 1,
            token: Box::new(SqsToken {
                id,
                receipt: received.receipt_handle,
                group,
                held: self.held.clone(),
                settled: false,
            }),
        }
    }

    /// One receive (started now or earlier and not yet collected) into the
    /// buffer, long-polling up to `wait`; or, when `prefetch` messages are
    /// held, waits until one is settled.
    async fn fill(&mut self, wait: Duration) -> Result<()> {
        self.give_back_abandoned().await?;
        if self.pending.is_none() {
            let room = self.prefetch.saturating_sub(self.held.len());
            if room == 0 {
                self.held.released.notified().await;
                return Ok(());
            }
            let max = room.min(MAX_RECEIVE_BATCH) as i32;
            let receive = self
                .client
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(max)
                .wait_time_seconds(wait.min(MAX_WAIT).as_secs() as i32)
                .visibility_timeout(self.visibility.as_secs() as i32)
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::All);
            let config = self.config.clone();
            let queue = self.queue.clone();
            self.pending = Some(tokio::spawn(async move {
                let out = receive
                    .send()
                    .await
                    .map_err(|e| sdk_error(&config, &queue, "receive", e))?;
                Ok(out.messages.unwrap_or_default())
            }));
        }
        let pending = self.pending.as_mut().expect("a receive is pending");
        let out = pending.await;
        self.pending = None;
        let messages = match out {
            Ok(Ok(messages)) => messages,
            Ok(Err(BrokerError::NoQueue { .. })) => {
                self.closed = true;
                return Ok(());
            }
            Ok(Err(e)) => return Err(e),
            Err(join) => {
                return Err(BrokerError::Operation {
                    kind: BrokerKind::Sqs,
                    queue: self.queue.clone(),
                    op: "receive",
                    message: format!("the receive task failed: {join}"),
                });
            }
        };
        for m in messages {
            let Some(received) = convert::received(m) else {
                continue;
            };
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            self.held.insert(id, received.receipt_handle.clone());
            self.buffer.push_back((id, received));
        }
        Ok(())
    }

    /// Makes the messages of dropped deliveries visible again.
    async fn give_back_abandoned(&mut self) -> Result<()> {
        let receipts =
            std::mem::take(&mut *self.held.abandoned.lock().expect("abandoned receipts"));
        if receipts.is_empty() {
            return Ok(());
        }
        let _settle = self.held.settle.lock().await;
        release(&self.client, &self.config, &self.queue, &self.url, receipts).await
    }
}

/// The SQS token of `delivery`, for `op` on `queue`.
fn token_of(queue: &QueueName, delivery: Delivery, op: &'static str) -> Result<SqsToken> {
    delivery
        .token
        .downcast::<SqsToken>()
        .map(|t| *t)
        .map_err(|_| BrokerError::Operation {
            kind: BrokerKind::Sqs,
            queue: queue.clone(),
            op,
            message: "the delivery did not come from an SQS consumer".into(),
        })
}

/// Makes `receipts` visible again (visibility 0), ten at a time.
async fn release(
    client: &Client,
    config: &SqsConfig,
    queue: &QueueName,
    url: &str,
    receipts: Vec<String>,
) -> Result<()> {
    change_visibility(client, config, queue, url, receipts, 0, "requeue").await
}

async fn change_visibility(
    client: &Client,
    config: &SqsConfig,
    queue: &QueueName,
    url: &str,
    receipts: Vec<String>,
    seconds: i32,
    op: &'static str,
) -> Result<()> {
    for chunk in receipts.chunks(MAX_RECEIVE_BATCH) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, receipt)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .visibility_timeout(seconds)
                    .build()
                    .expect("id and receipt handle are set")
            })
            .collect();
        let out = client
            .change_message_visibility_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| sdk_error(config, queue, op, e))?;
        if let Some(failed) = out.failed().first() {
            return Err(BrokerError::Operation {
                kind: BrokerKind::Sqs,
                queue: queue.clone(),
                op,
                message: format!(
                    "{} of {} messages: {}: {}",
                    out.failed().len(),
                    chunk.len(),
                    failed.code(),
                    failed.message().unwrap_or_default()
                ),
            });
        }
    }
    Ok(())
}

/// Every half visibility timeout, hides the held messages for another full
/// timeout.
async fn heartbeat(
    client: Client,
    config: SqsConfig,
    url: String,
    queue: QueueName,
    visibility: Duration,
    held: Arc<Held>,
) {
    let period = (visibility / 2).max(MIN_HEARTBEAT);
    let seconds = visibility.as_secs().max(2) as i32;
    loop {
        tokio::time::sleep(period).await;
        let _settle = held.settle.lock().await;
        let receipts = held.snapshot();
        if receipts.is_empty() {
            continue;
        }
        // A message acked meanwhile fails its entry; that is fine.
        if let Err(e) = change_visibility(
            &client,
            &config,
            &queue,
            &url,
            receipts,
            seconds,
            "extend visibility",
        )
        .await
        {
            tracing::debug!("sqs heartbeat: {e}");
        }
    }
}

#[async_trait]
impl Consumer for SqsConsumer {
    async fn next(&mut self) -> Result<Option<Delivery>> {
        loop {
            if let Some((id, received)) = self.buffer.pop_front() {
                return Ok(Some(self.delivery(id, received)));
            }
            if self.closed {
                return Ok(None);
            }
            self.fill(MAX_WAIT).await?;
        }
    }

    async fn next_within(&mut self, wait: Duration) -> Result<Option<Delivery>> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some((id, received)) = self.buffer.pop_front() {
                return Ok(Some(self.delivery(id, received)));
            }
            if self.closed {
                return Ok(None);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            // Long polls of whole seconds that end before the deadline; under
            // a second, short polls with a pause between empty ones. The
            // timeout is a safety net for a slow reply (a receive cut short
            // stays pending for the next call).
            let poll = Duration::from_secs(left.as_secs());
            let buffered = self.buffer.len();
            match tokio::time::timeout(left, self.fill(poll)).await {
                Ok(out) => out?,
                Err(_elapsed) => return Ok(None),
            }
            if poll.is_zero() && self.buffer.len() == buffered && !self.closed {
                let left = deadline.saturating_duration_since(Instant::now());
                tokio::time::sleep(left.min(SHORT_POLL_PAUSE)).await;
            }
        }
    }

    async fn ack(&mut self, delivery: Delivery) -> Result<()> {
        self.acker.ack(delivery).await
    }

    async fn requeue(&mut self, delivery: Delivery) -> Result<()> {
        let mut token = token_of(&self.queue, delivery, "requeue")?;
        token.settled = true;
        let _settle = self.held.settle.lock().await;
        self.held.remove(token.id);
        let mut receipts = vec![token.receipt.clone()];
        if let Some(group) = &token.group {
            // Later messages of the group must not overtake this one.
            let mut kept = VecDeque::with_capacity(self.buffer.len());
            for (id, received) in self.buffer.drain(..) {
                if received.message.order_key.as_ref() == Some(group) {
                    self.held.remove(id);
                    receipts.push(received.receipt_handle);
                } else {
                    kept.push_back((id, received));
                }
            }
            self.buffer = kept;
        }
        release(&self.client, &self.config, &self.queue, &self.url, receipts).await
    }

    fn acker(&self) -> Option<Arc<dyn Acker>> {
        Some(self.acker.clone())
    }
}

/// Acks (DeleteMessage) the deliveries of one [`SqsConsumer`], several at
/// once if its user likes: an ack needs only the receipt handle. It takes
/// no `settle` lock: the heartbeat extending a message being deleted fails
/// that entry, which it ignores.
#[derive(Debug)]
struct SqsAcker {
    client: Client,
    config: SqsConfig,
    queue: QueueName,
    url: String,
}

#[async_trait]
impl Acker for SqsAcker {
    async fn ack(&self, delivery: Delivery) -> Result<()> {
        let mut token = token_of(&self.queue, delivery, "ack")?;
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(&token.receipt)
            .send()
            .await
            .map_err(|e| sdk_error(&self.config, &self.queue, "ack", e))?;
        token.settled = true;
        Ok(())
    }
}

impl Drop for SqsConsumer {
    fn drop(&mut self) {
        self.heartbeat.abort();
        if let Some(pending) = self.pending.take() {
            pending.abort();
        }
        self.buffer.clear();
        let mut receipts = self.held.snapshot();
        receipts.append(&mut self.held.abandoned.lock().expect("abandoned receipts"));
        if receipts.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        let config = self.config.clone();
        let queue = self.queue.clone();
        let url = self.url.clone();
        runtime.spawn(async move {
            if let Err(e) = release(&client, &config, &queue, &url, receipts).await {
                tracing::debug!("sqs consumer closed: giving messages back: {e}");
            }
        });
    }
}
