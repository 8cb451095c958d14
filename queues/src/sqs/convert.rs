//! Between SQS's messages and the seam's [`Message`]: attributes as filter
//! headers, what a forward must carry, deduplication ids.

use crate::broker::{BrokerError, BrokerKind, Message, QueueName, Result};
use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName};
use std::collections::{BTreeMap, HashMap};

/// What a received SQS message needs to be sent again unchanged; the
/// [`Message::native`] of messages from [`super::SqsBroker`].
#[derive(Debug, Clone)]
pub(crate) struct SqsNative {
    /// The message's id in the queue it was received from.
    pub message_id: String,
    /// Its message attributes, typed (String, Number, Binary and custom
    /// `Type.label` types).
    pub attributes: HashMap<String, MessageAttributeValue>,
    /// The X-Ray trace header system attribute, if any.
    pub trace_header: Option<String>,
}

/// What the consumer keeps of a received message besides the [`Message`].
pub(crate) struct Received {
    pub message: Message,
    pub receipt_handle: String,
    pub receive_count: u64,
}

/// The [`SqsNative`] of `message`, if it came from SQS.
pub(crate) fn native(message: &Message) -> Option<&SqsNative> {
    message.native.downcast_ref::<SqsNative>()
}

/// Converts a received message; `None` if it lacks an id or receipt handle
/// (SQS always sends both).
pub(crate) fn received(m: aws_sdk_sqs::types::Message) -> Option<Received> {
    let message_id = m.message_id?;
    let receipt_handle = m.receipt_handle?;
    let system = m.attributes.unwrap_or_default();
    let attributes = m.message_attributes.unwrap_or_default();
    let headers = headers(&attributes);
    let receive_count = system
        .get(&MessageSystemAttributeName::ApproximateReceiveCount)
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let order_key = system
        .get(&MessageSystemAttributeName::MessageGroupId)
        .cloned();
    let native = SqsNative {
        message_id,
        attributes,
        trace_header: system
            .get(&MessageSystemAttributeName::AwsTraceHeader)
            .cloned(),
    };
    Some(Received {
        message: Message {
            headers,
            body: m.body.unwrap_or_default().into_bytes(),
            order_key,
            native: Box::new(native),
        },
        receipt_handle,
        receive_count,
    })
}

/// The filter headers of a message: String and Number attributes (and
/// their custom `String.x` / `Number.x` types) as text; Binary ones are left
/// out.
pub(crate) fn headers(
    attributes: &HashMap<String, MessageAttributeValue>,
) -> BTreeMap<String, String> {
    attributes
        .iter()
        .filter(|(_, v)| {
            let base = v.data_type().split('.').next().unwrap_or_default();
            base == "String" || base == "Number"
        })
        .filter_map(|(k, v)| Some((k.clone(), v.string_value()?.to_owned())))
        .collect()
}

/// String attributes for the text headers of a message that did not come
/// from SQS.
pub(crate) fn attributes_from_headers(
    headers: &BTreeMap<String, String>,
) -> HashMap<String, MessageAttributeValue> {
    headers
        .iter()
        .filter_map(|(k, v)| {
            let value = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v)
                .build()
                .ok()?;
            Some((k.clone(), value))
        })
        .collect()
}

/// The body as the text SQS carries.
pub(crate) fn body_text(queue: &QueueName, body: &[u8]) -> Result<String> {
    String::from_utf8(body.to_vec()).map_err(|_| BrokerError::Operation {
        kind: BrokerKind::Sqs,
        queue: queue.clone(),
        op: "publish",
        message: "an SQS message body must be text (UTF-8); this one is binary".into(),
    })
}

/// The deduplication id of a forward to a FIFO queue: the message's id where
/// it was received (stable across redeliveries, unique per stored message),
/// so a retried forward of one message is deduplicated and two messages
/// never are; for a message from another broker, a hash of its group and
/// body.
pub(crate) fn dedup_id(native: Option<&SqsNative>, message: &Message) -> String {
    match native {
        Some(native) => native.message_id.clone(),
        None => {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            message.order_key.hash(&mut h);
            message.body.hash(&mut h);
            format!("remora-{:016x}", h.finish())
        }
    }
}
