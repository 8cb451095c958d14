//! Errors as data: what went wrong on the remote side, as an errno-like code
//! the layer can hand to the application, plus a message for humans.

use serde::{Deserialize, Serialize};

/// Result of a remote operation.
pub type RemoteResult<T> = Result<T, RemoteError>;

/// A portable error code. Platforms map it to their own errno values; the
/// numbers carried by [`ErrorCode::Other`] are Linux errno values.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    NotFound,
    PermissionDenied,
    AlreadyExists,
    NotADirectory,
    IsADirectory,
    DirectoryNotEmpty,
    InvalidInput,
    BadHandle,
    ConnectionRefused,
    ConnectionReset,
    TimedOut,
    HostUnreachable,
    NetworkUnreachable,
    AddressInUse,
    AddressNotAvailable,
    NameNotResolved,
    TemporaryNameFailure,
    Unsupported,
    /// The remote side (agent, operator) is gone or refused the session.
    Unavailable,
    /// A policy forbids this operation.
    Forbidden,
    /// Any other error, as a Linux errno number.
    Other(i32),
}

impl ErrorCode {
    /// The Linux errno for this code.
    pub fn to_linux_errno(self) -> i32 {
        match self {
            ErrorCode::NotFound => 2,
            ErrorCode::PermissionDenied => 13,
            ErrorCode::AlreadyExists => 17,
            ErrorCode::NotADirectory => 20,
            ErrorCode::IsADirectory => 21,
            ErrorCode::DirectoryNotEmpty => 39,
            ErrorCode::InvalidInput => 22,
            ErrorCode::BadHandle => 9,
            ErrorCode::ConnectionRefused => 111,
            ErrorCode::ConnectionReset => 104,
            ErrorCode::TimedOut => 110,
            ErrorCode::HostUnreachable => 113,
            ErrorCode::NetworkUnreachable => 101,
            ErrorCode::AddressInUse => 98,
            ErrorCode::AddressNotAvailable => 99,
            ErrorCode::NameNotResolved => 2,
            ErrorCode::TemporaryNameFailure => 11,
            ErrorCode::Unsupported => 95,
            ErrorCode::Unavailable => 107,
            ErrorCode::Forbidden => 1,
            ErrorCode::Other(errno) => errno,
        }
    }

    /// Classify a Linux errno number.
    pub fn from_linux_errno(errno: i32) -> Self {
        match errno {
            2 => ErrorCode::NotFound,
            13 => ErrorCode::PermissionDenied,
            17 => ErrorCode::AlreadyExists,
            20 => ErrorCode::NotADirectory,
            21 => ErrorCode::IsADirectory,
            39 => ErrorCode::DirectoryNotEmpty,
            22 => ErrorCode::InvalidInput,
            9 => ErrorCode::BadHandle,
            111 => ErrorCode::ConnectionRefused,
            104 => ErrorCode::ConnectionReset,
            110 => ErrorCode::TimedOut,
            113 => ErrorCode::HostUnreachable,
            101 => ErrorCode::NetworkUnreachable,
            98 => ErrorCode::AddressInUse,
            99 => ErrorCode::AddressNotAvailable,
            95 => ErrorCode::Unsupported,
            1 => ErrorCode::Forbidden,
            other => ErrorCode::Other(other),
        }
    }
}

/// An error that happened on the remote side, or while reaching it.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    pub code: ErrorCode,
    pub message: String,
}

impl RemoteError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Build from an `std::io::Error`, keeping its OS error number when it has one.
    pub fn from_io(context: impl std::fmt::Display, err: &std::io::Error) -> Self {
        let code = match err.raw_os_error() {
            Some(errno) => ErrorCode::from_linux_errno(errno),
            None => match err.kind() {
                std::io::ErrorKind::NotFound => ErrorCode::NotFound,
                std::io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
                std::io::ErrorKind::AlreadyExists => ErrorCode::AlreadyExists,
                std::io::ErrorKind::ConnectionRefused => ErrorCode::ConnectionRefused,
                std::io::ErrorKind::TimedOut => ErrorCode::TimedOut,
                std::io::ErrorKind::InvalidInput => ErrorCode::InvalidInput,
                _ => ErrorCode::Other(5),
            },
        };
        Self::new(code, format!("{context}: {err}"))
    }
}
