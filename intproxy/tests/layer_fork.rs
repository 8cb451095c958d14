//! The layer under threads and `fork`: real multithreaded programs (a C
//! program and python3) forking while their threads make remote calls,
//! `vfork` keeping its meaning, remote calls of different threads proceeding
//! concurrently, the reply timeout, and the fd table never routing a new fd
//! to a stale remote entry. Same world as `layer_suite.rs`: the real layer,
//! an in-process intproxy and a scripted agent.
//!
//! Needs `cargo build -p remora-layer` first (the tests fail without it) and
//! `gcc` for the C program.

#[allow(dead_code)]
mod support;

use remora_config::Config;
use std::path::{Path, PathBuf};
use support::fake_agent::HELD_NAME;
use support::harness::{self, LAYER_TOKEN_ENV};
use support::staging::*;

#[track_caller]
fn assert_no_remora_lines(out: &harness::Finished) {
    assert!(
        out.remora_lines().is_empty(),
        "the layer warned unexpectedly:\n{out}"
    );
}

/// Compile `support/fork_load.c` into `dir` with gcc.
fn fork_load(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/fork_load.c");
    let exe = dir.join("fork_load");
    let out = std::process::Command::new("gcc")
        .args(["-O1", "-Wall", "-pthread", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("running gcc (needed to build {}): {e}", src.display()));
    assert!(
        out.status.success(),
        "gcc failed on {}:\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

// ---------------------------------------------------------------------------
// fork and vfork
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_program_forking_while_its_threads_read_pod_files_never_hangs_a_child() {
    let h = default_harness().await;
    let exe = fork_load(h.workdir());
    let exe = exe.to_str().expect("utf-8 path");
    let out = h
        .run(exe, &[REMOTE_CONFIG, BACKEND, REMOTE_DIR, "25", "4"])
        .await;
    let first = out.stdout.lines().next().unwrap_or_default().to_owned();
    assert_eq!(first, "forks 25 ok 25 hung 0 failed 0", "{out}");
    out.assert_success();
    assert_no_remora_lines(&out);
    // The children's own calls reached the agent (not only the threads').
    assert!(
        h.agent.lookups().len() >= 25,
        "{:?}",
        h.agent.lookups().len()
    );
}

/// CPython itself can hang a forked child when another thread held one of
/// its own locks (a module's import lock) at the fork, with or without
/// remora. So the parent imports everything the children use and its threads
/// have run each call once before the first fork: what remains is the layer.
const PYTHON_FORK_UNDER_LOAD: &str = r#"
import os, sys, socket, threading, time
import encodings.idna
POD_FILE, NAME, POD_DIR = sys.argv[1], sys.argv[2], sys.argv[3]
stop = False
errors = []
rounds = [0]
def work():
    while not stop:
        try:
            with open(POD_FILE) as f:
                f.read()
            socket.getaddrinfo(NAME, 80)
            os.listdir(POD_DIR)
            rounds[0] += 1
        except Exception as e:
            errors.append(repr(e))
threads = [threading.Thread(target=work, daemon=True) for _ in range(8)]
for t in threads:
    t.start()
while rounds[0] < 8 and not errors:
    time.sleep(0.001)
ok = hung = failed = 0
for i in range(20):
    pid = os.fork()
    if pid == 0:
        try:
            with open(POD_FILE) as f:
                data = f.read()
            socket.getaddrinfo(NAME, 80)
            os._exit(0 if data else 3)
        except BaseException:
            os._exit(4)
    deadline = time.monotonic() + 10
    while True:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got == pid:
            if os.waitstatus_to_exitcode(status) == 0:
                ok += 1
            else:
                failed += 1
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            hung += 1
            break
        time.sleep(0.002)
stop = True
for t in threads:
    t.join()
print(f"forks 20 ok {ok} hung {hung} failed {failed}", flush=True)
print("thread errors", errors[:3], flush=True)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_forking_while_threads_read_pod_files_and_resolve_never_hangs_a_child() {
    let h = default_harness().await;
    let out = h
        .run(
            harness::python(),
            &[
                "-c",
                PYTHON_FORK_UNDER_LOAD,
                REMOTE_CONFIG,
                BACKEND,
                REMOTE_DIR,
            ],
        )
        .await;
    out.assert_success();
    assert_eq!(
        out.stdout, "forks 20 ok 20 hung 0 failed 0\nthread errors []\n",
        "{out}"
    );
    assert_no_remora_lines(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vfork_parent_resumes_only_after_the_child_exits_or_execs() {
    let h = default_harness().await;
    let exe = fork_load(h.workdir());
    let out = h.run(exe.to_str().expect("utf-8 path"), &["--vfork"]).await;
    assert_eq!(out.stdout, "vfork waited\nexec child exit 7\n", "{out}");
    out.assert_success();
    assert_no_remora_lines(&out);
}

// ---------------------------------------------------------------------------
// Concurrency and the reply timeout
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_remote_call_does_not_hold_up_other_threads_calls() {
    // The agent answers the lookup of HELD_NAME only after another lookup
    // arrived behind it: with one connection for the whole process (the
    // other thread waiting for it) the program would never finish.
    let h = default_harness().await;
    let out = h
        .python(&format!(
            "import socket, threading\n\
             res = {{}}\n\
             def slow():\n    res['held'] = socket.getaddrinfo('{HELD_NAME}', 80)[0][4][0]\n\
             t = threading.Thread(target=slow)\n\
             t.start()\n\
             n = 0\n\
             while t.is_alive() and n < 100000:\n\
             \x20   assert socket.getaddrinfo('{CHILD_NAME}', 80)[0][4][0] == '{CHILD_IP}'\n\
             \x20   with open('{REMOTE_CONFIG}') as f: f.read()\n\
             \x20   n += 1\n\
             t.join()\n\
             print('held', res.get('held'), 'others done', n > 0)\n"
        ))
        .await;
    out.assert_success();
    assert_eq!(
        out.stdout,
        format!("held {HELD_IP} others done True\n"),
        "{out}"
    );
    let lookups = h.agent.lookups();
    let held_at = lookups
        .iter()
        .position(|l| l == HELD_NAME)
        .expect("held lookup sent");
    assert!(
        lookups[held_at..].iter().any(|l| l == CHILD_NAME),
        "another thread's lookup went through while the held one waited: {lookups:?}"
    );
    assert_no_remora_lines(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_timeout_is_configurable_and_its_error_says_how_to_raise_it() {
    let mut config = Config::default();
    config.layer.reply_timeout_secs = Some(1);
    let h = staging_harness(config).await;
    let out = h
        .python(&format!(
            "import socket\n\
             try:\n\
             \x20   socket.getaddrinfo('{HELD_NAME}', 80)\n\
             \x20   print('answered')\n\
             except OSError as e:\n\
             \x20   print('failed')\n\
             print(socket.getaddrinfo('{CHILD_NAME}', 80)[0][4][0])\n"
        ))
        .await;
    out.assert_success();
    assert_eq!(out.stdout, format!("failed\n{CHILD_IP}\n"), "{out}");
    let lines = out.remora_lines().join("\n");
    for needle in [
        "within 1 s",
        "layer.reply_timeout_secs",
        "REMORA_REPLY_TIMEOUT",
        "--reply-timeout",
    ] {
        assert!(lines.contains(needle), "no {needle:?} in:\n{out}");
    }
}

// ---------------------------------------------------------------------------
// The fd table
// ---------------------------------------------------------------------------

/// Python that opens the remote file, closes the fd behind the layer's back
/// (a raw `close` syscall), then runs `reuse` (which creates an fd of another
/// kind that gets the same number) and prints what `fstat` says it is and
/// what reading it gives. (The pod file is small, so the layer holds it as a
/// snapshot: a stale entry shows in `fstat`, which reports the target's
/// metadata for it, and in reads of bigger, remote-handle files.)
fn stale_fd_program(reuse: &str) -> String {
    format!(
        "import os, ctypes, platform, socket, stat\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         def kind(fd):\n\
         \x20   m = os.fstat(fd).st_mode\n\
         \x20   if stat.S_ISFIFO(m): return 'fifo'\n\
         \x20   if stat.S_ISSOCK(m): return 'sock'\n\
         \x20   return 'reg' if stat.S_ISREG(m) else 'other'\n\
         SYS_close = {{'x86_64': 3, 'aarch64': 57}}[platform.machine()]\n\
         def stale():\n\
         \x20   fd = os.open('{REMOTE_CONFIG}', os.O_RDONLY)\n\
         \x20   assert libc.syscall(SYS_close, fd) == 0\n\
         \x20   return fd\n\
         {reuse}"
    )
}

async fn run_stale(reuse: &str, expected: &str) {
    require_remote_open();
    let h = default_harness().await;
    let out = h.python(&stale_fd_program(reuse)).await;
    out.assert_success();
    assert_eq!(out.stdout, expected, "{out}");
    assert_no_remora_lines(&out);
}

/// Sanity check for the stale-fd tests: a remote open really is remote.
fn require_remote_open() {
    let layer = harness::layer_path();
    assert!(layer.is_file(), "{} missing", layer.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipe_reusing_a_stale_remote_fd_number_reads_the_pipe() {
    run_stale(
        "fd = stale()\n\
         r, w = os.pipe()\n\
         assert r == fd, (r, fd)\n\
         os.write(w, b'from the pipe')\n\
         print(kind(r), os.read(r, 100))\n",
        "fifo b'from the pipe'\n",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketpair_reusing_a_stale_remote_fd_number_reads_the_socket() {
    run_stale(
        "fd = stale()\n\
         a, b = socket.socketpair()\n\
         assert a.fileno() == fd, (a.fileno(), fd)\n\
         b.sendall(b'from the socket')\n\
         print(kind(a.fileno()), os.read(a.fileno(), 100))\n",
        "sock b'from the socket'\n",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventfd_and_memfd_reusing_a_stale_remote_fd_number_are_their_own() {
    run_stale(
        "fd = stale()\n\
         e = os.eventfd(0)\n\
         assert e == fd, (e, fd)\n\
         os.eventfd_write(e, 5)\n\
         print(kind(e), os.eventfd_read(e))\n\
         os.close(e)\n\
         fd = stale()\n\
         m = os.memfd_create('remora-test')\n\
         assert m == fd, (m, fd)\n\
         os.write(m, b'from the memfd')\n\
         os.lseek(m, 0, 0)\n\
         print(kind(m), os.fstat(m).st_size, os.read(m, 100))\n",
        "other 5\nreg 14 b'from the memfd'\n",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_reusing_a_stale_remote_fd_number_reads_the_connection() {
    run_stale(
        "srv = socket.socket(socket.AF_UNIX)\n\
         srv.bind('accept.sock')\n\
         srv.listen()\n\
         c = socket.socket(socket.AF_UNIX)\n\
         c.connect('accept.sock')\n\
         fd = stale()\n\
         conn, _ = srv.accept()\n\
         assert conn.fileno() == fd, (conn.fileno(), fd)\n\
         c.sendall(b'from the peer')\n\
         print(kind(conn.fileno()), os.read(conn.fileno(), 100))\n",
        "sock b'from the peer'\n",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_range_unshare_forgets_the_remote_files_it_closed() {
    run_stale(
        "CLOSE_RANGE_UNSHARE = 2\n\
         fd = os.open('/etc/remora-fake/config.yaml', os.O_RDONLY)\n\
         assert libc.close_range(fd, fd, CLOSE_RANGE_UNSHARE) == 0\n\
         r, w = os.pipe()\n\
         assert r == fd, (r, fd)\n\
         os.write(w, b'from the pipe')\n\
         print(kind(r), os.read(r, 100))\n",
        "fifo b'from the pipe'\n",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_range_cloexec_keeps_the_remote_file_readable() {
    run_stale(
        "CLOSE_RANGE_CLOEXEC = 4\n\
         fd = os.open('/etc/remora-fake/config.yaml', os.O_RDONLY)\n\
         assert libc.close_range(fd, fd, CLOSE_RANGE_CLOEXEC) == 0\n\
         print(os.read(fd, 8))\n",
        "b'database'\n",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_handshake_the_sessions_fd_number_is_the_apps_again() {
    // The layer puts its connection at fd 700. When the intproxy refuses it,
    // the number must not stay "the layer's": dup2 onto it used to fail with
    // EBADF and close of it to be a silent no-op.
    let h = default_harness().await;
    let mut cmd = h.command(
        harness::python(),
        &[
            "-c",
            "import os, socket\n\
             try:\n    socket.getaddrinfo('backend.staging.internal', 80)\n\
             except OSError:\n    pass\n\
             os.dup2(1, 700)\n\
             os.write(700, b'via 700\\n')\n\
             os.close(700)\n\
             try:\n    os.fstat(700)\n    print('700 still open')\n\
             except OSError:\n    print('700 closed')\n",
        ],
    );
    cmd.env(LAYER_TOKEN_ENV, "not-the-token");
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting python3");
    let out = harness::finish("python3 (wrong token)".into(), child).await;
    out.assert_success();
    assert_eq!(out.stdout, "via 700\n700 closed\n", "{out}");
    assert!(
        out.remora_lines().iter().any(|l| l.contains("refused")),
        "the layer said the intproxy refused it:\n{out}"
    );
}
