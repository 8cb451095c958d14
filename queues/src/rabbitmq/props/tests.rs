use super::*;

#[test]
fn refusals_of_rabbitmq_3_10_are_parsed() {
    // Verbatim from RabbitMQ 3.10.8.
    let durable = "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'probe-q' in vhost '/': received 'false' but current is 'true'";
    assert_eq!(
        parse_inequivalent(durable),
        Some(Current::Flag("durable".into(), true))
    );
    let dlx = "PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-exchange' for queue 'probe-q' in vhost '/': received none but current is the value 'dlx' of type 'longstr'";
    assert_eq!(
        parse_inequivalent(dlx),
        Some(Current::Value {
            name: "x-dead-letter-exchange".into(),
            value: "dlx".into(),
            ty: "longstr".into()
        })
    );
    let unset = "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'q' in vhost '/': received the value '5' of type 'long' but current is none";
    assert_eq!(
        parse_inequivalent(unset),
        Some(Current::Unset("x-max-length".into()))
    );
    // A value containing the separator text is cut at the last one.
    let odd = "inequivalent arg 'x-dead-letter-routing-key' for queue 'q' in vhost '/': received none but current is the value 'a' of type 'b' of type 'longstr'";
    assert_eq!(
        parse_inequivalent(odd),
        Some(Current::Value {
            name: "x-dead-letter-routing-key".into(),
            value: "a' of type 'b".into(),
            ty: "longstr".into()
        })
    );
    assert_eq!(parse_inequivalent("NOT_FOUND - no queue 'q'"), None);
}

#[test]
fn arguments_are_typed_by_name_then_by_look() {
    assert_eq!(
        typed_arg("x-max-length", "100"),
        AMQPValue::LongLongInt(100)
    );
    assert_eq!(
        typed_arg("x-dead-letter-routing-key", "100"),
        AMQPValue::LongString("100".into())
    );
    assert_eq!(
        typed_arg("x-single-active-consumer", "true"),
        AMQPValue::Boolean(true)
    );
    assert_eq!(typed_arg("x-custom", "false"), AMQPValue::Boolean(false));
    assert_eq!(typed_arg("x-custom", "-7"), AMQPValue::LongLongInt(-7));
    assert_eq!(
        typed_arg("x-custom", "quorum"),
        AMQPValue::LongString("quorum".into())
    );
}

#[test]
fn declare_args_skip_flags_and_expiry() {
    let props: BTreeMap<String, String> = [
        ("durable", "true"),
        ("auto_delete", "false"),
        ("x-queue-type", "quorum"),
        ("x-expires", "60000"),
        ("x-dead-letter-exchange", "dlx"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let args = declare_args(&props);
    let names: Vec<&str> = args.inner().keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["x-dead-letter-exchange", "x-queue-type"]);
}

#[test]
fn header_values_render_as_text() {
    use lapin::types::{DecimalValue, FieldArray};
    let mut table = FieldTable::default();
    table.insert("s".into(), AMQPValue::LongString("alice".into()));
    table.insert("n".into(), AMQPValue::LongInt(-42));
    table.insert("b".into(), AMQPValue::Boolean(true));
    table.insert(
        "d".into(),
        AMQPValue::DecimalValue(DecimalValue { scale: 3, value: 5 }),
    );
    table.insert("t".into(), AMQPValue::FieldTable(FieldTable::default()));
    table.insert("a".into(), AMQPValue::FieldArray(FieldArray::default()));
    table.insert("bin".into(), AMQPValue::LongString(vec![0xff, 0xfe].into()));
    let text = headers_text(Some(&table));
    let pairs: Vec<(&str, &str)> = text.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        pairs,
        [("b", "true"), ("d", "0.005"), ("n", "-42"), ("s", "alice")]
    );
    assert_eq!(decimal_text(12345, 2), "123.45");
    assert_eq!(decimal_text(7, 0), "7");
}
