//! End-to-end incoming traffic on the local platform: a local HTTP server run
//! with `remora run --steal/--mirror` receives the sandbox pod's traffic, from
//! other hosts (this machine, through the pod's veth) and from the pod itself.

use remora_tests::{Pod, PodProcess, PodSpec, Sandbox, bin_path, require_sandbox};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
    let url = format!("http://{}:{POD_PORT}{path}", pod.ip());
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-m", "5", &url]);
    if let Some(h) = header {
        cmd.args(["-H", h]);
    }
    String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
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
