use super::*;

const T: &str = "pid/4242";
const PORT: RemotePort = RemotePort(8080);

fn header(p: &str) -> HttpFilter {
    HttpFilter::Header(p.into())
}

fn claim(
    reg: &mut FilterRegistry,
    session: u64,
    user: &str,
    filter: Option<&HttpFilter>,
    take_over: bool,
    now: SystemTime,
) -> Result<Vec<Holding>, Conflict> {
    reg.claim(
        &ClaimRequest {
            target: T,
            port: PORT,
            session: SessionId(session),
            user,
            mode: IncomingMode::Steal,
            filter,
            take_over,
        },
        now,
    )
}

#[test]
fn different_filters_share_a_port() {
    let mut reg = FilterRegistry::default();
    let now = SystemTime::now();
    claim(
        &mut reg,
        1,
        "alice",
        Some(&header("^x-user: alice$")),
        false,
        now,
    )
    .unwrap();
    claim(
        &mut reg,
        2,
        "bob",
        Some(&header("^x-user: bob$")),
        false,
        now,
    )
    .unwrap();
    assert_eq!(reg.holders(T, PORT), 2);
}

#[test]
fn an_identical_filter_is_refused_naming_its_holder_and_age() {
    let mut reg = FilterRegistry::default();
    let then = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
    claim(
        &mut reg,
        0x7f3a,
        "alice",
        Some(&header("^x-user: alice$")),
        false,
        then,
    )
    .unwrap();
    let later = then + Duration::from_secs(4 * 60 + 5);
    // Header filters compare case-insensitively and trimmed.
    let err = claim(
        &mut reg,
        2,
        "bob",
        Some(&header(" ^X-User: alice$")),
        false,
        later,
    )
    .unwrap_err();
    assert_eq!(err.holders, vec![SessionId(0x7f3a)]);
    assert!(
        err.message.starts_with(
            "port 8080 on pid/4242: header filter '^x-user: alice$' is held by alice \
             (session 7f3a, 4 min)"
        ),
        "{}",
        err.message
    );
    assert!(err.message.contains("--override-filter"), "{}", err.message);
    assert_eq!(reg.holders(T, PORT), 1);
}

#[test]
fn path_filters_stay_case_sensitive_and_lists_are_order_free() {
    assert_ne!(
        normalize(&HttpFilter::Path("/API".into())),
        normalize(&HttpFilter::Path("/api".into()))
    );
    let a = HttpFilter::AllOf(vec![header("x: 1"), HttpFilter::Method("get".into())]);
    let b = HttpFilter::AllOf(vec![HttpFilter::Method("GET".into()), header("X: 1")]);
    assert_eq!(normalize(&a), normalize(&b));
    assert_ne!(
        normalize(&a),
        normalize(&HttpFilter::AnyOf(vec![
            header("x: 1"),
            HttpFilter::Method("GET".into())
        ]))
    );
}

#[test]
fn unfiltered_and_filtered_exclude_each_other() {
    let now = SystemTime::now();
    let mut reg = FilterRegistry::default();
    claim(
        &mut reg,
        1,
        "alice",
        Some(&header("^x-user: alice$")),
        false,
        now,
    )
    .unwrap();
    let err = claim(&mut reg, 2, "bob", None, false, now).unwrap_err();
    assert!(
        err.message
            .contains("cannot steal it without a filter while alice"),
        "{}",
        err.message
    );

    let mut reg = FilterRegistry::default();
    claim(&mut reg, 1, "alice", None, false, now).unwrap();
    let err = claim(
        &mut reg,
        2,
        "bob",
        Some(&header("^x-user: bob$")),
        false,
        now,
    )
    .unwrap_err();
    assert!(
        err.message
            .contains("an unfiltered steal of it is held by alice"),
        "{}",
        err.message
    );
    let err = claim(&mut reg, 3, "carol", None, false, now).unwrap_err();
    assert_eq!(err.holders, vec![SessionId(1)]);
}

#[test]
fn other_ports_and_targets_do_not_conflict() {
    let now = SystemTime::now();
    let mut reg = FilterRegistry::default();
    claim(&mut reg, 1, "alice", None, false, now).unwrap();
    reg.claim(
        &ClaimRequest {
            target: T,
            port: RemotePort(9090),
            session: SessionId(2),
            user: "bob",
            mode: IncomingMode::Steal,
            filter: None,
            take_over: false,
        },
        now,
    )
    .unwrap();
    reg.claim(
        &ClaimRequest {
            target: "pid/1",
            port: PORT,
            session: SessionId(3),
            user: "carol",
            mode: IncomingMode::Mirror,
            filter: None,
            take_over: false,
        },
        now,
    )
    .unwrap();
}

#[test]
fn override_evicts_the_holders_in_the_way_only() {
    let now = SystemTime::now();
    let mut reg = FilterRegistry::default();
    claim(
        &mut reg,
        1,
        "alice",
        Some(&header("^x-user: alice$")),
        false,
        now,
    )
    .unwrap();
    claim(
        &mut reg,
        2,
        "bob",
        Some(&header("^x-user: bob$")),
        false,
        now,
    )
    .unwrap();
    let evicted = claim(
        &mut reg,
        3,
        "mallory",
        Some(&header("^x-user: alice$")),
        true,
        now,
    )
    .unwrap();
    assert_eq!(evicted.len(), 1);
    assert_eq!(evicted[0].session, SessionId(1));
    assert_eq!(reg.holders(T, PORT), 2);
    // An unfiltered override takes everything.
    let evicted = claim(&mut reg, 4, "root", None, true, now).unwrap();
    assert_eq!(evicted.len(), 2);
    assert_eq!(reg.holders(T, PORT), 1);
}

#[test]
fn sessions_list_only_granted_subscriptions_and_release_everything_on_end() {
    let now = SystemTime::now();
    let mut reg = FilterRegistry::default();
    claim(
        &mut reg,
        1,
        "alice",
        Some(&header("^x-user: alice$")),
        false,
        now,
    )
    .unwrap();
    assert!(reg.subscriptions_of(SessionId(1)).is_empty());
    reg.confirm(T, PORT, SessionId(1));
    let subs = reg.subscriptions_of(SessionId(1));
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].port, PORT);
    assert_eq!(subs[0].filter, Some(header("^x-user: alice$")));
    reg.release_session(SessionId(1));
    assert_eq!(reg.holders(T, PORT), 0);
    // The filter is free again.
    claim(
        &mut reg,
        2,
        "bob",
        Some(&header("^x-user: alice$")),
        false,
        now,
    )
    .unwrap();
    reg.release(T, PORT, SessionId(2));
    assert_eq!(reg.holders(T, PORT), 0);
}

#[test]
fn a_session_resubscribing_replaces_its_own_holding() {
    let now = SystemTime::now();
    let mut reg = FilterRegistry::default();
    claim(&mut reg, 1, "alice", None, false, now).unwrap();
    claim(
        &mut reg,
        1,
        "alice",
        Some(&header("^x-user: alice$")),
        false,
        now,
    )
    .unwrap();
    assert_eq!(reg.holders(T, PORT), 1);
}

#[test]
fn ages_read_naturally() {
    assert_eq!(format_age(Duration::from_secs(4)), "4 s");
    assert_eq!(format_age(Duration::from_secs(245)), "4 min");
    assert_eq!(format_age(Duration::from_secs(7300)), "2 h");
}
