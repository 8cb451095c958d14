use super::*;

/// Scan `input` fed in pieces of `piece` bytes; the payload and how many
/// bytes the body took.
fn scan(input: &[u8], piece: usize) -> io::Result<(Vec<u8>, usize)> {
    let mut chunked = Chunked::default();
    let mut fed = 0;
    let mut at = 0;
    let mut payload = Vec::new();
    loop {
        match chunked.step(&input[at..fed])? {
            Step::Need if fed == input.len() => {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "need more"));
            }
            Step::Need => fed = (fed + piece).min(input.len()),
            Step::Advance { consumed, data } => {
                if let Some(d) = data {
                    payload.extend_from_slice(&input[at + d.start..at + d.end]);
                }
                at += consumed;
            }
            Step::Done { consumed } => return Ok((payload, at + consumed)),
        }
    }
}

#[test]
fn chunked_bodies_end_where_they_end_however_they_arrive() {
    let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\nGET / HTTP/1.1\r\n";
    let end = body.len() - b"GET / HTTP/1.1\r\n".len();
    for piece in 1..body.len() {
        let (payload, len) = scan(body, piece).unwrap();
        assert_eq!(payload, b"hello, world", "piece {piece}");
        assert_eq!(len, end, "piece {piece}");
    }
}

#[test]
fn broken_chunked_bodies_are_errors() {
    assert!(scan(b"zz\r\n", 4).is_err());
    assert!(scan(b"2\r\nabXY0\r\n\r\n", 16).is_err());
    assert!(scan(b"2\r\nab\r\n", 16).is_err(), "ends early");
}

fn request(text: &str) -> (Head, Vec<u8>) {
    let buf = text.as_bytes().to_vec();
    (Head::request(&buf).unwrap().unwrap(), buf)
}

fn response(text: &str) -> (Head, Vec<u8>) {
    let buf = text.as_bytes().to_vec();
    (Head::response(&buf).unwrap().unwrap(), buf)
}

#[test]
fn body_lengths_follow_the_rules() {
    let (h, b) = request("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(h.body(&b, true, false).unwrap(), Body::Empty);
    assert_eq!(&b[h.method.clone()], b"GET");
    assert_eq!(&b[h.target.clone()], b"/");
    let (h, b) = request("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n");
    assert_eq!(h.body(&b, true, false).unwrap(), Body::Length(12));
    let (h, b) =
        request("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\nContent-Length: 3\r\n\r\n");
    assert_eq!(h.body(&b, true, false).unwrap(), Body::Chunked);
    let (h, b) = request("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n");
    assert!(h.body(&b, true, false).is_err());
    let (h, b) = request("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n");
    assert!(h.body(&b, true, false).is_err());
    let (h, b) = request("POST / HTTP/1.1\r\nContent-Length: -3\r\n\r\n");
    assert!(h.body(&b, true, false).is_err());

    let (h, b) = response("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
    assert_eq!(h.body(&b, false, false).unwrap(), Body::Length(5));
    assert_eq!(
        h.body(&b, false, true).unwrap(),
        Body::Empty,
        "answer to HEAD"
    );
    let (h, b) = response("HTTP/1.1 204 No Content\r\n\r\n");
    assert_eq!(h.body(&b, false, false).unwrap(), Body::Empty);
    let (h, b) = response("HTTP/1.1 100 Continue\r\n\r\n");
    assert_eq!(h.body(&b, false, false).unwrap(), Body::Empty);
    let (h, b) = response("HTTP/1.0 200 OK\r\n\r\n");
    assert_eq!(h.body(&b, false, false).unwrap(), Body::UntilClose);
    assert!(!h.keep_alive(&b));
    let (h, b) = response("HTTP/1.1 200 OK\r\nConnection: Keep-Alive, Close\r\n\r\n");
    assert!(!h.keep_alive(&b));
    let (h, b) = response("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n");
    assert!(h.keep_alive(&b));
}

#[test]
fn heads_arrive_in_pieces_and_have_limits() {
    assert!(Head::request(b"GET / HTTP/1.1\r\nHost:").unwrap().is_none());
    let huge = format!("GET / HTTP/1.1\r\nx: {}\r\n", "a".repeat(MAX_HEAD));
    assert!(matches!(
        Head::request(huge.as_bytes()),
        Err(HeadError::TooLarge)
    ));
    assert!(matches!(
        Head::request(b"GET / HTTP/1.1\r\nbad header\r\n\r\n"),
        Err(HeadError::Invalid(_))
    ));
}

#[tokio::test]
async fn bodies_are_copied_unchanged_and_what_follows_stays() {
    let chunked = b"3\r\nabc\r\n0\r\n\r\n";
    let mut buf = BytesMut::from(&b"3\r\nab"[..]);
    let mut rest: &[u8] = b"c\r\n0\r\n\r\nNEXT";
    let mut out = Vec::new();
    copy_rest(Progress::new(Body::Chunked), &mut buf, &mut rest, &mut out)
        .await
        .unwrap();
    assert_eq!(out, chunked);
    // What the reader had after the body is either in `buf` or unread.
    let mut after = buf.to_vec();
    after.extend_from_slice(rest);
    assert_eq!(after, b"NEXT");

    let mut buf = BytesMut::from(&b"hello world"[..]);
    let mut out = Vec::new();
    let mut nothing: &[u8] = b"";
    copy_rest(
        Progress::new(Body::Length(5)),
        &mut buf,
        &mut nothing,
        &mut out,
    )
    .await
    .unwrap();
    assert_eq!(out, b"hello");
    assert_eq!(&buf[..], b" world");

    let mut buf = BytesMut::from(&b"4\r\nwi"[..]);
    let mut rest: &[u8] = b"ki\r\n2\r\npe\r\n0\r\n\r\n";
    let mut got = Vec::new();
    let complete = read_body(Body::Chunked, &mut buf, &mut rest, |piece| {
        got.extend_from_slice(&piece);
        async { true }
    })
    .await
    .unwrap();
    assert!(complete);
    assert_eq!(got, b"wikipe");

    let mut buf = BytesMut::new();
    let mut short: &[u8] = b"abc";
    let err = copy_rest(
        Progress::new(Body::Length(10)),
        &mut buf,
        &mut short,
        &mut Vec::new(),
    )
    .await;
    assert_eq!(err.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
}

#[test]
fn a_body_is_taken_as_its_bytes_go_by() {
    let mut length = Progress::new(Body::Length(5));
    assert_eq!(length.take(b"he").unwrap(), (2, false));
    assert_eq!(length.take(b"lloGET").unwrap(), (3, true));
    assert_eq!(length.take(b"GET").unwrap(), (0, true));

    let mut empty = Progress::new(Body::Empty);
    assert_eq!(empty.take(b"GET").unwrap(), (0, true));

    let mut chunked = Progress::new(Body::Chunked);
    assert_eq!(chunked.take(b"3\r\nab").unwrap(), (5, false));
    assert_eq!(chunked.take(b"c\r\n0\r\n\r\nGET").unwrap(), (8, true));
    assert!(Progress::new(Body::Chunked).take(b"zz\r\n").is_err());

    let mut until_close = Progress::new(Body::UntilClose);
    assert_eq!(until_close.take(b"anything").unwrap(), (8, false));
}

#[test]
fn heads_parsed_one_after_another_reuse_one_allocation() {
    let first = b"GET /a HTTP/1.1\r\nHost: x\r\nX-User: alice\r\n\r\n";
    let second = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let third = b"POST /b HTTP/1.1\r\nHost: y\r\ncontent-length: 0\r\nX-Other: 1\r\n\r\n";
    let mut spare = HeaderRanges::with_capacity(8);
    let allocation = spare.as_ptr();
    let head = Head::request_reusing(first, &mut spare).unwrap().unwrap();
    assert_eq!(head.headers.as_ptr(), allocation);
    let names = |head: &Head, buf: &[u8]| -> Vec<String> {
        let name = |r: &Range<usize>| String::from_utf8_lossy(&buf[r.clone()]).into_owned();
        head.headers.iter().map(|(n, _)| name(n)).collect()
    };
    assert_eq!(names(&head, first), ["Host", "X-User"]);
    head.recycle(&mut spare);

    // A partial head leaves the spare where it is.
    assert!(
        Head::response_reusing(&second[..10], &mut spare)
            .unwrap()
            .is_none()
    );
    let head = Head::response_reusing(second, &mut spare).unwrap().unwrap();
    assert_eq!(head.headers.as_ptr(), allocation);
    assert_eq!((head.status, head.len), (200, second.len() - 2));
    assert_eq!(names(&head, second), ["content-length"]);
    head.recycle(&mut spare);

    let head = Head::request_reusing(third, &mut spare).unwrap().unwrap();
    assert_eq!(head.headers.as_ptr(), allocation);
    assert_eq!(&third[head.target.clone()], b"/b");
    assert_eq!(names(&head, third), ["Host", "content-length", "X-Other"]);
}
