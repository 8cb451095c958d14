use super::*;

fn head(
    method: &str,
    uri: &str,
    version: HttpVersion,
    headers: &[(&str, &str)],
) -> HttpRequestHead {
    HttpRequestHead {
        method: method.into(),
        uri: uri.into(),
        version,
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), Bytes::copy_from_slice(v.as_bytes())))
            .collect(),
    }
}

#[test]
fn http1_requests_without_length_or_encoding_have_no_body() {
    assert!(!has_body(&head("GET", "/", HttpVersion::Http11, &[])));
    assert!(!has_body(&head(
        "POST",
        "/",
        HttpVersion::Http11,
        &[("Content-Length", "0")]
    )));
    assert!(has_body(&head(
        "POST",
        "/",
        HttpVersion::Http11,
        &[("content-length", "3")]
    )));
    assert!(has_body(&head(
        "POST",
        "/",
        HttpVersion::Http11,
        &[("Transfer-Encoding", "chunked")]
    )));
    assert!(has_body(&head("POST", "/", HttpVersion::Http2, &[])));
    assert!(!has_body(&head("GET", "/", HttpVersion::Http2, &[])));
}

const APP: &str = "127.0.0.1:8081";

fn app() -> SocketAddr {
    APP.parse().unwrap()
}

#[test]
fn http11_request_becomes_origin_form_with_host_from_the_authority() {
    let h = head(
        "PUT",
        "http://svc.ns:8080/api/x?y=1",
        HttpVersion::Http11,
        &[("x-user", "me"), ("Transfer-Encoding", "chunked")],
    );
    let req = build_request(h, ChannelBody::empty(), app()).unwrap();
    assert_eq!(req.method(), Method::PUT);
    assert_eq!(req.uri(), "/api/x?y=1");
    assert_eq!(req.version(), Version::HTTP_11);
    assert_eq!(req.headers()[HOST], "svc.ns:8080");
    assert_eq!(req.headers()["x-user"], "me");
    assert_eq!(req.headers()["transfer-encoding"], "chunked");
    assert_eq!(req.headers().len(), 3);
}

#[test]
fn http2_request_stays_http2_with_the_clients_authority() {
    let h = head(
        "PUT",
        "/api/x?y=1",
        HttpVersion::Http2,
        &[
            (":method", "PUT"),
            (":authority", "svc.ns:8080"),
            ("x-user", "me"),
            ("host", "other.ns"),
        ],
    );
    let req = build_request(h, ChannelBody::empty(), app()).unwrap();
    assert_eq!(req.method(), Method::PUT);
    assert_eq!(req.uri(), "http://svc.ns:8080/api/x?y=1");
    assert_eq!(req.version(), Version::HTTP_2);
    assert_eq!(req.headers()["x-user"], "me");
    assert!(!req.headers().contains_key(HOST), "{:?}", req.headers());
    assert_eq!(req.headers().len(), 1);
}

#[test]
fn http2_authority_falls_back_to_host_then_to_the_app() {
    let with_host = head("GET", "/a", HttpVersion::Http2, &[("Host", "svc.ns")]);
    let req = build_request(with_host, ChannelBody::empty(), app()).unwrap();
    assert_eq!(req.uri(), "http://svc.ns/a");
    let bare = head("GET", "/b", HttpVersion::Http2, &[]);
    let req = build_request(bare, ChannelBody::empty(), app()).unwrap();
    assert_eq!(req.uri(), format!("http://{APP}/b").as_str());
}

#[test]
fn http2_request_loses_the_connection_specific_headers() {
    let h = head(
        "POST",
        "/",
        HttpVersion::Http2,
        &[
            ("Connection", "keep-alive, X-Hop"),
            ("X-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("Transfer-Encoding", "chunked"),
            ("Upgrade", "websocket"),
            ("TE", "gzip"),
            ("x-user", "me"),
        ],
    );
    let req = build_request(h, ChannelBody::empty(), app()).unwrap();
    let names: Vec<&str> = req.headers().keys().map(HeaderName::as_str).collect();
    assert_eq!(names, ["x-user"]);
    let trailers = head("GET", "/", HttpVersion::Http2, &[("te", "trailers")]);
    let req = build_request(trailers, ChannelBody::empty(), app()).unwrap();
    assert_eq!(req.headers()[TE], "trailers");
}

#[test]
fn invalid_header_name_is_a_reason_not_a_panic() {
    let h = head("GET", "/", HttpVersion::Http11, &[("bad header", "x")]);
    let err = build_request(h, ChannelBody::empty(), app()).unwrap_err();
    assert!(err.contains("bad header"), "{err}");
}
