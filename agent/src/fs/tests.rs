//! Tests of file operations in the current namespaces: errno mapping, handle
//! cleanup, snapshots and directory batches.

use super::*;
use crate::namespace::CurrentNamespaces;
use bytes::Bytes;
use remora_protocol::RemoteFd;
use remora_protocol::fs::{OpenOptions, OpenReply, OpenRequest};
use std::path::Path;

fn exec(fds: &Mutex<FdTable>, request: FsRequest) -> RemoteResult<FsReply> {
    ops::execute(fds, request)
}

fn s(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

fn open_req(path: &Path, options: OpenOptions, snapshot_limit: u64) -> FsRequest {
    FsRequest::Open(OpenRequest {
        path: s(path),
        options,
        mode: 0o644,
        snapshot_limit,
    })
}

fn read_only() -> OpenOptions {
    OpenOptions {
        read: true,
        ..OpenOptions::default()
    }
}

fn opened(reply: RemoteResult<FsReply>) -> OpenReply {
    match reply.unwrap() {
        FsReply::Opened(reply) => reply,
        other => panic!("not an open reply: {other:?}"),
    }
}

fn code(reply: RemoteResult<FsReply>) -> ErrorCode {
    reply.unwrap_err().code
}

#[test]
fn os_errors_keep_their_errno_and_say_what_failed() {
    let dir = tempfile::tempdir().unwrap();
    let fds = Mutex::new(FdTable::default());
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/inner"), "y").unwrap();
    std::os::unix::fs::symlink(&file, dir.path().join("link")).unwrap();

    let missing = exec(&fds, open_req(&dir.path().join("missing"), read_only(), 0)).unwrap_err();
    assert_eq!(missing.code, ErrorCode::NotFound);
    assert!(missing.message.starts_with("open "), "{missing}");
    assert!(missing.message.contains("missing"), "{missing}");

    let write = OpenOptions {
        write: true,
        ..OpenOptions::default()
    };
    assert_eq!(
        code(exec(&fds, open_req(dir.path(), write, 0))),
        ErrorCode::IsADirectory
    );
    let exclusive = OpenOptions {
        write: true,
        create: true,
        exclusive: true,
        ..OpenOptions::default()
    };
    assert_eq!(
        code(exec(&fds, open_req(&file, exclusive, 0))),
        ErrorCode::AlreadyExists
    );
    let nofollow = OpenOptions {
        read: true,
        nofollow: true,
        ..OpenOptions::default()
    };
    assert_eq!(
        code(exec(&fds, open_req(&dir.path().join("link"), nofollow, 0))),
        ErrorCode::Other(libc::ELOOP)
    );
    let through_file = FsRequest::Stat {
        path: s(&file.join("x")),
        follow_symlinks: true,
    };
    assert_eq!(code(exec(&fds, through_file)), ErrorCode::NotADirectory);
    let mkdir = FsRequest::MkDir {
        path: s(&dir.path().join("sub")),
        mode: 0o755,
    };
    assert_eq!(code(exec(&fds, mkdir)), ErrorCode::AlreadyExists);
    let rmdir = FsRequest::RmDir {
        path: s(&dir.path().join("sub")),
    };
    assert_eq!(code(exec(&fds, rmdir)), ErrorCode::DirectoryNotEmpty);
    let unlink = FsRequest::Unlink {
        path: s(&dir.path().join("nothing")),
    };
    assert_eq!(code(exec(&fds, unlink)), ErrorCode::NotFound);
    let readlink = FsRequest::ReadLink { path: s(&file) };
    assert_eq!(code(exec(&fds, readlink)), ErrorCode::InvalidInput);
    let bad = FsRequest::Read {
        fd: RemoteFd(999),
        len: 1,
    };
    assert_eq!(code(exec(&fds, bad)), ErrorCode::BadHandle);

    // A regular file handle is not a directory stream.
    let handle = opened(exec(&fds, open_req(&file, read_only(), 0))).fd;
    let list = FsRequest::ReadDirBatch { fd: handle, max: 8 };
    assert_eq!(code(exec(&fds, list)), ErrorCode::NotADirectory);
}

fn fd_links_to(path: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target == path)
        .count()
}

#[tokio::test]
async fn handles_are_closed_on_close_and_when_the_client_goes() {
    let dir = tempfile::tempdir().unwrap();
    let pool = NsPool::start(Arc::new(CurrentNamespaces), 2).await.unwrap();
    let fs = FsApi::new(pool);
    let path = dir.path().join("held-open");
    std::fs::write(&path, "data").unwrap();

    let mut handles = Vec::new();
    for _ in 0..3 {
        handles.push(opened(fs.handle(open_req(&path, read_only(), 0)).await).fd);
    }
    let listing = fs
        .handle(FsRequest::OpenDir {
            path: s(dir.path()),
        })
        .await;
    let listing = opened(listing).fd;
    assert_eq!(fs.open_handles(), 4);
    assert_eq!(fd_links_to(&path), 3);

    fs.handle(FsRequest::Close { fd: handles[0] })
        .await
        .unwrap();
    assert_eq!(fd_links_to(&path), 2);
    let again = fs.handle(FsRequest::Close { fd: handles[0] }).await;
    assert_eq!(again.unwrap_err().code, ErrorCode::BadHandle);

    assert_eq!(fs.close_all(), 3);
    assert_eq!(fs.open_handles(), 0);
    assert_eq!(fd_links_to(&path), 0);
    assert_eq!(fd_links_to(dir.path()), 0);
    let stale = fs.handle(FsRequest::Fstat { fd: listing }).await;
    assert_eq!(stale.unwrap_err().code, ErrorCode::BadHandle);
}

#[test]
fn small_read_only_files_come_back_whole_and_closed() {
    let dir = tempfile::tempdir().unwrap();
    let fds = Mutex::new(FdTable::default());
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, "key: value\n").unwrap();

    let snap = opened(exec(&fds, open_req(&path, read_only(), 64)));
    assert_eq!(snap.snapshot, Some(Bytes::from_static(b"key: value\n")));
    assert_eq!(snap.metadata.size, 11);
    assert!(
        fds.lock().unwrap().is_empty(),
        "the snapshot handle stays open"
    );

    // Too big, or opened for writing: a real handle, no snapshot.
    let big = opened(exec(&fds, open_req(&path, read_only(), 4)));
    assert_eq!(big.snapshot, None);
    let rw = OpenOptions {
        read: true,
        write: true,
        ..OpenOptions::default()
    };
    let rw = opened(exec(&fds, open_req(&path, rw, 1024)));
    assert_eq!(rw.snapshot, None);
    assert_eq!(fds.lock().unwrap().len(), 2);

    let data = exec(&fds, FsRequest::Read { fd: big.fd, len: 3 }).unwrap();
    assert_eq!(data, FsReply::Data(Bytes::from_static(b"key")));
    let data = exec(
        &fds,
        FsRequest::Pread {
            fd: big.fd,
            offset: 5,
            len: 100,
        },
    )
    .unwrap();
    assert_eq!(data, FsReply::Data(Bytes::from_static(b"value\n")));
}

#[test]
fn directory_batches_list_every_entry_then_end() {
    let dir = tempfile::tempdir().unwrap();
    let fds = Mutex::new(FdTable::default());
    for name in ["a", "b", "c", "d", "e"] {
        std::fs::write(dir.path().join(name), name).unwrap();
    }
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let fd = opened(exec(
        &fds,
        FsRequest::OpenDir {
            path: s(dir.path()),
        },
    ))
    .fd;

    let mut names = Vec::new();
    let mut batches = 0;
    loop {
        let FsReply::DirEntries(batch) =
            exec(&fds, FsRequest::ReadDirBatch { fd, max: 3 }).unwrap()
        else {
            panic!("not a directory batch");
        };
        if batch.is_empty() {
            break;
        }
        assert!(batch.len() <= 3);
        batches += 1;
        for entry in batch {
            let expected = if entry.name == "sub" || entry.name.starts_with('.') {
                remora_protocol::fs::FileType::Directory
            } else {
                remora_protocol::fs::FileType::Regular
            };
            assert_eq!(entry.file_type, expected, "{}", entry.name);
            names.push(entry.name);
        }
    }
    names.sort();
    assert_eq!(names, [".", "..", "a", "b", "c", "d", "e", "sub"]);
    assert_eq!(batches, 3);
}

#[test]
fn open_flags_follow_the_options() {
    use nix::fcntl::OFlag;
    let flags = ops::open_flags(&OpenOptions {
        write: true,
        append: true,
        create: true,
        exclusive: true,
        ..OpenOptions::default()
    });
    assert!(flags.contains(OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT | OFlag::O_EXCL));
    assert!(flags.contains(OFlag::O_CLOEXEC));
    let flags = ops::open_flags(&OpenOptions {
        read: true,
        write: true,
        truncate: true,
        ..OpenOptions::default()
    });
    assert!(flags.contains(OFlag::O_RDWR | OFlag::O_TRUNC));
    assert!(!flags.contains(OFlag::O_CREAT));
}

/// Regression: the agent did one `write` per frame and reported whatever
/// count it got, so a short write lost the rest of the frame.
#[test]
fn short_writes_are_retried_until_the_frame_is_written() {
    let data = b"0123456789";
    let mut calls = Vec::new();
    let mut interrupted = false;
    let n = ops::write_fully(data, |rest, done| {
        calls.push(done);
        if done == 3 && !interrupted {
            interrupted = true;
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        Ok(rest.len().min(3))
    })
    .unwrap();
    assert_eq!(n, 10);
    assert_eq!(calls, [0, 3, 3, 6, 9]);

    // An error after progress reports the progress; before any, the error.
    let partial = ops::write_fully(data, |_, done| {
        if done == 0 {
            Ok(4)
        } else {
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
        }
    });
    assert_eq!(partial.unwrap(), 4);
    let failed = ops::write_fully(data, |_, _| {
        Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
    });
    assert_eq!(failed.unwrap_err().raw_os_error(), Some(libc::ENOSPC));
    let zero = ops::write_fully(data, |_, _| Ok(0));
    assert_eq!(zero.unwrap_err().kind(), std::io::ErrorKind::WriteZero);
}

#[test]
fn fsync_and_fdatasync_sync_an_open_file_and_fail_on_a_bad_handle() {
    let dir = tempfile::tempdir().unwrap();
    let fds = Mutex::new(FdTable::default());
    let path = dir.path().join("synced");
    let options = OpenOptions {
        write: true,
        create: true,
        ..OpenOptions::default()
    };
    let fd = opened(exec(&fds, open_req(&path, options, 0))).fd;
    let data = Bytes::from_static(b"durable");
    assert_eq!(
        exec(&fds, FsRequest::Write { fd, data }).unwrap(),
        FsReply::Written(7)
    );
    for data_only in [false, true] {
        assert_eq!(
            exec(&fds, FsRequest::Fsync { fd, data_only }).unwrap(),
            FsReply::Done
        );
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"durable");
    exec(&fds, FsRequest::Close { fd }).unwrap();
    let closed = exec(
        &fds,
        FsRequest::Fsync {
            fd,
            data_only: false,
        },
    )
    .unwrap_err();
    assert_eq!(closed.code, ErrorCode::BadHandle, "{closed}");
}
