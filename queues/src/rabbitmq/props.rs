//! RabbitMQ queue properties as text and back: what `inspect` learns from the
//! broker's refusals of inequivalent declarations, how `create_like` types the
//! arguments again, and how header values are rendered for filters.

use lapin::types::{AMQPValue, FieldTable};
use std::collections::BTreeMap;

/// The `QueueProps` key of the `durable` flag (`"true"`/`"false"`).
pub const DURABLE: &str = "durable";
/// The `QueueProps` key of the `auto_delete` flag. Read, never copied: a
/// temporary queue that vanished with its last consumer would take its
/// messages with it.
pub const AUTO_DELETE: &str = "auto_delete";
/// Arguments that are read but not copied to temporary queues, and why.
pub const NOT_COPIED: &[(&str, &str)] = &[(
    "x-expires",
    "a temporary queue must not expire with messages in it; remora deletes it",
)];

/// Arguments RabbitMQ documents as integers; everything else given as text
/// is typed by its look (see [`typed_arg`]).
const INTEGER_ARGS: &[&str] = &[
    "x-max-length",
    "x-max-length-bytes",
    "x-message-ttl",
    "x-expires",
    "x-max-priority",
    "x-delivery-limit",
    "x-quorum-initial-group-size",
    "x-quorum-target-group-size",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-initial-cluster-size",
    "x-stream-max-segment-size-bytes",
    "x-queue-version",
];
/// Arguments RabbitMQ documents as booleans.
const BOOL_ARGS: &[&str] = &["x-single-active-consumer"];
/// Arguments RabbitMQ documents as strings (a value such as `"100"` stays a
/// string for these).
const STRING_ARGS: &[&str] = &[
    "x-queue-type",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-dead-letter-strategy",
    "x-overflow",
    "x-queue-mode",
    "x-queue-leader-locator",
    "x-queue-master-locator",
    "x-max-age",
];

/// The AMQP value of argument `name` given as `text`: by RabbitMQ's
/// documented type where the name is known, else `true`/`false` as a
/// boolean, a decimal integer as a 64-bit integer, anything else as a
/// string. RabbitMQ compares integer arguments by value across integer
/// widths, so `long` is equivalent to whatever width the original used.
pub fn typed_arg(name: &str, text: &str) -> AMQPValue {
    let as_bool = || match text {
        "true" => Some(AMQPValue::Boolean(true)),
        "false" => Some(AMQPValue::Boolean(false)),
        _ => None,
    };
    let as_int = || text.parse::<i64>().ok().map(AMQPValue::LongLongInt);
    let as_str = || AMQPValue::LongString(text.into());
    if STRING_ARGS.contains(&name) {
        as_str()
    } else if INTEGER_ARGS.contains(&name) {
        as_int().unwrap_or_else(as_str)
    } else if BOOL_ARGS.contains(&name) {
        as_bool().unwrap_or_else(as_str)
    } else {
        as_bool().or_else(as_int).unwrap_or_else(as_str)
    }
}

/// The declaration arguments for a queue with `props`: every `x-` key but
/// the [`NOT_COPIED`] ones.
pub fn declare_args(props: &BTreeMap<String, String>) -> FieldTable {
    let mut args = FieldTable::default();
    for (name, value) in props {
        if name.starts_with("x-") && !NOT_COPIED.iter().any(|(n, _)| n == name) {
            args.insert(name.as_str().into(), typed_arg(name, value));
        }
    }
    args
}

/// What one `PRECONDITION_FAILED - inequivalent arg` refusal says about the
/// queue as it was declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Current {
    /// A flag (`durable`, `auto_delete`, `exclusive`) has this value.
    Flag(String, bool),
    /// Argument `name` is not set.
    Unset(String),
    /// Argument `name` is set to this value, of this RabbitMQ type
    /// (`longstr`, `signedint`, `long`, `bool`, ...).
    Value {
        /// The argument.
        name: String,
        /// Its value as RabbitMQ printed it.
        value: String,
        /// RabbitMQ's name of its type.
        ty: String,
    },
}

/// Parses RabbitMQ's refusal of a redeclaration with different properties:
/// `inequivalent arg 'durable' for queue 'q' in vhost '/': received 'false'
/// but current is 'true'`, or `... received none but current is the value
/// 'dlx' of type 'longstr'`, or `... but current is none`. `None` when the
/// text has another shape.
pub fn parse_inequivalent(text: &str) -> Option<Current> {
    let rest = &text[text.find("inequivalent arg '")? + "inequivalent arg '".len()..];
    let name = &rest[..rest.find('\'')?];
    let current = &rest[rest.rfind("but current is ")? + "but current is ".len()..];
    if current == "none" {
        return Some(Current::Unset(name.to_owned()));
    }
    if let Some(value) = current.strip_prefix("the value '") {
        let sep = value.rfind("' of type '")?;
        let ty = value[sep + "' of type '".len()..].strip_suffix('\'')?;
        return Some(Current::Value {
            name: name.to_owned(),
            value: value[..sep].to_owned(),
            ty: ty.to_owned(),
        });
    }
    let flag = current.strip_prefix('\'')?.strip_suffix('\'')?;
    match flag {
        "true" => Some(Current::Flag(name.to_owned(), true)),
        "false" => Some(Current::Flag(name.to_owned(), false)),
        _ => None,
    }
}

/// The AMQP value RabbitMQ printed as `value` of type `ty`, if it is a
/// scalar this module can rebuild exactly.
pub fn value_of_type(value: &str, ty: &str) -> Option<AMQPValue> {
    Some(match ty {
        "longstr" | "shortstr" => AMQPValue::LongString(value.into()),
        "bool" => AMQPValue::Boolean(value.parse().ok()?),
        "byte" => AMQPValue::ShortShortInt(value.parse().ok()?),
        "unsignedbyte" => AMQPValue::ShortShortUInt(value.parse().ok()?),
        "short" => AMQPValue::ShortInt(value.parse().ok()?),
        "unsignedshort" => AMQPValue::ShortUInt(value.parse().ok()?),
        "signedint" => AMQPValue::LongInt(value.parse().ok()?),
        "unsignedint" => AMQPValue::LongUInt(value.parse().ok()?),
        "long" => AMQPValue::LongLongInt(value.parse().ok()?),
        _ => return None,
    })
}

/// A header value as text for filters (see `Message::headers`): strings as
/// they are (when valid UTF-8), numbers in decimal, booleans as
/// `true`/`false`, timestamps as seconds; tables, arrays, byte arrays and
/// void have no text form and are left out.
pub fn header_text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        AMQPValue::DecimalValue(d) => decimal_text(d.value, d.scale),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok()?,
        AMQPValue::Timestamp(t) => t.to_string(),
        AMQPValue::FieldArray(_)
        | AMQPValue::FieldTable(_)
        | AMQPValue::ByteArray(_)
        | AMQPValue::Void => return None,
    })
}

/// `value / 10^scale` in decimal notation: (12345, 2) is `123.45`.
fn decimal_text(value: u32, scale: u8) -> String {
    let digits = value.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{int}.{frac}")
}

/// Header values as text, by name (see [`header_text`]).
pub fn headers_text(headers: Option<&FieldTable>) -> BTreeMap<String, String> {
    headers
        .map(|table| {
            table
                .inner()
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_owned(), header_text(v)?)))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
