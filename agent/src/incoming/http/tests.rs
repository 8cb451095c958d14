use super::request_line_start;

#[test]
fn http1_request_lines_are_told_from_other_protocols() {
    assert_eq!(request_line_start(b"GET / HTTP/1.1\r\n"), Some(true));
    assert_eq!(request_line_start(b"M-SEARCH * HTTP/1.1"), Some(true));
    assert_eq!(request_line_start(b"PRI * HTTP/2.0\r\n"), Some(false));
    assert_eq!(request_line_start(b"\x16\x03\x01\x02"), Some(false));
    assert_eq!(request_line_start(b"hello world"), Some(false));
    assert_eq!(request_line_start(b"GE"), None);
}
