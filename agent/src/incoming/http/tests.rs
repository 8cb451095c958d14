use super::{H2_PREFACE, Protocol, classify, request_line_start};

#[test]
fn http1_request_lines_are_told_from_other_protocols() {
    assert_eq!(request_line_start(b"GET / HTTP/1.1\r\n"), Some(true));
    assert_eq!(request_line_start(b"M-SEARCH * HTTP/1.1"), Some(true));
    assert_eq!(request_line_start(b"PRI * HTTP/2.0\r\n"), Some(false));
    assert_eq!(request_line_start(b"\x16\x03\x01\x02"), Some(false));
    assert_eq!(request_line_start(b"hello world"), Some(false));
    assert_eq!(request_line_start(b"GE"), None);
}

#[test]
fn the_first_bytes_tell_http1_from_http2_and_the_rest() {
    assert_eq!(classify(b""), None);
    assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
    assert_eq!(
        classify(b"PRI * HTTP/2.0\r\n"),
        None,
        "a preface not complete yet"
    );
    assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
    assert_eq!(
        classify(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"),
        Some(Protocol::Other)
    );
    assert_eq!(classify(b"\x16\x03\x01"), Some(Protocol::Other));
    assert_eq!(classify(b"P"), None);
}
