use super::*;

#[test]
fn credentials_never_reach_the_endpoint() {
    assert_eq!(
        redact("amqp://guest:s3cret@127.0.0.1:5672/%2f"),
        "amqp://127.0.0.1:5672/%2f"
    );
    assert_eq!(redact("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
}

#[test]
fn foreign_messages_carry_their_headers_as_strings() {
    let m = Message {
        headers: [("x-user".to_owned(), "alice".to_owned())].into(),
        body: b"hi".to_vec(),
        order_key: None,
        native: Box::new(()),
    };
    let props = properties_of(&m);
    assert_eq!(props.delivery_mode(), &Some(2));
    assert_eq!(props::headers_text(props.headers().as_ref()), m.headers,);
    let native = message(b"x".to_vec(), BasicProperties::default().with_priority(3));
    assert_eq!(properties_of(&native).priority(), &Some(3));
}
