use super::*;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_796_392_800 + seconds).unwrap()
}

fn spec(holder: Option<&str>, renewed: i64) -> LeaseSpec {
    LeaseSpec {
        holder_identity: holder.map(str::to_owned),
        lease_duration_seconds: Some(LEASE_SECONDS),
        renew_time: Some(MicroTime(at(renewed))),
        ..LeaseSpec::default()
    }
}

#[test]
fn a_missing_or_released_lease_is_taken() {
    assert_eq!(
        decide(None, "a", at(0)),
        Decision::Take { transition: true }
    );
    assert_eq!(
        decide(Some(&spec(None, 0)), "a", at(1)),
        Decision::Take { transition: true }
    );
    assert_eq!(
        decide(Some(&spec(Some(""), 0)), "a", at(1)),
        Decision::Take { transition: true }
    );
}

#[test]
fn our_lease_is_renewed_and_a_live_one_of_another_is_waited_for() {
    assert_eq!(
        decide(Some(&spec(Some("a"), 0)), "a", at(100)),
        Decision::Take { transition: false }
    );
    assert_eq!(
        decide(Some(&spec(Some("b"), 0)), "a", at(i64::from(LEASE_SECONDS))),
        Decision::Wait { holder: "b".into() }
    );
}

#[test]
fn an_expired_lease_of_another_is_taken_over() {
    assert_eq!(
        decide(
            Some(&spec(Some("b"), 0)),
            "a",
            at(i64::from(LEASE_SECONDS) + 1)
        ),
        Decision::Take { transition: true }
    );
}

#[test]
fn taking_counts_transitions_and_renewing_does_not() {
    let first = taken(None, "a", at(0), true);
    let s = first.spec.as_ref().unwrap();
    assert_eq!(first.metadata.name.as_deref(), Some(LEASE_NAME));
    assert_eq!(s.holder_identity.as_deref(), Some("a"));
    assert_eq!(s.lease_transitions, None);
    let renewed = taken(Some(&first), "a", at(5), false);
    let r = renewed.spec.as_ref().unwrap();
    assert_eq!(r.acquire_time, s.acquire_time);
    assert_eq!(r.renew_time, Some(MicroTime(at(5))));
    let taken_over = taken(Some(&renewed), "b", at(30), true);
    let t = taken_over.spec.as_ref().unwrap();
    assert_eq!(t.holder_identity.as_deref(), Some("b"));
    assert_eq!(t.lease_transitions, Some(1));
    assert_eq!(t.acquire_time, Some(MicroTime(at(30))));
}
