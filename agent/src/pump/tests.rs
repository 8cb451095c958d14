use super::*;

#[tokio::test]
async fn a_read_takes_at_most_one_chunk() {
    let data: Vec<u8> = (0..3 * MAX_CHUNK).map(|i| i as u8).collect();
    let mut reader = &data[..];
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    loop {
        let n = read_chunk(&mut reader, &mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        assert!(n <= MAX_CHUNK, "read {n} bytes");
        let chunk = take_chunk(&mut buf);
        assert_eq!(chunk.len(), n);
        assert!(buf.is_empty());
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, data);
}

#[test]
fn a_full_chunk_keeps_its_buffer() {
    let mut buf = BytesMut::with_capacity(MAX_CHUNK);
    buf.put_bytes(7, MAX_CHUNK);
    let at = buf.as_ptr();
    let chunk = take_chunk(&mut buf);
    assert_eq!(chunk.as_ptr(), at, "copied");
    assert_eq!(&chunk[..], &[7; MAX_CHUNK][..]);
}

#[test]
fn a_small_chunk_is_copied_out_and_does_not_hold_the_buffer() {
    let mut buf = BytesMut::with_capacity(MAX_CHUNK);
    buf.put_slice(b"hello");
    let at = buf.as_ptr();
    let chunk = take_chunk(&mut buf);
    assert_eq!(&chunk[..], b"hello");
    assert_ne!(
        chunk.as_ptr(),
        at,
        "a 5-byte chunk would hold a 64 KiB buffer"
    );
    // The buffer stays with the reader, ready for the next read.
    assert!(buf.is_empty());
    assert_eq!(buf.as_ptr(), at);
    assert!(buf.capacity() >= MAX_CHUNK);
}
