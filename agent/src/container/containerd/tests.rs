use super::*;

#[test]
fn the_request_and_a_response_are_encoded_as_containerd_does() {
    let req = get_request("abc");
    assert_eq!(&req[..], &[0, 0, 0, 0, 5, 0x0a, 3, b'a', b'b', b'c']);
    // Process { container_id: "abc", id: "abc", pid: 4242, status: RUNNING(2) }
    let mut process = BytesMut::new();
    for (field, s) in [(1u8, "abc"), (2, "abc")] {
        process.put_u8(field << 3 | 2);
        put_varint(&mut process, s.len() as u64);
        process.put_slice(s.as_bytes());
    }
    process.put_u8(3 << 3);
    put_varint(&mut process, 4242);
    process.put_u8(4 << 3);
    put_varint(&mut process, 2);
    let mut msg = BytesMut::new();
    msg.put_u8(0x0a);
    put_varint(&mut msg, process.len() as u64);
    msg.put_slice(&process);
    let mut body = BytesMut::new();
    body.put_u8(0);
    body.put_u32(msg.len() as u32);
    body.put_slice(&msg);
    assert_eq!(pid_of_response(&body), Some(4242));
    assert_eq!(pid_of_response(&body[..body.len() - 2]), None);
    assert_eq!(pid_of_response(&[0, 0, 0, 0, 0]), None);
}
