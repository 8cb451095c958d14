//! End-to-end: writes to the target's files are never lost or silently
//! misplaced (issue 15, item 4) — `fsync` really syncs the target's file and
//! its errors reach the program, a large write-only stream arrives whole, and
//! read mode says so when a write-open of a target file goes local (sqlite3).

use remora_tests::fixtures::{remora_run, remora_run_with};
use remora_tests::{PodSpec, Sandbox, require_sandbox};
use std::process::Output;

const DB: &str = "/srv/app/app.db";

fn pod(sandbox: &Sandbox) -> remora_tests::Pod {
    sandbox
        .pod(PodSpec::new("writer").file("/srv/app/notes.txt", "first line\n"))
        .unwrap()
}

#[track_caller]
fn ok(out: Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    (stdout, stderr)
}

#[test]
fn fsync_and_fdatasync_reach_the_targets_file() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let pod = pod(&sandbox);
    // r+b keeps a remote handle (read and write): fsync goes to the agent.
    let script = r#"
import os
with open("/srv/app/notes.txt", "r+b") as f:
    f.seek(0, 2)
    f.write(b"second line\n")
    f.flush()
    os.fsync(f.fileno())
    os.fdatasync(f.fileno())
print("synced")
"#;
    let (stdout, _) =
        ok(remora_run_with(&pod, &["--fs-mode", "write"], &["python3", "-c", script]).unwrap());
    assert_eq!(stdout, "synced\n");
    assert_eq!(
        pod.exec_ok(&["cat", "/srv/app/notes.txt"]).unwrap(),
        "first line\nsecond line\n"
    );
}

#[test]
fn a_large_write_only_stream_arrives_whole() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let pod = pod(&sandbox);
    // 24 MiB in uneven writes through a write-only (streamed) file.
    let script = r#"
import hashlib
h = hashlib.sha256()
with open("/srv/app/big.bin", "wb") as f:
    for i in range(3000):
        chunk = bytes([i % 251]) * (8191 + i % 7)
        h.update(chunk)
        f.write(chunk)
print(h.hexdigest())
"#;
    let (stdout, _) =
        ok(remora_run_with(&pod, &["--fs-mode", "write"], &["python3", "-c", script]).unwrap());
    let expected = stdout.trim();
    // The stream is drained before later requests naming the path; the pod
    // sees every byte once the run is over.
    let in_pod = pod.exec_ok(&["sha256sum", "/srv/app/big.bin"]).unwrap();
    assert_eq!(in_pod.split_whitespace().next(), Some(expected), "{in_pod}");
}

#[test]
fn read_mode_warns_once_when_sqlite_would_write_a_local_copy_of_a_pod_file() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let pod = pod(&sandbox);
    pod.exec_ok(&[
        "sqlite3",
        DB,
        "create table t(x); insert into t values (42);",
    ])
    .unwrap();
    // Read mode (the default): sqlite3 opens the database read-write, which
    // read mode sends to a local path that does not exist here.
    let local_dir = std::path::Path::new("/srv/app");
    let existed = local_dir.exists();
    let out = remora_run(
        &pod,
        &["sqlite3", DB, "select count(*) from sqlite_master;"],
    )
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let warnings = stderr.matches("exists in the target").count();
    assert_eq!(warnings, 1, "one warning expected:\n{stderr}");
    assert!(
        stderr.contains(&format!("remora: {DB} exists in the target"))
            && stderr.contains("--fs-mode write"),
        "{stderr}"
    );
    // The pod's database is untouched.
    assert_eq!(
        pod.exec_ok(&["sqlite3", DB, "select x from t;"]).unwrap(),
        "42\n"
    );
    if !existed {
        let _ = std::fs::remove_dir_all(local_dir);
    }

    // With write mode the same command reads the pod's database, silently.
    let (stdout, stderr) = ok(remora_run_with(
        &pod,
        &["--fs-mode", "write"],
        &["sqlite3", DB, "select x from t;"],
    )
    .unwrap());
    assert_eq!(stdout, "42\n");
    assert!(!stderr.contains("exists in the target"), "{stderr}");
}

/// A pod with a full 64 KiB file system at /srv/small: any write there
/// fails with ENOSPC in the target, after the program's `write` of a few
/// bytes already returned (they sit in the stream's local socket).
fn full_disk_pod(sandbox: &Sandbox) -> remora_tests::Pod {
    let pod = pod(sandbox);
    // In the pod's own mount namespace: gone with the pod.
    pod.exec_ok(&["mkdir", "-p", "/srv/small"]).unwrap();
    pod.exec_ok(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "size=64k",
        "remora-small",
        "/srv/small",
    ])
    .unwrap();
    fill(&pod);
    pod
}

fn fill(pod: &remora_tests::Pod) {
    // cat fails once the file system is full: that is the point.
    pod.exec_ok(&[
        "sh",
        "-c",
        "cat /dev/zero > /srv/small/fill 2>/dev/null; true",
    ])
    .unwrap();
}

#[test]
fn a_failed_remote_write_of_a_stream_reaches_fsync_and_close() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let pod = full_disk_pod(&sandbox);
    // Write-only opens are streams: write() returns once the bytes are in a
    // local socket; the target's ENOSPC must still reach the program.
    let script = r#"
import errno, os
def failure(step):
    try:
        step()
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    return "ok"

fd = os.open("/srv/small/a.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
print("a write", failure(lambda: os.write(fd, b"0123456789")))
print("a fsync", failure(lambda: os.fsync(fd)))
print("a fsync again", failure(lambda: os.fsync(fd)))
# The stream stays failed: its close says so too (and closes the fd).
print("a close", failure(lambda: os.close(fd)))
print("a closed", failure(lambda: os.fstat(fd)))

fd = os.open("/srv/small/b.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
print("b write", failure(lambda: os.write(fd, b"0123456789")))
print("b close", failure(lambda: os.close(fd)))

os.unlink("/srv/small/fill")
f = open("/srv/small/c.txt", "w")
f.write("fits\n")
f.flush()
print("c fsync", failure(lambda: os.fsync(f.fileno())))
print("c close", failure(f.close))
"#;
    let out = remora_run_with(&pod, &["--fs-mode", "write"], &["python3", "-c", script]).unwrap();
    let (stdout, stderr) = ok(out);
    assert_eq!(
        stdout,
        "a write ok\na fsync ENOSPC\na fsync again ENOSPC\na close ENOSPC\na closed EBADF\n\
         b write ok\nb close ENOSPC\n\
         c fsync ok\nc close ok\n",
        "stderr: {stderr}"
    );
    assert_eq!(pod.exec_ok(&["cat", "/srv/small/c.txt"]).unwrap(), "fits\n");

    // A real program writing through stdio into a shell redirect: head's
    // fclose(stdout) reports the target's ENOSPC, and head fails.
    fill(&pod);
    let out = remora_run_with(
        &pod,
        &["--fs-mode", "write"],
        &[
            "sh",
            "-c",
            "head -c 100 /dev/zero > /srv/small/d.bin; echo rc=$?",
        ],
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(stdout, "rc=1\n", "stderr: {stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
}
