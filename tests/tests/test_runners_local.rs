//! End-to-end: `remora test` with the test runners of other ecosystems —
//! pytest, `npm test` (node's test runner) and `mvn test` (surefire's forked
//! JVM) — against a sandbox pod with the real layer, intproxy and agent. Each
//! project under `tests/apps/runners/` passes only when it sees the pod's
//! variables and files, and fails without remora.

use remora_tests::fixtures::checkout_pod;
use remora_tests::{Sandbox, bin_path, require_sandbox};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A copy of `tests/apps/runners/NAME` in a temp dir, so runs leave nothing
/// in the source tree (`__pycache__`, Maven's `target/`).
fn project(name: &str) -> (tempfile::TempDir, PathBuf) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("apps/runners")
        .join(name);
    let tmp = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .arg("-r")
        .arg(&src)
        .arg(tmp.path())
        .status()
        .unwrap();
    assert!(status.success(), "copying {}", src.display());
    let dir = tmp.path().join(name);
    (tmp, dir)
}

/// Runs `cmd` in `dir`: under `remora test --target TARGET` when given one.
fn run(target: Option<&str>, dir: &Path, cmd: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut c = match target {
        Some(t) => {
            let mut c = Command::new(bin_path("remora").unwrap());
            c.args(["test", "--target", t, "--"]).args(cmd);
            c
        }
        None => {
            let mut c = Command::new(cmd[0]);
            c.args(&cmd[1..]);
            c
        }
    };
    for (k, v) in env {
        c.env(k, v);
    }
    c.current_dir(dir).stdin(Stdio::null()).output().unwrap()
}

/// Poll until no intproxy or agent serves `target`.
#[track_caller]
fn wait_until_nothing_serves(target: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while remora_tests::procs::any_serving(target) {
        assert!(
            Instant::now() < deadline,
            "an intproxy or agent still serves {target}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The runner passes under `remora test` (its output shows `passed`) and
/// fails without remora, where the pod's variables and files are absent.
#[track_caller]
fn passes_only_in_the_session(name: &str, cmd: &[&str], env: &[(&str, &Path)], passed: &str) {
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let (_tmp, dir) = project(name);
    let target = c.pod.target();
    let out = run(Some(&target), &dir, cmd, env);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{all}");
    assert!(all.contains(passed), "expected {passed:?} in:\n{all}");
    wait_until_nothing_serves(&target);

    let plain = run(None, &dir, cmd, env);
    assert!(
        !plain.status.success(),
        "without remora the test must fail:\n{}{}",
        text(&plain.stdout),
        text(&plain.stderr)
    );
}

#[test]
fn remora_test_runs_pytest_in_the_session() {
    require_sandbox!();
    passes_only_in_the_session(
        "pytest",
        &["pytest-3", "-p", "no:cacheprovider", "-q"],
        &[],
        "2 passed",
    );
}

#[test]
fn remora_test_runs_npm_test_in_the_session() {
    require_sandbox!();
    let home = tempfile::tempdir().unwrap();
    passes_only_in_the_session(
        "npm",
        &["npm", "test", "--silent"],
        // npm writes its cache and logs under HOME.
        &[("HOME", home.path())],
        "# pass 2",
    );
}

#[test]
fn remora_test_runs_mvn_test_in_the_session() {
    require_sandbox!();
    // Plugins and JUnit come from Debian's repository; the local repository
    // is a temp dir so the run touches nothing shared.
    let repo = tempfile::tempdir().unwrap();
    let local = format!("-Dmaven.repo.local={}", repo.path().display());
    passes_only_in_the_session(
        "mvn",
        &["mvn", "-B", "-s", "settings.xml", local.as_str(), "test"],
        &[],
        "Tests run: 2, Failures: 0, Errors: 0",
    );
}
