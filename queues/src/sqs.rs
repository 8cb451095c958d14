//! Amazon SQS (and compatible servers: moto, ElasticMQ) behind the
//! [`Broker`] seam, with `aws-sdk-sqs`.
//!
//! # Names and URLs
//! The seam speaks queue *names*; SQS calls need queue URLs. The broker looks
//! each name up once (GetQueueUrl) and caches the URL. [`SqsBroker::queue_url`]
//! gives it to callers that must hand a URL to a workload (an env var that
//! holds a queue URL rather than a name).
//!
//! # FIFO queues
//! A FIFO queue's name must end in `.fifo`, so a temporary copy of a FIFO
//! queue must too: [`crate::router::temp_queue_name`] keeps the suffix
//! (`orders.fifo` → `orders-remora-alice.fifo`), and [`Broker::create_like`]
//! refuses a FIFO copy whose name lacks it rather than silently creating a
//! queue under another name than the one the workload will be given.
//!
//! Order: a message's FIFO group is its [`Message::order_key`]. SQS does not
//! deliver further messages of a group while one of them is in flight
//! (received, not deleted, still invisible), and a receive may return several
//! messages of one group, in order. The router must therefore, per group:
//! publish, then ack, one message after the other, in delivery order; and when
//! it requeues one (the forward failed) it must requeue, not forward, every
//! later message of that group it already holds. [`SqsConsumer`] itself gives
//! back its buffered messages of that group on such a requeue.
//!
//! # Deduplication
//! A publish to a FIFO queue carries a deduplication id derived from the
//! message's SQS `MessageId` where it was received, not the producer's
//! original deduplication id: a forward retried after a crash (same source
//! message) is dropped by SQS as a duplicate within its five-minute window,
//! while two distinct source messages never collide, even when the producer
//! reused a deduplication id more than five minutes apart and the router
//! forwards both within five minutes (keeping the original id would drop the
//! second one).
//!
//! # Visibility
//! A received message is hidden from other consumers for the queue's
//! visibility timeout (or [`SqsConfig::visibility_timeout`]); if the router
//! holds it longer, SQS delivers it again. The consumer extends the visibility
//! of the messages it has handed out and not yet settled every half timeout
//! (see [`SqsConsumer`]), so a slow forward does not turn into a duplicate.

mod consumer;
mod convert;

pub use consumer::SqsConsumer;

use crate::broker::{
    Broker, BrokerError, BrokerKind, Consumer, Message, QueueDepth, QueueName, QueueProps, Result,
};
use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    MessageSystemAttributeNameForSends, MessageSystemAttributeValue, QueueAttributeName,
};
use aws_smithy_http_client::tls;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The suffix SQS requires on FIFO queue names.
pub const FIFO_SUFFIX: &str = ".fifo";

/// The longest queue name SQS accepts (including `.fifo`).
pub const MAX_QUEUE_NAME_LEN: usize = 80;

/// The most messages one ReceiveMessage returns.
pub const MAX_RECEIVE_BATCH: usize = 10;

/// The longest long-poll SQS allows in one ReceiveMessage.
pub const MAX_WAIT: Duration = Duration::from_secs(20);

/// The queue attributes [`Broker::inspect`] keeps: those CreateQueue accepts.
/// The read-only ones (ARN, counts, timestamps) are left out.
pub const COPIED_ATTRIBUTES: &[&str] = &[
    "FifoQueue",
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "FifoThroughputLimit",
    "VisibilityTimeout",
    "MessageRetentionPeriod",
    "MaximumMessageSize",
    "DelaySeconds",
    "ReceiveMessageWaitTimeSeconds",
    "RedrivePolicy",
    "RedriveAllowPolicy",
    "KmsMasterKeyId",
    "KmsDataKeyReusePeriodSeconds",
    "SqsManagedSseEnabled",
    "Policy",
];

/// The key under which [`Broker::inspect`] records the original's ARN (not
/// an attribute of the copy: used to rewrite `Policy` for it).
pub const ARN_PROP: &str = "remora:QueueArn";

/// The prefix of tags in [`QueueProps::props`].
pub const TAG_PREFIX: &str = "tag:";

/// Where and as whom to reach SQS.
#[derive(Clone, PartialEq, Eq)]
pub struct SqsConfig {
    /// The endpoint, e.g. `http://127.0.0.1:5000` for moto; `None` for AWS's
    /// regional endpoint.
    pub endpoint_url: Option<String>,
    /// The region, e.g. `us-east-1`.
    pub region: String,
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// A session token, for temporary credentials.
    pub session_token: Option<String>,
    /// How long a received message stays hidden; `None` for the queue's own
    /// `VisibilityTimeout`.
    pub visibility_timeout: Option<Duration>,
}

impl fmt::Debug for SqsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsConfig")
            .field("endpoint_url", &self.endpoint_url)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("visibility_timeout", &self.visibility_timeout)
            .finish_non_exhaustive()
    }
}

impl SqsConfig {
    /// A config for a local endpoint with static credentials (moto accepts
    /// any).
    pub fn local(endpoint_url: impl Into<String>) -> Self {
        Self {
            endpoint_url: Some(endpoint_url.into()),
            region: "us-east-1".into(),
            access_key_id: "remora".into(),
            secret_access_key: "remora".into(),
            session_token: None,
            visibility_timeout: None,
        }
    }

    fn endpoint(&self) -> String {
        self.endpoint_url
            .clone()
            .unwrap_or_else(|| format!("https://sqs.{}.amazonaws.com", self.region))
    }
}

/// Whether `name` is a FIFO queue's name.
pub fn is_fifo_name(name: &QueueName) -> bool {
    name.0.ends_with(FIFO_SUFFIX)
}

/// Held during a publish of one FIFO group to one queue.
type GroupLock = Arc<tokio::sync::Mutex<()>>;

/// An SQS endpoint.
pub struct SqsBroker {
    client: Client,
    config: SqsConfig,
    /// Queue name → URL, filled by GetQueueUrl and CreateQueue.
    urls: Mutex<HashMap<QueueName, String>>,
    /// (queue, group) → held during a publish of that group, so publishes of
    /// one group are stored in the order they were called.
    group_locks: Mutex<HashMap<(QueueName, String), GroupLock>>,
}

impl fmt::Debug for SqsBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsBroker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SqsBroker {
    /// A broker for `config`. Makes no request yet.
    pub fn new(config: SqsConfig) -> Self {
        let credentials = Credentials::new(
            config.access_key_id.clone(),
            config.secret_access_key.clone(),
            config.session_token.clone(),
            None,
            "remora-sqs-config",
        );
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut builder = aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .credentials_provider(credentials)
            .http_client(http);
        if let Some(url) = &config.endpoint_url {
            builder = builder.endpoint_url(url);
        }
        Self {
            client: Client::from_conf(builder.build()),
            config,
            urls: Mutex::new(HashMap::new()),
            group_locks: Mutex::new(HashMap::new()),
        }
    }

    /// The SDK client, for what the seam does not cover (tests fill queues
    /// with SendMessageBatch through it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The URL of queue `name` (cached after the first lookup).
    pub async fn queue_url(&self, name: &QueueName) -> Result<String> {
        if let Some(url) = self.urls.lock().expect("url cache").get(name) {
            return Ok(url.clone());
        }
        let out = self
            .client
            .get_queue_url()
            .queue_name(&name.0)
            .send()
            .await
            .map_err(|e| self.error(name, "get queue url", e))?;
        let url = out.queue_url.ok_or_else(|| BrokerError::Operation {
            kind: BrokerKind::Sqs,
            queue: name.clone(),
            op: "get queue url",
            message: "the reply has no QueueUrl".into(),
        })?;
        self.urls
            .lock()
            .expect("url cache")
            .insert(name.clone(), url.clone());
        Ok(url)
    }

    fn forget_url(&self, name: &QueueName) {
        self.urls.lock().expect("url cache").remove(name);
    }

    /// Maps an SDK error to the seam's: a missing queue to
    /// [`BrokerError::NoQueue`], a failure to reach the endpoint to
    /// [`BrokerError::Connection`], anything else to
    /// [`BrokerError::Operation`].
    fn error<E>(&self, queue: &QueueName, op: &'static str, err: SdkError<E>) -> BrokerError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        sdk_error(&self.config, queue, op, err)
    }

    async fn attributes(&self, name: &QueueName) -> Result<HashMap<QueueAttributeName, String>> {
        let url = self.queue_url(name).await?;
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .map_err(|e| self.error(name, "get queue attributes", e));
        if matches!(out, Err(BrokerError::NoQueue { .. })) {
            self.forget_url(name);
        }
        Ok(out?.attributes.unwrap_or_default())
    }

    fn group_lock(&self, name: &QueueName, group: &str) -> GroupLock {
        let mut locks = self.group_locks.lock().expect("group locks");
        // Forget locks nobody holds or waits for, so the map stays small.
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        locks
            .entry((name.clone(), group.to_owned()))
            .or_default()
            .clone()
    }
}

pub(crate) fn sdk_error<E>(
    config: &SqsConfig,
    queue: &QueueName,
    op: &'static str,
    err: SdkError<E>,
) -> BrokerError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match &err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => BrokerError::Connection {
            kind: BrokerKind::Sqs,
            endpoint: config.endpoint(),
            message: format!("{op} on queue {queue}: {}", DisplayErrorContext(&err)),
        },
        _ => {
            let code = err.code().unwrap_or_default();
            if code.contains("NonExistentQueue") || code.contains("QueueDoesNotExist") {
                BrokerError::NoQueue {
                    kind: BrokerKind::Sqs,
                    queue: queue.clone(),
                }
            } else {
                BrokerError::Operation {
                    kind: BrokerKind::Sqs,
                    queue: queue.clone(),
                    op,
                    message: DisplayErrorContext(&err).to_string(),
                }
            }
        }
    }
}

fn invalid(queue: &QueueName, op: &'static str, message: impl Into<String>) -> BrokerError {
    BrokerError::Operation {
        kind: BrokerKind::Sqs,
        queue: queue.clone(),
        op,
        message: message.into(),
    }
}

/// The ARN of queue `name` in the account and region of `like_arn`.
fn sibling_arn(like_arn: &str, name: &QueueName) -> Option<String> {
    let (prefix, _) = like_arn.rsplit_once(':')?;
    Some(format!("{prefix}:{}", name.0))
}

#[async_trait]
impl Broker for SqsBroker {
    fn kind(&self) -> BrokerKind {
        BrokerKind::Sqs
    }

    async fn inspect(&self, queue: &QueueName) -> Result<QueueProps> {
        let attributes = self.attributes(queue).await?;
        let mut props = BTreeMap::new();
        for (name, value) in &attributes {
            if COPIED_ATTRIBUTES.contains(&name.as_str()) {
                props.insert(name.as_str().to_owned(), value.clone());
            }
        }
        if let Some(arn) = attributes.get(&QueueAttributeName::QueueArn) {
            props.insert(ARN_PROP.to_owned(), arn.clone());
        }
        let url = self.queue_url(queue).await?;
        let tags = self
            .client
            .list_queue_tags()
            .queue_url(&url)
            .send()
            .await
            .map_err(|e| self.error(queue, "list queue tags", e))?;
        for (key, value) in tags.tags.unwrap_or_default() {
            props.insert(format!("{TAG_PREFIX}{key}"), value);
        }
        Ok(QueueProps {
            name: Some(queue.clone()),
            props,
        })
    }

    async fn create_like(&self, like: &QueueProps, name: &QueueName) -> Result<()> {
        let fifo = like.props.get("FifoQueue").is_some_and(|v| v == "true");
        if fifo != is_fifo_name(name) {
            return Err(invalid(
                name,
                "create queue",
                if fifo {
                    "a copy of a FIFO queue must have a name ending in .fifo (see router::temp_queue_name)"
                } else {
                    "only a copy of a FIFO queue may have a name ending in .fifo"
                },
            ));
        }
        let mut create = self.client.create_queue().queue_name(&name.0);
        let mut tags = HashMap::new();
        for (key, value) in &like.props {
            if let Some(tag) = key.strip_prefix(TAG_PREFIX) {
                tags.insert(tag.to_owned(), value.clone());
                continue;
            }
            if !COPIED_ATTRIBUTES.contains(&key.as_str()) {
                continue;
            }
            let mut value = value.clone();
            if key == "Policy" {
                // The policy names the original's ARN as its resource: point
                // it at the copy.
                if let Some((arn, own)) = like
                    .props
                    .get(ARN_PROP)
                    .and_then(|arn| Some((arn, sibling_arn(arn, name)?)))
                {
                    value = value.replace(arn.as_str(), &own);
                }
            }
            create = create.attributes(QueueAttributeName::from(key.as_str()), value);
        }
        if !tags.is_empty() {
            create = create.set_tags(Some(tags.clone()));
        }
        let out = create
            .send()
            .await
            .map_err(|e| self.error(name, "create queue", e))?;
        let url = out
            .queue_url
            .ok_or_else(|| invalid(name, "create queue", "the reply has no QueueUrl"))?;
        self.urls
            .lock()
            .expect("url cache")
            .insert(name.clone(), url.clone());
        if !tags.is_empty() {
            // CreateQueue ignores tags for a queue that already exists.
            self.client
                .tag_queue()
                .queue_url(&url)
                .set_tags(Some(tags))
                .send()
                .await
                .map_err(|e| self.error(name, "tag queue", e))?;
        }
        Ok(())
    }

    /// Refuses (op `delete`) while the queue holds messages, visible,
    /// in flight or delayed: SQS would delete them with it. The counts are
    /// SQS's approximate ones; the router drains and retries.
    async fn delete(&self, name: &QueueName) -> Result<()> {
        let url = match self.queue_url(name).await {
            Ok(url) => url,
            Err(BrokerError::NoQueue { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let depth = match self.depth(name).await {
            Ok(depth) => depth,
            Err(BrokerError::NoQueue { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let in_flight = depth.unacked.unwrap_or(0);
        if depth.ready + in_flight > 0 {
            return Err(invalid(
                name,
                "delete",
                format!(
                    "not deleted: it still holds {} messages ({in_flight} in flight)",
                    depth.ready + in_flight
                ),
            ));
        }
        let out = self.client.delete_queue().queue_url(&url).send().await;
        self.forget_url(name);
        match out.map_err(|e| self.error(name, "delete", e)) {
            Ok(_) | Err(BrokerError::NoQueue { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn depth(&self, name: &QueueName) -> Result<QueueDepth> {
        let attributes = self.attributes(name).await?;
        let count = |attr: QueueAttributeName| -> u64 {
            attributes
                .get(&attr)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(QueueDepth {
            // Delayed messages are held and will be ready: count them.
            ready: count(QueueAttributeName::ApproximateNumberOfMessages)
                + count(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
            unacked: Some(count(
                QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            )),
        })
    }

    async fn consume(&self, name: &QueueName, prefetch: u16) -> Result<Box<dyn Consumer>> {
        let url = self.queue_url(name).await?;
        let visibility = match self.config.visibility_timeout {
            Some(v) => v,
            None => {
                let attributes = self.attributes(name).await?;
                let secs = attributes
                    .get(&QueueAttributeName::VisibilityTimeout)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(30);
                Duration::from_secs(secs)
            }
        };
        Ok(Box::new(SqsConsumer::new(
            self.client.clone(),
            self.config.clone(),
            name.clone(),
            url,
            prefetch,
            visibility,
        )))
    }

    async fn publish(&self, name: &QueueName, message: &Message) -> Result<()> {
        let url = self.queue_url(name).await?;
        let native = convert::native(message);
        let fifo = is_fifo_name(name);
        let mut send = self
            .client
            .send_message()
            .queue_url(&url)
            .message_body(convert::body_text(name, &message.body)?);
        if let Some(native) = native {
            if !native.attributes.is_empty() {
                send = send.set_message_attributes(Some(native.attributes.clone()));
            }
            if let Some(trace) = &native.trace_header {
                send = send.message_system_attributes(
                    MessageSystemAttributeNameForSends::AwsTraceHeader,
                    MessageSystemAttributeValue::builder()
                        .data_type("String")
                        .string_value(trace)
                        .build()
                        .map_err(|e| invalid(name, "publish", e.to_string()))?,
                );
            }
        } else {
            // A message from another broker: its text headers become String
            // attributes.
            send = send
                .set_message_attributes(Some(convert::attributes_from_headers(&message.headers)));
        }
        let group = message.order_key.clone();
        if fifo {
            let Some(group) = &group else {
                return Err(invalid(
                    name,
                    "publish",
                    "a message for a FIFO queue needs a message group (order key)",
                ));
            };
            send = send
                .message_group_id(group)
                .message_deduplication_id(convert::dedup_id(native, message));
        } else {
            // Standard queues take no per-message group; the forward must
            // not wait the queue's DelaySeconds a second time.
            send = send.delay_seconds(0);
        }
        let lock = group.as_ref().map(|g| self.group_lock(name, g));
        let _held = match &lock {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        let out = send.send().await;
        if let Err(e) = out {
            let err = self.error(name, "publish", e);
            if matches!(err, BrokerError::NoQueue { .. }) {
                self.forget_url(name);
            }
            return Err(err);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
