use super::*;

fn takes(filter: HttpFilter, method: &str, path: &str, pairs: &[(&str, &str)]) -> bool {
    validate(&filter).unwrap();
    route(&[filter], method, path, pairs).is_some()
}

/// Which of `filters` (by index) takes the request.
fn route(
    filters: &[HttpFilter],
    method: &str,
    path: &str,
    pairs: &[(&str, &str)],
) -> Option<usize> {
    let headers: Vec<HeaderLine<'_>> = pairs
        .iter()
        .map(|(name, value)| HeaderLine {
            name,
            value: value.as_bytes(),
        })
        .collect();
    let view = RequestView {
        method,
        path_and_query: path,
        headers: &headers,
    };
    let routes = Routes::build(filters.iter().zip(0..)).unwrap();
    routes.pick(&view).copied()
}

#[test]
fn header_filters_match_whole_lines_case_insensitively() {
    let alice = || HttpFilter::Header("^x-user: alice$".into());
    assert!(takes(alice(), "GET", "/", &[("X-User", "alice")]));
    assert!(takes(alice(), "GET", "/", &[("x-user", "ALICE")]));
    assert!(takes(
        alice(),
        "GET",
        "/",
        &[("accept", "*/*"), ("x-user", "alice")]
    ));
    assert!(!takes(alice(), "GET", "/", &[("x-user", "alice2")]));
    assert!(!takes(alice(), "GET", "/", &[("x-other", "alice")]));
    assert!(!takes(alice(), "GET", "/", &[]));
}

#[test]
fn path_filters_see_the_query_and_are_case_sensitive() {
    let api = || HttpFilter::Path(r"^/api/.*\?debug=1$".into());
    assert!(takes(api(), "GET", "/api/x?debug=1", &[]));
    assert!(!takes(api(), "GET", "/api/x", &[]));
    assert!(!takes(api(), "GET", "/API/x?debug=1", &[]));
}

#[test]
fn method_filters_are_exact_and_case_insensitive() {
    let post = || HttpFilter::Method("post".into());
    assert!(takes(post(), "POST", "/", &[]));
    assert!(!takes(post(), "POSTX", "/", &[]));
    assert!(!takes(post(), "GET", "/", &[]));
}

#[test]
fn all_of_and_any_of_combine() {
    let both = || {
        HttpFilter::AllOf(vec![
            HttpFilter::Method("GET".into()),
            HttpFilter::Header("^x-user: alice$".into()),
        ])
    };
    assert!(takes(both(), "GET", "/", &[("x-user", "alice")]));
    assert!(!takes(both(), "POST", "/", &[("x-user", "alice")]));
    let either = || {
        HttpFilter::AnyOf(vec![
            HttpFilter::Path("^/a".into()),
            HttpFilter::Header("^x-user: bob$".into()),
        ])
    };
    assert!(takes(either(), "GET", "/a", &[]));
    assert!(takes(either(), "GET", "/b", &[("x-user", "bob")]));
    assert!(!takes(either(), "GET", "/b", &[]));
    assert!(!takes(HttpFilter::AnyOf(vec![]), "GET", "/", &[]));
    assert!(takes(HttpFilter::AllOf(vec![]), "GET", "/", &[]));
}

#[test]
fn bad_regexes_are_named_with_their_reason() {
    let err = validate(&HttpFilter::Header("(".into())).unwrap_err();
    assert_eq!(err, "header filter \"(\": unclosed group");
    let nested = HttpFilter::AnyOf(vec![
        HttpFilter::Method("GET".into()),
        HttpFilter::Path("[a".into()),
    ]);
    let err = validate(&nested).unwrap_err();
    assert!(err.starts_with("path filter \"[a\": "), "{err}");
    assert!(validate(&HttpFilter::Method(String::new())).is_err());
}

#[test]
fn the_first_matching_route_wins_among_many() {
    let filters: Vec<HttpFilter> = (0..50)
        .map(|n| HttpFilter::Header(format!("^x-user: u{n}$")))
        .chain([
            HttpFilter::AllOf(vec![
                HttpFilter::Method("POST".into()),
                HttpFilter::Path("^/upload".into()),
            ]),
            HttpFilter::Path("^/".into()),
        ])
        .collect();
    for n in 0..50 {
        let user = format!("u{n}");
        let got = route(
            &filters,
            "GET",
            "/x",
            &[("accept", "*/*"), ("X-User", &user)],
        );
        assert_eq!(got, Some(n), "x-user: {user}");
    }
    assert_eq!(
        route(&filters, "POST", "/upload", &[("x-user", "nobody")]),
        Some(50)
    );
    assert_eq!(route(&filters, "GET", "/upload", &[]), Some(51));
    assert_eq!(
        route(&filters[..50], "GET", "/", &[("x-user", "u50")]),
        None
    );
    assert_eq!(
        route(&filters[..50], "GET", "/", &[("x-user", "u1x")]),
        None
    );
}

#[test]
fn header_values_need_not_be_utf8() {
    let filters = [HttpFilter::Header("^x-bin: a.b$".into())];
    let headers = [HeaderLine {
        name: "x-bin",
        value: b"a\xffb",
    }];
    let view = RequestView {
        method: "GET",
        path_and_query: "/",
        headers: &headers,
    };
    let routes = Routes::build(filters.iter().zip(0..)).unwrap();
    // One invalid byte is not a character: `.` does not match it...
    assert_eq!(routes.pick(&view), None);
    let headers = [HeaderLine {
        name: "x-bin",
        value: "a\u{e9}b".as_bytes(),
    }];
    let view = RequestView {
        headers: &headers,
        ..view
    };
    // ...but a UTF-8 character is one.
    assert_eq!(routes.pick(&view), Some(&0));
}

#[test]
fn more_than_64_patterns_and_long_header_lines_match_too() {
    let filters: Vec<HttpFilter> = (0..100)
        .map(|n| HttpFilter::Header(format!("^x-user: u{n}$")))
        .chain([HttpFilter::Path("^/p70$".into())])
        .collect();
    assert_eq!(route(&filters, "GET", "/", &[("x-user", "u63")]), Some(63));
    assert_eq!(route(&filters, "GET", "/", &[("x-user", "u99")]), Some(99));
    assert_eq!(route(&filters, "GET", "/p70", &[]), Some(100));
    assert_eq!(route(&filters, "GET", "/", &[("x-user", "u100")]), None);
    let long = "a".repeat(300);
    let filters = [HttpFilter::Header(format!("^x-long: {long}$"))];
    assert_eq!(route(&filters, "GET", "/", &[("x-long", &long)]), Some(0));
    assert_eq!(route(&filters, "GET", "/", &[("x-long", &long[1..])]), None);
}
