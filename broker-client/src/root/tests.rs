use super::*;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// A directory standing in for the target's root, removed when dropped.
struct FakeRoot {
    dir: PathBuf,
    fd: OwnedFd,
}

impl FakeRoot {
    fn new(name: &str) -> FakeRoot {
        let dir =
            std::env::temp_dir().join(format!("remora-broker-root-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        let fd = std::fs::File::open(&dir).unwrap().into();
        FakeRoot { dir, fd }
    }

    fn open(&self, path: &str, nofollow: bool) -> Direct {
        open_read(self.fd.as_fd(), path, nofollow, true)
    }
}

impl Drop for FakeRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn content(direct: Direct) -> String {
    let Direct::File(fd) = direct else {
        panic!("not a file: {direct:?}");
    };
    let mut text = String::new();
    std::fs::File::from(fd).read_to_string(&mut text).unwrap();
    text
}

fn flags(fd: &OwnedFd) -> i32 {
    // SAFETY: reading the status flags of a descriptor we own.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) }
}

#[test]
fn a_file_under_the_root_is_opened_read_only_and_blocking() {
    let root = FakeRoot::new("file");
    std::fs::write(root.dir.join("etc/app.conf"), "from the target\n").unwrap();
    let Direct::File(fd) = root.open("/etc/app.conf", false) else {
        panic!("not opened");
    };
    let status = flags(&fd);
    assert_eq!(status & libc::O_ACCMODE, libc::O_RDONLY);
    assert_eq!(
        status & libc::O_NONBLOCK,
        0,
        "made blocking, as the broker does"
    );
    // SAFETY: reading the descriptor flags of a descriptor we own.
    let fd_flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
    assert_eq!(fd_flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    assert_eq!(content(Direct::File(fd)), "from the target\n");
    // Relative paths start at the root, as from the broker thread's cwd.
    assert_eq!(
        content(root.open("etc/app.conf", false)),
        "from the target\n"
    );
}

#[test]
fn symlinks_and_dotdot_stay_inside_the_root() {
    let root = FakeRoot::new("links");
    std::fs::write(root.dir.join("etc/hostname"), "the target's\n").unwrap();
    // Absolute: the target's /etc/hostname, not this machine's.
    std::os::unix::fs::symlink("/etc/hostname", root.dir.join("abs")).unwrap();
    // Climbing above the root stops at it.
    std::os::unix::fs::symlink("../../../../etc/hostname", root.dir.join("etc/up")).unwrap();
    assert_eq!(content(root.open("/abs", false)), "the target's\n");
    assert_eq!(content(root.open("/etc/up", false)), "the target's\n");
    assert_eq!(
        content(root.open("/../../etc/hostname", false)),
        "the target's\n"
    );
    // O_NOFOLLOW on a symlink: ELOOP, which the broker is asked to confirm.
    assert!(matches!(root.open("/abs", true), Direct::AskBroker));
}

#[test]
fn missing_paths_fail_and_directories_are_not_regular() {
    let root = FakeRoot::new("missing");
    std::fs::write(root.dir.join("etc/file"), "x").unwrap();
    assert!(matches!(
        root.open("/etc/none", false),
        Direct::Failed(libc::ENOENT)
    ));
    assert!(matches!(
        root.open("/etc/file/below", false),
        Direct::Failed(libc::ENOTDIR)
    ));
    assert!(matches!(root.open("/etc", false), Direct::NotRegular));
    assert!(matches!(root.open("/", false), Direct::NotRegular));
}

#[test]
fn procfs_is_always_the_brokers() {
    let root = FakeRoot::new("proc");
    for path in [
        "/proc/self/status",
        "//proc/1/environ",
        "/./proc",
        "/../proc/x",
    ] {
        assert!(
            matches!(root.open(path, false), Direct::AskBroker),
            "{path}"
        );
    }
    // Reached by a spelling that does not start with /proc: the file's
    // filesystem gives it away (this machine's root, which has a procfs).
    let real = std::fs::File::open("/").unwrap();
    let direct = open_read(real.as_fd(), "/etc/../proc/self/status", false, true);
    assert!(matches!(direct, Direct::AskBroker), "{direct:?}");
    assert!(Path::new("/proc/self/status").exists());
}
