use super::KafkaConfig;

#[test]
fn the_config_debug_hides_the_password() {
    let config = KafkaConfig {
        bootstrap_servers: "127.0.0.1:9092".into(),
        group: "orders".into(),
        sasl: Some(("alice".into(), "s3cret".into())),
    };
    let text = format!("{config:?}");
    assert!(text.contains("alice") && !text.contains("s3cret"), "{text}");
}
