use super::*;
use crate::container::grpc::{frame, put_varint_field, unframe};

#[test]
fn the_request_and_a_response_are_encoded_as_containerd_does() {
    let req = frame(&get_request("abc"));
    assert_eq!(&req[..], &[0, 0, 0, 0, 5, 0x0a, 3, b'a', b'b', b'c']);
    // Process { container_id: "abc", id: "abc", pid: 4242, status: RUNNING(2) }
    let mut process = BytesMut::new();
    put_bytes_field(&mut process, 1, b"abc");
    put_bytes_field(&mut process, 2, b"abc");
    put_varint_field(&mut process, 3, 4242);
    put_varint_field(&mut process, 4, 2);
    let mut msg = BytesMut::new();
    put_bytes_field(&mut msg, 1, &process);
    let body = frame(&msg);
    let unframed = unframe(&body).unwrap();
    assert_eq!(pid_of_response(unframed), Some(4242));
    assert_eq!(unframe(&body[..body.len() - 2]), None);
    assert_eq!(pid_of_response(&unframed[..unframed.len() - 2]), None);
    assert_eq!(pid_of_response(&[]), None);
}
