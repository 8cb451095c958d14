//! Layer-level suite (rung 2 of the testing ladder): real programs (python3,
//! curl, getent, hostname, cat, ls, bash) with the real `libremora_layer.so`
//! preloaded, against an in-process intproxy connected to a scripted agent.
//!
//! Every test asserts both what the program printed and what the agent was
//! asked. The only real network traffic is on loopback: the fake agent maps
//! remote addresses (10.9.9.x) to servers on 127.0.0.1 and refuses the rest.
//!
//! Needs `cargo build -p remora-layer` first; the tests fail (never skip)
//! when the library is missing.

mod support;

use bytes::Bytes;
use remora_config::Config;
use remora_protocol::fs::FsRequest;
use remora_protocol::incoming::{
    HttpFilter, HttpRequestHead, HttpResponseHead, HttpVersion, IncomingClient, IncomingMode,
    IncomingServer, RemotePort,
};
use remora_protocol::outgoing::MAX_CHUNK;
use remora_protocol::{ConnectionId, HttpRequestId, RemoteAddr, Request};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::fake_agent::POD_LOCAL_ADDR;
use support::harness::{self, LAYER_DEBUG_ENV, python};
use support::http::HttpServer;
use support::staging::*;

/// `curl` that gives up quickly instead of hanging on a broken redirection.
fn curl_args(url: &str) -> Vec<&str> {
    vec!["-sS", "--connect-timeout", "5", "--max-time", "15", url]
}

fn http_url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

#[track_caller]
fn assert_no_remora_lines(out: &harness::Finished) {
    assert!(
        out.remora_lines().is_empty(),
        "the layer warned unexpectedly:\n{out}"
    );
}

// ---------------------------------------------------------------------------
// 1. DNS
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_python_getaddrinfo_resolves_in_the_target() {
    let h = default_harness().await;
    let out = h
        .python(&format!(
            "import socket; print(socket.getaddrinfo('{BACKEND}', 80)[0][4][0])"
        ))
        .await;
    out.assert_success();
    assert_eq!(out.stdout.trim(), BACKEND_IP.to_string(), "{out}");
    assert_eq!(h.agent.lookups(), vec![BACKEND.to_string()]);
    assert_no_remora_lines(&out);

    // gethostbyname() and an IPv4-only getaddrinfo() go the same way.
    let out = h
        .python(&format!(
            "import socket\n\
             print(socket.gethostbyname('{CHILD_NAME}'))\n\
             print(socket.getaddrinfo('{BACKEND}', 'http', socket.AF_INET, socket.SOCK_STREAM)[0][4])\n"
        ))
        .await;
    out.assert_success();
    assert_eq!(
        out.stdout,
        format!("{CHILD_IP}\n('{BACKEND_IP}', 80)\n"),
        "{out}"
    );
    assert_eq!(
        h.agent.lookups(),
        vec![
            BACKEND.to_string(),
            CHILD_NAME.to_string(),
            BACKEND.to_string()
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_concurrent_lookups_from_many_threads_all_get_their_answer() {
    let h = default_harness().await;
    let out = h
        .python(&format!(
            "import socket, threading\n\
             expected = {{'{BACKEND}': '{BACKEND_IP}', '{CHILD_NAME}': '{CHILD_IP}'}}\n\
             names = list(expected)\n\
             wrong = []\n\
             def work(i):\n\
             \x20   for j in range(25):\n\
             \x20       name = names[(i + j) % 2]\n\
             \x20       got = socket.getaddrinfo(name, 80)[0][4][0]\n\
             \x20       if got != expected[name]:\n\
             \x20           wrong.append((name, got))\n\
             threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]\n\
             for t in threads: t.start()\n\
             for t in threads: t.join()\n\
             print('wrong', wrong)\n"
        ))
        .await;
    out.assert_success();
    assert_eq!(out.stdout, "wrong []\n", "{out}");
    assert_eq!(h.agent.lookups().len(), 8 * 25);
    assert_no_remora_lines(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_getent_ahosts_resolves_in_the_target() {
    let h = default_harness().await;
    let out = h.run("getent", &["ahosts", BACKEND]).await;
    out.assert_success();
    let lines: Vec<Vec<&str>> = out
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    // One line per socket type; the first carries the canonical name.
    assert_eq!(
        lines.first().map(Vec::as_slice),
        Some(&["10.1.2.3", "STREAM", BACKEND][..]),
        "{out}"
    );
    assert!(
        lines.iter().all(|l| l.first() == Some(&"10.1.2.3")),
        "every address is the target's: {out}"
    );
    assert_eq!(h.agent.lookups(), vec![BACKEND.to_string()]);
    assert_no_remora_lines(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_name_unknown_to_the_target_raises_gaierror() {
    let h = default_harness().await;
    let out = h
        .python(&format!(
            "import socket\n\
             try:\n    socket.getaddrinfo('{UNKNOWN_NAME}', 80)\n    print('resolved')\n\
             except socket.gaierror as e:\n    print('gaierror', e.errno == socket.EAI_NONAME)\n"
        ))
        .await;
    out.assert_success();
    assert_eq!(out.stdout.trim(), "gaierror True", "{out}");
    // getent's "key not found" exit code.
    let getent = h.run("getent", &["ahosts", UNKNOWN_NAME]).await;
    assert_eq!(getent.code(), Some(2), "{getent}");
    assert_eq!(getent.stdout, "", "{getent}");
    assert_eq!(
        h.agent.lookups(),
        vec![UNKNOWN_NAME.to_string(), UNKNOWN_NAME.to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_ipv6_lookup_with_ai_v4mapped_maps_the_targets_ipv4_answers() {
    let h = default_harness().await;
    // getent ahostsv6 asks for AF_INET6 with AI_V4MAPPED.
    let out = h.run("getent", &["ahostsv6", BACKEND]).await;
    out.assert_success();
    assert_eq!(
        out.stdout
            .lines()
            .next()
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["::ffff:10.1.2.3", "STREAM", BACKEND]),
        "{out}"
    );
    let py = h
        .python(&format!(
            "import socket\n\
             print(socket.getaddrinfo('{BACKEND}', 80, socket.AF_INET6, socket.SOCK_STREAM, 0, \
             socket.AI_V4MAPPED)[0][4][:2])\n"
        ))
        .await;
    py.assert_success();
    assert_eq!(py.stdout, "('::ffff:10.1.2.3', 80)\n", "{py}");
    assert_eq!(
        h.agent.lookups(),
        vec![BACKEND.to_string(), BACKEND.to_string()]
    );
}

// ---------------------------------------------------------------------------
// 2. Outgoing TCP
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_curl_reaches_the_service_behind_the_remote_address() {
    let h = default_harness().await;
    let url = http_url(HTTP_REMOTE, HELLO_PATH);
    let out = h.run("curl", &curl_args(&url)).await;
    out.assert_success();
    assert_eq!(out.stdout, HELLO_BODY, "{out}");
    assert_eq!(h.agent.connects(), vec![RemoteAddr::Ip(HTTP_REMOTE)]);
    // The request went app → interceptor → intproxy → agent → server.
    let sent = String::from_utf8_lossy(&h.agent.outgoing_bytes()).into_owned();
    assert!(
        sent.starts_with(&format!("GET {HELLO_PATH} HTTP/1.1\r\n")),
        "the agent relayed: {sent:?}"
    );
    let heads = h.http.heads();
    assert_eq!(
        heads.len(),
        1,
        "the server got exactly one request: {heads:?}"
    );
    assert!(
        heads[0].contains("Host: 10.9.9.9"),
        "curl addressed the remote service: {heads:?}"
    );
    assert_no_remora_lines(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_curl_by_name_resolves_and_connects_in_the_target() {
    let h = default_harness().await;
    let url = format!("http://{BACKEND}{HELLO_PATH}");
    let mut args = curl_args(&url);
    args.extend(["-w", "%{remote_ip}:%{remote_port}\n"]);
    let out = h.run("curl", &args).await;
    out.assert_success();
    // curl reports the remote peer the layer shows it, not the interceptor.
    assert_eq!(out.stdout, format!("{HELLO_BODY}{BACKEND_HTTP}\n"), "{out}");
    assert_eq!(h.agent.lookups(), vec![BACKEND.to_string()]);
    assert_eq!(h.agent.connects(), vec![RemoteAddr::Ip(BACKEND_HTTP)]);
    let heads = h.http.heads();
    assert!(
        heads.len() == 1 && heads[0].contains(&format!("Host: {BACKEND}")),
        "{heads:?}"
    );
    assert_no_remora_lines(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_large_transfers_both_ways_through_the_interceptor() {
    // Several MiB each way: many 64 KiB chunks, so back-pressure and
    // chunking on every hop (interceptor, intproxy link, agent) are exercised.
    let big: String = (0..5 * 1024 * 1024 / 64)
        .map(|i| format!("{i:063}\n"))
        .collect();
    let h = staging_harness_with(Config::default(), &[("/big.txt", &big)]).await;
    let upload: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(h.workdir().join("upload.bin"), &upload).expect("writing the upload");

    let get_url = http_url(HTTP_REMOTE, "/big.txt");
    let mut get = curl_args(&get_url);
    get.extend(["-o", "big.out"]);
    h.run("curl", &get).await.assert_success();
    let got = std::fs::read(h.workdir().join("big.out")).expect("reading the download");
    assert!(
        got == big.as_bytes(),
        "download corrupted: {} bytes, expected {}",
        got.len(),
        big.len()
    );

    let post_url = http_url(HTTP_REMOTE, "/echo");
    let mut post = curl_args(&post_url);
    post.extend([
        "-H",
        "Expect:",
        "--data-binary",
        "@upload.bin",
        "-o",
        "echoed.bin",
    ]);
    h.run("curl", &post).await.assert_success();
    let echoed = std::fs::read(h.workdir().join("echoed.bin")).expect("reading the echo");
    assert!(
        echoed == upload,
        "upload corrupted: echoed {} bytes, sent {}",
        echoed.len(),
        upload.len()
    );
    assert_eq!(
        h.agent.connects(),
        vec![RemoteAddr::Ip(HTTP_REMOTE), RemoteAddr::Ip(HTTP_REMOTE)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_repeated_connect_does_not_open_a_second_remote_stream() {
    // Regression: connect() called again on a non-blocking socket (how Ruby's
    // connect_nonblock and many C loops learn the result) opened a second
    // stream from the target to the same service.
    let h = default_harness().await;
    let out = h
        .python(&format!(
            "import errno, select, socket\n\
             s = socket.socket()\n\
             s.setblocking(False)\n\
             first = s.connect_ex(('10.9.9.9', 80))\n\
             select.select([], [s], [], 10)\n\
             second = s.connect_ex(('10.9.9.9', 80))\n\
             print('first', errno.errorcode.get(first, first))\n\
             print('second ok', second in (0, errno.EISCONN))\n\
             s.setblocking(True)\n\
             s.sendall(b'GET {HELLO_PATH} HTTP/1.0\\r\\n\\r\\n')\n\
             data = b''\n\
             while True:\n\
             \x20   chunk = s.recv(4096)\n\
             \x20   if not chunk: break\n\
             \x20   data += chunk\n\
             print(data.split(b'\\r\\n\\r\\n', 1)[1].decode(), end='')\n"
        ))
        .await;
    out.assert_success();
    assert_eq!(
        out.stdout,
        format!("first EINPROGRESS\nsecond ok True\n{HELLO_BODY}"),
        "{out}"
    );
    assert_eq!(h.agent.connects(), vec![RemoteAddr::Ip(HTTP_REMOTE)]);
    assert_eq!(h.http.heads().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_dual_stack_socket_reaches_an_ipv4_mapped_peer() {
    // What Java and other dual-stack clients do: an AF_INET6 socket
    // connecting to ::ffff:a.b.c.d.
    let h = default_harness().await;
    let out = h
        .python(&format!(
            "import socket\n\
             s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)\n\
             s.settimeout(10)\n\
             s.connect(('::ffff:10.9.9.9', 80))\n\
             print(s.getpeername()[:2])\n\
             s.sendall(b'GET {HELLO_PATH} HTTP/1.0\\r\\n\\r\\n')\n\
             data = b''\n\
             while True:\n\
             \x20   chunk = s.recv(4096)\n\
             \x20   if not chunk: break\n\
             \x20   data += chunk\n\
             print(data.split(b'\\r\\n\\r\\n', 1)[1].decode(), end='')\n"
        ))
        .await;
    out.assert_success();
    assert_eq!(
        out.stdout,
        format!("('::ffff:10.9.9.9', 80)\n{HELLO_BODY}"),
        "{out}"
    );
    assert_eq!(h.agent.connects().len(), 1);
    assert_eq!(h.http.heads().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_python_sees_the_remote_peer_not_the_interceptor() {
    let h = default_harness().await;
    let code = format!(
        "import socket\n\
         s = socket.create_connection(('10.9.9.9', 80))\n\
         print('peer', s.getpeername())\n\
         print('local', s.getsockname())\n\
         s.sendall(b'GET {HELLO_PATH} HTTP/1.0\\r\\nHost: 10.9.9.9\\r\\n\\r\\n')\n\
         data = b''\n\
         while True:\n    chunk = s.recv(4096)\n    if not chunk: break\n    data += chunk\n\
         print('body', repr(data.split(b'\\r\\n\\r\\n', 1)[1].decode()))\n\
         d = s.dup()\n\
         print('dup peer', d.getpeername())\n\
         old = s.fileno()\n\
         d.close()\n\
         s.close()\n\
         a, b = socket.socketpair()\n\
         print('fd reused', old in (a.fileno(), b.fileno()), 'peers', a.getpeername(), b.getpeername())\n"
    );
    let out = h.python(&code).await;
    out.assert_success();
    // A duplicate shows the same peer; a new local socket that reuses the
    // closed fd number is not mistaken for the redirected one.
    let expected = format!(
        "peer ('10.9.9.9', 80)\nlocal ('{}', {})\nbody {:?}\ndup peer ('10.9.9.9', 80)\n\
         fd reused True peers  \n",
        POD_LOCAL_ADDR.ip(),
        POD_LOCAL_ADDR.port(),
        HELLO_BODY
    );
    // Python's repr of a str uses single quotes.
    let expected = expected.replace('"', "'");
    assert_eq!(out.stdout, expected, "{out}");
    assert_eq!(h.agent.connects(), vec![RemoteAddr::Ip(HTTP_REMOTE)]);
    assert_eq!(h.http.heads().len(), 1);
    assert_no_remora_lines(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_connect_refused_by_the_target_is_econnrefused() {
    let h = default_harness().await;
    let url = http_url(REFUSED_REMOTE, HELLO_PATH);
    let curl = h.run("curl", &curl_args(&url)).await;
    assert_eq!(curl.code(), Some(7), "curl: couldn't connect\n{curl}");
    let py = h
        .python(
            "import socket\n\
             try:\n    socket.create_connection(('10.9.9.10', 80), timeout=10)\n    print('connected')\n\
             except ConnectionRefusedError:\n    print('refused')\n",
        )
        .await;
    py.assert_success();
    assert_eq!(py.stdout.trim(), "refused", "{py}");
    assert_eq!(
        h.agent.connects(),
        vec![
            RemoteAddr::Ip(REFUSED_REMOTE),
            RemoteAddr::Ip(REFUSED_REMOTE)
        ]
    );
    assert!(
        h.http.heads().is_empty(),
        "nothing reached the local server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_stream_answered_by_the_target_itself() {
    let h = default_harness().await;
    let out = h
        .python(
            "import socket\n\
             s = socket.create_connection(('10.9.9.11', 7000), timeout=10)\n\
             s.sendall(b'ping')\n\
             s.shutdown(socket.SHUT_WR)\n\
             data = b''\n\
             while True:\n    chunk = s.recv(4096)\n    if not chunk: break\n    data += chunk\n\
             print(data.decode(), end='')\n",
        )
        .await;
    out.assert_success();
    assert_eq!(out.stdout, CANNED_GREETING, "{out}");
    assert_eq!(h.agent.connects(), vec![RemoteAddr::Ip(CANNED_REMOTE)]);
    // The fake target answers without waiting for the request: the bytes
    // may reach it just after the program got its answer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.agent.outgoing_bytes().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.agent.outgoing_bytes(), b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_udp_datagrams_go_through_the_target_both_ways() {
    let h = default_harness().await;
    let out = h
        .python(
            "import socket\n\
             u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             u.settimeout(10)\n\
             u.sendto(b'ping', ('10.9.9.12', 9999))\n\
             data, source = u.recvfrom(100)\n\
             print('unconnected', data, source)\n\
             c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             c.settimeout(10)\n\
             c.connect(('10.9.9.12', 9999))\n\
             c.send(b'pong')\n\
             print('connected', c.recv(100), c.getpeername())\n",
        )
        .await;
    out.assert_success();
    assert_eq!(
        out.stdout,
        "unconnected b'PING' ('10.9.9.12', 9999)\nconnected b'PONG' ('10.9.9.12', 9999)\n",
        "{out}"
    );
    assert_eq!(
        h.agent.connects(),
        vec![RemoteAddr::Ip(UDP_REMOTE), RemoteAddr::Ip(UDP_REMOTE)]
    );
    assert_eq!(h.udp.received(), vec![b"ping".to_vec(), b"pong".to_vec()]);
    assert_no_remora_lines(&out);
}

// ---------------------------------------------------------------------------
// 3. Hostname
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostname_is_the_targets() {
    let h = default_harness().await;
    let out = h.run("hostname", &[]).await;
    out.assert_success();
    assert_eq!(out.stdout.trim(), POD_HOSTNAME, "{out}");
    assert!(h.agent.requests().contains(&Request::Hostname));
    assert_no_remora_lines(&out);
    let py = h.python("import socket; print(socket.gethostname())").await;
    py.assert_success();
    assert_eq!(py.stdout.trim(), POD_HOSTNAME, "{py}");
}

// ---------------------------------------------------------------------------
// 4. Files
// ---------------------------------------------------------------------------

/// Fail clearly when the layer has no file hooks (rather than failing on
/// whatever the local file system happens to say).
fn require_file_hooks() {
    let layer = harness::layer_path();
    let out = std::process::Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&layer)
        .output()
        .unwrap_or_else(|e| panic!("running nm on {}: {e}", layer.display()));
    let exported = String::from_utf8_lossy(&out.stdout);
    let has = |sym: &str| {
        exported
            .lines()
            .any(|l| l.split_whitespace().last() == Some(sym))
    };
    for sym in ["open", "opendir"] {
        assert!(
            has(sym),
            "{} exports no `{sym}`: the file hooks are missing (rebuild with \
             `cargo build -p remora-layer`)",
            layer.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_cat_reads_a_remote_file() {
    require_file_hooks();
    let h = default_harness().await;
    let out = h.run("cat", &[REMOTE_CONFIG]).await;
    out.assert_success();
    assert_eq!(out.stdout, REMOTE_CONFIG_BODY, "{out}");
    assert!(
        h.agent.fs_requests().iter().any(
            |r| matches!(r, FsRequest::Open(o) if o.path == REMOTE_CONFIG && !o.options.write)
        ),
        "the agent saw a read-only Open of {REMOTE_CONFIG}: {:?}",
        h.agent.fs_requests()
    );
    assert_no_remora_lines(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_python_reads_a_remote_file() {
    require_file_hooks();
    let h = default_harness().await;
    let out = h
        .python(&format!(
            "import os\n\
             print(open('{REMOTE_CONFIG}').read(), end='')\n\
             print('size', os.stat('{REMOTE_CONFIG}').st_size)\n\
             print('missing exists', os.path.exists('{REMOTE_MISSING}'))\n\
             print('listdir', sorted(os.listdir('{REMOTE_DIR}')))\n"
        ))
        .await;
    out.assert_success();
    let names: Vec<&str> = REMOTE_DIR_ENTRIES.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        out.stdout,
        format!(
            "{REMOTE_CONFIG_BODY}size {}\nmissing exists False\nlistdir {names:?}\n",
            REMOTE_CONFIG_BODY.len()
        )
        .replace('"', "'"),
        "{out}"
    );
    assert!(
        h.agent.fs_paths().iter().any(|p| p == REMOTE_CONFIG),
        "{:?}",
        h.agent.fs_requests()
    );
    assert_no_remora_lines(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_missing_remote_file_is_enoent() {
    require_file_hooks();
    let h = default_harness().await;
    let out = h.run("cat", &[REMOTE_MISSING]).await;
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(
        out.stderr
            .contains(&format!("{REMOTE_MISSING}: No such file or directory")),
        "{out}"
    );
    assert!(
        h.agent.fs_paths().iter().any(|p| p == REMOTE_MISSING),
        "the agent was asked for {REMOTE_MISSING}: {:?}",
        h.agent.fs_requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_ls_lists_a_remote_directory() {
    require_file_hooks();
    let h = default_harness().await;
    let out = h.run("ls", &[REMOTE_DIR]).await;
    out.assert_success();
    let listed: Vec<&str> = out.stdout.lines().collect();
    let expected: Vec<&str> = REMOTE_DIR_ENTRIES.iter().map(|(n, _)| *n).collect();
    assert_eq!(listed, expected, "{out}");
    let fs = h.agent.fs_requests();
    assert!(
        fs.iter()
            .any(|r| matches!(r, FsRequest::OpenDir { path } if path == REMOTE_DIR)),
        "{fs:?}"
    );
    assert!(
        fs.iter()
            .any(|r| matches!(r, FsRequest::ReadDirBatch { .. })),
        "{fs:?}"
    );
    assert_no_remora_lines(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_local_by_default_paths_never_reach_the_agent() {
    require_file_hooks();
    let h = default_harness().await;
    let local_file = h.workdir().join("local.txt");
    std::fs::write(&local_file, "local content\n").expect("writing a local file");
    let local_abs = local_file.to_string_lossy().into_owned();
    let os_release = std::fs::read_to_string("/usr/lib/os-release")
        .expect("this machine has /usr/lib/os-release");

    let cat = h
        .run("cat", &["/usr/lib/os-release", "local.txt", &local_abs])
        .await;
    cat.assert_success();
    assert_eq!(
        cat.stdout,
        format!("{os_release}local content\nlocal content\n"),
        "{cat}"
    );
    let ls = h.run("ls", &["-1"]).await;
    ls.assert_success();
    assert_eq!(ls.stdout, "local.txt\n", "{ls}");
    let py = h
        .python(
            "import os; print(open('local.txt').read(), end=''); print(sorted(os.listdir('.')))",
        )
        .await;
    py.assert_success();
    assert_eq!(py.stdout, "local content\n['local.txt']\n", "{py}");

    let workdir = h.workdir().to_string_lossy().into_owned();
    let leaked: Vec<String> = h
        .agent
        .fs_paths()
        .into_iter()
        .filter(|p| p.starts_with("/usr/lib/") || p.starts_with(&workdir))
        .collect();
    assert!(
        leaked.is_empty(),
        "local paths reached the agent: {leaked:?}"
    );
}

// ---------------------------------------------------------------------------
// 5. Losing the agent
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_loss_fails_remote_calls_fast_and_keeps_local_ones_working() {
    // Loopback stays local, so a local service can show that local traffic
    // survives the agent.
    let mut config = Config::default();
    config.network.outgoing.ignore_localhost = true;
    let h = staging_harness(config).await;
    let code = format!(
        "import socket, sys\n\
         def lookup():\n\
         \x20   try:\n\
         \x20       return socket.getaddrinfo('{BACKEND}', 80)[0][4][0]\n\
         \x20   except socket.gaierror as e:\n\
         \x20       return 'gaierror'\n\
         print('before', lookup(), flush=True)\n\
         sys.stdin.readline()\n\
         print('after', lookup(), flush=True)\n\
         print('again', lookup(), flush=True)\n\
         print('local file', len(open('/usr/lib/os-release').read()) > 0, flush=True)\n"
    );
    let mut py = h.spawn_interactive(python(), &["-c", &code]);
    assert_eq!(py.line().await, format!("before {BACKEND_IP}"));

    h.agent.drop_connections().await;
    let started = Instant::now();
    py.send_line("go").await;
    let out = py.finish().await;
    let elapsed = started.elapsed();
    out.assert_success();
    assert_eq!(
        out.stdout,
        format!("before {BACKEND_IP}\nafter gaierror\nagain gaierror\nlocal file True\n"),
        "{out}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "remote calls failed slowly ({elapsed:?}) after the agent was lost"
    );
    let warnings = out.remora_lines();
    assert_eq!(
        warnings.len(),
        1,
        "exactly one `remora:` warning line for the lost agent:\n{out}"
    );
    assert!(
        warnings[0].contains("agent"),
        "the warning names the cause:\n{out}"
    );

    // A new process: remote connect fails at once, local traffic works.
    let started = Instant::now();
    let remote = h
        .run("curl", &curl_args(&http_url(HTTP_REMOTE, HELLO_PATH)))
        .await;
    assert_eq!(remote.code(), Some(7), "curl: couldn't connect\n{remote}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "curl failed slowly: {:?}",
        started.elapsed()
    );
    assert_eq!(remote.remora_lines().len(), 1, "{remote}");
    let local = h
        .run("curl", &curl_args(&http_url(h.http.addr(), HELLO_PATH)))
        .await;
    local.assert_success();
    assert_eq!(local.stdout, HELLO_BODY, "{local}");
    // Nothing of the second half reached the (gone) agent.
    assert_eq!(h.agent.lookups(), vec![BACKEND.to_string()]);
    assert!(h.agent.connects().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_loss_ends_open_remote_streams_promptly() {
    let h = default_harness().await;
    // The app holds a connection to a remote service that has not answered
    // yet (no request sent) when the agent goes away.
    let code = "import socket, sys\n\
                s = socket.create_connection(('10.9.9.9', 80), timeout=30)\n\
                print('connected', flush=True)\n\
                sys.stdin.readline()\n\
                try:\n\
                \x20   data = s.recv(4096)\n\
                \x20   print('recv', repr(data), flush=True)\n\
                except OSError as e:\n\
                \x20   print('recv failed', type(e).__name__, flush=True)\n";
    let mut py = h.spawn_interactive(python(), &["-c", code]);
    assert_eq!(py.line().await, "connected");
    h.agent.drop_connections().await;
    let started = Instant::now();
    py.send_line("go").await;
    let out = py.finish().await;
    out.assert_success();
    let last = out.stdout.lines().last().unwrap_or_default().to_string();
    assert!(
        last == "recv b''" || last == "recv failed ConnectionResetError",
        "the stream ends (EOF or reset) when the agent is lost:\n{out}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the stream ended slowly ({:?}) after the agent was lost",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// 6. fork / exec
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_children_load_the_layer_again() {
    require_file_hooks();
    let h = default_harness().await;
    let script = format!(
        "getent ahosts {BACKEND} | head -n 1; \
         {} -c \"import socket; print(socket.getaddrinfo('{CHILD_NAME}', 80)[0][4][0])\"; \
         cat {REMOTE_CONFIG}",
        python()
    );
    let out = h.run("bash", &["-c", &script]).await;
    out.assert_success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2 + REMOTE_CONFIG_BODY.lines().count(), "{out}");
    assert_eq!(lines[2..].join("\n") + "\n", REMOTE_CONFIG_BODY, "{out}");
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["10.1.2.3", "STREAM", BACKEND],
        "{out}"
    );
    assert_eq!(lines[1], CHILD_IP.to_string(), "{out}");
    assert_eq!(
        h.agent.lookups(),
        vec![BACKEND.to_string(), CHILD_NAME.to_string()]
    );
    assert_no_remora_lines(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forked_child_resolves_remotely_and_parent_session_survives() {
    let h = default_harness().await;
    let code = format!(
        "import os, socket\n\
         def look(name):\n    return socket.getaddrinfo(name, 80)[0][4][0]\n\
         print('parent', look('{BACKEND}'), flush=True)\n\
         pid = os.fork()\n\
         if pid == 0:\n\
         \x20   try:\n\
         \x20       print('child', look('{CHILD_NAME}'), flush=True)\n\
         \x20       os._exit(0)\n\
         \x20   except BaseException as e:\n\
         \x20       print('child failed', repr(e), flush=True)\n\
         \x20       os._exit(1)\n\
         _, status = os.waitpid(pid, 0)\n\
         print('child exit', os.waitstatus_to_exitcode(status))\n\
         print('parent again', look('{BACKEND}'), flush=True)\n"
    );
    let out = h.python(&code).await;
    out.assert_success();
    assert_eq!(
        out.stdout,
        format!("parent {BACKEND_IP}\nchild {CHILD_IP}\nchild exit 0\nparent again {BACKEND_IP}\n"),
        "{out}"
    );
    assert_eq!(
        h.agent.lookups(),
        vec![
            BACKEND.to_string(),
            CHILD_NAME.to_string(),
            BACKEND.to_string()
        ]
    );
    assert_no_remora_lines(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forked_child_and_parent_each_open_remote_streams() {
    let h = default_harness().await;
    let code = format!(
        "import os, socket\n\
         def fetch():\n\
         \x20   s = socket.create_connection(('10.9.9.9', 80), timeout=10)\n\
         \x20   s.sendall(b'GET {HELLO_PATH} HTTP/1.0\\r\\n\\r\\n')\n\
         \x20   data = b''\n\
         \x20   while True:\n\
         \x20       chunk = s.recv(4096)\n\
         \x20       if not chunk: break\n\
         \x20       data += chunk\n\
         \x20   return (s.getpeername(), data.split(b'\\r\\n\\r\\n', 1)[1].decode().strip())\n\
         pid = os.fork()\n\
         if pid == 0:\n\
         \x20   try:\n\
         \x20       print('child', fetch(), flush=True)\n\
         \x20       os._exit(0)\n\
         \x20   except BaseException as e:\n\
         \x20       print('child failed', repr(e), flush=True)\n\
         \x20       os._exit(1)\n\
         _, status = os.waitpid(pid, 0)\n\
         print('child exit', os.waitstatus_to_exitcode(status))\n\
         print('parent', fetch(), flush=True)\n"
    );
    let out = h.python(&code).await;
    out.assert_success();
    let fetched = format!("(('10.9.9.9', 80), '{}')", HELLO_BODY.trim());
    assert_eq!(
        out.stdout,
        format!("child {fetched}\nchild exit 0\nparent {fetched}\n"),
        "{out}"
    );
    assert_eq!(h.agent.connects().len(), 2);
    assert_eq!(h.http.heads().len(), 2);
    assert_no_remora_lines(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_survives_a_daemon_style_closerange() {
    // Daemons and process supervisors close every inherited fd
    // (close_range/closefrom), which includes the layer's own connection.
    let h = default_harness().await;
    let out = h
        .python(&format!(
            "import os, socket\n\
             os.closerange(3, 65536)\n\
             print(socket.getaddrinfo('{BACKEND}', 80)[0][4][0])\n\
             print(socket.getaddrinfo('{CHILD_NAME}', 80)[0][4][0])\n"
        ))
        .await;
    out.assert_success();
    assert_eq!(out.stdout, format!("{BACKEND_IP}\n{CHILD_IP}\n"), "{out}");
    assert_eq!(
        h.agent.lookups(),
        vec![BACKEND.to_string(), CHILD_NAME.to_string()]
    );
    assert_no_remora_lines(&out);
}

// ---------------------------------------------------------------------------
// 7. Inactive layer
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inactive_layer_changes_nothing() {
    let http = HttpServer::start(&[(HELLO_PATH, HELLO_BODY)]).await;
    let cwd = tempfile::tempdir().expect("working directory");
    let url = http_url(http.addr(), HELLO_PATH);
    let curl = curl_args(&url);
    let programs: Vec<(&str, Vec<&str>)> = vec![
        ("cat", vec!["/etc/hostname"]),
        ("curl", curl.clone()),
        ("hostname", vec![]),
    ];
    for (program, args) in &programs {
        let plain = harness::run_plain(program, args, cwd.path()).await;
        let preloaded = harness::run_inactive(program, args, cwd.path(), &[]).await;
        assert_eq!(
            (preloaded.status, &preloaded.stdout, &preloaded.stderr),
            (plain.status, &plain.stdout, &plain.stderr),
            "with the inactive layer:\n{preloaded}\nwithout it:\n{plain}"
        );
    }
    assert_eq!(http.heads().len(), 2, "both curls reached the local server");
    // The library really was loaded (and said why it stays inactive).
    let debug = harness::run_inactive(
        "cat",
        &["/etc/hostname"],
        cwd.path(),
        &[(LAYER_DEBUG_ENV, "1")],
    )
    .await;
    debug.assert_success();
    assert!(
        debug
            .stderr
            .contains("remora: layer inactive: REMORA_INTPROXY_ADDR is not set"),
        "{debug}"
    );
}

// ---------------------------------------------------------------------------
// 8. Incoming traffic (stolen connections and filtered HTTP requests)
// ---------------------------------------------------------------------------

/// The peer the fake agent says every incoming request or connection has.
const INCOMING_PEER: &str = "10.0.0.99:5555";
/// Header regex of the filtered-steal tests.
const STEAL_HEADER: &str = "^x-remora: yes$";

fn steal_config(filter: Option<&str>) -> Config {
    let mut config = Config::default();
    config.network.incoming.mode = remora_config::IncomingMode::Steal;
    config.network.incoming.http_filter = filter.map(remora_config::HttpFilter::header);
    config
}

fn incoming_peer() -> SocketAddr {
    INCOMING_PEER.parse().expect("valid peer address")
}

/// Start `code` (which prints its listening port once `listen` returned)
/// under the layer; answer the subscription it makes and return the port.
async fn start_subscribed_app(
    h: &Staging,
    code: &str,
    filter: Option<HttpFilter>,
) -> (harness::Interactive, RemotePort) {
    let mut app = h.spawn_interactive(python(), &["-c", code]);
    // `listen` waits for the agent's answer, so the port comes from the
    // Subscribe before the app can print it.
    let (port, mode, got_filter) = h
        .agent
        .wait_for("a Subscribe", |msgs| {
            msgs.iter().find_map(|m| match m {
                IncomingClient::Subscribe { port, mode, filter } => {
                    Some((*port, *mode, filter.clone()))
                }
                _ => None,
            })
        })
        .await;
    assert_eq!(mode, IncomingMode::Steal);
    assert_eq!(got_filter, filter);
    h.agent
        .inject(IncomingServer::Subscribed {
            port,
            result: Ok(()),
        })
        .await;
    let printed = app.line().await;
    assert_eq!(
        printed.trim(),
        port.0.to_string(),
        "the app listens on the subscribed port"
    );
    (app, port)
}

/// The app's answer to `request`: head and body, or the failure reason.
async fn response_of(
    h: &Staging,
    request: HttpRequestId,
) -> Result<(HttpResponseHead, Vec<u8>), String> {
    let msgs = h
        .agent
        .wait_for("the end of the response", |msgs| {
            msgs.iter()
                .any(|m| {
                    matches!(m,
                        IncomingClient::ResponseBody { request: r, last: true, .. }
                        | IncomingClient::ResponseFailed { request: r, .. } if *r == request)
                })
                .then(|| msgs.to_vec())
        })
        .await;
    let mut head = None;
    let mut body = Vec::new();
    for m in msgs {
        match m {
            IncomingClient::ResponseFailed { request: r, reason } if r == request => {
                assert!(head.is_none(), "failed after the head: {reason}");
                return Err(reason);
            }
            IncomingClient::ResponseHead {
                request: r,
                head: h,
            } if r == request => {
                assert!(head.is_none(), "one head per response");
                head = Some(h);
            }
            IncomingClient::ResponseBody {
                request: r, chunk, ..
            } if r == request => {
                assert!(head.is_some(), "the head comes before the body");
                assert!(chunk.len() <= MAX_CHUNK, "chunk of {} bytes", chunk.len());
                body.extend_from_slice(&chunk);
            }
            _ => {}
        }
    }
    Ok((head.expect("a response head"), body))
}

fn request_head(method: &str, uri: &str, headers: &[(&str, &str)]) -> HttpRequestHead {
    HttpRequestHead {
        method: method.into(),
        uri: uri.into(),
        version: HttpVersion::Http11,
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), Bytes::copy_from_slice(v.as_bytes())))
            .collect(),
    }
}

fn header<'a>(head: &'a HttpResponseHead, name: &str) -> Option<&'a [u8]> {
    head.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_ref())
}

/// `python3 -m http.server` on 127.0.0.1 in the working directory, until
/// stdin closes.
const FILE_SERVER_APP: &str = "import http.server, sys, threading\n\
srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), http.server.SimpleHTTPRequestHandler)\n\
print(srv.server_address[1], flush=True)\n\
threading.Thread(target=srv.serve_forever, daemon=True).start()\n\
sys.stdin.read()\n";

/// Answers every POST with `METHOD PATH X-Remora peer=IP` and the body.
const ECHO_SERVER_APP: &str = "import http.server, sys, threading\n\
class H(http.server.BaseHTTPRequestHandler):\n\
\x20   def do_POST(self):\n\
\x20       body = self.rfile.read(int(self.headers['Content-Length']))\n\
\x20       line = '%s %s %s peer=%s\\n' % (self.command, self.path, self.headers.get('X-Remora'), self.client_address[0])\n\
\x20       out = line.encode() + body\n\
\x20       self.send_response(201)\n\
\x20       self.send_header('Content-Length', str(len(out)))\n\
\x20       self.send_header('X-Echo', 'yes')\n\
\x20       self.end_headers()\n\
\x20       self.wfile.write(out)\n\
srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)\n\
print(srv.server_address[1], flush=True)\n\
threading.Thread(target=srv.serve_forever, daemon=True).start()\n\
sys.stdin.read()\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_filtered_get_is_answered_by_the_local_http_server() {
    let h = staging_harness(steal_config(Some(STEAL_HEADER))).await;
    let content = "hello from the local app\n".repeat(10_000);
    std::fs::write(h.workdir().join("hello.txt"), &content).expect("writing hello.txt");
    let filter = Some(HttpFilter::Header(STEAL_HEADER.into()));
    let (app, port) = start_subscribed_app(&h, FILE_SERVER_APP, filter).await;
    let request = HttpRequestId(1);
    h.agent
        .inject(IncomingServer::Request {
            request,
            port,
            peer: incoming_peer(),
            head: request_head(
                "GET",
                "/hello.txt",
                &[("Host", "svc.ns"), ("X-Remora", "yes")],
            ),
        })
        .await;
    // A bodyless request may still get an empty last chunk: harmless.
    h.agent
        .inject(IncomingServer::RequestBody {
            request,
            chunk: Bytes::new(),
            last: true,
        })
        .await;
    let (head, body) = response_of(&h, request).await.expect("an answer");
    assert_eq!(head.status, 200);
    assert_eq!(
        head.version,
        HttpVersion::Http10,
        "http.server answers HTTP/1.0"
    );
    assert_eq!(
        header(&head, "content-length"),
        Some(content.len().to_string().as_bytes())
    );
    assert_eq!(String::from_utf8_lossy(&body), content);
    let out = app.finish().await;
    out.assert_success();
    assert!(
        out.stderr.contains("10.0.0.99 - - ")
            && out.stderr.contains("\"GET /hello.txt HTTP/1.1\" 200"),
        "the app logs the real peer and the request: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_filtered_post_body_in_chunks_reaches_the_app_intact() {
    let h = staging_harness(steal_config(Some(STEAL_HEADER))).await;
    let filter = Some(HttpFilter::Header(STEAL_HEADER.into()));
    let (app, port) = start_subscribed_app(&h, ECHO_SERVER_APP, filter).await;
    let chunks: Vec<Bytes> = [b'a', b'b', b'c']
        .iter()
        .map(|c| Bytes::from(vec![*c; 50_000]))
        .collect();
    let total: usize = chunks.iter().map(Bytes::len).sum();
    let request = HttpRequestId(7);
    h.agent
        .inject(IncomingServer::Request {
            request,
            port,
            peer: incoming_peer(),
            head: request_head(
                "POST",
                "/upload?x=1",
                &[
                    ("Host", "svc.ns"),
                    ("X-Remora", "yes"),
                    ("Content-Length", &total.to_string()),
                ],
            ),
        })
        .await;
    for (i, chunk) in chunks.iter().enumerate() {
        h.agent
            .inject(IncomingServer::RequestBody {
                request,
                chunk: chunk.clone(),
                last: i == chunks.len() - 1,
            })
            .await;
    }
    let (head, body) = response_of(&h, request).await.expect("an answer");
    assert_eq!(head.status, 201);
    assert_eq!(header(&head, "x-echo"), Some(&b"yes"[..]));
    let mut expected = b"POST /upload?x=1 yes peer=10.0.0.99\n".to_vec();
    for chunk in &chunks {
        expected.extend_from_slice(chunk);
    }
    assert_eq!(body.len(), expected.len());
    assert!(body == expected, "the echoed body differs");
    app.finish().await.assert_success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_request_for_a_port_whose_app_is_gone_fails() {
    let h = staging_harness(steal_config(Some(STEAL_HEADER))).await;
    let filter = Some(HttpFilter::Header(STEAL_HEADER.into()));
    let (app, port) = start_subscribed_app(&h, FILE_SERVER_APP, filter).await;
    app.finish().await.assert_success();
    let request = HttpRequestId(3);
    h.agent
        .inject(IncomingServer::Request {
            request,
            port,
            peer: incoming_peer(),
            head: request_head("GET", "/hello.txt", &[("X-Remora", "yes")]),
        })
        .await;
    let reason = response_of(&h, request)
        .await
        .expect_err("nobody can answer");
    // Either the app's exit already unsubscribed the port, or the intproxy
    // found nothing listening when it dialed.
    assert!(
        reason.contains(&format!("port {}", port.0))
            || reason.contains("connecting to the local app"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_stolen_connection_reaches_the_app_and_its_answer_comes_back() {
    let h = staging_harness(steal_config(None)).await;
    let code = "import socket\n\
s = socket.socket()\n\
s.bind(('127.0.0.1', 0))\n\
s.listen()\n\
print(s.getsockname()[1], flush=True)\n\
c, peer = s.accept()\n\
print('peer', peer[0], peer[1], flush=True)\n\
data = b''\n\
while True:\n\
\x20   d = c.recv(65536)\n\
\x20   if not d: break\n\
\x20   data += d\n\
c.sendall(data.upper())\n\
c.close()\n";
    let (mut app, port) = start_subscribed_app(&h, code, None).await;
    let conn = ConnectionId(42);
    h.agent
        .inject(IncomingServer::NewConnection {
            conn,
            port,
            peer: incoming_peer(),
            local: SocketAddr::new(POD_LOCAL_ADDR.ip(), port.0),
        })
        .await;
    assert_eq!(
        app.line().await,
        "peer 10.0.0.99 5555",
        "accept reports the real peer"
    );
    for data in ["hello ", "stolen"] {
        h.agent
            .inject(IncomingServer::Data {
                conn,
                data: Bytes::from_static(data.as_bytes()),
            })
            .await;
    }
    h.agent.inject(IncomingServer::ShutdownWrite { conn }).await;
    let answer = h
        .agent
        .wait_for("the app's answer and its end", |msgs| {
            let mut answer = Vec::new();
            for m in msgs {
                match m {
                    IncomingClient::Data { conn: c, data } if *c == conn => {
                        answer.extend_from_slice(data);
                    }
                    IncomingClient::ShutdownWrite { conn: c } if *c == conn => {
                        return Some(answer);
                    }
                    _ => {}
                }
            }
            None
        })
        .await;
    assert_eq!(String::from_utf8_lossy(&answer), "HELLO STOLEN");
    app.finish().await.assert_success();
}

/// Speaks HTTP/2 with prior knowledge and nothing else (no HTTP/1 at all):
/// answers the first request stream with `200` and `h2 got <body>`, printing
/// the peer `accept` reported and whether the preface was HTTP/2's. Only the
/// frames a client sends are handled; header blocks are not decoded. It then
/// reads until its peer closes; the `@AFTER_ANSWER@` line runs right after
/// the answer (see [`h2_only_app`]).
const H2_ONLY_APP: &str = "import socket, struct\n\
s = socket.socket()\n\
s.bind(('127.0.0.1', 0))\n\
s.listen()\n\
print(s.getsockname()[1], flush=True)\n\
c, peer = s.accept()\n\
@AFTER_ACCEPT@\n\
print('peer', peer[0], flush=True)\n\
def exact(n):\n\
\x20   data = b''\n\
\x20   while len(data) < n:\n\
\x20       d = c.recv(n - len(data))\n\
\x20       if not d: return None\n\
\x20       data += d\n\
\x20   return data\n\
done = False\n\
def frame(kind, flags, stream, payload=b''):\n\
\x20   if done: return\n\
\x20   c.sendall(struct.pack('>I', len(payload))[1:] + bytes([kind, flags]) + struct.pack('>I', stream) + payload)\n\
preface = exact(24)\n\
print('preface', preface == b'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n', flush=True)\n\
frame(4, 0, 0)\n\
body = b''\n\
while True:\n\
\x20   head = exact(9)\n\
\x20   if head is None: break\n\
\x20   length = struct.unpack('>I', b'\\0' + head[:3])[0]\n\
\x20   kind, flags, stream = head[3], head[4], struct.unpack('>I', head[5:])[0] & 0x7fffffff\n\
\x20   payload = exact(length)\n\
\x20   if kind == 4 and not flags & 1: frame(4, 1, 0)\n\
\x20   if kind == 6 and not flags & 1: frame(6, 1, 0, payload)\n\
\x20   if kind == 0: body += payload\n\
\x20   if kind in (0, 1) and flags & 1:\n\
\x20       frame(1, 4, stream, b'\\x88')\n\
\x20       frame(0, 1, stream, b'h2 got ' + body)\n\
\x20       print('answered stream', stream, flush=True)\n\
\x20       @AFTER_ANSWER@\n\
\x20       done = True\n\
c.close()\n";

/// The HTTP/2-only app. `one_shot`: it stops listening as soon as it has
/// accepted its connection and shuts its sending side down right after the
/// answer, as a server that serves one request and exits does; else it
/// keeps both open until the intproxy closes the connection.
fn h2_only_app(one_shot: bool) -> String {
    let (after_accept, after_answer) = if one_shot {
        ("s.close()", "c.shutdown(socket.SHUT_WR)")
    } else {
        ("pass", "pass")
    };
    H2_ONLY_APP
        .replace("@AFTER_ACCEPT@", after_accept)
        .replace("@AFTER_ANSWER@", after_answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_filtered_http2_request_reaches_an_http2_only_app_as_http2() {
    http2_request_to_an_http2_only_app(false).await;
}

/// The app stops listening once it has its connection, answers and shuts
/// its side down in the same breath: the answer still arrives whole. (The
/// intproxy used to abort the requests in flight when the app closed its
/// listener, so such an answer was lost, or cut after its head.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_http2_answer_of_a_one_shot_app_that_half_closes_arrives_whole() {
    http2_request_to_an_http2_only_app(true).await;
}

async fn http2_request_to_an_http2_only_app(one_shot: bool) {
    let h = staging_harness(steal_config(Some(STEAL_HEADER))).await;
    let filter = Some(HttpFilter::Header(STEAL_HEADER.into()));
    let (mut app, port) = start_subscribed_app(&h, &h2_only_app(one_shot), filter).await;
    let request = HttpRequestId(9);
    let mut head = request_head(
        "POST",
        "/h2",
        &[
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "svc.ns"),
            (":path", "/h2"),
            ("x-remora", "yes"),
        ],
    );
    head.version = HttpVersion::Http2;
    h.agent
        .inject(IncomingServer::Request {
            request,
            port,
            peer: incoming_peer(),
            head,
        })
        .await;
    for (chunk, last) in [("over ", false), ("h2", true)] {
        h.agent
            .inject(IncomingServer::RequestBody {
                request,
                chunk: Bytes::from_static(chunk.as_bytes()),
                last,
            })
            .await;
    }
    assert_eq!(
        app.line().await,
        "peer 10.0.0.99",
        "accept reports the real peer"
    );
    assert_eq!(
        app.line().await,
        "preface True",
        "the app was spoken HTTP/2 to"
    );
    let (head, body) = response_of(&h, request).await.expect("an answer");
    assert_eq!(head.status, 200);
    assert_eq!(head.version, HttpVersion::Http2);
    assert_eq!(String::from_utf8_lossy(&body), "h2 got over h2");
    if !one_shot {
        // The app reads until the intproxy closes its (pooled) connection.
        drop(h);
    }
    let out = app.finish().await;
    out.assert_success();
    assert!(out.stdout.contains("answered stream 1\n"), "{out}");
}

/// HTTP/1.1 keep-alive; answers every GET with `conn N peer=IP`, N counting
/// the connections it accepted.
const CONN_COUNTING_APP: &str = "import http.server, sys, threading, itertools\n\
count = itertools.count(1)\n\
class H(http.server.BaseHTTPRequestHandler):\n\
\x20   protocol_version = 'HTTP/1.1'\n\
\x20   def setup(self):\n\
\x20       super().setup()\n\
\x20       self.conn_no = next(count)\n\
\x20   def do_GET(self):\n\
\x20       out = ('conn %d peer=%s' % (self.conn_no, self.client_address[0])).encode()\n\
\x20       self.send_response(200)\n\
\x20       self.send_header('Content-Length', str(len(out)))\n\
\x20       self.end_headers()\n\
\x20       self.wfile.write(out)\n\
\x20   def log_message(self, *args): pass\n\
srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)\n\
print(srv.server_address[1], flush=True)\n\
threading.Thread(target=srv.serve_forever, daemon=True).start()\n\
sys.stdin.read()\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_requests_of_one_peer_reuse_one_connection_to_the_app() {
    let h = staging_harness(steal_config(Some(STEAL_HEADER))).await;
    let filter = Some(HttpFilter::Header(STEAL_HEADER.into()));
    let (app, port) = start_subscribed_app(&h, CONN_COUNTING_APP, filter).await;
    let other_peer: SocketAddr = "10.0.0.77:40000".parse().expect("valid peer address");
    let mut answers = Vec::new();
    for (n, peer) in [
        incoming_peer(),
        incoming_peer(),
        incoming_peer(),
        other_peer,
    ]
    .into_iter()
    .enumerate()
    {
        let request = HttpRequestId(n as u64 + 1);
        h.agent
            .inject(IncomingServer::Request {
                request,
                port,
                peer,
                head: request_head("GET", "/", &[("Host", "svc.ns")]),
            })
            .await;
        let (head, body) = response_of(&h, request).await.expect("an answer");
        assert_eq!(head.status, 200);
        answers.push(String::from_utf8_lossy(&body).into_owned());
    }
    assert_eq!(
        answers,
        [
            "conn 1 peer=10.0.0.99",
            "conn 1 peer=10.0.0.99",
            "conn 1 peer=10.0.0.99",
            "conn 2 peer=10.0.0.77",
        ],
        "one kept-alive connection per peer, each showing its own peer"
    );
    app.finish().await.assert_success();
}

// ---------------------------------------------------------------------------
// Lifetime: set-up sessions (`remora ext`) do not count as the first process
// ---------------------------------------------------------------------------

/// Poll until the intproxy has exited.
async fn wait_until_proxy_exits(h: &support::staging::Staging) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !h.proxy_finished() {
        assert!(Instant::now() < deadline, "the intproxy never exited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifetime_a_set_up_session_leaving_does_not_end_the_run() {
    require_file_hooks();
    let h = staging_harness_lifetime(harness::Lifetime {
        first_connect: Duration::from_secs(300),
        linger: Duration::from_millis(20),
        setup_sessions: 1,
    })
    .await;
    // `remora ext`'s own session: it connects, then leaves.
    drop(std::net::TcpStream::connect(h.proxy_addr()).unwrap());
    // Far longer than the linger: a counted session would have ended the run.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !h.proxy_finished(),
        "the intproxy ended with the set-up session"
    );
    let out = h.run("cat", &[REMOTE_CONFIG]).await;
    out.assert_success();
    assert_eq!(out.stdout, REMOTE_CONFIG_BODY, "{out}");
    // The first real process has left: now the linger applies.
    wait_until_proxy_exits(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifetime_without_set_up_sessions_the_first_session_leaving_ends_the_run() {
    let h = staging_harness_lifetime(harness::Lifetime {
        first_connect: Duration::from_secs(300),
        linger: Duration::from_millis(20),
        setup_sessions: 0,
    })
    .await;
    drop(std::net::TcpStream::connect(h.proxy_addr()).unwrap());
    wait_until_proxy_exits(&h).await;
}
