use super::convert::headers;
use super::*;
use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::MessageAttributeValue;

fn q(name: &str) -> QueueName {
    QueueName(name.to_owned())
}

#[test]
fn fifo_names_end_in_fifo() {
    assert!(is_fifo_name(&q("orders.fifo")));
    assert!(!is_fifo_name(&q("fifo")));
    assert!(!is_fifo_name(&q("orders")));
}

#[test]
fn string_and_number_attributes_are_headers_and_binary_ones_are_not() {
    let attr = |t: &str, s: Option<&str>, b: Option<&[u8]>| {
        let mut v = MessageAttributeValue::builder().data_type(t);
        if let Some(s) = s {
            v = v.string_value(s);
        }
        if let Some(b) = b {
            v = v.binary_value(Blob::new(b));
        }
        v.build().unwrap()
    };
    let attributes = HashMap::from([
        ("x-user".to_owned(), attr("String", Some("alice"), None)),
        ("n".to_owned(), attr("Number", Some("42.5"), None)),
        ("kind".to_owned(), attr("String.enum", Some("a"), None)),
        ("count".to_owned(), attr("Number.int", Some("7"), None)),
        ("blob".to_owned(), attr("Binary", None, Some(b"\x00\x01"))),
        ("pic".to_owned(), attr("Binary.png", None, Some(b"\x89P"))),
    ]);
    let got = headers(&attributes);
    let want: BTreeMap<String, String> = [
        ("x-user", "alice"),
        ("n", "42.5"),
        ("kind", "a"),
        ("count", "7"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn a_copy_policy_names_the_copy() {
    assert_eq!(
        sibling_arn(
            "arn:aws:sqs:eu-west-1:123456789012:orders.fifo",
            &q("o-t.fifo")
        )
        .as_deref(),
        Some("arn:aws:sqs:eu-west-1:123456789012:o-t.fifo")
    );
    assert_eq!(sibling_arn("no-colons", &q("x")), None);
}
