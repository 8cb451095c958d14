//! Unit tests of the pure pieces of the file hooks: flag translation,
//! metadata and directory-entry conversion, path absolutisation, chunking.

use super::dir::{d_type, fill_dirent, fill_dirent64};
use super::hooks::{write_link, write_resolved};
use super::io::vectored;
use super::ops::{
    self, IO_CHUNK, absolutize, chunked, fopen_flags, open_options, opens_for_write, seek_from,
};
use super::stat::{dev_major, dev_minor, is_dir, is_regular, to_stat, to_stat64, to_statx};
use crate::error::HookError;
use remora_protocol::fs::{DirEntry, FileType, Metadata, OpenOptions, SeekFrom, Timestamp};
use std::ffi::CStr;

fn metadata() -> Metadata {
    Metadata {
        dev: libc::makedev(259, 3),
        ino: 131_077,
        mode: libc::S_IFREG | 0o640,
        nlink: 2,
        uid: 1000,
        gid: 100,
        rdev: libc::makedev(4, 65),
        size: 12_345,
        blksize: 4096,
        blocks: 32,
        atime: Timestamp {
            secs: 1_700_000_001,
            nanos: 11,
        },
        mtime: Timestamp {
            secs: 1_700_000_002,
            nanos: 22,
        },
        ctime: Timestamp {
            secs: 1_700_000_003,
            nanos: 33,
        },
    }
}

#[test]
fn read_only_open_is_not_a_write() {
    assert!(!opens_for_write(
        libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW
    ));
    assert!(!opens_for_write(libc::O_RDONLY | libc::O_DIRECTORY));
    for flags in [
        libc::O_WRONLY,
        libc::O_RDWR,
        libc::O_RDONLY | libc::O_CREAT,
        libc::O_RDONLY | libc::O_TRUNC,
        libc::O_RDONLY | libc::O_APPEND,
        libc::O_TMPFILE | libc::O_RDWR,
    ] {
        assert!(opens_for_write(flags), "{flags:#o} modifies the file");
    }
}

#[test]
fn open_flags_translate_to_options() {
    assert_eq!(
        open_options(libc::O_RDONLY | libc::O_CLOEXEC),
        OpenOptions {
            read: true,
            ..OpenOptions::default()
        }
    );
    assert_eq!(
        open_options(libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL),
        OpenOptions {
            write: true,
            create: true,
            truncate: true,
            exclusive: true,
            ..OpenOptions::default()
        }
    );
    assert_eq!(
        open_options(libc::O_RDWR | libc::O_APPEND | libc::O_NOFOLLOW),
        OpenOptions {
            read: true,
            write: true,
            append: true,
            nofollow: true,
            ..OpenOptions::default()
        }
    );
    assert!(open_options(libc::O_RDONLY | libc::O_DIRECTORY).directory);
    // O_TMPFILE shares its bit with O_DIRECTORY but is not a directory open.
    assert!(!open_options(libc::O_TMPFILE | libc::O_RDWR).directory);
}

#[test]
fn fopen_modes_translate_to_open_flags() {
    use libc::{O_APPEND, O_CLOEXEC, O_CREAT, O_EXCL, O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY};
    assert_eq!(fopen_flags(b"r"), Some(O_RDONLY));
    assert_eq!(fopen_flags(b"rb"), Some(O_RDONLY));
    assert_eq!(fopen_flags(b"re"), Some(O_RDONLY | O_CLOEXEC));
    assert_eq!(fopen_flags(b"r+"), Some(O_RDWR));
    assert_eq!(fopen_flags(b"w"), Some(O_WRONLY | O_CREAT | O_TRUNC));
    assert_eq!(
        fopen_flags(b"wbx"),
        Some(O_WRONLY | O_CREAT | O_TRUNC | O_EXCL)
    );
    assert_eq!(fopen_flags(b"w+"), Some(O_RDWR | O_CREAT | O_TRUNC));
    assert_eq!(fopen_flags(b"a"), Some(O_WRONLY | O_CREAT | O_APPEND));
    assert_eq!(fopen_flags(b"ab+"), Some(O_RDWR | O_CREAT | O_APPEND));
    // ",ccs=" ends the flag letters.
    assert_eq!(fopen_flags(b"r,ccs=UTF-8+"), Some(O_RDONLY));
    assert_eq!(fopen_flags(b""), None);
    assert_eq!(fopen_flags(b"x"), None);
    // A read-only fopen can be a snapshot; everything else is a write.
    assert!(!opens_for_write(fopen_flags(b"rbe").unwrap()));
    assert!(opens_for_write(fopen_flags(b"r+").unwrap()));
}

#[test]
fn metadata_becomes_stat() {
    let m = metadata();
    let st = to_stat(&m);
    assert_eq!(st.st_dev, m.dev);
    assert_eq!(st.st_ino, m.ino);
    assert_eq!(st.st_mode, libc::S_IFREG | 0o640);
    assert_eq!(st.st_nlink, 2);
    assert_eq!((st.st_uid, st.st_gid), (1000, 100));
    assert_eq!(st.st_rdev, m.rdev);
    assert_eq!(st.st_size, 12_345);
    assert_eq!((st.st_blksize, st.st_blocks), (4096, 32));
    assert_eq!((st.st_atime, st.st_atime_nsec), (1_700_000_001, 11));
    assert_eq!((st.st_mtime, st.st_mtime_nsec), (1_700_000_002, 22));
    assert_eq!((st.st_ctime, st.st_ctime_nsec), (1_700_000_003, 33));

    let st64 = to_stat64(&m);
    assert_eq!(
        (st64.st_ino, st64.st_size, st64.st_mode),
        (m.ino, 12_345, m.mode)
    );
    assert_eq!((st64.st_mtime, st64.st_mtime_nsec), (1_700_000_002, 22));
}

#[test]
fn metadata_becomes_statx_with_basic_mask() {
    let m = metadata();
    let stx = to_statx(&m);
    assert_eq!(stx.stx_mask, libc::STATX_BASIC_STATS);
    assert_eq!(stx.stx_mode as u32, m.mode);
    assert_eq!(
        (stx.stx_ino, stx.stx_size, stx.stx_blocks),
        (m.ino, m.size, m.blocks)
    );
    assert_eq!(
        (stx.stx_nlink, stx.stx_uid, stx.stx_gid, stx.stx_blksize),
        (2, 1000, 100, 4096)
    );
    assert_eq!((stx.stx_dev_major, stx.stx_dev_minor), (259, 3));
    assert_eq!((stx.stx_rdev_major, stx.stx_rdev_minor), (4, 65));
    assert_eq!(
        (stx.stx_mtime.tv_sec, stx.stx_mtime.tv_nsec),
        (1_700_000_002, 22)
    );
    assert_eq!(
        (stx.stx_atime.tv_sec, stx.stx_ctime.tv_sec),
        (1_700_000_001, 1_700_000_003)
    );
    assert_eq!((stx.stx_btime.tv_sec, stx.stx_btime.tv_nsec), (0, 0));
    // The hook writes a whole struct into the caller's buffer: it must be
    // exactly the kernel's/glibc's size.
    assert_eq!(std::mem::size_of::<libc::statx>(), 256);
}

#[test]
fn device_numbers_split_like_glibc() {
    for (major, minor) in [
        (0, 0),
        (8, 1),
        (259, 3),
        (4095, 255),
        (4096, 1 << 20),
        (u32::MAX, u32::MAX),
    ] {
        let dev = libc::makedev(major, minor);
        assert_eq!(
            (dev_major(dev), dev_minor(dev)),
            (major, minor),
            "dev {dev:#x}"
        );
    }
}

#[test]
fn file_types_from_mode() {
    assert!(is_regular(libc::S_IFREG | 0o644) && !is_dir(libc::S_IFREG | 0o644));
    assert!(is_dir(libc::S_IFDIR | 0o755) && !is_regular(libc::S_IFDIR));
    assert!(!is_dir(libc::S_IFLNK | 0o777) && !is_regular(libc::S_IFLNK));
}

fn name_of(d_name: &[libc::c_char]) -> String {
    // SAFETY: fill_* always NUL-terminates inside the array.
    unsafe { CStr::from_ptr(d_name.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn dirent_is_filled_for_readdir() {
    // SAFETY: plain old data.
    let mut ent: libc::dirent = unsafe { std::mem::zeroed() };
    let entry = DirEntry {
        name: "hostname".into(),
        ino: 77,
        file_type: FileType::Regular,
    };
    fill_dirent(&mut ent, &entry, 5);
    assert_eq!(name_of(&ent.d_name), "hostname");
    assert_eq!((ent.d_ino, ent.d_off, ent.d_type), (77, 5, libc::DT_REG));
    // 19 header bytes + 8 name bytes + NUL, rounded up to 8.
    assert_eq!(ent.d_reclen, 32);

    // A shorter name after a longer one leaves no trailing garbage.
    fill_dirent(
        &mut ent,
        &DirEntry {
            name: "a".into(),
            ino: 1,
            file_type: FileType::Directory,
        },
        6,
    );
    assert_eq!(name_of(&ent.d_name), "a");
    assert_eq!((ent.d_type, ent.d_reclen), (libc::DT_DIR, 24));
}

#[test]
fn dirent64_truncates_overlong_names() {
    // SAFETY: plain old data.
    let mut ent: libc::dirent64 = unsafe { std::mem::zeroed() };
    let entry = DirEntry {
        name: "x".repeat(300),
        ino: 9,
        file_type: FileType::Symlink,
    };
    fill_dirent64(&mut ent, &entry, 1);
    assert_eq!(name_of(&ent.d_name).len(), 255);
    assert_eq!(ent.d_type, libc::DT_LNK);
    assert!(usize::from(ent.d_reclen) <= std::mem::size_of::<libc::dirent64>());
}

#[test]
fn file_types_map_to_d_type() {
    let all = [
        (FileType::Regular, libc::DT_REG),
        (FileType::Directory, libc::DT_DIR),
        (FileType::Symlink, libc::DT_LNK),
        (FileType::Fifo, libc::DT_FIFO),
        (FileType::Socket, libc::DT_SOCK),
        (FileType::CharDevice, libc::DT_CHR),
        (FileType::BlockDevice, libc::DT_BLK),
        (FileType::Unknown, libc::DT_UNKNOWN),
    ];
    for (file_type, expected) in all {
        assert_eq!(d_type(file_type), expected, "{file_type:?}");
    }
}

#[test]
fn relative_paths_join_their_directory() {
    assert_eq!(
        absolutize("/home/dev/app", "config.toml"),
        "/home/dev/app/config.toml"
    );
    assert_eq!(absolutize("/", "etc/hostname"), "/etc/hostname");
    assert_eq!(absolutize("/srv/", "./data/x"), "/srv/data/x");
    assert_eq!(absolutize("/srv", "././/x"), "/srv/x");
    assert_eq!(absolutize("/srv", "."), "/srv");
    assert_eq!(absolutize("/", "."), "/");
    // `..` is left for the target to resolve (symlinks may make it non-lexical).
    assert_eq!(absolutize("/srv/a", "../b"), "/srv/a/../b");
    assert_eq!(absolutize("/srv", "/etc/passwd"), "/etc/passwd");
}

#[test]
fn memfd_names_carry_the_base_name() {
    assert_eq!(
        ops::memfd_name("remora:", "/etc/hostname").to_bytes(),
        b"remora:hostname"
    );
    assert_eq!(
        ops::memfd_name("remora-remote:", "/var/lib/").to_bytes(),
        b"remora-remote:lib"
    );
    let long = format!("/{}", "é".repeat(200));
    let name = ops::memfd_name("remora:", &long);
    assert!(
        name.to_bytes().len() < 249,
        "the kernel refuses longer names"
    );
    assert!(
        std::str::from_utf8(name.to_bytes()).is_ok(),
        "cut on a char boundary"
    );
}

#[test]
fn seek_arguments_translate() {
    assert_eq!(seek_from(10, libc::SEEK_SET).unwrap(), SeekFrom::Start(10));
    assert_eq!(
        seek_from(-3, libc::SEEK_CUR).unwrap(),
        SeekFrom::Current(-3)
    );
    assert_eq!(seek_from(-1, libc::SEEK_END).unwrap(), SeekFrom::End(-1));
    assert!(matches!(
        seek_from(-1, libc::SEEK_SET),
        Err(HookError::Errno(libc::EINVAL))
    ));
    assert!(matches!(
        seek_from(0, libc::SEEK_DATA),
        Err(HookError::Errno(libc::EINVAL))
    ));
}

#[test]
fn transfers_are_cut_into_bounded_requests() {
    let mut sizes = Vec::new();
    let total = 2 * IO_CHUNK + 10;
    let moved = chunked(total, |done, want| {
        assert_eq!(done, sizes.iter().sum::<usize>());
        sizes.push(want);
        Ok(want)
    })
    .unwrap();
    assert_eq!(moved, total);
    assert_eq!(sizes, vec![IO_CHUNK, IO_CHUNK, 10]);
}

#[test]
fn transfers_stop_at_a_short_step() {
    let mut calls = 0;
    let moved = chunked(3 * IO_CHUNK, |_, _| {
        calls += 1;
        Ok(100)
    })
    .unwrap();
    assert_eq!((moved, calls), (100, 1));
    assert_eq!(chunked(0, |_, _| panic!("nothing to move")).unwrap(), 0);
}

#[test]
fn transfer_errors_after_progress_report_the_progress() {
    let mut calls = 0;
    let moved = chunked(2 * IO_CHUNK, |_, want| {
        calls += 1;
        if calls == 1 {
            Ok(want)
        } else {
            Err(HookError::Errno(libc::EIO))
        }
    });
    assert_eq!(moved.unwrap(), IO_CHUNK);
    let first = chunked(10, |_, _| Err(HookError::Errno(libc::EIO)));
    assert!(matches!(first, Err(HookError::Errno(libc::EIO))));
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[test]
fn realpath_allocates_when_given_no_buffer() {
    // SAFETY: a null `resolved` asks for a malloc'ed result, freed below.
    let out = unsafe { write_resolved("/srv/data/hello.txt", std::ptr::null_mut()) };
    assert!(!out.is_null());
    // SAFETY: write_resolved NUL-terminates what it returns.
    assert_eq!(
        unsafe { CStr::from_ptr(out) }.to_bytes(),
        b"/srv/data/hello.txt"
    );
    // SAFETY: allocated with malloc by write_resolved.
    unsafe { libc::free(out.cast()) };
}

#[test]
fn realpath_fills_the_callers_buffer_or_reports_too_long() {
    let mut buf = vec![0x55 as libc::c_char; libc::PATH_MAX as usize];
    // SAFETY: buf has PATH_MAX bytes.
    let out = unsafe { write_resolved("/etc/hostname", buf.as_mut_ptr()) };
    assert_eq!(out, buf.as_mut_ptr());
    // SAFETY: NUL-terminated by write_resolved.
    assert_eq!(unsafe { CStr::from_ptr(out) }.to_bytes(), b"/etc/hostname");
    let long = format!("/{}", "a".repeat(libc::PATH_MAX as usize));
    // SAFETY: as above; nothing is written for a path that does not fit.
    let out = unsafe { write_resolved(&long, buf.as_mut_ptr()) };
    assert!(out.is_null());
    assert_eq!(errno(), libc::ENAMETOOLONG);
}

#[test]
fn readlink_truncates_without_terminating() {
    let mut buf = [b'#' as libc::c_char; 6];
    // SAFETY: buf has 6 writable bytes.
    let n = unsafe { write_link("hello.txt", buf.as_mut_ptr(), buf.len()) };
    assert_eq!(n, 6);
    assert_eq!(buf.map(|c| c as u8), *b"hello.");
    let mut big = [b'#' as libc::c_char; 16];
    // SAFETY: big has 16 writable bytes.
    let n = unsafe { write_link("a", big.as_mut_ptr(), big.len()) };
    assert_eq!((n, big[0] as u8, big[1] as u8), (1, b'a', b'#'));
}

#[test]
fn vectored_io_stops_at_the_first_short_buffer() {
    let mut a = [0u8; 4];
    let mut b = [0u8; 4];
    let iov = [
        libc::iovec {
            iov_base: a.as_mut_ptr().cast(),
            iov_len: 4,
        },
        libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: 4,
        },
        libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: 4,
        },
    ];
    let mut calls = 0;
    let total = vectored(&iov, |v| {
        calls += 1;
        Ok(if calls == 2 { 1 } else { v.iov_len })
    });
    assert_eq!((total.unwrap(), calls), (5, 2));
}

#[test]
fn normalize_removes_dots_and_parents() {
    use super::cwd::normalize;
    assert_eq!(normalize("/a/./b/../c/"), "/a/c");
    assert_eq!(normalize("/.."), "/");
    assert_eq!(normalize("//a//b"), "/a/b");
    assert_eq!(normalize("/a/b/../../.."), "/");
}
