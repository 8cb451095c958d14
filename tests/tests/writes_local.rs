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
