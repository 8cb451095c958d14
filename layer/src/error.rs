//! The layer's error type and the single place that turns it into `errno`.

use remora_protocol::{ErrorCode, RemoteError};

/// Why a hooked call did not complete remotely.
#[derive(Debug)]
pub enum HookError {
    /// Not ours: call the original libc function.
    Bypass(&'static str),
    /// Fail the call with this errno.
    Errno(i32),
    /// The remote side failed the operation.
    Remote(RemoteError),
}

impl From<RemoteError> for HookError {
    fn from(e: RemoteError) -> Self {
        HookError::Remote(e)
    }
}

pub type HookResult<T> = Result<T, HookError>;

/// The errno a failed hook reports to the application.
pub fn errno_of(err: &HookError) -> i32 {
    match err {
        HookError::Bypass(_) => 0,
        HookError::Errno(e) => *e,
        HookError::Remote(r) => match r.code {
            ErrorCode::Unavailable => libc::ENOTCONN,
            code => code.to_linux_errno(),
        },
    }
}

/// Set `errno` for a failed hook and return the C failure value `-1`.
pub fn fail(err: &HookError) -> libc::c_int {
    set_errno(errno_of(err));
    -1
}

/// The calling thread's `errno`.
pub fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// Set the calling thread's `errno`.
pub fn set_errno(errno: i32) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = errno };
}
