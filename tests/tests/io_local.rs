//! End-to-end: the entry points real programs use on the target's files
//! (working directory, `syscall()`, metadata, writes), with sh, tar, python3
//! and node through the real layer, intproxy and agent.

use remora_tests::fixtures::{CHECKOUT_CONFIG_BODY, checkout_pod, remora_run, remora_run_with};
use remora_tests::{Sandbox, require_sandbox};
use std::process::Output;

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[track_caller]
fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    text(&out)
}

#[test]
fn shell_cd_into_a_pod_directory_then_relative_paths_are_the_pods() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    // `cat` is a child exec'd by the shell: it inherits the remote directory.
    let out = ok(remora_run(
        &c.pod,
        &[
            "sh",
            "-c",
            "cd /etc/checkout && cat config.yaml && pwd && ls",
        ],
    )
    .unwrap());
    assert_eq!(
        out,
        format!("{CHECKOUT_CONFIG_BODY}/etc/checkout\nconfig.yaml\n")
    );
    // `cd` into a missing pod directory fails like it would in the pod.
    let out = remora_run(&c.pod, &["sh", "-c", "cd /etc/checkout/nope"]).unwrap();
    assert!(!out.status.success());
    // Back to a local directory: relative paths are local again.
    let out = ok(remora_run(
        &c.pod,
        &["sh", "-c", "cd /etc/checkout && cd /proc && cat self/comm"],
    )
    .unwrap());
    assert_eq!(out.trim(), "cat");
}

#[test]
fn tar_dash_c_archives_a_pod_directory() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let out = ok(remora_run(
        &c.pod,
        &["tar", "-C", "/srv/checkout/data", "-cf", "-", "orders.csv"],
    )
    .unwrap());
    assert!(out.contains("orders.csv"), "tar header names the file");
    assert!(out.contains("id,total\n1,9.99\n2,42.00\n"), "{out}");
}

const PY_CWD: &str = r#"
import os
os.chdir("/srv/checkout")
print(os.getcwd())
print(open("data/orders.csv").read().splitlines()[0])
print(os.stat("data").st_mode & 0o170000 == 0o040000)
fd = os.open("/srv/checkout/data", os.O_RDONLY | os.O_DIRECTORY)
os.chdir("/")
os.fchdir(fd)
print(os.getcwd())
print(sorted(os.listdir(".")))
os.chdir("..")
print(os.getcwd())
"#;

#[test]
fn python_chdir_fchdir_getcwd_in_the_pod() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let out = ok(remora_run(&c.pod, &["python3", "-c", PY_CWD]).unwrap());
    assert_eq!(
        out,
        "/srv/checkout\nid,total\nTrue\n/srv/checkout/data\n['orders.csv']\n/srv/checkout\n"
    );
}

const NODE_STAT: &str = r#"
const fs = require("fs");
const st = fs.statSync("/etc/checkout/config.yaml");
console.log(st.size, st.isFile());
console.log(fs.statSync("/srv/checkout/data").isDirectory());
try { fs.statSync("/etc/checkout/nope"); } catch (e) { console.log(e.code); }
"#;

#[test]
fn node_stat_sync_sees_the_pods_files() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let out = ok(remora_run(&c.pod, &["node", "-e", NODE_STAT]).unwrap());
    assert_eq!(
        out,
        format!("{} true\ntrue\nENOENT\n", CHECKOUT_CONFIG_BODY.len())
    );
}

#[test]
fn write_mode_cd_then_relative_writes_reach_the_pod() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    ok(remora_run_with(
        &c.pod,
        &["--fs-mode", "write"],
        &[
            "sh",
            "-c",
            "cd /srv/checkout/data && echo 3,1.00 >> orders.csv",
        ],
    )
    .unwrap());
    assert_eq!(
        c.pod
            .exec_ok(&["cat", "/srv/checkout/data/orders.csv"])
            .unwrap(),
        "id,total\n1,9.99\n2,42.00\n3,1.00\n"
    );
}

#[test]
fn sqlite_opening_the_pods_database_in_read_mode_is_warned_about() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let db = "/srv/checkout/data/shop.db";
    c.pod
        .exec_ok(&[
            "sqlite3",
            db,
            "create table t(x); insert into t values (42);",
        ])
        .unwrap();
    let out = remora_run(&c.pod, &["sqlite3", db, "select x from t"]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("remora: {db} exists in the target"))
            && stderr.contains("--fs-mode write"),
        "stderr: {stderr}"
    );
    assert_eq!(
        stderr.matches("exists in the target").count(),
        1,
        "said once: {stderr}"
    );
    // The fix it names works.
    let out = ok(remora_run_with(
        &c.pod,
        &["--fs-mode", "write"],
        &[
            "sqlite3",
            db,
            "insert into t values (7); select sum(x) from t",
        ],
    )
    .unwrap());
    assert_eq!(out, "49\n");
    assert_eq!(
        c.pod
            .exec_ok(&["sqlite3", db, "select count(*) from t"])
            .unwrap(),
        "2\n"
    );
}

const PY_FSYNC: &str = r#"
import os
fd = os.open("/srv/checkout/data/orders.csv", os.O_RDWR | os.O_APPEND)
assert os.write(fd, b"3,1.00\n") == 7
os.fsync(fd)
os.fdatasync(fd)
os.close(fd)
fd = os.open("/dev/full", os.O_RDWR)
try:
    os.write(fd, b"x" * 100000)
    print("no error")
except OSError as e:
    print(e.strerror)
"#;

#[test]
fn python_fsync_reaches_the_pod_and_write_errors_reach_the_program() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("remora.toml");
    // /dev/full is the pod's: every write to it fails with ENOSPC.
    std::fs::write(
        &config,
        "[fs]\nmode = \"write\"\nread_write = [\"^/dev/full$\"]\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let out = ok(remora_run_with(&c.pod, &["-f", config], &["python3", "-c", PY_FSYNC]).unwrap());
    assert_eq!(out, "No space left on device\n");
    assert_eq!(
        c.pod
            .exec_ok(&["cat", "/srv/checkout/data/orders.csv"])
            .unwrap(),
        "id,total\n1,9.99\n2,42.00\n3,1.00\n"
    );
    // A shell's redirect to the failing file: the error is the command's.
    let out = remora_run_with(
        &c.pod,
        &["-f", config],
        &["sh", "-c", "echo hi > /dev/full"],
    )
    .unwrap();
    assert!(!out.status.success(), "a lost write must not exit 0");
}

const PY_META: &str = r#"
import os
p = "/srv/checkout/data/orders.csv"
os.chmod(p, 0o600)
print(oct(os.stat(p).st_mode & 0o777))
os.truncate(p, 8)
print(os.stat(p).st_size)
os.utime(p, (1000000000, 1000000000))
print(int(os.stat(p).st_mtime))
os.chown(p, -1, 1234)
print(os.stat(p).st_gid)
os.link(p, "/srv/checkout/data/hard.csv")
os.symlink("orders.csv", "/srv/checkout/data/soft.csv")
print(os.readlink("/srv/checkout/data/soft.csv"), os.stat("/srv/checkout/data/hard.csv").st_nlink)
st = os.statvfs("/srv/checkout/data")
print(st.f_bsize > 0, st.f_blocks > 0)
"#;

#[test]
fn python_changes_the_pods_file_metadata() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let out =
        ok(remora_run_with(&c.pod, &["--fs-mode", "write"], &["python3", "-c", PY_META]).unwrap());
    assert_eq!(out, "0o600\n8\n1000000000\n1234\norders.csv 2\nTrue True\n");
    // The pod sees the same.
    let seen = c
        .pod
        .exec_ok(&[
            "stat",
            "-c",
            "%a %s %Y %g %h",
            "/srv/checkout/data/orders.csv",
        ])
        .unwrap();
    assert_eq!(seen.trim(), "600 8 1000000000 1234 2");
    assert_eq!(
        c.pod
            .exec_ok(&["readlink", "/srv/checkout/data/soft.csv"])
            .unwrap(),
        "orders.csv\n"
    );
}

const PY_V2: &str = r#"
import os
p = "/srv/checkout/data/orders.csv"
fd = os.open(p, os.O_RDWR)
# pwritev2 with RWF_DSYNC at an offset, then preadv2 with RWF_HIPRI.
print(os.pwritev(fd, [b"ID", b",TOTAL"], 0, os.RWF_DSYNC))
buf = bytearray(8)
print(os.preadv(fd, [buf], 0, os.RWF_HIPRI), bytes(buf))
# RWF_NOWAIT: a remote file always waits, so EAGAIN (callers retry without it).
try:
    os.preadv(fd, [buf], 0, os.RWF_NOWAIT)
except BlockingIOError:
    print("nowait EAGAIN")
# RWF_APPEND cannot be honoured remotely: EOPNOTSUPP, not a silent misplaced write.
try:
    os.pwritev(fd, [b"x"], 0, os.RWF_APPEND)
except OSError as e:
    print("append", e.errno == __import__("errno").EOPNOTSUPP)
os.close(fd)
"#;

#[test]
fn python_preadv2_and_pwritev2_reach_the_pods_file() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let out =
        ok(remora_run_with(&c.pod, &["--fs-mode", "write"], &["python3", "-c", PY_V2]).unwrap());
    assert_eq!(out, "8\n8 b'ID,TOTAL'\nnowait EAGAIN\nappend True\n");
    assert_eq!(
        c.pod
            .exec_ok(&["cat", "/srv/checkout/data/orders.csv"])
            .unwrap(),
        "ID,TOTAL\n1,9.99\n2,42.00\n"
    );
}

/// `os.execv` calls `execv` (which passes `environ`, without the remote
/// working directory set by `chdir`), and `os.execve` with an fd calls
/// `fexecve` with a scrubbed environment: both children still start in
/// the pod's directory and see its files.
const PY_EXEC: &str = r#"
import os, sys
os.chdir("/srv/checkout/data")
if sys.argv[1] == "execv":
    os.execv("/bin/sh", ["sh", "-c", "pwd; head -1 orders.csv"])
fd = os.open("/bin/sh", os.O_RDONLY)
os.execve(fd, ["sh", "-c", "pwd; head -1 orders.csv"], {"PATH": "/usr/bin:/bin"})
"#;

#[test]
fn execv_and_fexecve_children_keep_the_pods_working_directory() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    for how in ["execv", "fexecve"] {
        let out = ok(remora_run(&c.pod, &["python3", "-c", PY_EXEC, how]).unwrap());
        assert_eq!(out, "/srv/checkout/data\nid,total\n", "{how}");
    }
}

#[test]
fn a_c_program_fdopens_a_pod_file_and_reads_and_writes_it() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("fdopen_read");
    let built = std::process::Command::new("gcc")
        .arg("-o")
        .arg(&program)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/apps/c/fdopen_read.c"))
        .status()
        .unwrap();
    assert!(built.success());
    let out = ok(remora_run_with(
        &c.pod,
        &["--fs-mode", "write"],
        &[program.to_str().unwrap(), "/srv/checkout/data/orders.csv"],
    )
    .unwrap());
    assert_eq!(out, "fileno: same\nfirst line: id,total\nfd closed: yes\n");
    assert_eq!(
        c.pod
            .exec_ok(&["cat", "/srv/checkout/data/orders.csv"])
            .unwrap(),
        "id,total\n1,9.99\n2,42.00\n4,0.50\n"
    );
}

/// Compile one of tests/apps/c into a temporary directory.
fn c_program(dir: &tempfile::TempDir, name: &str, libs: &[&str]) -> String {
    let program = dir.path().join(name);
    let source = format!("{}/apps/c/{name}.c", env!("CARGO_MANIFEST_DIR"));
    let built = std::process::Command::new("gcc")
        .arg("-o")
        .arg(&program)
        .arg(&source)
        .args(libs)
        .status()
        .unwrap();
    assert!(built.success(), "gcc {source}");
    program.to_str().unwrap().to_owned()
}

#[test]
fn a_c_program_freopens_stdin_and_stdout_onto_pod_files() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let program = c_program(&dir, "freopen_pod", &[]);
    // Neither file exists here: stdin must read the pod's, stdout must
    // write the pod's.
    assert!(!std::path::Path::new("/srv/checkout/data/orders.csv").exists());
    let out = remora_run_with(
        &c.pod,
        &["--fs-mode", "write"],
        &[
            &program,
            "/srv/checkout/data/orders.csv",
            "/srv/checkout/data/summary.txt",
            "/srv/checkout/data/orders.csv",
        ],
    )
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("rw: Operation not supported\n"), "{stderr}");
    assert_eq!(
        stderr
            .matches("freopen of /srv/checkout/data/orders.csv")
            .count(),
        1,
        "{stderr}"
    );
    assert!(stderr.ends_with("done\n"), "{stderr}");
    assert_eq!(
        c.pod
            .exec_ok(&["cat", "/srv/checkout/data/summary.txt"])
            .unwrap(),
        "lines=3 first=id,total\n"
    );
}

/// node's libuv stats and reads files through an io_uring ring when
/// `UV_USE_IO_URING=1`: the kernel would look the pod's paths up locally.
const NODE_URING: &str = r#"
const fs = require("fs");
fs.stat("/srv/checkout/data/orders.csv", (err, st) => {
  if (err) { console.log("stat", err.code); return; }
  console.log("stat size", st.size);
  fs.promises.readFile("/srv/checkout/data/orders.csv", "utf8").then(
    (text) => console.log("read", JSON.stringify(text)),
    (e) => console.log("read", e.code));
});
"#;

#[test]
fn io_uring_is_refused_so_node_and_liburing_programs_use_calls_remora_sees() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let out = remora_run(
        &c.pod,
        &["env", "UV_USE_IO_URING=1", "node", "-e", NODE_URING],
    )
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        ok(out),
        "stat size 24\nread \"id,total\\n1,9.99\\n2,42.00\\n\"\n",
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("tried to use io_uring").count(),
        1,
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let program = c_program(&dir, "uring_init", &["-l:liburing.so.2"]);
    let out = remora_run(&c.pod, &[&program]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(ok(out), "io_uring_queue_init: Function not implemented\n");
    assert!(
        stderr.contains("REMORA_ALLOW_IO_URING=1 allows it"),
        "{stderr}"
    );
    // Outside remora the same program gets its ring (the test means something).
    let plain = std::process::Command::new(&program).output().unwrap();
    assert_eq!(text(&plain), "io_uring_queue_init: ok\n");
}

/// getdents64 through `syscall()` and the libc function, with a buffer
/// that holds one or two records (several calls, the cursor kept between).
const PY_GETDENTS: &str = r#"
import ctypes, os, platform, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
SYS_getdents64 = {"x86_64": 217, "aarch64": 61}[platform.machine()]
libc.syscall.restype = ctypes.c_long
libc.getdents64.restype = ctypes.c_ssize_t

def listing(call, size):
    fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
    buf = ctypes.create_string_buffer(size)
    names = []
    while True:
        n = call(fd, buf, size)
        if n < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        if n == 0:
            break
        off = 0
        while off < n:
            ino, doff, reclen, dtype = struct.unpack_from("QqHB", buf.raw, off)
            name = buf.raw[off + 19: off + reclen].split(b"\0")[0].decode()
            names.append((name, dtype))
            off += reclen
    os.close(fd)
    return sorted(names)

via_syscall = listing(lambda fd, b, n: libc.syscall(SYS_getdents64, fd, b, n), 64)
via_libc = listing(lambda fd, b, n: libc.getdents64(fd, b, n), 4096)
assert via_syscall == via_libc, (via_syscall, via_libc)
print(" ".join(f"{n}:{t}" for n, t in via_syscall))
try:
    listing(lambda fd, b, n: libc.syscall(SYS_getdents64, fd, b, n), 8)
except OSError as e:
    print("tiny buffer:", e.strerror)
"#;

#[test]
fn getdents64_through_syscall_and_libc_lists_a_pod_directory() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    c.pod
        .exec_ok(&["sh", "-c", "mkdir /srv/checkout/data/archive && touch /srv/checkout/data/a-rather-long-file-name.txt"])
        .unwrap();
    let out = ok(remora_run(
        &c.pod,
        &["python3", "-c", PY_GETDENTS, "/srv/checkout/data"],
    )
    .unwrap());
    // d_type: 4 directory, 8 regular file.
    assert_eq!(
        out,
        ".:4 ..:4 a-rather-long-file-name.txt:8 archive:4 orders.csv:8\n\
         tiny buffer: Invalid argument\n"
    );
}

#[test]
fn a_cpp_fstream_reads_and_appends_to_a_pod_file() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("fstream_rw");
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/apps/c/fstream_rw.cpp");
    let built = std::process::Command::new("g++")
        .arg("-o")
        .arg(&program)
        .arg(source)
        .status()
        .unwrap();
    assert!(built.success(), "g++ {source}");
    // Read-write: the stream is a remote handle whose fileno the library
    // uses directly.
    let out = ok(remora_run_with(
        &c.pod,
        &["--fs-mode", "write"],
        &[program.to_str().unwrap(), "/srv/checkout/data/orders.csv"],
    )
    .unwrap());
    assert_eq!(out, "first line: id,total\nclosed: ok\n");
    assert_eq!(
        c.pod
            .exec_ok(&["cat", "/srv/checkout/data/orders.csv"])
            .unwrap(),
        "id,total\n1,9.99\n2,42.00\n3,7.25\n"
    );
}
