//! End-to-end: the ways remora runs besides `remora run` — `remora ext` for
//! IDE debuggers (gdb, pdb), `remora test` (a Cargo test suite whose build
//! stays local), `remora ci start|stop` — against sandbox pods with the real
//! layer, intproxy and agent.

use remora_tests::fixtures::{
    CHECKOUT_CONFIG, CHECKOUT_CONFIG_BODY, CHECKOUT_SECRET, checkout_pod,
};
use remora_tests::{Sandbox, bin_path, require_sandbox};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `remora ext --json --target T FLAGS`: the exit status and every JSON line.
fn ext(target: &str, flags: &[&str]) -> (Output, Vec<Value>) {
    let out = Command::new(bin_path("remora").unwrap())
        .args(["ext", "--json", "--target", target])
        .args(flags)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let lines = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    (out, lines)
}

/// The `env` and `unset` of a successful `remora ext`.
fn ready_env(target: &str, flags: &[&str]) -> (BTreeMap<String, String>, Vec<String>) {
    let (out, lines) = ext(target, flags);
    assert!(out.status.success(), "{lines:?}\n{}", text(&out.stderr));
    let last = lines.last().expect("at least one line");
    assert_eq!(last["type"], "ready", "{last}");
    let env = last["env"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let unset = last["unset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    (env, unset)
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

#[test]
fn ext_prints_versioned_json_lines_ending_with_the_env() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let target = c.pod.target();
    let (out, lines) = ext(&target, &["--env-unset", "HOME", "--wait-timeout", "2"]);
    assert!(out.status.success(), "{lines:?}");
    assert!(lines.len() >= 2, "progress, then ready: {lines:?}");
    for line in &lines {
        assert_eq!(line["version"], 1, "{line}");
    }
    for line in &lines[..lines.len() - 1] {
        assert_eq!(line["type"], "progress", "{line}");
        assert!(line["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let ready = lines.last().unwrap();
    assert_eq!(ready["type"], "ready");
    assert_eq!(ready["target"], target.as_str());
    assert_eq!(ready["wait_seconds"], 2);
    let env = ready["env"].as_object().unwrap();
    assert_eq!(env["APP_SECRET"], CHECKOUT_SECRET);
    let layer = bin_path("libremora_layer.so").unwrap();
    assert_eq!(env["LD_PRELOAD"], layer.to_str().unwrap());
    assert_eq!(env["REMORA_INTPROXY_ADDR"], ready["intproxy"]);
    assert!(env["REMORA_LAYER_TOKEN"].as_str().unwrap().len() >= 32);
    assert!(env.contains_key("REMORA_RESOLVED_CONFIG"));
    // Unchanged local variables are not repeated; removed ones are listed.
    assert!(!env.contains_key("PATH"), "{env:?}");
    assert_eq!(ready["unset"], serde_json::json!(["HOME"]));
    // Nobody connects: the session ends by itself after the wait.
    wait_until_nothing_serves(&target);
}

#[test]
fn ext_reports_errors_as_json() {
    require_sandbox!();
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let (out, lines) = ext(&format!("pid/{pid}"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["version"], 1);
    assert_eq!(lines[0]["type"], "error");
    let message = lines[0]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("pid/{pid} not found")),
        "{message}"
    );
    // No target at all: the help says what to do.
    let out = Command::new(bin_path("remora").unwrap())
        .args(["ext", "--json"])
        .env_remove("REMORA_TARGET")
        .output()
        .unwrap();
    let line: Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(line["type"], "error");
    assert!(
        line["help"].as_str().unwrap().contains("--target"),
        "{line}"
    );
}

const DEBUGGEE_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
int main(void) {
    const char *secret = getenv("APP_SECRET");
    printf("secret=%s\n", secret ? secret : "(none)");
    FILE *f = fopen("/etc/checkout/config.yaml", "r");
    char line[256];
    if (f && fgets(line, sizeof line, f)) printf("config=%s", line);
    else printf("config=(unreadable)\n");
    return 0;
}
"#;

#[test]
fn gdb_given_exts_env_debugs_a_program_that_sees_the_pod() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("debuggee.c");
    std::fs::write(&source, DEBUGGEE_C).unwrap();
    let program = dir.path().join("debuggee");
    ok(Command::new("cc")
        .args(["-g", "-O0", "-o"])
        .arg(&program)
        .arg(&source)
        .output()
        .unwrap());
    let (env, unset) = ready_env(&c.pod.target(), &[]);
    // What an IDE's gdb integration does: the debuggee's environment is set
    // in gdb, gdb itself runs without the layer.
    let mut script = String::from("set startup-with-shell off\nset confirm off\n");
    for (name, value) in &env {
        script.push_str(&format!("set environment {name}={value}\n"));
    }
    for name in &unset {
        script.push_str(&format!("unset environment {name}\n"));
    }
    script.push_str("break main\nrun\nprint 6 * 7\ncontinue\n");
    let commands = dir.path().join("commands.gdb");
    std::fs::write(&commands, script).unwrap();
    let out = ok(Command::new("/usr/bin/gdb")
        .args(["-batch", "-nx", "-x"])
        .arg(&commands)
        .arg(&program)
        .stdin(Stdio::null())
        .output()
        .unwrap());
    assert!(out.contains("Breakpoint 1, main"), "{out}");
    assert!(out.contains("$1 = 42"), "{out}");
    assert!(
        out.contains(&format!("secret={CHECKOUT_SECRET}\n")),
        "{out}"
    );
    let first = CHECKOUT_CONFIG_BODY.lines().next().unwrap();
    assert!(out.contains(&format!("config={first}\n")), "{out}");
    // The debuggee has exited: the session ends.
    wait_until_nothing_serves(&c.pod.target());
}

/// A static debuggee: a breakpoint on a function only it has.
const STATIC_DEBUGGEE_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
__attribute__((noinline)) int pod_answer(void) { return 42; }
int main(void) {
    const char *secret = getenv("APP_SECRET");
    printf("secret=%s answer=%d\n", secret ? secret : "(none)", pod_answer());
    FILE *f = fopen("/etc/checkout/config.yaml", "r");
    char line[256];
    if (f && fgets(line, sizeof line, f)) printf("config=%s", line);
    else printf("config=(unreadable)\n");
    return 0;
}
"#;

/// The IDE path for a Go or static program: the debugger starts `remora
/// supervise -- PROGRAM` with ext's env; it becomes the program (same
/// process) under the seccomp supervisor, and gdb, following the exec,
/// stops in the program and sees it read the pod's file.
#[test]
fn gdb_debugs_a_static_program_started_through_remora_supervise_with_exts_env() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("debuggee.c");
    std::fs::write(&source, STATIC_DEBUGGEE_C).unwrap();
    let program = dir.path().join("debuggee");
    ok(Command::new("gcc")
        .args(["-static", "-g", "-O0", "-o"])
        .arg(&program)
        .arg(&source)
        .output()
        .unwrap());
    let (env, unset) = ready_env(&c.pod.target(), &[]);
    let mut script =
        String::from("set startup-with-shell off\nset confirm off\nset breakpoint pending on\n");
    for (name, value) in &env {
        script.push_str(&format!("set environment {name}={value}\n"));
    }
    for name in &unset {
        script.push_str(&format!("unset environment {name}\n"));
    }
    script.push_str("break pod_answer\nrun\nprint 6 * 7\ncontinue\n");
    let commands = dir.path().join("commands.gdb");
    std::fs::write(&commands, script).unwrap();
    let out = Command::new("/usr/bin/gdb")
        .args(["-batch", "-nx", "-x"])
        .arg(&commands)
        .arg("--args")
        .arg(bin_path("remora").unwrap())
        .args(["supervise", "--"])
        .arg(&program)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    let out = ok(out);
    assert!(out.contains("Breakpoint 1, pod_answer"), "{out}\n{stderr}");
    assert!(out.contains("$1 = 42"), "{out}");
    assert!(
        out.contains(&format!("secret={CHECKOUT_SECRET} answer=42\n")),
        "{out}"
    );
    let first = CHECKOUT_CONFIG_BODY.lines().next().unwrap();
    assert!(out.contains(&format!("config={first}\n")), "{out}");
    assert!(
        stderr.contains("runs under the seccomp supervisor"),
        "{stderr}"
    );
    wait_until_nothing_serves(&c.pod.target());
}

const PDB_SCRIPT: &str = r#"
import os
secret = os.environ.get("APP_SECRET")
config = open("/etc/checkout/config.yaml").read().splitlines()[0]
print("script", secret, config)
"#;

#[test]
fn python_pdb_given_exts_env_sees_the_pod() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("app.py");
    std::fs::write(&script, PDB_SCRIPT).unwrap();
    let (env, unset) = ready_env(&c.pod.target(), &[]);
    // An IDE takes a while to start the debuggee: longer than the 2 s an
    // intproxy lingers after its last process. The session must still be
    // there (ext's own session does not count as the first process).
    std::thread::sleep(Duration::from_secs(3));
    let mut pdb = Command::new("python3");
    pdb.args(["-m", "pdb"]).arg(&script).envs(&env);
    for name in &unset {
        pdb.env_remove(name);
    }
    let mut child = pdb
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Stop on line 3, show `secret` once assigned, then run to the end; EOF quits.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"break 4\ncontinue\np secret\ncontinue\n")
        .unwrap();
    let out = ok(child.wait_with_output().unwrap());
    assert!(out.contains(&format!("'{CHECKOUT_SECRET}'")), "{out}");
    let first = CHECKOUT_CONFIG_BODY.lines().next().unwrap();
    assert!(
        out.contains(&format!("script {CHECKOUT_SECRET} {first}")),
        "{out}"
    );
    assert!(!Path::new(CHECKOUT_CONFIG).exists());
    wait_until_nothing_serves(&c.pod.target());
}

#[test]
fn remora_test_gives_the_layer_to_test_binaries_only() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("apps/remora-test-app");
    let target_dir = tempfile::tempdir().unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = ok(Command::new(bin_path("remora").unwrap())
        .args(["test", "--target", &c.pod.target(), "--"])
        .args([cargo.as_str(), "test", "--offline", "--", "--nocapture"])
        .current_dir(&app)
        .env("CARGO_TARGET_DIR", target_dir.path())
        .env("REMORA_STATE_DIR", state_dir.path())
        .env("POD_FILE", CHECKOUT_CONFIG)
        .stdin(Stdio::null())
        .output()
        .unwrap());
    let report = out
        .lines()
        .find(|l| l.starts_with("REPORT "))
        .unwrap_or_else(|| panic!("no report line in:\n{out}"));
    let first = CHECKOUT_CONFIG_BODY.lines().next().unwrap();
    assert_eq!(
        report,
        format!(
            "REPORT rustc_had_layer=false rustc_saw_pod_file=false build_script_had_layer=false \
             build_script_saw_pod_file=false test_has_layer=true first_line={first}"
        )
    );
    // The session file is gone, and so is the session.
    assert_eq!(std::fs::read_dir(state_dir.path()).unwrap().count(), 0);
    wait_until_nothing_serves(&c.pod.target());

    // docs/ide.md's `.cargo/config.toml` runner (`remora run` per test binary).
    let rustc = ok(Command::new("rustc").arg("-vV").output().unwrap());
    let host = rustc
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .unwrap();
    let remora = bin_path("remora").unwrap();
    let runner = format!(
        "target.{host}.runner=[{:?}, \"run\", \"--target\", {:?}, \"--\"]",
        remora.to_str().unwrap(),
        c.pod.target()
    );
    let out = ok(Command::new(&cargo)
        .args([
            "test",
            "--offline",
            "--config",
            &runner,
            "--",
            "--nocapture",
        ])
        .current_dir(&app)
        .env("CARGO_TARGET_DIR", target_dir.path())
        .env("POD_FILE", CHECKOUT_CONFIG)
        .stdin(Stdio::null())
        .output()
        .unwrap());
    let report = out.lines().find(|l| l.starts_with("REPORT ")).unwrap();
    assert!(
        report.ends_with(&format!(" test_has_layer=true first_line={first}")),
        "{report}"
    );
    wait_until_nothing_serves(&c.pod.target());
}

/// A port free on this machine right now, for an app to listen on a moment
/// later. Taken below the kernel's ephemeral range (32768-60999 by
/// default): a port the kernel handed out could meanwhile become the source
/// port of another test's connection, and the app's bind would fail.
fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let base = 30000 + (std::process::id() % 1000) as u16 * 2;
    loop {
        let port = base + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 700;
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
}

#[test]
fn ci_start_returns_once_the_app_listens_and_stop_leaves_nothing() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    let remora = bin_path("remora").unwrap();
    let port = free_port().to_string();
    // The app serves a directory only the pod has.
    let out = ok(Command::new(&remora)
        .args([
            "ci",
            "start",
            "--name",
            "web",
            "--target",
            &c.pod.target(),
            "--",
        ])
        .args(["python3", "-m", "http.server", "--bind", "127.0.0.1"])
        .args(["--directory", "/srv/checkout/www", &port])
        .env("REMORA_STATE_DIR", state_dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap());
    assert!(
        out.contains("web is up") && out.contains(&format!("127.0.0.1:{port}")),
        "{out}"
    );
    // Ready means ready: the first request is answered, with the pod's file.
    let url = format!("http://127.0.0.1:{port}/");
    assert_eq!(
        remora_tests::fixtures::curl(&url, None),
        "hello from the checkout pod\n"
    );
    let out = ok(Command::new(&remora)
        .args(["ci", "stop", "--name", "web"])
        .env("REMORA_STATE_DIR", state_dir.path())
        .output()
        .unwrap());
    assert!(out.contains("web stopped"), "{out}");
    assert_eq!(remora_tests::fixtures::curl(&url, None), "");
    assert_eq!(std::fs::read_dir(state_dir.path()).unwrap().count(), 0);
    wait_until_nothing_serves(&c.pod.target());
    // Stopping again says there is nothing to stop.
    let out = Command::new(&remora)
        .args(["ci", "stop", "--name", "web"])
        .env("REMORA_STATE_DIR", state_dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no app named"),
        "{}",
        text(&out.stderr)
    );
}

/// A Go app under `ci start` runs under the seccomp supervisor, which
/// outlives `ci start` with the app, and serves a file only the pod has;
/// `ci stop` ends both.
#[test]
fn ci_start_of_a_go_app_serves_the_pods_file_under_the_supervisor() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    let remora = bin_path("remora").unwrap();
    let build = tempfile::tempdir().unwrap();
    let probe = build.path().join("seccomp-probe");
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&probe)
        .arg(".")
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("apps/go/seccomp-probe"))
        // Go's build cache is shared with seccomp_local's builds under target/.
        .env(
            "GOCACHE",
            remora_tests::bins::profile_dir()
                .unwrap_or_else(std::env::temp_dir)
                .join("go-cache"),
        )
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off")
        .env("CGO_ENABLED", "0")
        .status()
        .unwrap();
    assert!(status.success(), "go build failed");
    let port = free_port().to_string();
    let bind = format!("127.0.0.1:{port}");
    let out = ok(Command::new(&remora)
        .args(["ci", "start", "--name", "go-web"])
        .args(["--target", &c.pod.target(), "--"])
        .arg(&probe)
        .args(["serve-file", &bind, "/srv/checkout/www/health"])
        .env("REMORA_STATE_DIR", state_dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap());
    assert!(out.contains("go-web is up"), "{out}");
    let url = format!("http://{bind}/");
    assert_eq!(remora_tests::fixtures::curl(&url, None), "ok\n");
    let log = std::fs::read_dir(state_dir.path())
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .unwrap_or_default();
    assert!(log.contains("runs under the seccomp supervisor"), "{log}");
    let out = ok(Command::new(&remora)
        .args(["ci", "stop", "--name", "go-web"])
        .env("REMORA_STATE_DIR", state_dir.path())
        .output()
        .unwrap());
    assert!(out.contains("go-web stopped"), "{out}");
    assert_eq!(remora_tests::fixtures::curl(&url, None), "");
    wait_until_nothing_serves(&c.pod.target());
}

#[test]
fn ci_start_of_an_app_that_dies_fails_with_its_log() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    let script = format!("echo \"starting with $APP_SECRET\"; cat {CHECKOUT_CONFIG} >&2; exit 3");
    let out = Command::new(bin_path("remora").unwrap())
        .args(["ci", "start", "--target", &c.pod.target(), "--"])
        .args(["sh", "-c", &script])
        .env("REMORA_STATE_DIR", state_dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("exited"), "{stderr}");
    assert!(
        stderr.contains(&format!("starting with {CHECKOUT_SECRET}")),
        "{stderr}"
    );
    assert!(stderr.contains("new_checkout: true"), "{stderr}");
    assert_eq!(std::fs::read_dir(state_dir.path()).unwrap().count(), 0);
    wait_until_nothing_serves(&c.pod.target());
}

#[test]
fn remora_test_runs_go_test_binaries_in_the_session() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("apps/remora-go-test");
    let cache = tempfile::tempdir().unwrap();
    let out = ok(Command::new(bin_path("remora").unwrap())
        .args(["test", "--target", &c.pod.target(), "--"])
        .args(["go", "test", "-v", "-count=1", "."])
        .current_dir(&app)
        .env("GOCACHE", cache.path().join("build"))
        .env("GOPATH", cache.path().join("path"))
        .env("GOFLAGS", "-modcacherw")
        .stdin(Stdio::null())
        .output()
        .unwrap());
    // The runner started the Go test binary under the seccomp supervisor:
    // it read the pod's file (which pure Go cannot do with the layer), and
    // had no layer.
    assert!(
        out.contains(&format!(
            "REPORT secret={CHECKOUT_SECRET} config=feature_flags: layer_preloaded=false\n"
        )),
        "{out}"
    );
    // Without remora the same test fails: the variable is the pod's.
    let plain = Command::new("go")
        .args(["test", "-count=1", "."])
        .current_dir(&app)
        .env("GOCACHE", cache.path().join("build"))
        .env("GOPATH", cache.path().join("path"))
        .output()
        .unwrap();
    assert!(!plain.status.success());
    wait_until_nothing_serves(&c.pod.target());
}

/// A static test program run whole (`remora test -- busybox sh -c ...`):
/// under the seccomp supervisor, the shell and its `cat` see the pod's file.
#[test]
fn remora_test_runs_a_static_test_program_under_the_supervisor() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let check =
        "test \"$(cat /etc/checkout/config.yaml | head -n 1)\" = feature_flags: && echo passed";
    let out = Command::new(bin_path("remora").unwrap())
        .args(["test", "--target", &c.pod.target(), "--"])
        .args(["/bin/busybox", "sh", "-c", check])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(ok(out), "passed\n");
    assert!(
        stderr.contains("runs under the seccomp supervisor"),
        "{stderr}"
    );
    wait_until_nothing_serves(&c.pod.target());
}

/// A dynamically linked test command (`sh`, with the layer) that starts a
/// static program: the layer hands it to `remora supervise`, so it sees the
/// pod's file too.
#[test]
fn remora_test_hands_static_programs_a_dynamic_command_starts_to_the_supervisor() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let check = "test \"$(/bin/busybox head -n 1 /etc/checkout/config.yaml)\" = feature_flags: \
                 && echo passed";
    let out = Command::new(bin_path("remora").unwrap())
        .args(["test", "--target", &c.pod.target(), "--"])
        .args(["sh", "-c", check])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(ok(out), "passed\n");
    assert!(
        stderr.contains("started by a program with the LD_PRELOAD layer"),
        "{stderr}"
    );
    wait_until_nothing_serves(&c.pod.target());
}

const PY_TEST: &str = r#"
import os, unittest

class PodTest(unittest.TestCase):
    def test_reads_the_pods_env_and_files(self):
        self.assertEqual(os.environ["APP_SECRET"], "s3cr3t-from-the-pod")
        with open("/etc/checkout/config.yaml") as f:
            self.assertEqual(f.readline(), "feature_flags:\n")
"#;

#[test]
fn remora_test_runs_an_interpreters_test_command_whole_in_the_session() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("test_pod.py"), PY_TEST).unwrap();
    let out = Command::new(bin_path("remora").unwrap())
        .args(["test", "--target", &c.pod.target(), "--"])
        .args(["python3", "-m", "unittest", "-v", "test_pod"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("Ran 1 test") && stderr.contains("OK"),
        "{stderr}"
    );
    // The test command's exit status is remora test's.
    let failing = Command::new(bin_path("remora").unwrap())
        .args(["test", "--target", &c.pod.target(), "--"])
        .args(["python3", "-c", "import sys; sys.exit(5)"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(failing.status.code(), Some(5));
    wait_until_nothing_serves(&c.pod.target());
}

#[test]
fn ls_lists_a_sandbox_pod_first_with_its_address() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let out = ok(Command::new(bin_path("remora").unwrap())
        .args(["ls", "--json"])
        .output()
        .unwrap());
    let list: Vec<Value> = serde_json::from_str(&out).unwrap();
    let pod = list
        .iter()
        .find(|t| t["target"] == c.pod.target().as_str())
        .unwrap_or_else(|| panic!("{} not in {out}", c.pod.target()));
    assert_eq!(pod["platform"], "local");
    assert_eq!(pod["details"]["sandboxed"], true);
    assert_eq!(
        pod["details"]["addresses"],
        serde_json::json!([c.pod.ip().to_string()])
    );
    // Sandboxed processes come before the others.
    let first_plain = list
        .iter()
        .position(|t| t["details"]["sandboxed"] == false)
        .unwrap_or(list.len());
    let pod_at = list.iter().position(|t| t == pod).unwrap();
    assert!(pod_at < first_plain, "{out}");
}

#[test]
fn remora_test_interrupted_ends_the_command_and_leaves_no_session_file() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    // A stand-in `cargo` that says it started, then waits.
    let bin = tempfile::tempdir().unwrap();
    let fake_cargo = bin.path().join("cargo");
    std::fs::write(&fake_cargo, "#!/bin/sh\necho started\nexec sleep 60\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake_cargo, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut child = Command::new(bin_path("remora").unwrap())
        .args(["test", "--target", &c.pod.target(), "--"])
        .arg(&fake_cargo)
        .arg("test")
        .env("REMORA_STATE_DIR", state_dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line, "started\n");
    assert_eq!(std::fs::read_dir(state_dir.path()).unwrap().count(), 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 15), "the command died of SIGTERM");
    assert_eq!(std::fs::read_dir(state_dir.path()).unwrap().count(), 0);
    wait_until_nothing_serves(&c.pod.target());
}

#[test]
fn ci_start_gives_up_on_a_port_that_never_opens_and_stops_the_app() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let marker = tempfile::NamedTempFile::new().unwrap();
    // The app writes its pid, says hello, and never listens.
    let script = format!(
        "echo $$ > {}; echo waiting forever; exec sleep 600",
        marker.path().display()
    );
    let out = Command::new(bin_path("remora").unwrap())
        .args(["ci", "start", "--target", &c.pod.target()])
        .args(["--wait-port", &port, "--timeout", "2", "--"])
        .args(["sh", "-c", &script])
        .env("REMORA_STATE_DIR", state_dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("port {port} did not accept connections within 2s")),
        "{stderr}"
    );
    assert!(stderr.contains("waiting forever"), "{stderr}");
    let pid: i32 = std::fs::read_to_string(marker.path())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the app (pid {pid}) was stopped"
    );
    assert_eq!(std::fs::read_dir(state_dir.path()).unwrap().count(), 0);
    wait_until_nothing_serves(&c.pod.target());
}

/// The VS Code extension's own code (compiled from `ide/vscode/src`) against
/// the real `remora ext`: it parses the real JSON, merges the env into a
/// debugpy launch configuration, and a Python started with that
/// configuration's env sees the pod.
const EXTENSION_DRIVER: &str = r#"
const { prepareSession, mergeEnv } = require(process.argv[1]);
const { execFileSync } = require("child_process");
(async () => {
  const progress = [];
  const ready = await prepareSession(
    { remora: process.env.REMORA_BIN, target: process.env.TARGET, waitTimeout: 30, program: "vscode-e2e" },
    (m) => progress.push(m),
  );
  const config = mergeEnv({ type: "debugpy", request: "launch", env: { MINE: "1" } }, ready);
  const env = { ...process.env, ...config.env };
  const out = execFileSync("python3", ["-c",
    "import os; print(os.environ['APP_SECRET'], os.environ['MINE'], open('/etc/checkout/config.yaml').readline().strip())"],
    { env });
  console.log("progress", progress.length > 0);
  console.log("debuggee", out.toString().trim());
})().catch((e) => { console.error("failed:", e.display ? e.display() : e); process.exit(1); });
"#;

#[test]
fn the_vscode_extensions_code_drives_the_real_remora_ext() {
    require_sandbox!();
    let vscode = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ide/vscode");
    assert!(
        vscode.join("node_modules/.bin/tsc").exists(),
        "run ./scripts/setup.sh (npm ci in ide/vscode) first"
    );
    // `npm test` (scripts/test.sh) usually compiled it already.
    let module = vscode.join("out/src/remora.js");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&module) < modified(&vscode.join("src/remora.ts")) {
        ok(Command::new(vscode.join("node_modules/.bin/tsc"))
            .args(["-p", "."])
            .current_dir(&vscode)
            .output()
            .unwrap());
    }
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let out = ok(Command::new("node")
        .args(["-e", EXTENSION_DRIVER])
        .arg(&module)
        .env("REMORA_BIN", bin_path("remora").unwrap())
        .env("TARGET", c.pod.target())
        .stdin(Stdio::null())
        .output()
        .unwrap());
    let first = CHECKOUT_CONFIG_BODY.lines().next().unwrap();
    assert_eq!(
        out,
        format!("progress true\ndebuggee {CHECKOUT_SECRET} 1 {first}\n")
    );
    wait_until_nothing_serves(&c.pod.target());
}

#[test]
fn ext_through_the_operator_prepares_a_shared_session() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let op = remora_tests::operator::OperatorProcess::start(None).unwrap();
    let out = op
        .remora("alice")
        .unwrap()
        .args(["ext", "--json", "--target", &c.pod.target()])
        .args(["--program", "Launch checkout"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stdout));
    let ready: Value = serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(ready["type"], "ready");
    // The prepared session is the operator's, under the user's name.
    let list = op
        .remora("alice")
        .unwrap()
        .args(["session", "ls", "--json"])
        .output()
        .unwrap();
    let sessions: Value = serde_json::from_slice(&list.stdout).unwrap();
    let listed = sessions.to_string();
    assert_eq!(sessions.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(sessions[0]["user"], "alice", "{listed}");
    assert_eq!(sessions[0]["target"], c.pod.target().as_str(), "{listed}");
    let env: BTreeMap<String, String> = ready["env"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let got = ok(Command::new("python3")
        .args(["-c", "import os; print(os.environ['APP_SECRET'], open('/etc/checkout/config.yaml').readline().strip())"])
        .envs(&env)
        .output()
        .unwrap());
    let first = CHECKOUT_CONFIG_BODY.lines().next().unwrap();
    assert_eq!(got, format!("{CHECKOUT_SECRET} {first}\n"));
    // The debuggee has left: the session ends at the operator too.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = op
            .remora("alice")
            .unwrap()
            .args(["session", "ls", "--json"])
            .output()
            .unwrap();
        if serde_json::from_slice::<Value>(&list.stdout).unwrap() == serde_json::json!([]) {
            break;
        }
        assert!(Instant::now() < deadline, "the session never ended");
        std::thread::sleep(Duration::from_millis(100));
    }
}
