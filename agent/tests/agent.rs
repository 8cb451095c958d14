//! End-to-end tests of the agent library: a real agent serving a real target
//! process (a child `sleep`), driven over TCP with the real codec. They need
//! root, to `setns` into the target.

#[path = "support/harness.rs"]
mod harness;

use harness::*;

use bytes::Bytes;
use futures::StreamExt;
use remora_agent::{Agent, ExitReason, TargetPid};
use remora_protocol::codec::FrameCodec;
use remora_protocol::dns::AddrFamily;
use remora_protocol::env::EnvRequest;
use remora_protocol::fs::{
    AccessMode, FileType, FsReply, FsRequest, OpenOptions, OpenRequest, SeekFrom,
};
use remora_protocol::incoming::{
    HttpFilter, IncomingClient, IncomingMode, IncomingServer, RemotePort,
};
use remora_protocol::session::{SessionReply, SessionRequest};
use remora_protocol::{
    Capabilities, ClientMessage, ErrorCode, HelloReply, PROTOCOL_VERSION, Request, Response,
    ServerMessage,
};
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

// ---------------------------------------------------------------- handshake

#[tokio::test]
async fn wrong_token_is_rejected_and_the_connection_closed() {
    let target = Target::sleep(&[]);
    let agent = agent_for(&target).await;
    let (reply, mut link) = handshake(agent.local_addr(), hello(1, "guess", "mallory")).await;
    match reply {
        HelloReply::Rejected {
            reason,
            server_protocol,
            ..
        } => {
            assert_eq!(reason, "invalid session token");
            assert_eq!(server_protocol, PROTOCOL_VERSION);
        }
        other => panic!("accepted a wrong token: {other:?}"),
    }
    let next = tokio::time::timeout(STEP, link.next())
        .await
        .expect("closed in time");
    assert!(next.is_none(), "connection still open: {next:?}");
}

#[tokio::test]
async fn protocol_version_zero_is_rejected_naming_both_versions() {
    let target = Target::sleep(&[]);
    let agent = agent_for(&target).await;
    let (reply, _) = handshake(agent.local_addr(), hello(0, TOKEN, "old")).await;
    let HelloReply::Rejected { reason, .. } = reply else {
        panic!("accepted protocol v0: {reply:?}");
    };
    assert!(reason.contains("v0") && reason.contains("v1"), "{reason}");
    assert!(reason.contains("upgrade"), "{reason}");
}

#[tokio::test]
async fn accepted_session_gets_the_intersection_of_capabilities() {
    let target = Target::sleep(&[]);
    let agent = agent_for(&target).await;
    let mut small = hello(1, TOKEN, "alice");
    small.capabilities = Capabilities::FILES | Capabilities::HTTP_FILTER;
    let (reply, link) = handshake(agent.local_addr(), small).await;
    let HelloReply::Accepted { capabilities, .. } = reply else {
        panic!("refused: {reply:?}");
    };
    assert_eq!(capabilities, Capabilities::FILES);
    // DNS was not negotiated: refused as unsupported.
    let mut client = Client {
        link,
        last_id: 0,
        pending: VecDeque::new(),
    };
    let err = client
        .request(lookup("localhost", AddrFamily::V4))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Unsupported);
}

// ---------------------------------------------------------------- env

#[tokio::test]
async fn env_comes_from_the_target_and_globs_filter_it() {
    let target = Target::sleep(&[
        ("REMORA_TEST_DB_URL", "postgres://db/app"),
        ("REMORA_TEST_DB_PASSWORD", "hunter2"),
        ("REMORA_TEST_OTHER", "x=y"),
    ]);
    let agent = agent_for(&target).await;
    let mut client = Client::connect(agent.local_addr(), "alice").await;
    let env = |include: &[&str], exclude: &[&str]| {
        Request::Env(EnvRequest {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        })
    };
    let Response::Env(all) = client.request(env(&["REMORA_TEST_*"], &[])).await.unwrap() else {
        panic!("not an env reply");
    };
    assert_eq!(all.vars.len(), 3, "{:?}", all.vars);
    assert_eq!(all.vars["REMORA_TEST_OTHER"], "x=y");
    // Set only in the child, so it really is the target's environment.
    assert!(std::env::var("REMORA_TEST_DB_URL").is_err());

    let Response::Env(some) = client
        .request(env(&["REMORA_TEST_DB_*"], &["*PASSWORD"]))
        .await
        .unwrap()
    else {
        panic!("not an env reply");
    };
    let keys: Vec<&str> = some.vars.keys().map(String::as_str).collect();
    assert_eq!(keys, ["REMORA_TEST_DB_URL"]);
}

// ---------------------------------------------------------------- files

#[tokio::test]
async fn open_read_snapshot_stat_readlink() {
    let target = Target::sleep(&[]);
    let agent = agent_for(&target).await;
    let mut client = Client::connect(agent.local_addr(), "alice").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.txt");
    std::fs::write(&file, "hello from the target\n").unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::os::unix::fs::symlink(&file, dir.path().join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../hello.txt", dir.path().join("sub/rel-link")).unwrap();

    // Without a snapshot: a handle to read from.
    let open = |snapshot_limit| {
        FsRequest::Open(OpenRequest {
            path: path(&file),
            options: read_only(),
            mode: 0,
            snapshot_limit,
        })
    };
    let handle = opened(client.fs(open(0)).await);
    assert_eq!(handle.snapshot, None);
    assert_eq!(handle.metadata.size, 22);
    let first = client
        .fs(FsRequest::Read {
            fd: handle.fd,
            len: 5,
        })
        .await
        .unwrap();
    assert_eq!(first, FsReply::Data(Bytes::from_static(b"hello")));
    let rest = client
        .fs(FsRequest::Read {
            fd: handle.fd,
            len: 100,
        })
        .await
        .unwrap();
    assert_eq!(
        rest,
        FsReply::Data(Bytes::from_static(b" from the target\n"))
    );
    let eof = client
        .fs(FsRequest::Read {
            fd: handle.fd,
            len: 100,
        })
        .await
        .unwrap();
    assert_eq!(eof, FsReply::Data(Bytes::new()));
    let pos = client
        .fs(FsRequest::Seek {
            fd: handle.fd,
            from: SeekFrom::Start(6),
        })
        .await
        .unwrap();
    assert_eq!(pos, FsReply::Position(6));
    let FsReply::Metadata(meta) = client.fs(FsRequest::Fstat { fd: handle.fd }).await.unwrap()
    else {
        panic!("not metadata");
    };
    let real = std::fs::metadata(&file).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (meta.ino, meta.size, meta.mode),
        (real.ino(), real.size(), real.mode())
    );
    assert_eq!(meta.mtime.secs, real.mtime());
    client.fs(FsRequest::Close { fd: handle.fd }).await.unwrap();
    let closed = client
        .fs(FsRequest::Read {
            fd: handle.fd,
            len: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(closed.code, ErrorCode::BadHandle);

    // With a snapshot: the content comes back and the handle is already closed.
    let snap = opened(client.fs(open(1024)).await);
    assert_eq!(
        snap.snapshot,
        Some(Bytes::from_static(b"hello from the target\n"))
    );
    let gone = client
        .fs(FsRequest::Close { fd: snap.fd })
        .await
        .unwrap_err();
    assert_eq!(gone.code, ErrorCode::BadHandle);

    // stat follows links unless told not to.
    let link = path(&dir.path().join("abs-link"));
    let stat = |follow| FsRequest::Stat {
        path: link.clone(),
        follow_symlinks: follow,
    };
    let FsReply::Metadata(followed) = client.fs(stat(true)).await.unwrap() else {
        panic!("not metadata");
    };
    assert_eq!(followed.ino, real.ino());
    let FsReply::Metadata(own) = client.fs(stat(false)).await.unwrap() else {
        panic!("not metadata");
    };
    assert_eq!(own.mode & libc::S_IFMT, libc::S_IFLNK);

    let target_of = client.fs(FsRequest::ReadLink { path: link }).await.unwrap();
    assert_eq!(target_of, FsReply::Path(path(&file)));
    let canonical = client
        .fs(FsRequest::Canonicalize {
            path: path(&dir.path().join("sub/../sub/rel-link")),
        })
        .await
        .unwrap();
    assert_eq!(
        canonical,
        FsReply::Path(path(&std::fs::canonicalize(&file).unwrap()))
    );

    let access = |p: &Path, mode| FsRequest::Access {
        path: path(p),
        mode: AccessMode(mode),
    };
    assert_eq!(client.fs(access(&file, 4)).await.unwrap(), FsReply::Done);
    let missing = client
        .fs(access(&dir.path().join("nope"), 0))
        .await
        .unwrap_err();
    assert_eq!(missing.code, ErrorCode::NotFound);
    assert!(missing.message.contains("nope"), "{missing}");
}

#[tokio::test]
async fn readdir_comes_in_batches_with_dot_entries() {
    let target = Target::sleep(&[]);
    let agent = agent_for(&target).await;
    let mut client = Client::connect(agent.local_addr(), "alice").await;
    let dir = tempfile::tempdir().unwrap();
    for i in 0..7 {
        std::fs::write(dir.path().join(format!("f{i}")), "x").unwrap();
    }
    std::fs::create_dir(dir.path().join("d")).unwrap();
    let listing = opened(
        client
            .fs(FsRequest::OpenDir {
                path: path(dir.path()),
            })
            .await,
    );
    assert_eq!(listing.metadata.mode & libc::S_IFMT, libc::S_IFDIR);

    let mut names = Vec::new();
    let mut sizes = Vec::new();
    loop {
        let reply = client
            .fs(FsRequest::ReadDirBatch {
                fd: listing.fd,
                max: 4,
            })
            .await
            .unwrap();
        let FsReply::DirEntries(batch) = reply else {
            panic!("not entries: {reply:?}");
        };
        if batch.is_empty() {
            break;
        }
        sizes.push(batch.len());
        for entry in batch {
            if entry.name == "d" {
                assert_eq!(entry.file_type, FileType::Directory);
            }
            names.push(entry.name);
        }
    }
    names.sort();
    let mut expected: Vec<String> = [".", "..", "d"].iter().map(|s| s.to_string()).collect();
    expected.extend((0..7).map(|i| format!("f{i}")));
    expected.sort();
    assert_eq!(names, expected);
    assert_eq!(sizes, [4, 4, 2]);
    client
        .fs(FsRequest::Close { fd: listing.fd })
        .await
        .unwrap();
}

#[tokio::test]
async fn write_operations_change_the_targets_files() {
    let target = Target::sleep(&[]);
    let agent = agent_for(&target).await;
    let mut client = Client::connect(agent.local_addr(), "alice").await;
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("new-dir");
    let file = sub.join("notes.txt");
    let moved = sub.join("moved.txt");

    let mkdir = FsRequest::MkDir {
        path: path(&sub),
        mode: 0o750,
    };
    assert_eq!(client.fs(mkdir.clone()).await.unwrap(), FsReply::Done);
    use std::os::unix::fs::PermissionsExt;
    // The mode was honoured (minus whatever the umask takes away).
    let mode = std::fs::metadata(&sub).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode & !0o750, mode & 0o700), (0, 0o700), "{mode:o}");
    assert_eq!(
        client.fs(mkdir).await.unwrap_err().code,
        ErrorCode::AlreadyExists
    );

    let create = OpenOptions {
        write: true,
        create: true,
        truncate: true,
        ..OpenOptions::default()
    };
    let handle = opened(
        client
            .fs(FsRequest::Open(OpenRequest {
                path: path(&file),
                options: create,
                mode: 0o600,
                snapshot_limit: 4096,
            }))
            .await,
    );
    assert_eq!(handle.snapshot, None, "no snapshot for a writable open");
    let written = client
        .fs(FsRequest::Write {
            fd: handle.fd,
            data: Bytes::from_static(b"hello world"),
        })
        .await
        .unwrap();
    assert_eq!(written, FsReply::Written(11));
    client
        .fs(FsRequest::Pwrite {
            fd: handle.fd,
            offset: 6,
            data: Bytes::from_static(b"WORLD"),
        })
        .await
        .unwrap();
    client
        .fs(FsRequest::Ftruncate {
            fd: handle.fd,
            len: 8,
        })
        .await
        .unwrap();
    client.fs(FsRequest::Close { fd: handle.fd }).await.unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), b"hello WO");

    let rename = FsRequest::Rename {
        from: path(&file),
        to: path(&moved),
    };
    assert_eq!(client.fs(rename).await.unwrap(), FsReply::Done);
    assert!(!file.exists() && moved.exists());

    let not_empty = client
        .fs(FsRequest::RmDir { path: path(&sub) })
        .await
        .unwrap_err();
    assert_eq!(not_empty.code, ErrorCode::DirectoryNotEmpty);
    client
        .fs(FsRequest::Unlink { path: path(&moved) })
        .await
        .unwrap();
    client
        .fs(FsRequest::RmDir { path: path(&sub) })
        .await
        .unwrap();
    assert!(!sub.exists());
}

#[tokio::test]
async fn files_are_closed_when_the_client_disconnects() {
    let target = Target::sleep(&[]);
    let agent = agent_for(&target).await;
    let mut client = Client::connect(agent.local_addr(), "alice").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kept-open");
    std::fs::write(&file, "x").unwrap();
    for _ in 0..3 {
        let open = FsRequest::Open(OpenRequest {
            path: path(&file),
            options: read_only(),
            mode: 0,
            snapshot_limit: 0,
        });
        opened(client.fs(open).await);
    }
    opened(
        client
            .fs(FsRequest::OpenDir {
                path: path(dir.path()),
            })
            .await,
    );
    // The agent runs in this process: its descriptors are ours to count.
    let held = |p: &Path| {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target == p)
            .count()
    };
    assert_eq!(held(&file), 3);
    assert!(held(dir.path()) > 0);

    drop(client);
    let deadline = std::time::Instant::now() + STEP;
    while held(&file) + held(dir.path()) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "files still open after disconnect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- dns & misc

#[tokio::test]
async fn localhost_resolves_and_hostname_and_ping_answer() {
    let target = Target::sleep(&[]);
    let agent = agent_for(&target).await;
    let mut client = Client::connect(agent.local_addr(), "alice").await;
    let Response::Lookup(reply) = client
        .request(lookup("localhost", AddrFamily::V4))
        .await
        .unwrap()
    else {
        panic!("not a lookup reply");
    };
    assert_eq!(reply.addresses, [IpAddr::V4(Ipv4Addr::LOCALHOST)]);

    let Response::Hostname(name) = client.request(Request::Hostname).await.unwrap() else {
        panic!("not a hostname");
    };
    let ours = nix::unistd::gethostname().unwrap();
    assert_eq!(name, ours.to_string_lossy());
    assert_eq!(client.request(Request::Ping).await.unwrap(), Response::Pong);
}

#[tokio::test]
async fn filtered_mirrors_and_bad_filters_are_refused() {
    // Neither touches netfilter: this target shares the host's namespace.
    let target = Target::sleep(&[]);
    let agent = agent_for(&target).await;
    let mut client = Client::connect(agent.local_addr(), "alice").await;
    let refusals = [
        (IncomingMode::Mirror, "^/api", ErrorCode::Unsupported),
        (IncomingMode::Steal, "(", ErrorCode::InvalidInput),
    ];
    for (mode, pattern, code) in refusals {
        client
            .send(ClientMessage::Incoming(IncomingClient::Subscribe {
                port: RemotePort(8080),
                mode,
                filter: Some(HttpFilter::Path(pattern.into())),
            }))
            .await;
        let Some(ServerMessage::Incoming(IncomingServer::Subscribed { port, result })) =
            client.read().await
        else {
            panic!("no subscription answer");
        };
        assert_eq!(port, RemotePort(8080));
        let err = result.unwrap_err();
        assert_eq!(err.code, code, "{err}");
    }
}

// ---------------------------------------------------------------- sessions

#[tokio::test]
async fn sessions_are_listed_and_one_can_kill_another() {
    let target = Target::sleep(&[]);
    let agent = agent_for(&target).await;
    let mut alice = Client::connect(agent.local_addr(), "alice").await;
    let mut bob = Client::connect(agent.local_addr(), "bob").await;

    let Response::Session(SessionReply::Sessions(list)) = alice
        .request(Request::Session(SessionRequest::List))
        .await
        .unwrap()
    else {
        panic!("not a session list");
    };
    let users: Vec<&str> = list.iter().map(|s| s.user.as_str()).collect();
    assert_eq!(users, ["alice", "bob"]);
    assert!(list.iter().all(|s| s.target == target.pid().to_string()));
    assert!(list.iter().all(|s| s.started_at > 1_600_000_000));

    let bob_id = list[1].id;
    let killed = alice
        .request(Request::Session(SessionRequest::Kill { id: bob_id }))
        .await
        .unwrap();
    assert_eq!(killed, Response::Session(SessionReply::Killed));
    match bob.read().await {
        Some(ServerMessage::Closing { reason }) => assert_eq!(reason, "killed by alice"),
        other => panic!("bob was not told: {other:?}"),
    }
    assert!(bob.read().await.is_none(), "no frame may follow Closing");

    let unknown = alice
        .request(Request::Session(SessionRequest::Kill { id: bob_id }))
        .await
        .unwrap_err();
    assert_eq!(unknown.code, ErrorCode::NotFound);
}

#[tokio::test]
async fn an_undecodable_frame_closes_only_that_client() {
    let target = Target::sleep(&[]);
    let agent = agent_for(&target).await;
    let mut good = Client::connect(agent.local_addr(), "good").await;
    let bad = Client::connect(agent.local_addr(), "bad").await;

    let mut stream = bad.link.into_inner();
    // A well-formed frame header around a payload that is no ClientMessage.
    let junk = [0xffu8; 16];
    stream
        .write_all(&(junk.len() as u32).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(&junk).await.unwrap();
    let mut rest: Framed<TcpStream, FrameCodec<ServerMessage, ClientMessage>> =
        Framed::new(stream, FrameCodec::default());
    let message = tokio::time::timeout(STEP, rest.next()).await.unwrap();
    match message {
        Some(Ok(ServerMessage::Closing { reason })) => {
            assert!(reason.contains("could not read a frame"), "{reason}");
        }
        other => panic!("expected Closing, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(STEP, rest.next())
            .await
            .unwrap()
            .is_none()
    );

    assert_eq!(good.request(Request::Ping).await.unwrap(), Response::Pong);
}

// ---------------------------------------------------------------- lifetime

#[tokio::test]
async fn a_missing_target_is_a_clear_error() {
    let err = Agent::bind(config(TargetPid(999_999_999)))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "target pid/999999999 not found: no such process (is the workload running?)"
    );
}

#[tokio::test]
async fn stops_when_idle_or_after_the_last_client_left() {
    let target = Target::sleep(&[]);
    let mut idle = config(target.pid());
    idle.idle_timeout = Some(Duration::from_millis(300));
    let agent = Agent::bind(idle).await.unwrap();
    let reason = tokio::time::timeout(STEP, agent.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reason, ExitReason::IdleTimeout);

    let mut linger = config(target.pid());
    linger.linger = Some(Duration::from_millis(300));
    let agent = Agent::bind(linger).await.unwrap();
    let addr = agent.local_addr();
    let mut client = Client::connect(addr, "alice").await;
    client.send(ClientMessage::Bye).await;
    drop(client);
    let reason = tokio::time::timeout(STEP, agent.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reason, ExitReason::ClientsLeft);
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
}

#[tokio::test]
async fn stops_and_tells_clients_when_the_target_exits() {
    let mut target = Target::sleep(&[]);
    let mut cfg = config(target.pid());
    cfg.target_poll = Duration::from_millis(100);
    let agent = Agent::bind(cfg).await.unwrap();
    let mut client = Client::connect(agent.local_addr(), "alice").await;
    target.0.kill().unwrap();
    target.0.wait().unwrap();
    match client.read().await {
        Some(ServerMessage::Closing { reason }) => {
            assert_eq!(reason, format!("target {} exited", target.pid()));
        }
        other => panic!("not told: {other:?}"),
    }
    let err = tokio::time::timeout(STEP, agent.wait())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, remora_agent::Error::TargetGone { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn shutdown_handle_closes_clients_with_the_reason() {
    let target = Target::sleep(&[]);
    let agent = agent_for(&target).await;
    let mut client = Client::connect(agent.local_addr(), "alice").await;
    agent.shutdown_handle().shutdown("maintenance");
    match client.read().await {
        Some(ServerMessage::Closing { reason }) => assert_eq!(reason, "maintenance"),
        other => panic!("not told: {other:?}"),
    }
    assert_eq!(agent.wait().await.unwrap(), ExitReason::Shutdown);
}
