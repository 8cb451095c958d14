//! End-to-end incoming traffic on the local platform: a local HTTP server run
//! with `remora run --steal/--mirror` receives the sandbox pod's traffic, from
//! other hosts (this machine, through the pod's veth) and from the pod itself.

use remora_tests::{Pod, PodProcess, PodSpec, Sandbox, bin_path, fixtures, require_sandbox};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const POD_PORT: u16 = 18090;

/// A pod whose service answers "pod" on 0.0.0.0:POD_PORT.
fn pod_with_service(sandbox: &Sandbox) -> (Pod, PodProcess) {
    let pod = sandbox
        .pod(PodSpec::new("api").file("/srv/api/index.html", "answer from the pod\n"))
        .unwrap();
    let port = POD_PORT.to_string();
    let service = pod
        .command("python3")
        .unwrap()
        .args([
            "-m",
            "http.server",
            "--bind",
            "0.0.0.0",
            "--directory",
            "/srv/api",
            &port,
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    pod.wait_for_tcp(POD_PORT, Duration::from_secs(20)).unwrap();
    (pod, service)
}

/// Kills the `remora run` child (and so the local app it became) on drop.
struct Run(Child);

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `remora run <flags> -- python3 <server that answers "local" and logs paths>`.
/// Each test uses its own local port: tests run in parallel on this machine's
/// loopback, and a stolen connection must reach its own test's app.
fn local_app(pod: &Pod, local_port: u16, mode: &str, dir: &Path) -> Run {
    local_app_with(pod, local_port, &[mode], dir)
}

fn local_app_with(pod: &Pod, local_port: u16, extra: &[&str], dir: &Path) -> Run {
    let mapping = format!("{local_port}:{POD_PORT}");
    let mut flags = vec!["-p", &mapping];
    flags.extend_from_slice(extra);
    std::fs::write(dir.join("index.html"), "answer from the laptop\n").unwrap();
    let script = format!(
        r#"
import http.server, sys
class H(http.server.SimpleHTTPRequestHandler):
    def log_message(self, fmt, *args):
        with open("{log}", "a") as f:
            f.write(self.path + " " + self.client_address[0] + "\n")
http.server.ThreadingHTTPServer(("127.0.0.1", {local_port}), lambda *a: H(*a, directory="{dir}")).serve_forever()
"#,
        log = dir.join("requests.log").display(),
        dir = dir.display(),
    );
    remora_background(pod, &flags, &["python3", "-c", &script])
}

/// `remora run --target <pod> <flags> -- <command>` in the background. Its
/// stderr goes to the test's (an unread pipe could fill up and stall it).
fn remora_background(pod: &Pod, flags: &[&str], command: &[&str]) -> Run {
    let child = Command::new(bin_path("remora").unwrap())
        .args(["run", "--target", &pod.target()])
        .args(flags)
        .arg("--")
        .args(command)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Run(child)
}

/// Flags of a header-filtered steal of `POD_PORT` for alice, onto `mapping`.
const ALICE: [&str; 3] = ["--steal", "--http-header-filter", "^x-user: alice$"];

/// curl from this machine (another host, for the pod) to the pod's service.
fn curl_from_host(pod: &Pod, path: &str, header: Option<&str>) -> String {
    fixtures::curl(&format!("http://{}:{POD_PORT}{path}", pod.ip()), header)
}

fn wait_for(what: &str, ready: impl FnMut() -> bool) {
    fixtures::wait_for(what, Duration::from_secs(20), ready);
}

fn ruleset(pod: &Pod) -> String {
    pod.exec_ok(&["nft", "list", "ruleset"]).unwrap_or_default()
}

#[test]
fn steal_moves_the_pods_traffic_to_the_local_app_and_gives_it_back() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _service) = pod_with_service(&sandbox);
    let before = ruleset(&pod);
    assert_eq!(curl_from_host(&pod, "/", None), "answer from the pod\n");
    let dir = tempfile::tempdir().unwrap();
    let app = local_app(&pod, 18191, "--steal", dir.path());
    wait_for("the stolen traffic", || {
        curl_from_host(&pod, "/", None) == "answer from the laptop\n"
    });
    // From inside the pod too (its own loopback).
    let url = format!("http://127.0.0.1:{POD_PORT}/");
    let inside = pod.exec_ok(&["curl", "-s", "-m", "5", &url]).unwrap();
    assert_eq!(inside, "answer from the laptop\n");
    // The app saw the real peer, not the intproxy's loopback socket.
    let log = std::fs::read_to_string(dir.path().join("requests.log")).unwrap();
    assert!(log.contains(&format!("/ {}", pod.host_ip())), "{log}");
    drop(app);
    wait_for("the pod to answer again", || {
        curl_from_host(&pod, "/", None) == "answer from the pod\n"
    });
    wait_for("the ruleset to be restored", || ruleset(&pod) == before);
}

#[test]
fn mirror_copies_requests_while_the_pod_keeps_answering() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _service) = pod_with_service(&sandbox);
    let before = ruleset(&pod);
    let dir = tempfile::tempdir().unwrap();
    let app = local_app(&pod, 18192, "--mirror", dir.path());
    let log = dir.path().join("requests.log");
    wait_for("a mirrored request", || {
        // Every request is answered (by the pod) while the copy goes local.
        assert!(!curl_from_host(&pod, "/mirrored", None).is_empty());
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("/mirrored"))
    });
    // The pod answered every one of those requests itself.
    assert!(curl_from_host(&pod, "/", None) == "answer from the pod\n");
    drop(app);
    wait_for("the ruleset to be restored", || ruleset(&pod) == before);
}

#[test]
fn killing_the_agent_restores_the_target() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _service) = pod_with_service(&sandbox);
    let before = ruleset(&pod);
    let dir = tempfile::tempdir().unwrap();
    let _app = local_app(&pod, 18193, "--steal", dir.path());
    wait_for("the stolen traffic", || {
        curl_from_host(&pod, "/", None) == "answer from the laptop\n"
    });
    let agent = remora_tests::procs::agent_of(&pod.target()).expect("an agent serves the run");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    wait_for("the pod to answer again", || {
        curl_from_host(&pod, "/", None) == "answer from the pod\n"
    });
    wait_for("the ruleset to be restored", || ruleset(&pod) == before);
}

#[test]
fn header_filtered_steal_takes_only_matching_requests() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _service) = pod_with_service(&sandbox);
    let before = ruleset(&pod);
    let dir = tempfile::tempdir().unwrap();
    let app = local_app_with(&pod, 18194, &ALICE, dir.path());
    wait_for("alice's requests to reach the laptop", || {
        curl_from_host(&pod, "/", Some("X-User: alice")) == "answer from the laptop\n"
    });
    // Everyone else still gets the pod, byte for byte.
    assert_eq!(curl_from_host(&pod, "/", None), "answer from the pod\n");
    assert_eq!(
        curl_from_host(&pod, "/", Some("X-User: bob")),
        "answer from the pod\n"
    );
    // Mixed requests from inside the pod too.
    let url = format!("http://127.0.0.1:{POD_PORT}/");
    let alice = pod
        .exec_ok(&["curl", "-s", "-m", "5", "-H", "x-user: alice", &url])
        .unwrap();
    assert_eq!(alice, "answer from the laptop\n");
    let other = pod.exec_ok(&["curl", "-s", "-m", "5", &url]).unwrap();
    assert_eq!(other, "answer from the pod\n");
    drop(app);
    wait_for("the ruleset to be restored", || ruleset(&pod) == before);
}

const MIXED_LOAD: &str = r#"
import concurrent.futures, sys, urllib.request
url = sys.argv[1]
def one(i):
    headers = {"x-user": "alice"} if i % 2 == 0 else {"x-user": "bob-%d" % i}
    body = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=20).read().decode()
    want = "answer from the laptop\n" if i % 2 == 0 else "answer from the pod\n"
    return body == want
with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
    results = list(pool.map(one, range(400)))
print(sum(results), len(results))
"#;

#[test]
fn hundreds_of_concurrent_mixed_requests_each_reach_the_right_side() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _service) = pod_with_service(&sandbox);
    let dir = tempfile::tempdir().unwrap();
    let _app = local_app_with(&pod, 18195, &ALICE, dir.path());
    wait_for("alice's requests to reach the laptop", || {
        curl_from_host(&pod, "/", Some("X-User: alice")) == "answer from the laptop\n"
    });
    let url = format!("http://{}:{POD_PORT}/", pod.ip());
    let out = Command::new("python3")
        .args(["-c", MIXED_LOAD, &url])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.trim(),
        "400 400",
        "every request must reach its own side"
    );
}

#[test]
fn killing_the_local_app_gives_the_port_back() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _service) = pod_with_service(&sandbox);
    let before = ruleset(&pod);
    let dir = tempfile::tempdir().unwrap();
    let mut app = local_app(&pod, 18196, "--steal", dir.path());
    wait_for("the stolen traffic", || {
        curl_from_host(&pod, "/", None) == "answer from the laptop\n"
    });
    // SIGKILL: no close, no goodbye; the process tree is simply gone.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(app.0.id() as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    let _ = app.0.wait();
    wait_for("the pod to answer again", || {
        curl_from_host(&pod, "/", None) == "answer from the pod\n"
    });
    wait_for("the ruleset to be restored", || ruleset(&pod) == before);
}

#[test]
fn a_200_mb_upload_streams_through_with_bounded_memory() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _service) = pod_with_service(&sandbox);
    let app = bin_path("remora-bench-app").unwrap();
    let mapping = format!("18197:{POD_PORT}");
    let app = app.to_string_lossy();
    let flags = [ALICE[0], ALICE[1], ALICE[2], "-p", &mapping];
    let _run = remora_background(
        &pod,
        &flags,
        &[&app, "http-serve", "127.0.0.1:18197", "laptop"],
    );
    wait_for("alice's requests to reach the laptop", || {
        curl_from_host(&pod, "/", Some("X-User: alice")) == "laptop"
    });
    let upload = tempfile::NamedTempFile::new().unwrap();
    upload.as_file().set_len(200 * 1024 * 1024).unwrap();
    let url = format!("http://{}:{POD_PORT}/upload", pod.ip());
    let out = Command::new("curl")
        .args(["-s", "-m", "120", "-H", "x-user: alice", "--data-binary"])
        .arg(format!("@{}", upload.path().display()))
        .arg(&url)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "laptop", "{out:?}");
    // Neither the agent nor the intproxy held the body in memory.
    let target = pod.target();
    for comm in ["remora-agent", "remora"] {
        let pid = remora_tests::procs::serving(&target, comm)[0];
        let peak = remora_tests::procs::peak_rss_kib(pid).expect("process serving the run");
        assert!(
            peak < 100 * 1024,
            "{comm} peaked at {peak} KiB for a 200 MiB upload"
        );
    }
}

/// A local app that answers an Upgrade with 101 and then echoes raw bytes.
const UPGRADE_APP: &str = r#"
import socket, sys, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(16)
def serve(c):
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = c.recv(4096)
        if not chunk: return
        head += chunk
    if b"upgrade: websocket" in head.lower():
        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        while True:
            data = c.recv(4096)
            if not data: break
            c.sendall(b"echo:" + data)
    else:
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nlaptop\n")
    c.close()
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;

/// A client that upgrades, then talks raw bytes through the tunnel.
const UPGRADE_CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b"GET /ws HTTP/1.1\r\nHost: api\r\nx-user: alice\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(4096)
status = head.split(b"\r\n")[0].decode()
s.sendall(b"ping")
print(status, s.recv(4096).decode())
"#;

#[test]
fn a_matched_websocket_upgrade_becomes_a_tunnel_to_the_local_app() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _service) = pod_with_service(&sandbox);
    let mapping = format!("18198:{POD_PORT}");
    let flags = [ALICE[0], ALICE[1], ALICE[2], "-p", &mapping];
    let _run = remora_background(&pod, &flags, &["python3", "-c", UPGRADE_APP, "18198"]);
    wait_for("alice's requests to reach the laptop", || {
        curl_from_host(&pod, "/", Some("X-User: alice")) == "laptop\n"
    });
    let ip = pod.ip().to_string();
    let port = POD_PORT.to_string();
    let out = Command::new("python3")
        .args(["-c", UPGRADE_CLIENT, &ip, &port])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        "HTTP/1.1 101 Switching Protocols echo:ping",
        "{out:?}"
    );
}

// ---------------------------------------------------------------------------
// Filtered steal, protocol by protocol: the pod's service and the local app
// are both `remora-bench-app h2-serve` (HTTP/1.1 and HTTP/2 prior knowledge on
// one port), answering "pod ..." or "laptop ..." with the version, method,
// path and body length each one saw.
// ---------------------------------------------------------------------------

fn bench_app() -> String {
    bin_path("remora-bench-app")
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// A pod whose service on 0.0.0.0:POD_PORT is `h2-serve` named "pod".
fn pod_with_h2_service(sandbox: &Sandbox) -> (Pod, PodProcess) {
    let pod = sandbox.pod(PodSpec::new("api")).unwrap();
    let addr = format!("0.0.0.0:{POD_PORT}");
    let service = pod
        .command(bench_app())
        .unwrap()
        .args(["h2-serve", &addr, "pod"])
        .spawn()
        .unwrap();
    pod.wait_for_tcp(POD_PORT, Duration::from_secs(20)).unwrap();
    (pod, service)
}

/// Alice's requests to the pod's POD_PORT stolen by a local `h2-serve` named
/// "laptop" on 127.0.0.1:`local_port`; returns once an HTTP/1.1 request of
/// hers reached it.
fn steal_for_alice_to_h2_serve(pod: &Pod, local_port: u16) -> Run {
    let mapping = format!("{local_port}:{POD_PORT}");
    let listen = format!("127.0.0.1:{local_port}");
    let flags = [ALICE[0], ALICE[1], ALICE[2], "-p", &mapping];
    let run = remora_background(pod, &flags, &[&bench_app(), "h2-serve", &listen, "laptop"]);
    wait_for("alice's requests to reach the laptop", || {
        curl_from_host(pod, "/", Some("X-User: alice")) == "laptop HTTP/1.1 GET / 0\n"
    });
    run
}

/// `curl <args> http://POD:POD_PORT<path>` from this machine: its stdout, and
/// its stderr for failure messages.
fn curl_pod(pod: &Pod, path: &str, args: &[&str]) -> (String, String) {
    let url = format!("http://{}:{POD_PORT}{path}", pod.ip());
    let out = Command::new("curl")
        .args(["-sS", "-m", "30"])
        .args(args)
        .arg(&url)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `python3 -c code POD_IP POD_PORT`, which must succeed: its stdout.
fn python_to_pod(pod: &Pod, code: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", code, &pod.ip().to_string(), &POD_PORT.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A file of `len` bytes (not all zeros, so nothing can guess it).
fn body_file(len: usize) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    std::fs::write(file.path(), data).unwrap();
    file
}

/// Why alice's HTTP/2 requests can get the pod's answer.
const NEEDS_H2_ROUTING: &str = "alice's HTTP/2 requests need the agent's HTTP/2 routing \
                                (an agent that passes h2 through untouched sends them to the pod)";

/// The agent routes HTTP/2 requests one by one (an agent that passed h2
/// through untouched would give alice the pod's answer).
#[test]
fn http2_prior_knowledge_requests_are_filtered_one_by_one() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _service) = pod_with_h2_service(&sandbox);
    let h2 = ["--http2-prior-knowledge"];
    // The pod's service speaks h2c itself.
    let (direct, err) = curl_pod(&pod, "/direct", &h2);
    assert_eq!(direct, "pod HTTP/2 GET /direct 0\n", "{err}");
    let _run = steal_for_alice_to_h2_serve(&pod, 18201);
    let alice = ["--http2-prior-knowledge", "-H", "x-user: alice"];
    let (answer, err) = curl_pod(&pod, "/h2", &alice);
    assert_eq!(
        answer, "laptop HTTP/2 GET /h2 0\n",
        "{NEEDS_H2_ROUTING}\n{err}"
    );
    let (answer, err) = curl_pod(&pod, "/h2", &h2);
    assert_eq!(answer, "pod HTTP/2 GET /h2 0\n", "{err}");
    let bob = ["--http2-prior-knowledge", "-H", "x-user: bob"];
    let (answer, err) = curl_pod(&pod, "/h2", &bob);
    assert_eq!(answer, "pod HTTP/2 GET /h2 0\n", "{err}");
    // A request body (DATA frames) reaches the laptop whole.
    let upload = body_file(300_000);
    let data = format!("@{}", upload.path().display());
    let post = [
        "--http2-prior-knowledge",
        "-H",
        "x-user: alice",
        "--data-binary",
        &data,
    ];
    let (answer, err) = curl_pod(&pod, "/upload", &post);
    assert_eq!(answer, "laptop HTTP/2 POST /upload 300000\n", "{err}");
}

/// Each stream of one HTTP/2 connection is routed on its own. curl 7.88
/// cannot reuse a prior-knowledge connection (curl/curl#10634), so
/// `h2-mixed` sends the streams.
#[test]
fn concurrent_http2_streams_on_one_connection_each_reach_their_side() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _service) = pod_with_h2_service(&sandbox);
    const STREAMS: u64 = 40;
    let mixed = || {
        let addr = format!("{}:{POD_PORT}", pod.ip());
        let out = Command::new(bench_app())
            .args(["h2-mixed", &addr, &STREAMS.to_string(), "x-user: alice"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let expected = |side: &dyn Fn(u64) -> &'static str| -> String {
        (0..STREAMS)
            .map(|i| format!("200 {} HTTP/2 GET /mixed/{i} 0\n", side(i)))
            .collect()
    };
    // Before the steal the pod answers every stream.
    assert_eq!(mixed(), expected(&|_| "pod"));
    let _run = steal_for_alice_to_h2_serve(&pod, 18206);
    // The even streams carry alice's header.
    let sides = |i: u64| if i % 2 == 0 { "laptop" } else { "pod" };
    assert_eq!(mixed(), expected(&sides), "{NEEDS_H2_ROUTING}");
}

/// One `http.client` connection, six requests; the connection must survive
/// each answer (http.client would silently reconnect after a close, so the
/// client checks its socket stays the same).
const KEEP_ALIVE_CLIENT: &str = r#"
import http.client, sys
conn = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=20)
first = None
for i in range(6):
    headers = {"x-user": "alice"} if i % 2 == 0 else {}
    conn.request("GET", "/keep/%d" % i, headers=headers)
    resp = conn.getresponse()
    body = resp.read().decode()
    assert not resp.will_close, "answer %d closes the connection: %r" % (i, resp.getheaders())
    assert conn.sock is not None, "connection closed after answer %d" % i
    name = conn.sock.getsockname()
    first = first or name
    assert name == first, "reconnected before request %d: %r then %r" % (i, first, name)
    print(resp.status, body.strip())
"#;

#[test]
fn keep_alive_requests_on_one_connection_alternate_between_laptop_and_pod() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _service) = pod_with_h2_service(&sandbox);
    let _run = steal_for_alice_to_h2_serve(&pod, 18202);
    let expected: String = (0..6)
        .map(|i| {
            let side = if i % 2 == 0 { "laptop" } else { "pod" };
            format!("200 {side} HTTP/1.1 GET /keep/{i} 0\n")
        })
        .collect();
    assert_eq!(python_to_pod(&pod, KEEP_ALIVE_CLIENT), expected);
}

/// Four HTTP/1.1 requests in one `sendall`, then their four answers read off
/// the same connection (Content-Length or chunked), printed in order.
const PIPELINING_CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
s.sendall(
    b"GET /pipe/0 HTTP/1.1\r\nHost: api\r\nx-user: alice\r\n\r\n"
    b"POST /pipe/1 HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\n\r\nhello"
    b"POST /pipe/2 HTTP/1.1\r\nHost: api\r\nx-user: alice\r\nContent-Length: 11\r\n\r\nhello world"
    b"GET /pipe/3 HTTP/1.1\r\nHost: api\r\n\r\n"
)
buf = b""
def until(sep):
    global buf
    while sep not in buf:
        data = s.recv(65536)
        assert data, "connection closed; unparsed: %r" % buf
        buf += data
    out, buf = buf.split(sep, 1)
    return out
def exactly(n):
    global buf
    while len(buf) < n:
        data = s.recv(65536)
        assert data, "connection closed; unparsed: %r" % buf
        buf += data
    out, buf = buf[:n], buf[n:]
    return out
for _ in range(4):
    lines = until(b"\r\n\r\n").decode().split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, v in (l.split(":", 1) for l in lines[1:]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int(until(b"\r\n").split(b";")[0], 16)
            if size == 0:
                while until(b"\r\n"):
                    pass
                break
            body += exactly(size)
            until(b"\r\n")
    else:
        body = exactly(int(headers["content-length"]))
    print(lines[0].split(" ")[1], body.decode().strip())
"#;

#[test]
fn pipelined_requests_are_answered_in_order_each_by_its_side() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _service) = pod_with_h2_service(&sandbox);
    let _run = steal_for_alice_to_h2_serve(&pod, 18203);
    assert_eq!(
        python_to_pod(&pod, PIPELINING_CLIENT),
        "200 laptop HTTP/1.1 GET /pipe/0 0\n\
         200 pod HTTP/1.1 POST /pipe/1 5\n\
         200 laptop HTTP/1.1 POST /pipe/2 11\n\
         200 pod HTTP/1.1 GET /pipe/3 0\n"
    );
}

#[test]
fn expect_100_continue_uploads_reach_the_right_side_whole() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _service) = pod_with_h2_service(&sandbox);
    let _run = steal_for_alice_to_h2_serve(&pod, 18204);
    const LEN: usize = 2 * 1024 * 1024;
    let upload = body_file(LEN);
    let data = format!("@{}", upload.path().display());
    // curl waits longer for the `100 Continue` than it waits for the whole
    // exchange: the body is only sent once the `100` came back through remora.
    let expect = [
        "-v",
        "--expect100-timeout",
        "60",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &data,
    ];
    for (side, header) in [("laptop", "x-user: alice"), ("pod", "x-user: bob")] {
        let mut args = expect.to_vec();
        args.extend(["-H", header]);
        let (answer, verbose) = curl_pod(&pod, "/expect", &args);
        assert_eq!(
            answer,
            format!("{side} HTTP/1.1 POST /expect {LEN}\n"),
            "{verbose}"
        );
        assert!(verbose.contains("< HTTP/1.1 100 Continue"), "{verbose}");
    }
}

#[test]
fn chunked_request_bodies_reach_the_right_side_whole() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _service) = pod_with_h2_service(&sandbox);
    let _run = steal_for_alice_to_h2_serve(&pod, 18205);
    const LEN: usize = 300_001;
    let upload = body_file(LEN);
    let data = format!("@{}", upload.path().display());
    let chunked = ["-H", "Transfer-Encoding: chunked", "--data-binary", &data];
    for (side, header) in [("laptop", "x-user: alice"), ("pod", "x-user: bob")] {
        let mut args = chunked.to_vec();
        args.extend(["-H", header]);
        let (answer, err) = curl_pod(&pod, "/chunked", &args);
        assert_eq!(
            answer,
            format!("{side} HTTP/1.1 POST /chunked {LEN}\n"),
            "{err}"
        );
    }
}
