//! File operations performed inside the target's filesystem.

use crate::ids::RemoteFd;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Portable open flags (the layer translates from its platform's `O_*`).
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct OpenOptions {
    pub read: bool,
    pub write: bool,
    pub append: bool,
    pub create: bool,
    pub truncate: bool,
    pub exclusive: bool,
    pub directory: bool,
    pub nofollow: bool,
}

/// Open a path inside the target.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenRequest {
    pub path: String,
    pub options: OpenOptions,
    /// Permission bits for a created file.
    pub mode: u32,
    /// When the file is opened read-only, is a regular file and is at most this
    /// many bytes long, its whole content comes back in the reply so reads need
    /// no further round trip. 0 disables it.
    pub snapshot_limit: u64,
}

/// A file opened in the target.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenReply {
    pub fd: RemoteFd,
    pub metadata: Metadata,
    /// Whole content, when a snapshot was asked for and allowed. The remote
    /// handle is closed already in that case (`fd` is then informational).
    #[cfg_attr(test, proptest(strategy = "crate::tests::opt_bytes()"))]
    pub snapshot: Option<Bytes>,
}

/// `stat`-like metadata of a remote file (a `statx` superset minus masks).
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Metadata {
    pub dev: u64,
    pub ino: u64,
    /// File type and permission bits, as `st_mode`.
    pub mode: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    pub blksize: u64,
    pub blocks: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
}

/// Seconds and nanoseconds since the Unix epoch.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

/// Where a seek is relative to.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SeekFrom {
    Start(u64),
    Current(i64),
    End(i64),
}

/// File type of a directory entry.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileType {
    Regular,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    Unknown,
}

/// One directory entry.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: String,
    pub ino: u64,
    pub file_type: FileType,
}

/// Access check mode bits (`F_OK` = 0, `R_OK` = 4, `W_OK` = 2, `X_OK` = 1).
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AccessMode(pub u32);

/// A file system request.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsRequest {
    Open(OpenRequest),
    Read {
        fd: RemoteFd,
        len: u64,
    },
    Pread {
        fd: RemoteFd,
        offset: u64,
        len: u64,
    },
    Write {
        fd: RemoteFd,
        #[cfg_attr(test, proptest(strategy = "crate::tests::bytes()"))]
        data: Bytes,
    },
    Pwrite {
        fd: RemoteFd,
        offset: u64,
        #[cfg_attr(test, proptest(strategy = "crate::tests::bytes()"))]
        data: Bytes,
    },
    Seek {
        fd: RemoteFd,
        from: SeekFrom,
    },
    Fstat {
        fd: RemoteFd,
    },
    Stat {
        path: String,
        follow_symlinks: bool,
    },
    Access {
        path: String,
        mode: AccessMode,
    },
    Ftruncate {
        fd: RemoteFd,
        len: u64,
    },
    Close {
        fd: RemoteFd,
    },
    OpenDir {
        path: String,
    },
    /// Up to `max` entries from an open directory; an empty batch means the end.
    ReadDirBatch {
        fd: RemoteFd,
        max: u32,
    },
    ReadLink {
        path: String,
    },
    /// Resolve symlinks and `..` as the target would (`realpath`).
    Canonicalize {
        path: String,
    },
    MkDir {
        path: String,
        mode: u32,
    },
    Unlink {
        path: String,
    },
    RmDir {
        path: String,
    },
    Rename {
        from: String,
        to: String,
    },
    /// `fsync` (`data_only`: `fdatasync`) of an open file. Protocol v2, only
    /// to peers with [`crate::Capabilities::FILE_SYNC`].
    Fsync {
        fd: RemoteFd,
        data_only: bool,
    },
    /// `chmod` ([`crate::Capabilities::FILE_METADATA`], like every request below).
    SetMode {
        path: String,
        mode: u32,
        follow_symlinks: bool,
    },
    /// `chown`; `None` leaves the id unchanged (`-1` in C).
    SetOwner {
        path: String,
        uid: Option<u32>,
        gid: Option<u32>,
        follow_symlinks: bool,
    },
    /// `utimensat`.
    SetTimes {
        path: String,
        atime: SetTime,
        mtime: SetTime,
        follow_symlinks: bool,
    },
    /// `truncate` of a path.
    Truncate {
        path: String,
        len: u64,
    },
    /// A hard link `to` naming the file `from`.
    Link {
        from: String,
        to: String,
    },
    /// A symbolic link at `link` whose content is `target`.
    Symlink {
        target: String,
        link: String,
    },
    /// `statfs` of the file system holding `path`.
    StatFs {
        path: String,
    },
}

/// One timestamp of a [`FsRequest::SetTimes`].
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetTime {
    /// The current time (`UTIME_NOW`).
    Now,
    /// Left unchanged (`UTIME_OMIT`).
    Omit,
    At(Timestamp),
}

/// A file system's figures, as `statfs(2)` reports them.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FsStats {
    /// The magic number of the file system type (`f_type`).
    pub fs_type: u64,
    pub block_size: u64,
    pub fragment_size: u64,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_available: u64,
    pub files: u64,
    pub files_free: u64,
    pub name_max: u64,
    /// `ST_*` mount flags (`f_flag` of `statvfs`).
    pub flags: u64,
    pub fsid: u64,
}

impl FsRequest {
    /// The paths the request names (both of a rename, `from` first); none
    /// for requests on an open fd.
    pub fn paths(&self) -> Vec<&str> {
        match self {
            FsRequest::Open(open) => vec![&open.path],
            FsRequest::Stat { path, .. }
            | FsRequest::Access { path, .. }
            | FsRequest::OpenDir { path }
            | FsRequest::ReadLink { path }
            | FsRequest::Canonicalize { path }
            | FsRequest::MkDir { path, .. }
            | FsRequest::Unlink { path }
            | FsRequest::RmDir { path }
            | FsRequest::SetMode { path, .. }
            | FsRequest::SetOwner { path, .. }
            | FsRequest::SetTimes { path, .. }
            | FsRequest::Truncate { path, .. }
            | FsRequest::StatFs { path }
            | FsRequest::Symlink { link: path, .. } => vec![path],
            FsRequest::Rename { from, to } | FsRequest::Link { from, to } => vec![from, to],
            FsRequest::Read { .. }
            | FsRequest::Pread { .. }
            | FsRequest::Write { .. }
            | FsRequest::Pwrite { .. }
            | FsRequest::Seek { .. }
            | FsRequest::Fstat { .. }
            | FsRequest::Ftruncate { .. }
            | FsRequest::Fsync { .. }
            | FsRequest::Close { .. }
            | FsRequest::ReadDirBatch { .. } => Vec::new(),
        }
    }
}

/// The successful answer to an [`FsRequest`].
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsReply {
    Opened(OpenReply),
    Data(#[cfg_attr(test, proptest(strategy = "crate::tests::bytes()"))] Bytes),
    Written(u64),
    Position(u64),
    Metadata(Metadata),
    DirEntries(Vec<DirEntry>),
    Path(String),
    Done,
    StatFs(FsStats),
}
