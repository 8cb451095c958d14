use super::*;
use crate::namespace::CurrentNamespaces;
use nix::sys::socket::{ControlMessageOwned, recvmsg};
use std::io::{IoSliceMut, Read};

const TOKEN: &str = "broker-test-token";

fn hello(path: &Path, token: &str) -> (UnixStream, BrokerHelloReply) {
    let mut conn = UnixStream::connect(path).unwrap();
    let hello = BrokerHello {
        version: BROKER_VERSION,
        token: SessionToken(token.into()),
    };
    codec::write_frame(&mut conn, &hello).unwrap();
    let reply = codec::read_frame(&mut conn).unwrap();
    (conn, reply)
}

/// Send `request`; the reply and the content of the descriptor that came
/// with it (read through `/proc/self/fd`, the agent forbids `unsafe`), or
/// the descriptor's peer address for a socket.
fn ask(conn: &mut UnixStream, request: &BrokerRequest) -> (BrokerReply, Option<i32>) {
    codec::write_frame(conn, request).unwrap();
    let mut buf = [0u8; 4096];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 2]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .unwrap();
    let mut fd = None;
    for cmsg in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            fd = fds.first().copied();
        }
    }
    let n = msg.bytes;
    let (reply, used) = codec::decode_frame::<BrokerReply>(&buf[..n])
        .unwrap()
        .unwrap();
    assert_eq!(used, n, "one frame per reply");
    (reply, fd)
}

#[test]
fn hands_over_files_and_sockets_opened_inside_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.txt");
    std::fs::write(&file, "from the target\n").unwrap();
    let sock = dir.path().join("broker.sock");
    let broker = Broker::start(
        &sock,
        SessionToken(TOKEN.into()),
        Arc::new(CurrentNamespaces),
    )
    .unwrap();

    let (_, refused) = hello(&sock, "wrong");
    assert!(
        matches!(refused, BrokerHelloReply::Rejected { .. }),
        "{refused:?}"
    );

    let (mut conn, accepted) = hello(&sock, TOKEN);
    assert_eq!(accepted, BrokerHelloReply::Accepted);

    let path = file.to_str().unwrap().to_owned();
    let (reply, fd) = ask(
        &mut conn,
        &BrokerRequest::OpenRead {
            path,
            nofollow: false,
        },
    );
    assert_eq!(reply, BrokerReply::Opened);
    let fd = fd.expect("a descriptor with Opened");
    let mut content = String::new();
    std::fs::File::open(format!("/proc/self/fd/{fd}"))
        .unwrap()
        .read_to_string(&mut content)
        .unwrap();
    assert_eq!(content, "from the target\n");

    let dir_path = dir.path().to_str().unwrap().to_owned();
    let (reply, fd) = ask(
        &mut conn,
        &BrokerRequest::OpenRead {
            path: dir_path,
            nofollow: false,
        },
    );
    assert_eq!((reply, fd), (BrokerReply::NotRegular, None));

    let missing = dir.path().join("missing").to_str().unwrap().to_owned();
    let (reply, fd) = ask(
        &mut conn,
        &BrokerRequest::OpenRead {
            path: missing,
            nofollow: false,
        },
    );
    match reply {
        BrokerReply::Failed(e) => assert_eq!(e.code, remora_protocol::ErrorCode::NotFound),
        other => panic!("{other:?}"),
    }
    assert_eq!(fd, None);

    // The root the client opens under: this thread's `/` (here the test's).
    let (reply, fd) = ask(&mut conn, &BrokerRequest::OpenRoot);
    assert_eq!(reply, BrokerReply::Opened);
    let fd = fd.expect("a descriptor with Opened");
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
    assert_eq!(link, Path::new("/"));
    let (reply, fd) = ask(
        &mut conn,
        &BrokerRequest::OpenRead {
            path: file.to_str().unwrap().to_owned(),
            nofollow: false,
        },
    );
    assert_eq!(reply, BrokerReply::Opened, "the link goes on after a root");
    assert!(fd.is_some());

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let remote = listener.local_addr().unwrap();
    let (reply, fd) = ask(&mut conn, &BrokerRequest::ConnectTcp { remote });
    let BrokerReply::Connected { local } = reply else {
        panic!("{reply:?}");
    };
    assert!(fd.is_some());
    let (_, peer) = listener.accept().unwrap();
    assert_eq!(peer, local, "the handed-over socket is the one connected");

    drop(broker);
    assert!(!sock.exists(), "the socket file is removed with the broker");
}
