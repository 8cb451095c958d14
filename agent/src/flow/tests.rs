//! Window and credit bookkeeping.

use super::*;
use remora_protocol::flow::MESSAGE_COST;

#[tokio::test]
async fn a_window_runs_out_and_credit_refills_it_up_to_one_window() {
    let window = SendWindow::new(true);
    let chunk = (STREAM_WINDOW - MESSAGE_COST) as usize;
    assert!(window.take(chunk).await);
    let waiting = tokio::spawn({
        let window = window.clone();
        async move { window.take(1).await }
    });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "no credit left, the sender waits");
    window.grant(credit_cost(1));
    assert!(waiting.await.unwrap());
    // Far more credit than was used is capped at one window.
    window.grant(u32::MAX);
    assert_eq!(
        window.0.as_ref().unwrap().available_permits(),
        STREAM_WINDOW as usize
    );
    assert!(SendWindow::new(false).take(usize::MAX / 2).await);
}

#[test]
fn a_receiver_returns_credit_in_batches_and_spots_a_client_beyond_its_window() {
    let inbound = Inbound::new(true);
    let mut returner = inbound.returner();
    let chunk = 64 * 1024;
    let mut returned = 0;
    for _ in 0..32 {
        assert_eq!(inbound.admit(chunk), Admit::Queue);
        returned += returner.written(chunk).unwrap_or(0);
    }
    assert!(returned >= 32 * credit_cost(chunk) - CREDIT_BATCH);
    // A full window held, then one more byte: a violation.
    for _ in 0..(STREAM_WINDOW / credit_cost(chunk)) {
        assert_eq!(inbound.admit(chunk), Admit::Queue);
    }
    assert_eq!(inbound.admit(chunk), Admit::Violation);

    let legacy = Inbound::new(false);
    assert_eq!(legacy.admit(chunk), Admit::Wait);
    assert_eq!(legacy.returner().written(chunk), None);
    assert_eq!(legacy.queue_capacity(), LEGACY_QUEUE_CAPACITY);
}
