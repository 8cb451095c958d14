//! End-to-end: the operator on the local platform. Sessions of several
//! "developers" (`REMORA_USER`) go through one `remora-operator`, which owns
//! one agent per target, routes by filter, refuses conflicts naming the
//! holder, enforces policies and lists/kills sessions.
//!
//! Each test has its own sandbox pod and its own operator; local ports are
//! unique per test (tests run in parallel on this machine's loopback).

use remora_tests::operator::OperatorProcess;
use remora_tests::{Pod, PodProcess, PodSpec, Sandbox, bin_path, fixtures, require_sandbox};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const POD_PORT: u16 = 18090;
const POD_PORT_2: u16 = 18091;
const POD_BODY: &str = "answer from the pod\n";

/// A pod whose services answer `POD_BODY` on 0.0.0.0:`ports`.
fn pod_with_services(sandbox: &Sandbox, spec: PodSpec, ports: &[u16]) -> (Pod, Vec<PodProcess>) {
    let pod = sandbox
        .pod(spec.file("/srv/api/index.html", POD_BODY))
        .unwrap();
    let services = ports
        .iter()
        .map(|port| {
            let port = port.to_string();
            pod.command("python3")
                .unwrap()
                .args([
                    "-m",
                    "http.server",
                    "--bind",
                    "0.0.0.0",
                    "--directory",
                    "/srv/api",
                ])
                .arg(&port)
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for port in ports {
        pod.wait_for_tcp(*port, Duration::from_secs(20)).unwrap();
    }
    (pod, services)
}

fn pod_with_service(sandbox: &Sandbox) -> (Pod, Vec<PodProcess>) {
    pod_with_services(sandbox, PodSpec::new("api"), &[POD_PORT])
}

/// A `remora run` through the operator, killed (with the app it became) on drop.
struct Run(Child);

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `remora run --target <pod> <flags> -- <command>` as `user` through `op`,
/// in the background; its stderr goes to `stderr`.
fn session(
    op: &OperatorProcess,
    pod: &Pod,
    user: &str,
    flags: &[&str],
    command: &[&str],
    stderr: &Path,
) -> Run {
    let child = op
        .remora(user)
        .unwrap()
        .args(["run", "--target", &pod.target()])
        .args(flags)
        .arg("--")
        .args(command)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .unwrap();
    Run(child)
}

/// A filtered steal of `POD_PORT` by a local app answering `body` on `local_port`.
fn filtered_app(
    op: &OperatorProcess,
    pod: &Pod,
    user: &str,
    filter: &str,
    local_port: u16,
    body: &str,
    stderr: &Path,
) -> Run {
    let app = bin_path("remora-bench-app").unwrap();
    let mapping = format!("{local_port}:{POD_PORT}");
    let listen = format!("127.0.0.1:{local_port}");
    session(
        op,
        pod,
        user,
        &["--steal", "--http-header-filter", filter, "-p", &mapping],
        &[app.to_str().unwrap(), "http-serve", &listen, body],
        stderr,
    )
}

/// curl from this machine (another host, for the pod) to the pod's `port`.
fn curl(pod: &Pod, port: u16, header: Option<&str>) -> String {
    fixtures::curl(&format!("http://{}:{port}/", pod.ip()), header)
}

fn wait_for(what: &str, ready: impl FnMut() -> bool) {
    fixtures::wait_for(what, Duration::from_secs(30), ready);
}

/// A miette error as one line (it wraps and frames long messages).
fn flat(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .replace('│', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

/// `remora session ls --json` through `op`, as `user`.
fn sessions_json(op: &OperatorProcess) -> Vec<serde_json::Value> {
    let out = op
        .remora("tester")
        .unwrap()
        .args(["session", "ls", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn sessions_share_the_operators_agent_which_stops_after_the_last() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let spec = PodSpec::new("api").env("POD_COLOUR", "teal");
    let (pod, _services) = pod_with_services(&sandbox, spec, &[POD_PORT]);
    let op = OperatorProcess::start(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let alice = filtered_app(
        &op,
        &pod,
        "alice",
        "^x-user: alice$",
        18291,
        "alice",
        &dir.path().join("alice.err"),
    );
    wait_for("alice's requests to reach her laptop", || {
        curl(&pod, POD_PORT, Some("x-user: alice")) == "alice"
    });
    assert_eq!(curl(&pod, POD_PORT, None), POD_BODY);
    let agent = remora_tests::procs::agent_of(&pod.target()).expect("an agent serves the pod");
    assert_eq!(
        parent_of(agent),
        Some(op.pid()),
        "the operator runs the agent"
    );

    // A second session of the same target: the pod's env and files, through
    // the same agent.
    let out = op
        .remora("bob")
        .unwrap()
        .args(["run", "--target", &pod.target(), "--"])
        .args([
            "sh",
            "-c",
            "echo colour=$POD_COLOUR; cat /srv/api/index.html",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout, format!("colour=teal\n{POD_BODY}"));
    assert_eq!(
        remora_tests::procs::serving(&pod.target(), "remora-agent"),
        vec![agent],
        "one agent per target"
    );
    assert_eq!(curl(&pod, POD_PORT, Some("x-user: alice")), "alice");

    drop(alice);
    wait_for("the agent to stop after the last session", || {
        remora_tests::procs::agent_of(&pod.target()).is_none()
    });
    assert_eq!(curl(&pod, POD_PORT, Some("x-user: alice")), POD_BODY);
}

const MIXED_LOAD: &str = r#"
import concurrent.futures, sys, urllib.request
url = sys.argv[1]
def one(i):
    who = ["alice", "bob", None][i % 3]
    headers = {"x-user": who} if who else {"x-user": "carol-%d" % i}
    body = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=20).read().decode()
    return body == (who or "answer from the pod\n")
with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
    results = list(pool.map(one, range(300)))
print(sum(results), len(results))
"#;

/// The agent routes one port to several filtered subscribers: each request
/// reaches its own side, unmatched ones the pod.
#[test]
fn two_sessions_with_different_header_filters_share_a_port() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _services) = pod_with_service(&sandbox);
    let op = OperatorProcess::start(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bob_err = dir.path().join("bob.err");
    let _alice = filtered_app(
        &op,
        &pod,
        "alice",
        "^x-user: alice$",
        18292,
        "alice",
        &dir.path().join("a"),
    );
    let _bob = filtered_app(&op, &pod, "bob", "^x-user: bob$", 18293, "bob", &bob_err);
    wait_for("both laptops to get their requests", || {
        curl(&pod, POD_PORT, Some("x-user: alice")) == "alice"
            && curl(&pod, POD_PORT, Some("x-user: bob")) == "bob"
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
        "300 300",
        "every request must reach its own side"
    );
    assert!(
        !read(&bob_err).contains("could not subscribe"),
        "{}",
        read(&bob_err)
    );
}

#[test]
fn an_identical_filter_is_refused_naming_its_holder_and_override_takes_it_over() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _services) = pod_with_service(&sandbox);
    let op = OperatorProcess::start(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let alice_err = dir.path().join("alice.err");
    let _alice = filtered_app(
        &op,
        &pod,
        "alice",
        "^x-user: alice$",
        18294,
        "alice",
        &alice_err,
    );
    wait_for("alice's requests to reach her laptop", || {
        curl(&pod, POD_PORT, Some("x-user: alice")) == "alice"
    });

    // Same filter, other case: refused, naming alice.
    let mallory_err = dir.path().join("mallory.err");
    let mallory = filtered_app(
        &op,
        &pod,
        "mallory",
        "^X-User: alice$",
        18295,
        "mallory",
        &mallory_err,
    );
    let expected = format!(
        "port {POD_PORT} on {}: header filter '^x-user: alice$' is held by alice (session ",
        pod.target()
    );
    wait_for("mallory to hear who holds the filter", || {
        read(&mallory_err).contains(&expected)
    });
    assert_eq!(curl(&pod, POD_PORT, Some("x-user: alice")), "alice");
    drop(mallory);

    // With --override-filter, eve takes it over and alice is told.
    let app = bin_path("remora-bench-app").unwrap();
    let eve = session(
        &op,
        &pod,
        "eve",
        &[
            "--steal",
            "--http-header-filter",
            "^x-user: alice$",
            "-p",
            "18296:18090",
            "--override-filter",
        ],
        &[
            app.to_str().unwrap(),
            "http-serve",
            "127.0.0.1:18296",
            "eve",
        ],
        &dir.path().join("eve.err"),
    );
    wait_for("eve to get alice's requests", || {
        curl(&pod, POD_PORT, Some("x-user: alice")) == "eve"
    });
    wait_for("alice to be told", || {
        read(&alice_err).contains("your subscription was taken over by eve (session")
    });
    assert_eq!(curl(&pod, POD_PORT, None), POD_BODY);
    drop(eve);
    wait_for("the pod to answer alice's requests again", || {
        curl(&pod, POD_PORT, Some("x-user: alice")) == POD_BODY
    });
}

#[test]
fn policies_hide_env_files_and_destinations_and_say_which_policy() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let spec = PodSpec::new("api")
        .env("DB_PASSWORD", "hunter2")
        .env("AWS_KEY", "AKIA-secret")
        .env("DB_HOST", "db.internal")
        .file("/srv/secrets/token", "very secret\n");
    let (pod, _services) = pod_with_services(&sandbox, spec, &[POD_PORT]);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[policy]]\ntargets = [\"deployment/*\"]\nblock = [\"steal\"]\n\n\
             [[policy]]\ntargets = [\"pid/*\"]\nenv_exclude = [\"DB_PASSWORD\", \"AWS_*\"]\n\
             fs_not_found = [\"^/srv/secrets/\"]\noutgoing_block = [\"127.0.0.1:{POD_PORT}\"]\n"
        ),
    )
    .unwrap();
    let op = OperatorProcess::start(Some(&policy)).unwrap();
    let script = format!(
        "echo \"pw=[$DB_PASSWORD] aws=[$AWS_KEY] host=[$DB_HOST]\"; \
         cat /srv/secrets/token || echo no-token; cat /srv/api/index.html; \
         curl -s -m 5 http://127.0.0.1:{POD_PORT}/ || echo no-connect"
    );
    let out = op
        .remora("alice")
        .unwrap()
        .args(["run", "--target", &pod.target(), "--", "sh", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout,
        format!("pw=[] aws=[] host=[db.internal]\nno-token\n{POD_BODY}no-connect\n"),
        "{stderr}"
    );
    let file = policy.display();
    for expected in [
        format!(
            "DB_PASSWORD withheld from {} by policy #2 in {file} (env_exclude)",
            pod.target()
        ),
        format!(
            "AWS_KEY withheld from {} by policy #2 in {file} (env_exclude)",
            pod.target()
        ),
        format!(
            "/srv/secrets/token is hidden by policy #2 in {file} (fs_not_found \"^/srv/secrets/\")"
        ),
        format!(
            "connecting to 127.0.0.1:{POD_PORT} from {} is blocked by policy #2 in {file} \
             (outgoing_block \"127.0.0.1:{POD_PORT}\")",
            pod.target()
        ),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn subscription_policies_refuse_with_their_reason_and_reload_on_change() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _services) = pod_with_service(&sandbox);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[policy]]\ntargets = [\"pid/*\"]\nblock = [\"steal-without-filter\", \"mirror\"]\n\
         require_header_filter = \"^x-user: .+$\"\n",
    )
    .unwrap();
    let op = OperatorProcess::start(Some(&policy)).unwrap();
    let app = bin_path("remora-bench-app").unwrap();
    let app = app.to_str().unwrap();
    let file = policy.display().to_string();

    let unfiltered_err = dir.path().join("unfiltered.err");
    let unfiltered = session(
        &op,
        &pod,
        "alice",
        &["--steal", "-p", "18297:18090"],
        &[app, "http-serve", "127.0.0.1:18297", "laptop"],
        &unfiltered_err,
    );
    let expected = format!(
        "stealing port {POD_PORT} on {} without an HTTP filter is blocked by policy #1 in {file} \
         (block = [\"steal-without-filter\"])",
        pod.target()
    );
    wait_for("the unfiltered steal to be refused", || {
        read(&unfiltered_err).contains(&expected)
    });
    assert_eq!(curl(&pod, POD_PORT, None), POD_BODY);
    drop(unfiltered);

    let path_err = dir.path().join("path.err");
    let path_only = session(
        &op,
        &pod,
        "alice",
        &["--steal", "--http-path-filter", "^/", "-p", "18298:18090"],
        &[app, "http-serve", "127.0.0.1:18298", "laptop"],
        &path_err,
    );
    wait_for("the path-filtered steal to be refused", || {
        read(&path_err).contains(&format!(
            "needs a header filter matching \"^x-user: .+$\" (require_header_filter of policy #1 in {file})"
        ))
    });
    drop(path_only);

    let mirror_err = dir.path().join("mirror.err");
    let mirror = session(
        &op,
        &pod,
        "alice",
        &[
            "--mirror",
            "--http-header-filter",
            "^x-user: alice$",
            "-p",
            "18299:18090",
        ],
        &[app, "http-serve", "127.0.0.1:18299", "laptop"],
        &mirror_err,
    );
    wait_for("the mirror to be refused", || {
        read(&mirror_err).contains(&format!(
            "is blocked by policy #1 in {file} (block = [\"mirror\"])"
        ))
    });
    drop(mirror);

    // The file changes: the operator reloads it, and the same steal works.
    std::fs::write(
        &policy,
        "[[policy]]\ntargets = [\"pid/*\"]\nblock = [\"mirror\"]\n",
    )
    .unwrap();
    let steal_err = dir.path().join("steal.err");
    let mut attempt = 0;
    wait_for("an unfiltered steal after the reload", || {
        attempt += 1;
        let port = 18300 + (attempt % 2) as u16;
        let mapping = format!("{port}:{POD_PORT}");
        let listen = format!("127.0.0.1:{port}");
        let _run = session(
            &op,
            &pod,
            "alice",
            &["--steal", "-p", &mapping],
            &[app, "http-serve", &listen, "laptop"],
            &steal_err,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if curl(&pod, POD_PORT, None) == "laptop" {
                return true;
            }
            if read(&steal_err).contains("blocked by policy") {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    });
}

#[test]
fn session_ls_lists_everyone_and_kill_gives_the_traffic_back_at_once() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _services) = pod_with_service(&sandbox);
    let op = OperatorProcess::start(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let alice_err = dir.path().join("alice.err");
    let _alice = filtered_app(
        &op,
        &pod,
        "alice",
        "^x-user: alice$",
        18302,
        "alice",
        &alice_err,
    );
    let _bob = session(
        &op,
        &pod,
        "bob",
        &[],
        &["sleep", "60"],
        &dir.path().join("bob.err"),
    );
    wait_for("alice's requests to reach her laptop", || {
        curl(&pod, POD_PORT, Some("x-user: alice")) == "alice"
    });
    wait_for("both sessions to be listed", || {
        sessions_json(&op).len() == 2
    });
    let sessions = sessions_json(&op);
    let find = |user: &str| sessions.iter().find(|s| s["user"] == user).unwrap().clone();
    let (alice, bob) = (find("alice"), find("bob"));
    assert_eq!(alice["target"], pod.target());
    assert_eq!(alice["ports"], serde_json::json!([POD_PORT]));
    assert_eq!(
        alice["filters"],
        serde_json::json!(["header:^x-user: alice$"])
    );
    assert_eq!(bob["ports"], serde_json::json!([]));
    assert!(alice["started_at"].as_u64().unwrap() > 1_600_000_000);

    let table = op
        .remora("tester")
        .unwrap()
        .args(["session", "ls"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains("alice") && table.contains("bob") && table.contains("18090 (steal)"),
        "{table}"
    );

    let id = alice["id"].as_str().unwrap();
    let kill = op
        .remora("tester")
        .unwrap()
        .args(["session", "kill", id])
        .output()
        .unwrap();
    assert!(kill.status.success(), "{kill:?}");
    let killed_at = Instant::now();
    wait_for("alice's requests to go back to the pod", || {
        curl(&pod, POD_PORT, Some("x-user: alice")) == POD_BODY
    });
    assert!(
        killed_at.elapsed() < Duration::from_secs(3),
        "took {:?}",
        killed_at.elapsed()
    );
    wait_for("alice to be told", || {
        read(&alice_err).contains("session killed by tester")
    });
    let left: Vec<_> = sessions_json(&op)
        .into_iter()
        .map(|s| s["user"].clone())
        .collect();
    assert_eq!(left, vec![serde_json::json!("bob")]);

    let unknown = op
        .remora("tester")
        .unwrap()
        .args(["session", "kill", "0"])
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(
        flat(&unknown.stderr).contains("no session 0 on this operator"),
        "{unknown:?}"
    );
    let wrong = op
        .remora("tester")
        .unwrap()
        .env("REMORA_OPERATOR_TOKEN", "not-the-token")
        .args(["session", "ls"])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(
        flat(&wrong.stderr).contains("invalid operator token"),
        "{wrong:?}"
    );
    let wrong_run = op
        .remora("tester")
        .unwrap()
        .env("REMORA_OPERATOR_TOKEN", "not-the-token")
        .args(["run", "--target", &pod.target(), "--", "true"])
        .output()
        .unwrap();
    assert!(!wrong_run.status.success());
    let stderr = flat(&wrong_run.stderr);
    assert!(
        stderr.contains("invalid operator token: set REMORA_OPERATOR_TOKEN"),
        "{stderr}"
    );
}

/// A local app that answers `/slow` after 60 s (and logs it), anything else at once.
const SLOW_APP: &str = r#"
import http.server, sys, time
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/slow":
            open(sys.argv[2], "a").write("slow\n")
            time.sleep(60)
        body = b"alice"
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

/// alice and bob hold header filters on one port, carol steals a second port
/// whole; alice's client is SIGKILLed while her app is in the middle of a
/// request: bob and carol keep getting theirs, alice's requests go back to
/// the pod.
#[test]
fn a_client_sigkilled_mid_request_leaves_the_other_sessions_untouched() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _services) =
        pod_with_services(&sandbox, PodSpec::new("api"), &[POD_PORT, POD_PORT_2]);
    let op = OperatorProcess::start(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("slow.log");
    let mut alice = session(
        &op,
        &pod,
        "alice",
        &[
            "--steal",
            "--http-header-filter",
            "^x-user: alice$",
            "-p",
            "18303:18090",
        ],
        &["python3", "-c", SLOW_APP, "18303", log.to_str().unwrap()],
        &dir.path().join("alice.err"),
    );
    let _bob = filtered_app(
        &op,
        &pod,
        "bob",
        "^x-user: bob$",
        18304,
        "bob",
        &dir.path().join("bob.err"),
    );
    let app = bin_path("remora-bench-app").unwrap();
    let _carol = session(
        &op,
        &pod,
        "carol",
        &["--steal", "-p", "18305:18091"],
        &[
            app.to_str().unwrap(),
            "http-serve",
            "127.0.0.1:18305",
            "carol",
        ],
        &dir.path().join("carol.err"),
    );
    let others_fine = || {
        curl(&pod, POD_PORT, Some("x-user: bob")) == "bob"
            && curl(&pod, POD_PORT_2, None) == "carol"
            && curl(&pod, POD_PORT, None) == POD_BODY
    };
    wait_for("every steal", || {
        curl(&pod, POD_PORT, Some("x-user: alice")) == "alice" && others_fine()
    });
    let url = format!("http://{}:{POD_PORT}/slow", pod.ip());
    let mut slow = Command::new("curl")
        .args(["-s", "-m", "30", "-H", "x-user: alice", &url])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the slow request to reach alice's app", || {
        read(&log).contains("slow")
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(alice.0.id() as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    let _ = alice.0.wait();
    // The others keep working throughout, and alice's requests go back to the pod.
    wait_for("alice's requests to go back to the pod", || {
        assert!(others_fine(), "another session was disturbed");
        curl(&pod, POD_PORT, Some("x-user: alice")) == POD_BODY
    });
    let _ = slow.kill();
    let _ = slow.wait();
    wait_for("alice's session to end", || sessions_json(&op).len() == 2);
    for _ in 0..10 {
        assert!(others_fine(), "another session was disturbed");
    }
}

#[test]
fn steal_outgoing_and_override_blocks_are_enforced_and_explained() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _services) = pod_with_service(&sandbox);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[policy]]\ntargets = [\"pid/*\"]\nblock = [\"steal\", \"outgoing\"]\n",
    )
    .unwrap();
    let op = OperatorProcess::start(Some(&policy)).unwrap();
    let app = bin_path("remora-bench-app").unwrap();
    let app = app.to_str().unwrap();
    let file = policy.display().to_string();

    // Even a filtered steal is refused; the pod keeps its traffic.
    let steal_err = dir.path().join("steal.err");
    let steal = filtered_app(
        &op,
        &pod,
        "alice",
        "^x-user: alice$",
        18310,
        "alice",
        &steal_err,
    );
    let expected = format!(
        "stealing port {POD_PORT} on {} is blocked by policy #1 in {file} (block = [\"steal\"])",
        pod.target()
    );
    wait_for("the filtered steal to be refused", || {
        read(&steal_err).contains(&expected)
    });
    assert_eq!(curl(&pod, POD_PORT, Some("x-user: alice")), POD_BODY);
    drop(steal);

    // Every outgoing connection from the pod is refused.
    let url = format!("http://127.0.0.1:{POD_PORT}/");
    let out = op
        .remora("alice")
        .unwrap()
        .args(["run", "--target", &pod.target(), "--"])
        .args(["curl", "-s", "-m", "5", &url])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "curl got through: {out:?}");
    let expected = format!(
        "outgoing connections from {} (here to 127.0.0.1:{POD_PORT}) are blocked by policy #1 \
         in {file} (block = [\"outgoing\"])",
        pod.target()
    );
    assert!(
        stderr.contains(&expected),
        "missing {expected:?} in:\n{stderr}"
    );

    // Taking a filter over from its holder can be forbidden too.
    std::fs::write(
        &policy,
        "[[policy]]\ntargets = [\"pid/*\"]\nblock = [\"override\"]\n",
    )
    .unwrap();
    let alice_err = dir.path().join("alice.err");
    let mut port = 18311;
    // Alice's session, kept (and stopped on drop) once it holds the filter.
    let mut alice = None;
    wait_for("a filtered steal after the reload", || {
        port += 1;
        let run = filtered_app(
            &op,
            &pod,
            "alice",
            "^x-user: alice$",
            port,
            "alice",
            &alice_err,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if curl(&pod, POD_PORT, Some("x-user: alice")) == "alice" {
                alice = Some(run);
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    });
    let eve_err = dir.path().join("eve.err");
    let eve = session(
        &op,
        &pod,
        "eve",
        &[
            "--steal",
            "--http-header-filter",
            "^x-user: alice$",
            "-p",
            "18320:18090",
            "--override-filter",
        ],
        &[app, "http-serve", "127.0.0.1:18320", "eve"],
        &eve_err,
    );
    let expected = format!(
        "taking over port {POD_PORT} on {} from other sessions is blocked by policy #1 in {file} \
         (block = [\"override\"])",
        pod.target()
    );
    wait_for("the takeover to be refused", || {
        read(&eve_err).contains(&expected)
    });
    assert_eq!(curl(&pod, POD_PORT, Some("x-user: alice")), "alice");
    drop(eve);
    drop(alice);
}
