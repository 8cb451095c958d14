//! Tests of the session registry.

use super::*;

#[tokio::test]
async fn register_list_kill_and_unregister_on_drop() {
    let registry = SessionRegistry::default();
    let mut count = registry.subscribe_count();
    let (alice, mut alice_kill) = registry.register("alice", "pid/1");
    let (bob, _bob_kill) = registry.register("bob", "pid/1");
    assert_ne!(alice.id(), bob.id());
    assert_eq!(
        *count.borrow_and_update(),
        SessionCount {
            active: 2,
            total: 2
        }
    );

    let users: Vec<String> = registry.list().into_iter().map(|s| s.user).collect();
    assert_eq!(users, ["alice", "bob"]);

    registry.kill(alice.id(), "killed by bob".into()).unwrap();
    assert_eq!(alice_kill.recv().await.as_deref(), Some("killed by bob"));
    let unknown = registry.kill(SessionId(999), "x".into()).unwrap_err();
    assert_eq!(unknown.code, ErrorCode::NotFound);

    drop(alice);
    assert_eq!(
        *count.borrow_and_update(),
        SessionCount {
            active: 1,
            total: 2
        }
    );
    assert_eq!(registry.list().len(), 1);
    drop(bob);
    assert_eq!(
        *count.borrow(),
        SessionCount {
            active: 0,
            total: 2
        }
    );
}
