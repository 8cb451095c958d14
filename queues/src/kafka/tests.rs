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

use super::consumer::PartitionAcks;

#[test]
fn a_commit_never_passes_a_message_still_in_flight() {
    let mut p = PartitionAcks::default();
    for offset in 10..15 {
        assert!(p.deliver(offset));
    }
    // 11 and 12 finish before 10: nothing past 10 can be committed.
    assert_eq!(p.ack(11), Some(10));
    p.committed(10);
    assert_eq!(p.ack(12), None);
    // 10 finishes: everything below 13 is done.
    assert_eq!(p.ack(10), Some(13));
    p.committed(13);
    assert_eq!(p.ack(14), None, "13 is still in flight");
    assert_eq!(p.ack(13), Some(15));
}

#[test]
fn a_re_read_after_a_rebalance_is_skipped_once_handed_out() {
    let mut p = PartitionAcks::default();
    assert!(p.deliver(0));
    assert!(p.deliver(1));
    assert_eq!(p.ack(0), Some(1));
    p.committed(1);
    // The group starts again at the committed offset 1: 1 is in flight.
    assert!(!p.deliver(1));
    assert!(p.deliver(2));
    assert_eq!(p.ack(2), None, "1 is still in flight");
    assert_eq!(p.ack(1), Some(3));
}
