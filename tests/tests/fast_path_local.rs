//! End-to-end: the local fast path (issue 16). On the local platform the agent
//! shares the machine, so read-only opens of the pod's regular files and
//! outgoing TCP connects get a real descriptor from inside the pod, handed
//! over with `SCM_RIGHTS` (`remora_agent::broker`, `remora_layer::broker`).
//! Each test runs real programs (cat, dd, python3, curl, redis-cli) both on
//! the fast path and on the proxied path (`REMORA_LOCAL_FAST_PATH=off`, what
//! Kubernetes targets use), checks they see the same bytes, and checks which
//! path was taken, so a silent fallback fails the test.

use remora_tests::{Pod, PodSpec, Sandbox, bin_path, require_sandbox};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const SMALL: &str = "/srv/fp/small.txt";
const MEDIUM: &str = "/srv/fp/medium.txt";
const BIG: &str = "/srv/fp/big.bin";
const CHANGING: &str = "/srv/fp/changing.txt";

/// The two ways a local run reaches the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Fast,
    Proxied,
}

const BOTH: [Path; 2] = [Path::Fast, Path::Proxied];

/// `remora run --target <pod> [flags] -- args` on `path`.
fn remora(pod: &Pod, path: Path, flags: &[&str], args: &[&str]) -> Command {
    let mut cmd = Command::new(bin_path("remora").unwrap());
    cmd.args(["run", "--target", &pod.target()])
        .args(flags)
        .arg("--")
        .args(args);
    match path {
        Path::Fast => cmd.env_remove("REMORA_LOCAL_FAST_PATH"),
        Path::Proxied => cmd.env("REMORA_LOCAL_FAST_PATH", "off"),
    };
    cmd
}

#[track_caller]
fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lines(n: usize) -> String {
    (0..n)
        .map(|i| format!("line {i:05} of the pod's file\n"))
        .collect()
}

/// Deterministic bytes that are not text.
fn pattern(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

const PY_BYTEWISE: &str = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
link = os.readlink(f"/proc/self/fd/{fd}")
data = bytearray()
while True:
    b = os.read(fd, 1)
    if not b:
        break
    data += b
os.close(fd)
sys.stdout.write(link + "\n" + data.decode())
"#;

#[test]
fn cat_dd_and_python_read_the_pods_files_on_the_fast_and_the_proxied_path() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let small = lines(30);
    let medium = lines(7 * 1024 / 29 + 1);
    let pod = sandbox
        .pod(
            PodSpec::new("fastfiles")
                .file(SMALL, small.clone())
                .file(MEDIUM, medium.clone())
                .file(BIG, pattern(3 << 20)),
        )
        .unwrap();
    let big_sum = pod.exec_ok(&["sha256sum", BIG]).unwrap();
    let big_sum = big_sum.split_whitespace().next().unwrap().to_owned();
    for path in BOTH {
        let out = ok(remora(&pod, path, &[], &["cat", SMALL]).output().unwrap());
        assert_eq!(out, small, "{path:?}: cat");

        let script = format!("dd if={BIG} bs=1M status=none | sha256sum");
        let out = ok(remora(&pod, path, &[], &["sh", "-c", &script])
            .output()
            .unwrap());
        assert_eq!(
            out.split_whitespace().next(),
            Some(big_sum.as_str()),
            "{path:?}: dd"
        );

        let out = ok(
            remora(&pod, path, &[], &["python3", "-c", PY_BYTEWISE, MEDIUM])
                .output()
                .unwrap(),
        );
        let (link, content) = out.split_once('\n').unwrap();
        assert_eq!(content, medium, "{path:?}: python3 one byte per read");
        // The fast path hands over the pod's file itself; the proxied path a
        // snapshot (a memfd named after the file).
        match path {
            Path::Fast => assert!(!link.starts_with("/memfd:"), "fast path not taken: {link}"),
            Path::Proxied => assert!(link.starts_with("/memfd:remora:"), "{link}"),
        }
    }
    // A missing file fails like in the pod, on both paths.
    for path in BOTH {
        let out = remora(&pod, path, &[], &["cat", "/srv/fp/missing"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{path:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("No such file"),
            "{path:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Reads the file, waits for a line on stdin (the test rewrites the file in
/// the pod meanwhile), then opens it again until the new content shows (for
/// at most 60 s) and reads the first descriptor again from the start.
const PY_STALENESS: &str = r#"
import sys, time
path = sys.argv[1]
held = open(path)
first = held.read()
print("first", first.strip(), flush=True)
sys.stdin.readline()
deadline = time.time() + 60
again = first
while time.time() < deadline:
    with open(path) as f:
        again = f.read()
    if again != first:
        break
    time.sleep(0.05)
print("reopened", again.strip(), flush=True)
held.seek(0)
print("held", held.read().strip(), flush=True)
"#;

/// The documented promise (docs/architecture.md, "Freshness of remote files"):
/// every open sees the pod's file as it is at that open, on both paths; a
/// descriptor already open sees later changes on the fast path (it is the
/// pod's file) and keeps the content of its open on the proxied path (a
/// snapshot).
#[test]
fn a_pod_file_rewritten_after_open_is_read_fresh_by_the_next_open() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let pod = sandbox
        .pod(PodSpec::new("fastfresh").file(CHANGING, "version 1\n"))
        .unwrap();
    for path in BOTH {
        pod.exec_ok(&["sh", "-c", &format!("printf 'version 1\\n' > {CHANGING}")])
            .unwrap();
        let mut child = remora(&pod, path, &[], &["python3", "-c", PY_STALENESS, CHANGING])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        assert_eq!(first.trim(), "first version 1", "{path:?}");
        // Rewritten in place (same inode), as editors without a rename and
        // `echo > file` do.
        pod.exec_ok(&["sh", "-c", &format!("printf 'version 2\\n' > {CHANGING}")])
            .unwrap();
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let out = child.wait_with_output().unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
        assert!(
            out.status.success(),
            "{path:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let held = match path {
            Path::Fast => "version 2",
            Path::Proxied => "version 1",
        };
        assert_eq!(
            rest,
            format!("reopened version 2\nheld {held}\n"),
            "{path:?}"
        );
    }
}

/// Which network namespace a connected socket lives in, against the
/// program's own (`SIOCGSKNS`).
const PY_CONNECT: &str = r#"
import fcntl, os, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
s.sendall(b"GET /hello.txt HTTP/1.0\r\n\r\n")
body = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    body += chunk
nsfd = fcntl.ioctl(s.fileno(), 0x894C)  # SIOCGSKNS
sock_ns = os.readlink(f"/proc/self/fd/{nsfd}")
own_ns = os.readlink("/proc/self/ns/net")
print("pod-netns" if sock_ns != own_ns else "own-netns")
print(body.split(b"\r\n\r\n", 1)[1].decode(), end="")
"#;

#[test]
fn curl_redis_cli_and_python_connect_from_the_pod_on_the_fast_and_the_proxied_path() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let pod = sandbox
        .pod(PodSpec::new("fastout").file("/srv/www/hello.txt", "hello from the pod\n"))
        .unwrap();
    let _http = pod
        .spawn(&[
            "python3",
            "-m",
            "http.server",
            "18080",
            "--bind",
            "127.0.0.1",
            "--directory",
            "/srv/www",
        ])
        .unwrap();
    let _redis = pod
        .command("redis-server")
        .unwrap()
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            "16380",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    pod.wait_for_tcp(18080, Duration::from_secs(30)).unwrap();
    pod.wait_for_tcp(16380, Duration::from_secs(30)).unwrap();
    for path in BOTH {
        let out = ok(remora(
            &pod,
            path,
            &[],
            &[
                "curl",
                "-sS",
                "-m",
                "30",
                "http://127.0.0.1:18080/hello.txt",
            ],
        )
        .output()
        .unwrap());
        assert_eq!(out, "hello from the pod\n", "{path:?}: curl");

        let script = "redis-cli -h 127.0.0.1 -p 16380 set fastkey v1 && \
                      redis-cli -h 127.0.0.1 -p 16380 get fastkey";
        let out = ok(remora(&pod, path, &[], &["sh", "-c", script])
            .output()
            .unwrap());
        assert_eq!(out, "OK\nv1\n", "{path:?}: redis-cli");

        let out = ok(
            remora(&pod, path, &[], &["python3", "-c", PY_CONNECT, "18080"])
                .output()
                .unwrap(),
        );
        let expected_ns = match path {
            // The program holds the socket the agent connected in the pod.
            Path::Fast => "pod-netns",
            // The program's socket goes to the intproxy's interceptor here.
            Path::Proxied => "own-netns",
        };
        assert_eq!(
            out,
            format!("{expected_ns}\nhello from the pod\n"),
            "{path:?}: python3"
        );
    }
    // A refused connection is refused on both paths.
    for path in BOTH {
        let out = remora(
            &pod,
            path,
            &[],
            &["curl", "-sS", "-m", "30", "http://127.0.0.1:18099/"],
        )
        .output()
        .unwrap();
        assert!(!out.status.success(), "{path:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("onnect"), "{path:?}: {stderr}");
    }
}

/// The outgoing filter is applied before anything is handed over: a
/// destination it keeps local reaches this machine's listener, not the pod's.
#[test]
fn the_outgoing_filter_still_decides_before_the_fast_path() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let pod = sandbox
        .pod(PodSpec::new("fastfilter").file("/srv/www/hello.txt", "hello from the pod\n"))
        .unwrap();
    // A local listener on a free port, and the pod's HTTP server on the same one.
    let local = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = local.local_addr().unwrap().port();
    let _http = pod
        .spawn(&[
            "python3",
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
            "/srv/www",
        ])
        .unwrap();
    pod.wait_for_tcp(port, Duration::from_secs(30)).unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = local.accept().unwrap();
        let mut request = [0u8; 1024];
        let _ = std::io::Read::read(&mut conn, &mut request);
        conn.write_all(b"HTTP/1.0 200 OK\r\n\r\nhello from this machine\n")
            .unwrap();
    });
    let dir = tempfile_dir();
    let config = dir.join("remora.toml");
    std::fs::write(
        &config,
        format!("[network.outgoing.filter]\nlocal = [\"127.0.0.1:{port}\"]\n"),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let out = ok(remora(
        &pod,
        Path::Fast,
        &["-f", config],
        &["python3", "-c", PY_CONNECT, &port.to_string()],
    )
    .output()
    .unwrap());
    assert_eq!(out, "own-netns\nhello from this machine\n");
    server.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fresh private directory under the temporary directory.
fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "remora-fast-path-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The PIDs of processes whose command line holds `needle` as one argument.
fn pids_with_arg(needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == needle.as_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}

/// The entries of `dir` named like the fd broker's socket.
fn broker_sockets(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("remora-fd-"))
        })
        .collect()
}

/// Whether a unix socket is bound at `address` in this network namespace
/// (`@NAME` for an abstract name, as `/proc/net/unix` shows it).
fn unix_socket_bound(address: &str) -> bool {
    std::fs::read_to_string("/proc/net/unix")
        .unwrap()
        .lines()
        .any(|line| line.split_whitespace().nth(7) == Some(address))
}

/// The fd broker has an abstract name, so no socket file exists that a
/// killed agent or intproxy could leave behind (each run whose intproxy was
/// SIGKILLed, e.g. by a pod's teardown, left one in the temporary directory
/// before), and the name is gone as soon as the agent is.
#[test]
fn no_fd_broker_socket_is_left_when_the_agent_and_the_intproxy_are_killed() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let pod = sandbox
        .pod(PodSpec::new("fpleak").file(SMALL, "from the pod\n"))
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let script = format!("cat {SMALL}; read line; echo done");
    let mut run = remora(&pod, Path::Fast, &[], &["sh", "-c", &script])
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(run.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "from the pod\n");
    // `remora run` became the shell: its environment names the broker.
    let environ = std::fs::read(format!("/proc/{}/environ", run.id())).unwrap();
    let broker = environ
        .split(|b| *b == 0)
        .filter_map(|v| std::str::from_utf8(v).ok())
        .find_map(|v| v.strip_prefix("REMORA_FD_BROKER="))
        .expect("the run's fd broker in its environment")
        .to_owned();
    assert!(broker.starts_with("@remora-fd-"), "{broker}");
    assert!(unix_socket_bound(&broker), "{broker} is not listening");
    assert_eq!(broker_sockets(tmp.path()), Vec::<std::path::PathBuf>::new());
    let agents = pids_with_arg(&broker);
    assert_eq!(agents.len(), 1, "the agent serving {broker}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", agents[0])).unwrap();
    let intproxy: i32 = status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("the agent's parent");
    for pid in [intproxy, agents[0]] {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    }
    run.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(rest, "done\n");
    run.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while unix_socket_bound(&broker) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!unix_socket_bound(&broker), "{broker} still bound");
    assert_eq!(broker_sockets(tmp.path()), Vec::<std::path::PathBuf>::new());
}

/// The agent's broker requests of one run, as its debug log names them
/// (`REMORA_AGENT_LOG=remora_agent::broker=debug`, on the run's stderr).
fn broker_requests(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| l.contains("fd broker request"))
        .map(str::to_owned)
        .collect()
}

/// Read-only opens under the pod's root are made by the program itself
/// (`openat2` with `RESOLVE_IN_ROOT` under the root the broker handed over
/// once), with no broker round trip; what only the broker can answer still
/// goes to it: a file the program's user may not read (the agent can), and
/// procfs, which answers by who asks (here a pod symlink to
/// `/proc/self/status`: the broker's answer is the agent's own status, as
/// before). A shell as `nobody`, so the refusal is a real one.
#[test]
fn pod_files_are_opened_without_a_broker_round_trip_unless_only_the_broker_can() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let secret = "/srv/fp/secret.txt";
    let status = "/srv/fp/status";
    let pod = sandbox
        .pod(
            PodSpec::new("fpdirect")
                .file(SMALL, "readable by anyone\n")
                .file(secret, "readable by root only\n"),
        )
        .unwrap();
    pod.exec_ok(&["chmod", "600", secret]).unwrap();
    pod.exec_ok(&["ln", "-s", "/proc/self/status", status])
        .unwrap();
    let script = format!(
        "cat {SMALL} {secret}; grep '^Name:' {status}; cat /srv/fp/missing 2>/dev/null || echo missing"
    );
    let as_nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "sh",
        "-c",
        &script,
    ];
    for direct in ["on", "off"] {
        let out = remora(&pod, Path::Fast, &[], &as_nobody)
            .env("REMORA_AGENT_LOG", "remora_agent::broker=debug")
            .env("REMORA_FD_BROKER_DIRECT", direct)
            .output()
            .unwrap();
        let stderr = out.stderr.clone();
        assert_eq!(
            ok(out),
            "readable by anyone\nreadable by root only\nName:\tremora-agent\nmissing\n",
            "direct opens {direct}"
        );
        let requests = broker_requests(&stderr);
        let asked = |path: &str| {
            requests
                .iter()
                .any(|r| r.contains(&format!("OpenRead {{ path: \"{path}\"")))
        };
        // Refused to nobody but not to the agent, and procfs: the broker's.
        assert!(asked(secret), "direct opens {direct}: {requests:#?}");
        assert!(asked(status), "direct opens {direct}: {requests:#?}");
        let roots = requests.iter().filter(|r| r.contains("OpenRoot")).count();
        match direct {
            "on" => {
                assert!(!asked(SMALL), "{requests:#?}");
                assert!(!asked("/srv/fp/missing"), "{requests:#?}");
                // At most one root per program image that opened a pod file.
                assert!(roots >= 1, "{requests:#?}");
            }
            _ => {
                assert!(asked(SMALL), "{requests:#?}");
                assert!(asked("/srv/fp/missing"), "{requests:#?}");
                assert_eq!(roots, 0, "{requests:#?}");
            }
        }
    }
}

/// Programs that close every descriptor above 2 (daemons, `subprocess`
/// children: `close_range`) keep the broker's root and connections, so
/// their next open of a pod file still makes no round trip, and never
/// resolves under a descriptor number the program reused.
#[test]
fn closing_every_descriptor_keeps_the_direct_opens() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let pod = sandbox
        .pod(PodSpec::new("fpclose").file(SMALL, "from the pod\n"))
        .unwrap();
    let script = format!(
        "import os\n\
         print(open('{SMALL}').read(), end='')\n\
         os.closerange(3, 1 << 20)\n\
         d = os.open('/', os.O_RDONLY)\n\
         fd = os.open('{SMALL}', os.O_RDONLY)\n\
         print(os.readlink(f'/proc/self/fd/{{fd}}'))\n\
         print(os.read(fd, 100).decode(), end='')\n"
    );
    let out = remora(&pod, Path::Fast, &[], &["python3", "-c", &script])
        .env("REMORA_AGENT_LOG", "remora_agent::broker=debug")
        .output()
        .unwrap();
    let stderr = out.stderr.clone();
    let out = ok(out);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!((lines[0], lines[2]), ("from the pod", "from the pod"));
    // Still the pod's file itself, not a snapshot of the proxied path.
    assert!(!lines[1].starts_with("/memfd:"), "fast path lost: {out}");
    let requests = broker_requests(&stderr);
    assert!(
        !requests.iter().any(|r| r.contains("OpenRead")),
        "{requests:#?}"
    );
    assert_eq!(
        requests.iter().filter(|r| r.contains("OpenRoot")).count(),
        1,
        "{requests:#?}"
    );
}
