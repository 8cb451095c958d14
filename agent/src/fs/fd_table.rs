//! One client's open files and directories, by [`RemoteFd`].
//!
//! # Guarantees
//! Every handle is closed when it is removed, when [`FdTable::close_all`] runs
//! (the client went away) or when the table is dropped. A job still running on
//! a handle keeps that one handle alive until it finishes.

use nix::dir::OwningIter;
use remora_protocol::{ErrorCode, RemoteError, RemoteFd, RemoteResult};
use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex};

/// Most handles one client may hold open at once.
pub const MAX_OPEN_HANDLES: usize = 4096;

/// An open file or directory in the target.
#[derive(Debug)]
pub enum Handle {
    File(File),
    /// A directory being listed; `file` shares the descriptor's offset and
    /// answers `fstat`.
    Dir {
        file: File,
        entries: OwningIter,
    },
}

impl Handle {
    /// The underlying file, for operations that work on both kinds.
    pub fn file(&self) -> &File {
        match self {
            Handle::File(file) | Handle::Dir { file, .. } => file,
        }
    }
}

/// A shared, individually locked handle: one slow read does not block the
/// table or the client's other handles.
pub type SharedHandle = Arc<Mutex<Handle>>;

/// A client's handle table.
#[derive(Debug, Default)]
pub struct FdTable {
    last: u64,
    handles: HashMap<RemoteFd, SharedHandle>,
}

impl FdTable {
    /// A fresh handle number that is not stored (for snapshot opens, whose
    /// file is closed right away).
    pub fn reserve(&mut self) -> RemoteFd {
        self.last += 1;
        RemoteFd(self.last)
    }

    /// Store `handle` under a fresh number.
    ///
    /// # Errors
    /// `EMFILE` when the client already holds [`MAX_OPEN_HANDLES`].
    pub fn insert(&mut self, handle: Handle) -> RemoteResult<RemoteFd> {
        if self.handles.len() >= MAX_OPEN_HANDLES {
            return Err(RemoteError::new(
                ErrorCode::Other(libc::EMFILE),
                format!("this session already holds {MAX_OPEN_HANDLES} open files in the target"),
            ));
        }
        let fd = self.reserve();
        self.handles.insert(fd, Arc::new(Mutex::new(handle)));
        Ok(fd)
    }

    /// The handle behind `fd`.
    ///
    /// # Errors
    /// [`ErrorCode::BadHandle`] for an unknown or closed handle.
    pub fn get(&self, fd: RemoteFd) -> RemoteResult<SharedHandle> {
        self.handles.get(&fd).cloned().ok_or_else(|| bad_handle(fd))
    }

    /// Forget (and so close) `fd`.
    ///
    /// # Errors
    /// [`ErrorCode::BadHandle`] for an unknown or already closed handle.
    pub fn remove(&mut self, fd: RemoteFd) -> RemoteResult<()> {
        self.handles
            .remove(&fd)
            .map(drop)
            .ok_or_else(|| bad_handle(fd))
    }

    /// Number of open handles.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether no handle is open.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Close every handle; returns how many there were.
    pub fn close_all(&mut self) -> usize {
        let count = self.handles.len();
        self.handles.clear();
        count
    }
}

fn bad_handle(fd: RemoteFd) -> RemoteError {
    RemoteError::new(ErrorCode::BadHandle, format!("no open remote file {fd}"))
}
