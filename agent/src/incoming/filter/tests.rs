use super::*;
use hyper::header::{HeaderName, HeaderValue};

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

fn takes(filter: HttpFilter, method: &str, path: &str, pairs: &[(&str, &str)]) -> bool {
    let headers = headers(pairs);
    let view = RequestView {
        method,
        path_and_query: path,
        headers: &headers,
    };
    CompiledFilter::compile(&filter).unwrap().matches(&view)
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
    let err = CompiledFilter::compile(&HttpFilter::Header("(".into())).unwrap_err();
    assert_eq!(err, "header filter \"(\": unclosed group");
    let nested = HttpFilter::AnyOf(vec![
        HttpFilter::Method("GET".into()),
        HttpFilter::Path("[a".into()),
    ]);
    let err = CompiledFilter::compile(&nested).unwrap_err();
    assert!(err.starts_with("path filter \"[a\": "), "{err}");
    assert!(CompiledFilter::compile(&HttpFilter::Method(String::new())).is_err());
}
