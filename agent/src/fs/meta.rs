//! Metadata changes and file system figures (`chmod`, `chown`, `utimensat`,
//! `truncate`, links, `statfs`), run on the namespace worker like every file
//! operation so paths resolve in the target's mount namespace.

use super::ops::{errno_err, io_err};
use nix::fcntl::{AT_FDCWD, AtFlags};
use nix::sys::stat::{FchmodatFlags, Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};
use remora_protocol::RemoteResult;
use remora_protocol::fs::{FsReply, FsRequest, FsStats, SetTime};

/// Perform one metadata request; other requests are not this module's.
pub fn execute(request: FsRequest) -> RemoteResult<FsReply> {
    match request {
        FsRequest::SetMode {
            path,
            mode,
            follow_symlinks,
        } => {
            let flag = if follow_symlinks {
                FchmodatFlags::FollowSymlink
            } else {
                FchmodatFlags::NoFollowSymlink
            };
            nix::sys::stat::fchmodat(
                AT_FDCWD,
                path.as_str(),
                Mode::from_bits_truncate(mode),
                flag,
            )
            .map_err(|e| errno_err(format!("chmod {path}"), e))?;
            Ok(FsReply::Done)
        }
        FsRequest::SetOwner {
            path,
            uid,
            gid,
            follow_symlinks,
        } => {
            let flag = if follow_symlinks {
                AtFlags::empty()
            } else {
                AtFlags::AT_SYMLINK_NOFOLLOW
            };
            nix::unistd::fchownat(
                AT_FDCWD,
                path.as_str(),
                uid.map(Uid::from_raw),
                gid.map(Gid::from_raw),
                flag,
            )
            .map_err(|e| errno_err(format!("chown {path}"), e))?;
            Ok(FsReply::Done)
        }
        FsRequest::SetTimes {
            path,
            atime,
            mtime,
            follow_symlinks,
        } => {
            let flag = if follow_symlinks {
                UtimensatFlags::FollowSymlink
            } else {
                UtimensatFlags::NoFollowSymlink
            };
            nix::sys::stat::utimensat(
                AT_FDCWD,
                path.as_str(),
                &timespec(atime),
                &timespec(mtime),
                flag,
            )
            .map_err(|e| errno_err(format!("utimensat {path}"), e))?;
            Ok(FsReply::Done)
        }
        FsRequest::Truncate { path, len } => {
            let len = i64::try_from(len)
                .map_err(|_| errno_err(format!("truncate {path}"), nix::errno::Errno::EINVAL))?;
            nix::unistd::truncate(path.as_str(), len)
                .map_err(|e| errno_err(format!("truncate {path}"), e))?;
            Ok(FsReply::Done)
        }
        FsRequest::Link { from, to } => {
            std::fs::hard_link(&from, &to)
                .map_err(|e| io_err(format!("link {from} to {to}"), &e))?;
            Ok(FsReply::Done)
        }
        FsRequest::Symlink { target, link } => {
            std::os::unix::fs::symlink(&target, &link)
                .map_err(|e| io_err(format!("symlink {link} -> {target}"), &e))?;
            Ok(FsReply::Done)
        }
        FsRequest::StatFs { path } => stat_fs(&path).map(FsReply::StatFs),
        other => Err(remora_protocol::RemoteError::new(
            remora_protocol::ErrorCode::InvalidInput,
            format!("not a metadata request: {other:?}"),
        )),
    }
}

fn timespec(time: SetTime) -> TimeSpec {
    match time {
        SetTime::Now => TimeSpec::UTIME_NOW,
        SetTime::Omit => TimeSpec::UTIME_OMIT,
        SetTime::At(t) => TimeSpec::new(t.secs, i64::from(t.nanos)),
    }
}

/// `statfs` and `statvfs` of `path`, merged.
pub fn stat_fs(path: &str) -> RemoteResult<FsStats> {
    let fs = nix::sys::statfs::statfs(path).map_err(|e| errno_err(format!("statfs {path}"), e))?;
    let vfs =
        nix::sys::statvfs::statvfs(path).map_err(|e| errno_err(format!("statvfs {path}"), e))?;
    Ok(FsStats {
        fs_type: fs.filesystem_type().0 as u64,
        block_size: vfs.block_size(),
        fragment_size: vfs.fragment_size(),
        blocks: vfs.blocks(),
        blocks_free: vfs.blocks_free(),
        blocks_available: vfs.blocks_available(),
        files: vfs.files(),
        files_free: vfs.files_free(),
        name_max: vfs.name_max(),
        flags: vfs.flags().bits(),
        fsid: vfs.filesystem_id(),
    })
}
