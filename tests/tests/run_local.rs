//! End-to-end: `remora run --target pid/<PID>` against sandbox pods, with real
//! programs (printenv, cat, ls, stat, getent, curl, python3, bash, psql and
//! the remora-probe app), the real layer, intproxy and agent.

use remora_tests::fixtures::{
    CHECKOUT_CONFIG, CHECKOUT_CONFIG_BODY, CHECKOUT_PORT, CHECKOUT_SECRET, PAYMENTS_HOST,
    checkout_pod, remora_run, remora_run_with,
};
use remora_tests::{PodSpec, Sandbox, bin_path, require_sandbox};
use std::process::Output;
use std::time::{Duration, Instant};

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
fn command_sees_the_targets_environment() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let secret = ok(remora_run(&c.pod, &["printenv", "APP_SECRET"]).unwrap());
    assert_eq!(secret.trim(), CHECKOUT_SECRET);
    // Variables that would break the local machine stay local.
    let path = ok(remora_run(&c.pod, &["printenv", "PATH"]).unwrap());
    assert_eq!(path.trim(), std::env::var("PATH").unwrap());
    // Without remora the secret is not there.
    assert!(std::env::var("APP_SECRET").is_err());
}

#[test]
fn env_flags_exclude_override_and_unset() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let out = remora_run_with(
        &c.pod,
        &["--env-exclude", "APP_*"],
        &["printenv", "APP_SECRET"],
    );
    assert_eq!(
        out.unwrap().status.code(),
        Some(1),
        "excluded variable must be absent"
    );
    let out = ok(remora_run_with(
        &c.pod,
        &["--env", "APP_SECRET=local-override"],
        &["printenv", "APP_SECRET"],
    )
    .unwrap());
    assert_eq!(out.trim(), "local-override");
    let out = remora_run_with(
        &c.pod,
        &["--env-unset", "DATABASE_URL"],
        &["printenv", "DATABASE_URL"],
    );
    assert_eq!(out.unwrap().status.code(), Some(1));
}

#[test]
fn cat_ls_stat_read_the_targets_files() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    assert!(
        !std::path::Path::new(CHECKOUT_CONFIG).exists(),
        "the host must not have the pod's file"
    );
    assert_eq!(
        ok(remora_run(&c.pod, &["cat", CHECKOUT_CONFIG]).unwrap()),
        CHECKOUT_CONFIG_BODY
    );
    let listing = ok(remora_run(&c.pod, &["ls", "/srv/checkout/data"]).unwrap());
    assert_eq!(listing.trim(), "orders.csv");
    let size = ok(remora_run(&c.pod, &["stat", "-c", "%s", CHECKOUT_CONFIG]).unwrap());
    assert_eq!(size.trim(), CHECKOUT_CONFIG_BODY.len().to_string());
    // A path the target does not have is missing for the command too.
    let out = remora_run(&c.pod, &["cat", "/etc/checkout/nope.yaml"]).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such file"));
}

/// The layer answers "local" for paths under `/tmp`, `/usr`... before asking
/// the fs policy (issue 15); a `..` that leads out of such a tree must still
/// reach the target's file.
#[test]
fn dot_dot_out_of_a_local_tree_reads_the_targets_file() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let via_tmp = format!("/tmp/..{CHECKOUT_CONFIG}");
    let via_usr = format!("/usr/lib/../..{CHECKOUT_CONFIG}");
    assert_eq!(
        ok(remora_run(&c.pod, &["cat", &via_tmp]).unwrap()),
        CHECKOUT_CONFIG_BODY
    );
    let size = ok(remora_run(&c.pod, &["stat", "-c", "%s", &via_usr]).unwrap());
    assert_eq!(size.trim(), CHECKOUT_CONFIG_BODY.len().to_string());
}

#[test]
fn names_resolve_as_the_target_resolves_them() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let local = std::process::Command::new("getent")
        .args(["ahosts", PAYMENTS_HOST])
        .output()
        .unwrap();
    assert!(
        !local.status.success(),
        "{PAYMENTS_HOST} must not resolve on the host"
    );
    // The layer answers getaddrinfo itself, whatever NSS service getent asks for.
    let answer =
        ok(remora_run(&c.pod, &["getent", "-s", "files", "ahosts", PAYMENTS_HOST]).unwrap());
    assert!(answer.contains("127.0.0.1"), "{answer}");
    // The pod's own hostname resolves to the pod's IP, from its hosts file.
    let own = ok(remora_run(&c.pod, &["getent", "ahosts", c.pod.name()]).unwrap());
    assert!(own.contains(&c.pod.ip().to_string()), "{own}");
    // --no-remote-dns keeps resolution local.
    let out = remora_run_with(
        &c.pod,
        &["--no-remote-dns"],
        &["getent", "ahosts", PAYMENTS_HOST],
    );
    assert!(!out.unwrap().status.success());
}

#[test]
fn curl_reaches_a_service_on_the_pods_loopback() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let url = format!("http://127.0.0.1:{CHECKOUT_PORT}/");
    // Directly, the host's loopback has no such service.
    let direct = std::process::Command::new("curl")
        .args(["-s", "-m", "5", &url])
        .output()
        .unwrap();
    assert!(!direct.status.success());
    let body = ok(remora_run(&c.pod, &["curl", "-s", "-m", "10", &url]).unwrap());
    assert_eq!(body, "hello from the checkout pod\n");
    let by_name = format!("http://{PAYMENTS_HOST}:{CHECKOUT_PORT}/health");
    assert_eq!(
        ok(remora_run(&c.pod, &["curl", "-s", "-m", "10", &by_name]).unwrap()),
        "ok\n"
    );
    // --no-outgoing keeps connections local: the host's loopback refuses.
    let out =
        remora_run_with(&c.pod, &["--no-outgoing"], &["curl", "-s", "-m", "5", &url]).unwrap();
    assert!(!out.status.success());
}

const PYTHON_SCRIPT: &str = r#"
import os, subprocess, sys, urllib.request
print("env", os.environ["APP_SECRET"])
print("open", open("/etc/checkout/config.yaml").read().splitlines()[0])
print("listdir", sorted(os.listdir("/srv/checkout/www")))
body = urllib.request.urlopen("http://payments.staging.internal:18080/health", timeout=10).read()
print("urllib", body.decode().strip())
print("subprocess", subprocess.run(["cat", "/srv/checkout/data/orders.csv"], capture_output=True, text=True, check=True).stdout.splitlines()[1])
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    data = open("/etc/checkout/config.yaml").read().splitlines()[1].strip()
    os.write(w, data.encode())
    os._exit(0)
os.close(w)
child = os.read(r, 1000).decode()
os.waitpid(pid, 0)
print("fork", child)
# The parent's session still works after the fork.
print("after-fork", urllib.request.urlopen("http://127.0.0.1:18080/health", timeout=10).read().decode().strip())
"#;

#[test]
fn python_sees_env_files_dns_and_network_across_fork_and_exec() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let out = ok(remora_run(&c.pod, &["python3", "-c", PYTHON_SCRIPT]).unwrap());
    let expected = format!(
        "env {CHECKOUT_SECRET}\nopen feature_flags:\nlistdir ['health', 'index.html']\nurllib ok\n\
         subprocess 1,9.99\nfork new_checkout: true\nafter-fork ok\n"
    );
    assert_eq!(out, expected);
}

#[test]
fn bash_chains_and_a_rust_app_see_the_pod() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let probe = bin_path("remora-probe").unwrap();
    let probe = probe.to_str().unwrap();
    let script = format!(
        "set -e; cat {CHECKOUT_CONFIG} | wc -l; {probe} env APP_SECRET; {probe} resolve {PAYMENTS_HOST}; \
         {probe} get 127.0.0.1:{CHECKOUT_PORT} /health; {probe} ls /srv/checkout/data; \
         {probe} file /srv/checkout/data/orders.csv | tail -1"
    );
    let out = ok(remora_run(&c.pod, &["bash", "-c", &script]).unwrap());
    assert_eq!(
        out,
        format!("3\n{CHECKOUT_SECRET}\n127.0.0.1\nok\norders.csv\n2,42.00\n")
    );
}

#[test]
fn hostname_is_the_pods() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let name = ok(remora_run(&c.pod, &["hostname"]).unwrap());
    assert_eq!(name.trim(), c.pod.name());
}

#[test]
fn exit_status_and_signals_are_the_commands_own() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let out = remora_run(&c.pod, &["sh", "-c", "exit 7"]).unwrap();
    assert_eq!(out.status.code(), Some(7));
    use std::os::unix::process::ExitStatusExt;
    let out = remora_run(&c.pod, &["sh", "-c", "kill -TERM $$"]).unwrap();
    assert_eq!(out.status.signal(), Some(15));
}

#[test]
fn missing_target_fails_fast_naming_it() {
    require_sandbox!();
    // A PID that surely exists no more: a child we started and reaped.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let remora = bin_path("remora").unwrap();
    let started = Instant::now();
    let out = std::process::Command::new(remora)
        .args(["run", "--target", &format!("pid/{pid}"), "--", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("pid/{pid} not found")), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn psql_reaches_a_database_only_the_pod_can_reach() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let pod = sandbox.pod(PodSpec::new("db-client")).unwrap();
    // Inside the pod, 127.0.0.1:15432 forwards to the machine's PostgreSQL
    // socket; the host's own 127.0.0.1:15432 has nothing.
    let _forwarder = pod
        .spawn(&[
            "runuser",
            "-u",
            "postgres",
            "--",
            "socat",
            "TCP-LISTEN:15432,bind=127.0.0.1,reuseaddr,fork",
            "UNIX-CONNECT:/var/run/postgresql/.s.PGSQL.5432",
        ])
        .unwrap();
    pod.wait_for_tcp(15432, Duration::from_secs(20)).unwrap();
    let psql = [
        "psql",
        "-h",
        "127.0.0.1",
        "-p",
        "15432",
        "-U",
        "postgres",
        "-d",
        "postgres",
        "-Atc",
    ];
    let direct = std::process::Command::new("psql")
        .args(psql)
        .arg("select 1")
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .unwrap();
    assert!(
        !direct.status.success(),
        "the host must not reach the pod's forwarder"
    );
    let mut args = psql.to_vec();
    args.push("select 40 + 2, current_user");
    let out = ok(remora_run(&pod, &args).unwrap());
    assert_eq!(out.trim(), "42|postgres");
}

#[test]
fn losing_the_agent_fails_remote_calls_and_keeps_local_ones() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    // The script reads a remote file, waits until the test kills the agent,
    // then tries remote and local operations.
    let marker = tempfile::NamedTempFile::new().unwrap();
    let marker_path = marker.path().to_str().unwrap().to_string();
    let script = format!(
        r#"
import os, socket, time, urllib.request
print("before", open("{CHECKOUT_CONFIG}").read().splitlines()[0], flush=True)
open("{marker_path}", "w").write("ready")
deadline = time.time() + 30
while open("{marker_path}").read() != "killed" and time.time() < deadline:
    time.sleep(0.05)
try:
    urllib.request.urlopen("http://127.0.0.1:{CHECKOUT_PORT}/health", timeout=10).read()
    print("remote ok?!")
except Exception as e:
    print("remote failed")
print("local", open("{marker_path}").read())
"#
    );
    let remora = bin_path("remora").unwrap();
    let child = std::process::Command::new(remora)
        .args([
            "run",
            "--target",
            &c.pod.target(),
            "--",
            "python3",
            "-c",
            &script,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(marker.path()).unwrap_or_default() != "ready" {
        assert!(Instant::now() < deadline, "the script never got ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let agent = remora_tests::procs::agent_of(&c.pod.target()).expect("an agent serves the run");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    std::fs::write(marker.path(), "killed").unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = text(&out);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        "before feature_flags:\nremote failed\nlocal killed\n"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("remora:"),
        "a one-line warning is expected: {stderr}"
    );
}

#[test]
fn nothing_is_left_running_after_the_command_exits() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    ok(remora_run(&c.pod, &["true"]).unwrap());
    let deadline = Instant::now() + Duration::from_secs(15);
    while remora_tests::procs::any_serving(&c.pod.target()) {
        assert!(
            Instant::now() < deadline,
            "agent or intproxy still running 15s after the run"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `remora run … 2>&1 | cat` used to wait out the intproxy's linger: the
/// intproxy and agent held the pipe. `output()` reads stderr to its end, so
/// returning while the intproxy still lingers proves they let go of it.
#[test]
fn a_piped_stderr_ends_with_the_command_not_with_the_intproxy() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let out = remora_run(&c.pod, &["sh", "-c", "echo to-stderr >&2"]).unwrap();
    let lingering = remora_tests::procs::any_serving(&c.pod.target());
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to-stderr\n");
    assert!(
        lingering,
        "stderr reached its end only once the intproxy had exited"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while remora_tests::procs::any_serving(&c.pod.target()) {
        assert!(Instant::now() < deadline, "the intproxy never exited");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `remora run` from a second "laptop" pod whose resolver only knows its
/// own loopback, so if a resolver function escaped the layer, its query could
/// never leave the machine: it would fail instead.
fn remora_from_laptop(laptop: &remora_tests::Pod, target: &str, args: &[&str]) -> Output {
    let remora = bin_path("remora").unwrap();
    laptop
        .command(remora.as_os_str())
        .unwrap()
        .args(["run", "--target", target, "--"])
        .args(args)
        .output()
        .unwrap()
}

const LEGACY_SCRIPT: &str = r#"
import os, platform, socket, subprocess
print("gethostbyname", socket.gethostbyname("payments.staging.internal"))
print("gethostbyname_ex", socket.gethostbyname_ex("payments.staging.internal")[2])
print("gethostbyaddr", socket.gethostbyaddr("127.0.0.1")[0])
# gethostbyaddr_r: the pod's address is only in the pod's hosts file.
print("gethostbyaddr pod", socket.gethostbyaddr(os.environ["POD_IP"])[0])
print("node", platform.node())
# A child started with a scrubbed environment still sees the pod.
child = subprocess.run(["cat", "/etc/checkout/config.yaml"], env={"PATH": os.environ["PATH"]},
                       capture_output=True, text=True)
print("scrubbed-env child", child.stdout.splitlines()[0] if child.stdout else child.stderr.strip())
"#;

#[test]
fn legacy_resolvers_uname_and_scrubbed_children_see_the_pod() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let laptop = sandbox.pod(PodSpec::new("laptop")).unwrap();
    let pod_ip = format!("POD_IP={}", c.pod.ip());
    let out = remora_from_laptop(
        &laptop,
        &c.pod.target(),
        &["env", &pod_ip, "python3", "-c", LEGACY_SCRIPT],
    );
    let stdout = ok(out);
    assert_eq!(
        stdout,
        "gethostbyname 127.0.0.1\ngethostbyname_ex ['127.0.0.1']\ngethostbyaddr localhost\n\
         gethostbyaddr pod checkout\nnode checkout\nscrubbed-env child feature_flags:\n"
    );
    let hosts = ok(remora_from_laptop(
        &laptop,
        &c.pod.target(),
        &["getent", "hosts", PAYMENTS_HOST],
    ));
    assert!(hosts.starts_with("127.0.0.1"), "{hosts}");
    let uname = ok(remora_from_laptop(
        &laptop,
        &c.pod.target(),
        &["uname", "-n"],
    ));
    assert_eq!(uname.trim(), "checkout");
}

#[test]
fn write_mode_writes_the_targets_files_and_read_mode_does_not() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let script = "set -e; echo 'id,total' > /srv/checkout/data/new.csv; echo '3,1.00' >> /srv/checkout/data/new.csv; \
                  mkdir /srv/checkout/data/archive; mv /srv/checkout/data/orders.csv /srv/checkout/data/archive/; \
                  ls /srv/checkout/data";
    let listing =
        ok(remora_run_with(&c.pod, &["--fs-mode", "write"], &["bash", "-c", script]).unwrap());
    assert_eq!(listing, "archive\nnew.csv\n");
    // The pod itself sees the changes.
    assert_eq!(
        c.pod
            .exec_ok(&["cat", "/srv/checkout/data/new.csv"])
            .unwrap(),
        "id,total\n3,1.00\n"
    );
    assert!(
        c.pod
            .exec_ok(&["ls", "/srv/checkout/data/archive"])
            .unwrap()
            .contains("orders.csv")
    );
    // In the default read mode writes stay local: the pod's file is untouched.
    let out = remora_run(
        &c.pod,
        &["bash", "-c", "echo local > /srv/checkout/data/new.csv"],
    )
    .unwrap();
    assert!(
        !out.status.success(),
        "the local machine has no /srv/checkout"
    );
    assert_eq!(
        c.pod
            .exec_ok(&["cat", "/srv/checkout/data/new.csv"])
            .unwrap(),
        "id,total\n3,1.00\n"
    );
}

const UDP_ECHO: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 19053))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(b"pod:" + data, peer)
"#;

const UDP_CLIENT: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
s.sendto(b"ping", ("127.0.0.1", 19053))
data, source = s.recvfrom(2048)
print(data.decode(), source)
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(10)
c.connect(("127.0.0.1", 19053))
c.send(b"pong")
print(c.recv(2048).decode(), c.getpeername())
"#;

#[test]
fn udp_datagrams_reach_the_pods_loopback() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let _echo = c.pod.spawn(&["python3", "-c", UDP_ECHO]).unwrap();
    // Wait until the echo answers inside the pod (UDP has no connect to poll).
    let probe = "import socket; s=socket.socket(2,2); s.settimeout(0.2); s.sendto(b'x',('127.0.0.1',19053)); s.recvfrom(64)";
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c
        .pod
        .exec(&["python3", "-c", probe])
        .unwrap()
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "UDP echo never answered in the pod"
        );
    }
    let out = ok(remora_run(&c.pod, &["python3", "-c", UDP_CLIENT]).unwrap());
    assert_eq!(
        out,
        "pod:ping ('127.0.0.1', 19053)\npod:pong ('127.0.0.1', 19053)\n"
    );
    // The batched calls: one sendmmsg to the pod's loopback, one recvmmsg
    // whose sources are the pod's echo (not remora's interceptor).
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("udp_mmsg");
    let built = std::process::Command::new("gcc")
        .arg("-o")
        .arg(&program)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/apps/c/udp_mmsg.c"))
        .status()
        .unwrap();
    assert!(built.success());
    let out = ok(remora_run(&c.pod, &[program.to_str().unwrap(), "19053"]).unwrap());
    assert_eq!(
        out,
        "sent 2\npod:one from 127.0.0.1:19053\npod:two from 127.0.0.1:19053\n"
    );
}

#[test]
fn split_queues_without_an_operator_are_refused_before_the_command_runs() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let c = checkout_pod(&sandbox).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("remora.toml");
    std::fs::write(
        &config,
        "split_queues = { orders = { type = \"rabbitmq\", message_filter = { \"x-user\" = \"^alice$\" } } }\n",
    )
    .unwrap();
    let ran = dir.path().join("ran");
    let out = remora_run_with(
        &c.pod,
        &["-f", config.to_str().unwrap()],
        &["touch", ran.to_str().unwrap()],
    )
    .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The report wraps its lines (`│` continues one).
    let flat = stderr
        .split_whitespace()
        .filter(|w| *w != "│")
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        flat.contains("queues are split by the operator: set `operator`"),
        "{stderr}"
    );
    assert!(!ran.exists(), "the command must not run without its queues");
}
