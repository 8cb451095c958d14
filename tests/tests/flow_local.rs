//! End-to-end: per-stream flow control through the real layer, intproxy and
//! agent. A python3 program under `remora run` talks to python3 servers in a
//! sandbox pod over the pod's loopback: one stream is held (the app does not
//! read it, or the pod's peer does not read it) while another stream works;
//! and a soak run moves a large stream beside 10,000 small exchanges. The
//! same for stolen HTTP requests: a local app under a filtered steal that
//! does not read one request's body, a peer that does not read one answer,
//! and busy requests beside them.

use remora_tests::procs::{peak_rss_kib, serving};
use remora_tests::{Pod, PodProcess, PodSpec, Sandbox, bin_path, fixtures, require_sandbox};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The pod's servers (python3, one thread per connection):
/// * 7001 source: reads `N\n`, sends N bytes of the pattern, closes;
///   reports how much it has sent so far to the control port.
/// * 7002 gated sink: reads nothing until the control port says `go`, then
///   reads to the end, checks the pattern and answers `ok N` or `bad ...`.
/// * 7003 control: `go\n` opens the gate; `sent\n` answers the source's count.
/// * 7004 echo: echoes until the peer half-closes.
const POD_SERVERS: &str = r#"
import socket, threading
PATTERN = bytes(i % 251 for i in range(251 * 4200))
gate = threading.Event()
sent = [0]
def serve(port, handler):
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port)); ls.listen(64)
    def loop():
        while True:
            c, _ = ls.accept()
            threading.Thread(target=handler, args=(c,), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()
def line(c):
    b = b""
    while not b.endswith(b"\n"):
        x = c.recv(1)
        if not x: break
        b += x
    return b.strip()
def source(c):
    n = line(c); p = 0
    if not n: return c.close()   # a readiness probe
    n = int(n)
    while p < n:
        k = min(1 << 20, n - p); o = p % 251
        c.sendall(PATTERN[o:o + k]); p += k; sent[0] = p
    c.close()
def sink(c):
    gate.wait(); p = 0; bad = None
    while True:
        b = c.recv(1 << 20)
        if not b: break
        o = p % 251
        if bad is None and b != PATTERN[o:o + len(b)]: bad = p
        p += len(b)
    c.sendall((b"ok %d\n" % p) if bad is None else (b"bad at %d\n" % bad)); c.close()
def control(c):
    while True:
        cmd = line(c)
        if not cmd: break
        if cmd == b"go": gate.set(); c.sendall(b"ok\n")
        elif cmd == b"sent": c.sendall(b"%d\n" % sent[0])
def echo(c):
    while True:
        b = c.recv(1 << 16)
        if not b: break
        c.sendall(b)
    c.close()
for port, h in ((7001, source), (7002, sink), (7003, control), (7004, echo)):
    serve(port, h)
threading.Event().wait()
"#;

/// Shared by both programs: the pattern and an exact read.
const CLIENT_COMMON: &str = r#"
import socket, sys, threading
PATTERN = bytes(i % 251 for i in range(251 * 4200))
H = "127.0.0.1"
def conn(port):
    return socket.create_connection((H, port), timeout=300)
def exact(s, n):
    b = bytearray()
    while len(b) < n:
        x = s.recv(n - len(b))
        if not x: raise SystemExit("stream ended after %d of %d bytes" % (len(b), n))
        b += x
    return bytes(b)
def line(s):
    b = b""
    while not b.endswith(b"\n"):
        x = s.recv(1)
        if not x: break
        b += x
    return b.strip().decode()
def check_download(s, size):
    p = 0
    while True:
        b = s.recv(1 << 20)
        if not b: break
        o = p % 251
        if b != PATTERN[o:o + len(b)]: raise SystemExit("download out of order at %d" % p)
        p += len(b)
    if p != size: raise SystemExit("download got %d of %d bytes" % (p, size))
def upload(s, size):
    p = 0
    while p < size:
        k = min(1 << 20, size - p); o = p % 251
        s.sendall(PATTERN[o:o + k]); p += k
    s.shutdown(socket.SHUT_WR)
"#;

/// One download and one upload held while a busy echo stream moves
/// `BUSY` x 64 KiB each way; then the held streams deliver every byte.
const HELD_AND_BUSY: &str = r#"
SIZE, BUSY = int(sys.argv[1]), int(sys.argv[2])
down = conn(7001); down.sendall(b"%d\n" % SIZE)   # not read until the end
up = conn(7002)                                   # the pod reads it only after "go"
uploader = threading.Thread(target=upload, args=(up, SIZE)); uploader.start()
ctl = conn(7003)
busy = conn(7004)
for i in range(BUSY):
    msg = bytes([i % 256]) * 65536
    busy.sendall(msg)
    if exact(busy, len(msg)) != msg: raise SystemExit("echo %d differs" % i)
busy.close()
ctl.sendall(b"sent\n"); held = int(line(ctl))
print("busy done; the pod's source had sent %d of %d bytes; upload running: %s"
      % (held, SIZE, uploader.is_alive()), flush=True)
if held >= SIZE: raise SystemExit("the download was not held")
if not uploader.is_alive(): raise SystemExit("the upload was not held")
ctl.sendall(b"go\n"); assert line(ctl) == "ok"
check_download(down, SIZE)
uploader.join()
verdict = line(up)
if verdict != "ok %d" % SIZE: raise SystemExit("upload: " + verdict)
print("PASS", flush=True)
"#;

/// A large download beside `EXCHANGES` small request/response exchanges
/// on 4 other threads (a new connection every 250 exchanges).
const SOAK: &str = r#"
SIZE, EXCHANGES = int(sys.argv[1]), int(sys.argv[2])
errors = []
def big():
    try:
        s = conn(7001); s.sendall(b"%d\n" % SIZE); check_download(s, SIZE)
    except BaseException as e: errors.append("download: %r" % e)
done = [0] * 4
def small(t):
    try:
        s = None
        for i in range(EXCHANGES // 4):
            if i % 250 == 0:
                if s: s.close()
                s = conn(7004)
            msg = (b"%d:%d:" % (t, i)).ljust(100, b".")
            s.sendall(msg)
            if exact(s, 100) != msg: raise SystemExit("exchange %d/%d differs" % (t, i))
            done[t] += 1
        s.close()
    except BaseException as e: errors.append("exchanges %d: %r" % (t, e))
threads = [threading.Thread(target=big)] + [threading.Thread(target=small, args=(t,)) for t in range(4)]
for t in threads: t.start()
for t in threads: t.join()
if errors: raise SystemExit("; ".join(errors))
print("PASS %d bytes, %d exchanges" % (SIZE, sum(done)), flush=True)
"#;

/// How long one program may run before the test gives up on it (a hang
/// is what a link held by one stream looks like).
const DEADLINE: Duration = Duration::from_secs(300);

/// What the soak run moves through its big stream (`REMORA_SOAK_BYTES` sets
/// another size).
const SOAK_BYTES: u64 = 2 * 1024 * 1024 * 1024;
const SOAK_EXCHANGES: u32 = 10_000;

/// Peak resident memory each of the intproxy and the agent may reach in the
/// soak run: the windows bound what they hold to well under this.
const RSS_BOUND_KIB: u64 = 64 * 1024;

/// Memory peaks of one run's intproxy and agent, sampled while it runs.
#[derive(Debug, Default)]
struct Peaks {
    intproxy: Option<(u32, u64)>,
    agent: Option<(u32, u64)>,
}

impl Peaks {
    fn sample(&mut self, target: &str) {
        for (comm, slot) in [
            ("remora", &mut self.intproxy),
            ("remora-agent", &mut self.agent),
        ] {
            let pid = slot
                .map(|(pid, _)| pid)
                .or_else(|| serving(target, comm).first().copied());
            if let Some(pid) = pid
                && let Some(kib) = peak_rss_kib(pid)
            {
                *slot = Some((pid, kib));
            }
        }
    }
}

/// `remora run --target <pod> -- python3 -c <program> args...`, killed at
/// the deadline; its output and the memory peaks seen meanwhile.
fn run_python(target: &str, program: &str, args: &[String]) -> (Output, Peaks) {
    let remora = bin_path("remora").unwrap();
    let mut command = Command::new(&remora);
    command
        .args(["run", "--target", target, "--", "python3", "-c", program])
        .args(args);
    run_sampled(command, target)
}

/// Run `command` to its end, killed at the deadline; its output and the
/// memory peaks of `target`'s intproxy and agent seen meanwhile.
fn run_sampled(mut command: Command, target: &str) -> (Output, Peaks) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut peaks = Peaks::default();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        peaks.sample(target);
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the program did not finish within {DEADLINE:?} (a stream held the others?)\n\
                 stdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    peaks.sample(target);
    (child.wait_with_output().unwrap(), peaks)
}

/// A pod running [`POD_SERVERS`] (killed when the process handle drops).
fn pod_with_servers(sandbox: &Sandbox) -> (Pod, PodProcess) {
    let pod = sandbox.pod(PodSpec::new("flow")).unwrap();
    let servers = pod.spawn(&["python3", "-c", POD_SERVERS]).unwrap();
    for port in [7001, 7002, 7003, 7004] {
        pod.wait_for_tcp(port, Duration::from_secs(20)).unwrap();
    }
    (pod, servers)
}

#[track_caller]
fn passed(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains("PASS"),
        "program failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn a_held_stream_does_not_hold_a_busy_one_and_loses_nothing() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _servers) = pod_with_servers(&sandbox);
    // Far more than the windows and every socket buffer on the way hold.
    let size = 64 * 1024 * 1024;
    let program = format!("{CLIENT_COMMON}{HELD_AND_BUSY}");
    let (out, _) = run_python(&pod.target(), &program, &[size.to_string(), "256".into()]);
    let stdout = passed(&out);
    assert!(stdout.contains("busy done"), "{stdout}");
}

#[test]
fn soak_one_large_stream_beside_ten_thousand_exchanges_in_bounded_memory() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _servers) = pod_with_servers(&sandbox);
    let size = std::env::var("REMORA_SOAK_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SOAK_BYTES);
    let program = format!("{CLIENT_COMMON}{SOAK}");
    let args = [size.to_string(), SOAK_EXCHANGES.to_string()];
    let (out, peaks) = run_python(&pod.target(), &program, &args);
    let stdout = passed(&out);
    assert!(
        stdout.contains(&format!("PASS {size} bytes, {SOAK_EXCHANGES} exchanges")),
        "{stdout}"
    );
    eprintln!("memory peaks (pid, KiB): {peaks:?}");
    let (Some((_, intproxy)), Some((_, agent))) = (peaks.intproxy, peaks.agent) else {
        panic!("the run's intproxy and agent were not found: {peaks:?}");
    };
    assert!(
        intproxy < RSS_BOUND_KIB && agent < RSS_BOUND_KIB,
        "peak RSS over {RSS_BOUND_KIB} KiB: intproxy {intproxy} KiB, agent {agent} KiB"
    );
}

// ---------------------------------------------------------------------------
// Stolen HTTP requests: per-request credit for their bodies (protocol v4)
// ---------------------------------------------------------------------------

/// The pod's port stolen for alice's requests.
const HTTP_POD_PORT: u16 = 18097;
/// The local app's port (on this machine's loopback: unique among tests).
const HTTP_LOCAL_PORT: u16 = 18231;

/// The local app (HTTP/1.1 keep-alive, a thread per connection):
/// * `GET /big/N`: N bytes of the pattern; `GET /sent` how many it wrote;
/// * `POST /upload`: reads nothing until `GET /go`, then checks the body
///   and answers `ok N` or `bad at P`;
/// * `POST /echo`: the body back; anything else: `laptop`.
const HTTP_APP: &str = r#"
import http.server, sys, threading
PATTERN = bytes(i % 251 for i in range(251 * 4200))
gate = threading.Event()
sent = [0]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args): pass
    def reply(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path.startswith("/big/"):
            n = int(self.path[5:]); p = 0
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            while p < n:
                k = min(1 << 20, n - p); o = p % 251
                self.wfile.write(PATTERN[o:o + k]); p += k; sent[0] = p
        elif self.path == "/sent": self.reply(b"%d" % sent[0])
        elif self.path == "/go": gate.set(); self.reply(b"ok")
        else: self.reply(b"laptop")
    def do_POST(self):
        n = int(self.headers["Content-Length"])
        if self.path != "/upload":
            return self.reply(self.rfile.read(n))
        gate.wait(); p = 0; bad = None
        while p < n:
            b = self.rfile.read(min(1 << 20, n - p))
            if not b: break
            o = p % 251
            if bad is None and b != PATTERN[o:o + len(b)]: bad = p
            p += len(b)
        self.reply((b"ok %d" % p) if bad is None else (b"bad at %d" % bad))
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

/// From this machine to the pod's stolen port, all of it alice's: one
/// download not read and one upload the app does not read, both held while
/// `BUSY` 64 KiB echo requests go back and forth on a third connection;
/// then both deliver every byte.
const HTTP_HELD_AND_BUSY: &str = r#"
import http.client, sys, threading
PATTERN = bytes(i % 251 for i in range(251 * 4200))
HOST, PORT, APP = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
SIZE, BUSY = int(sys.argv[4]), int(sys.argv[5])
ALICE = {"x-user": "alice"}
def connection(): return http.client.HTTPConnection(HOST, PORT, timeout=300)
def control(path):
    c = http.client.HTTPConnection("127.0.0.1", APP, timeout=300)
    c.request("GET", path); body = c.getresponse().read().decode(); c.close()
    return body
down = connection(); down.request("GET", "/big/%d" % SIZE, headers=ALICE)   # read at the end
def pattern():
    p = 0
    while p < SIZE:
        k = min(1 << 20, SIZE - p); o = p % 251
        yield PATTERN[o:o + k]; p += k
result = {}
def upload():
    try:
        up = connection()
        up.request("POST", "/upload", body=pattern(), headers=dict(ALICE, **{"Content-Length": str(SIZE)}))
        result["up"] = up.getresponse().read().decode()
    except BaseException as e: result["up"] = repr(e)
uploader = threading.Thread(target=upload); uploader.start()
busy = connection()
for i in range(BUSY):
    msg = bytes([i % 256]) * 65536
    busy.request("POST", "/echo", body=msg, headers=ALICE)
    if busy.getresponse().read() != msg: raise SystemExit("echo %d differs" % i)
held = int(control("/sent"))
print("busy done; the app had written %d of %d bytes; upload running: %s"
      % (held, SIZE, uploader.is_alive()), flush=True)
if held >= SIZE: raise SystemExit("the download was not held")
if not uploader.is_alive(): raise SystemExit("the upload was not held")
control("/go")
answer = down.getresponse(); p = 0
while True:
    b = answer.read(1 << 20)
    if not b: break
    o = p % 251
    if b != PATTERN[o:o + len(b)]: raise SystemExit("download out of order at %d" % p)
    p += len(b)
if p != SIZE: raise SystemExit("download got %d of %d bytes" % (p, SIZE))
uploader.join()
if result.get("up") != "ok %d" % SIZE: raise SystemExit("upload: %r" % result.get("up"))
print("PASS", flush=True)
"#;

/// Kills the `remora run` child (and so the local app it became) on drop.
struct Run(std::process::Child);

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_held_http_request_does_not_hold_busy_ones_and_loses_nothing() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let pod = sandbox.pod(PodSpec::new("flow-http")).unwrap();
    let target = pod.target();
    let mapping = format!("{HTTP_LOCAL_PORT}:{HTTP_POD_PORT}");
    let app = Command::new(bin_path("remora").unwrap())
        .args(["run", "--target", &target, "-p", &mapping, "--steal"])
        .args(["--http-header-filter", "^x-user: alice$"])
        .args([
            "--",
            "python3",
            "-c",
            HTTP_APP,
            &HTTP_LOCAL_PORT.to_string(),
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _app = Run(app);
    let url = format!("http://{}:{HTTP_POD_PORT}/", pod.ip());
    fixtures::wait_for("alice's requests to reach the laptop", DEADLINE, || {
        fixtures::curl(&url, Some("x-user: alice")) == "laptop"
    });
    // Far more than the windows and every socket buffer on the way hold.
    let size = 64 * 1024 * 1024;
    let mut client = Command::new("python3");
    client.args(["-c", HTTP_HELD_AND_BUSY]).args([
        pod.ip().to_string(),
        HTTP_POD_PORT.to_string(),
        HTTP_LOCAL_PORT.to_string(),
        size.to_string(),
        "256".into(),
    ]);
    let (out, peaks) = run_sampled(client, &target);
    let stdout = passed(&out);
    assert!(stdout.contains("busy done"), "{stdout}");
    eprintln!("memory peaks (pid, KiB): {peaks:?}");
    let (Some((_, intproxy)), Some((_, agent))) = (peaks.intproxy, peaks.agent) else {
        panic!("the run's intproxy and agent were not found: {peaks:?}");
    };
    assert!(
        intproxy < RSS_BOUND_KIB && agent < RSS_BOUND_KIB,
        "peak RSS over {RSS_BOUND_KIB} KiB: intproxy {intproxy} KiB, agent {agent} KiB"
    );
}
