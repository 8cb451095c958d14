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

#[test]
fn http2_request_becomes_origin_form_http11_with_host() {
    let h = head(
        "PUT",
        "http://svc.ns:8080/api/x?y=1",
        HttpVersion::Http2,
        &[(":authority", "svc.ns:8080"), ("x-user", "me")],
    );
    let req = build_request(h, ChannelBody { rx: None }).unwrap();
    assert_eq!(req.method(), Method::PUT);
    assert_eq!(req.uri(), "/api/x?y=1");
    assert_eq!(req.version(), Version::HTTP_11);
    assert_eq!(req.headers()[HOST], "svc.ns:8080");
    assert_eq!(req.headers()["x-user"], "me");
    assert_eq!(req.headers().len(), 2);
}

#[test]
fn invalid_header_name_is_a_reason_not_a_panic() {
    let h = head("GET", "/", HttpVersion::Http11, &[("bad header", "x")]);
    let err = build_request(h, ChannelBody { rx: None }).unwrap_err();
    assert!(err.contains("bad header"), "{err}");
}
