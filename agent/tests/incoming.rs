//! Incoming traffic through a real agent into a real pod: a network namespace
//! this test creates, with a service inside it. Stolen connections reach the
//! subscriber only, mirrored ones get the service's answer while the
//! subscriber gets a copy, and no netfilter rule survives an unsubscribe, a
//! disconnect, a shutdown or a SIGKILL of the agent. Needs root, `ip`, `nft`
//! and `iptables`. Traffic goes only to the pods' own addresses.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/pod.rs"]
mod pod;

use harness::*;
use pod::*;

use bytes::Bytes;
use remora_agent::incoming::NetfilterBackend;
use remora_agent::{Agent, TargetPid};
use remora_protocol::incoming::{
    HttpFilter, HttpRequestHead, HttpResponseHead, HttpVersion, IncomingClient, IncomingMode,
    IncomingServer, RemotePort,
};
use remora_protocol::session::LogLevel;
use remora_protocol::{ClientMessage, ConnectionId, HttpRequestId, RemoteResult, ServerMessage};
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};

// ---------------------------------------------------------------- helpers

/// A port free on the host, for a service inside the pod.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn localhost(port: u16) -> SocketAddr {
    (Ipv4Addr::LOCALHOST, port).into()
}

async fn agent_in(target: TargetPid, netfilter: NetfilterBackend) -> Agent {
    let mut config = config(target);
    config.netfilter = netfilter;
    Agent::bind(config).await.expect("agent enters the pod")
}

async fn incoming(client: &mut Client) -> IncomingServer {
    match client.read().await.expect("link open") {
        ServerMessage::Incoming(message) => message,
        other => panic!("expected an incoming message, got {other:?}"),
    }
}

/// Subscribe and return the answer, and the warning a steal comes with.
async fn subscribe(
    client: &mut Client,
    port: u16,
    mode: IncomingMode,
) -> (RemoteResult<()>, Option<String>) {
    client
        .send(ClientMessage::Incoming(IncomingClient::Subscribe {
            port: RemotePort(port),
            mode,
            filter: None,
        }))
        .await;
    let IncomingServer::Subscribed { port: p, result } = incoming(client).await else {
        panic!("expected Subscribed");
    };
    assert_eq!(p, RemotePort(port));
    let warning = if result.is_ok() && mode == IncomingMode::Steal {
        match client.read().await {
            Some(ServerMessage::Log {
                level: LogLevel::Warn,
                message,
            }) => Some(message),
            other => panic!("expected the probe warning, got {other:?}"),
        }
    } else {
        None
    };
    (result, warning)
}

/// Data of `conn` up to its half close.
async fn read_until_shutdown(client: &mut Client, conn: ConnectionId) -> Vec<u8> {
    let mut got = Vec::new();
    loop {
        match incoming(client).await {
            IncomingServer::Data { conn: c, data } if c == conn => got.extend_from_slice(&data),
            IncomingServer::ShutdownWrite { conn: c } if c == conn => return got,
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn answer(client: &mut Client, conn: ConnectionId, data: &'static [u8]) {
    let data = Bytes::from_static(data);
    client
        .send(ClientMessage::Incoming(IncomingClient::Data { conn, data }))
        .await;
    client
        .send(ClientMessage::Incoming(IncomingClient::ShutdownWrite {
            conn,
        }))
        .await;
}

fn remora_table() -> String {
    format!("table inet remora_{}", std::process::id())
}

/// The service answers a request made from inside the pod on its loopback.
async fn service_answers(pod: &Pod, port: u16) {
    let mut stream = pod
        .connect(localhost(port))
        .await
        .expect("reach the service");
    assert_eq!(ask(&mut stream, b"hi").await, b"service:hi");
}

// ---------------------------------------------------------------- steal

#[tokio::test]
async fn steal_takes_the_pods_loopback_connections_and_the_service_sees_none() {
    let mut pod = Pod::create();
    let target = pod.spawn_target();
    let port = free_port();
    let service = pod.service(port);
    let before = pod.ruleset();
    let agent = agent_in(target, NetfilterBackend::Auto).await;
    let mut alice = Client::connect(agent.local_addr(), "alice").await;

    let (result, warning) = subscribe(&mut alice, port, IncomingMode::Steal).await;
    result.expect("steal works");
    assert_eq!(
        warning.unwrap(),
        format!(
            "stealing port {port} without an HTTP filter also takes health-probe traffic \
             (kubelet probes) away from the target"
        )
    );
    let rules = pod.ruleset();
    assert!(rules.contains(&remora_table()), "{rules}");
    assert!(rules.contains("flags owner"), "{rules}");

    // A process of the pod calls its own service on the loopback.
    let mut caller = pod.connect(localhost(port)).await.unwrap();
    let caller_addr = caller.local_addr().unwrap();
    let call = tokio::spawn(async move { ask(&mut caller, b"GET /stolen").await });
    let IncomingServer::NewConnection {
        conn,
        port: p,
        peer,
        local,
    } = incoming(&mut alice).await
    else {
        panic!("expected a new connection");
    };
    assert_eq!(p, RemotePort(port));
    assert_eq!(peer, caller_addr, "the real peer");
    assert_eq!(local, localhost(port), "the original destination");
    assert_eq!(read_until_shutdown(&mut alice, conn).await, b"GET /stolen");
    answer(&mut alice, conn, b"from the laptop").await;
    assert_eq!(call.await.unwrap(), b"from the laptop");
    assert_eq!(incoming(&mut alice).await, IncomingServer::Closed { conn });
    assert!(
        service.seen().is_empty(),
        "the service saw {:?}",
        service.seen()
    );

    // The same over IPv6 (the table is `inet`, the listener dual-stack).
    let v6: SocketAddr = (std::net::Ipv6Addr::LOCALHOST, port).into();
    let mut caller = pod.connect(v6).await.unwrap();
    let caller_addr = caller.local_addr().unwrap();
    let call = tokio::spawn(async move { ask(&mut caller, b"over v6").await });
    let IncomingServer::NewConnection {
        conn, peer, local, ..
    } = incoming(&mut alice).await
    else {
        panic!("expected a new connection");
    };
    assert_eq!((peer, local), (caller_addr, v6));
    assert_eq!(read_until_shutdown(&mut alice, conn).await, b"over v6");
    answer(&mut alice, conn, b"v6 answer").await;
    assert_eq!(call.await.unwrap(), b"v6 answer");
    assert_eq!(incoming(&mut alice).await, IncomingServer::Closed { conn });

    // Unsubscribing gives the port back, and leaves the ruleset as it was.
    alice
        .send(ClientMessage::Incoming(IncomingClient::Unsubscribe {
            port: RemotePort(port),
        }))
        .await;
    pod.wait_until("the ruleset is back to what it was", || {
        pod.ruleset() == before
    })
    .await;
    service_answers(&pod, port).await;
    assert_eq!(service.seen().len(), 1);
}

#[tokio::test]
async fn steal_takes_connections_from_other_hosts() {
    let mut pod = Pod::with_veth();
    let target = pod.spawn_target();
    let port = free_port();
    let service = pod.service(port);
    let agent = agent_in(target, NetfilterBackend::Auto).await;
    let mut alice = Client::connect(agent.local_addr(), "alice").await;
    subscribe(&mut alice, port, IncomingMode::Steal)
        .await
        .0
        .unwrap();

    // From the host, over the veth: the prerouting path.
    let pod_addr: SocketAddr = (pod.pod_ip(), port).into();
    let mut caller = tokio::net::TcpStream::connect(pod_addr).await.unwrap();
    let caller_addr = caller.local_addr().unwrap();
    let call = tokio::spawn(async move { ask(&mut caller, b"from afar").await });
    let IncomingServer::NewConnection {
        conn, peer, local, ..
    } = incoming(&mut alice).await
    else {
        panic!("expected a new connection");
    };
    assert_eq!(peer, caller_addr);
    assert_eq!(local, pod_addr);
    assert_eq!(read_until_shutdown(&mut alice, conn).await, b"from afar");
    answer(&mut alice, conn, b"stolen").await;
    assert_eq!(call.await.unwrap(), b"stolen");
    assert!(
        service.seen().is_empty(),
        "the service saw {:?}",
        service.seen()
    );
}

#[tokio::test]
async fn a_stolen_port_has_one_subscriber_and_a_disconnect_frees_it() {
    let mut pod = Pod::create();
    let target = pod.spawn_target();
    let port = free_port();
    let _service = pod.service(port);
    let before = pod.ruleset();
    let agent = agent_in(target, NetfilterBackend::Auto).await;
    let mut alice = Client::connect(agent.local_addr(), "alice").await;
    let mut bob = Client::connect(agent.local_addr(), "bob").await;
    subscribe(&mut alice, port, IncomingMode::Steal)
        .await
        .0
        .unwrap();
    let err = subscribe(&mut bob, port, IncomingMode::Steal)
        .await
        .0
        .unwrap_err();
    assert!(
        err.message.contains(&format!("port {port} of {target}")),
        "{err}"
    );

    drop(alice);
    pod.wait_until("alice's rules are gone with her", || {
        pod.ruleset() == before
    })
    .await;
    service_answers(&pod, port).await;
    subscribe(&mut bob, port, IncomingMode::Steal)
        .await
        .0
        .expect("the port is free again");
}

// ---------------------------------------------------------------- mirror

#[tokio::test]
async fn mirror_lets_the_service_answer_and_copies_the_request() {
    let mut pod = Pod::with_veth();
    let target = pod.spawn_target();
    let port = free_port();
    let service = pod.service(port);
    let before = pod.ruleset();
    let agent = agent_in(target, NetfilterBackend::Auto).await;
    let mut alice = Client::connect(agent.local_addr(), "alice").await;
    let (result, warning) = subscribe(&mut alice, port, IncomingMode::Mirror).await;
    result.unwrap();
    assert_eq!(warning, None);

    // From inside the pod, then from the host.
    let mut inside = pod.connect(localhost(port)).await.unwrap();
    assert_eq!(ask(&mut inside, b"ping").await, b"service:ping");
    let pod_addr: SocketAddr = (pod.pod_ip(), port).into();
    let mut outside = tokio::net::TcpStream::connect(pod_addr).await.unwrap();
    let outside_addr = outside.local_addr().unwrap();
    assert_eq!(ask(&mut outside, b"pong").await, b"service:pong");
    assert_eq!(service.seen().len(), 2, "the service answered both");

    // Two copies, in any order: (destination, peer, bytes).
    let mut copies = std::collections::BTreeMap::new();
    let mut closed = 0;
    while closed < 2 {
        match incoming(&mut alice).await {
            IncomingServer::NewConnection {
                conn, peer, local, ..
            } => {
                // The client's answer goes nowhere.
                answer(&mut alice, conn, b"ignored").await;
                copies.insert(conn, (local, peer, Vec::new()));
            }
            IncomingServer::Data { conn, data } => {
                copies.get_mut(&conn).unwrap().2.extend_from_slice(&data);
            }
            IncomingServer::ShutdownWrite { .. } => {}
            IncomingServer::Closed { .. } => closed += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    let mut copies: Vec<_> = copies.into_values().collect();
    copies.sort_by_key(|(local, ..)| *local);
    assert_eq!(copies[0].0, pod_addr);
    assert_eq!(copies[0].1, outside_addr);
    assert_eq!(copies[0].2, b"pong");
    assert_eq!(copies[1].0, localhost(port));
    assert_eq!(copies[1].2, b"ping");

    // A shutdown of the agent removes the rules.
    let shutdown = agent.shutdown_handle();
    shutdown.shutdown("test over");
    agent.wait().await.unwrap();
    assert_eq!(pod.ruleset(), before);
    service_answers(&pod, port).await;
}

// ---------------------------------------------------------------- the binary

struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_binary(target: TargetPid, extra: &[&str]) -> (AgentProcess, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_remora-agent"))
        .args(["--target", &target.to_string(), "--idle-timeout-secs", "20"])
        .args(extra)
        .env("REMORA_AGENT_TOKEN", TOKEN)
        .env("REMORA_AGENT_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn remora-agent");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .strip_prefix("REMORA_AGENT_LISTENING ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .trim()
        .parse()
        .unwrap();
    (AgentProcess(child), addr)
}

/// The agent's child processes named `comm` (its `nft -i`, its guard).
fn children_named(process: &AgentProcess, comm: &str) -> Vec<u32> {
    let pid = process.0.id();
    let mut children = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let listed = std::fs::read_to_string(task.unwrap().path().join("children"));
        children.extend(
            listed
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|child| child.parse::<u32>().ok()),
        );
    }
    children.retain(|child| {
        std::fs::read_to_string(format!("/proc/{child}/comm")).is_ok_and(|c| c.trim() == comm)
    });
    children
}

/// Wait until `pid`, orphaned by the agent and adopted by this test process
/// (a child subreaper), exits on its own; reap it.
async fn wait_exit_of_orphan(pid: u32) {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match waitpid(
            nix::unistd::Pid::from_raw(pid as i32),
            Some(WaitPidFlag::WNOHANG),
        ) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(_) => return,
            Err(e) => panic!("waiting for {pid}: {e}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{pid} did not exit after the agent died"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn signal(process: &AgentProcess, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(process.0.id() as i32);
    nix::sys::signal::kill(pid, signal).unwrap();
}

#[tokio::test]
async fn a_sigkilled_agent_leaves_no_rules_behind() {
    let mut pod = Pod::create();
    let target = pod.spawn_target();
    let port = free_port();
    let _service = pod.service(port);
    let before = pod.ruleset();
    // The agent's orphans come to this process, which reaps them.
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let (mut process, addr) = start_binary(target, &[]);
    let mut alice = Client::connect(addr, "alice").await;
    subscribe(&mut alice, port, IncomingMode::Steal)
        .await
        .0
        .unwrap();
    let table = format!("table inet remora_{}", process.0.id());
    assert!(pod.ruleset().contains(&table), "{}", pod.ruleset());
    assert!(
        pod.connect(localhost(port)).await.is_ok(),
        "the agent's listener takes the port"
    );
    let owner = children_named(&process, "nft");
    assert_eq!(owner.len(), 1, "one nft -i holds the table");

    signal(&process, nix::sys::signal::Signal::SIGKILL);
    process.0.wait().unwrap();
    wait_exit_of_orphan(owner[0]).await;
    pod.wait_until("the kernel dropped the dead agent's table", || {
        pod.ruleset() == before
    })
    .await;
    service_answers(&pod, port).await;
}

#[tokio::test]
async fn a_sigtermed_agent_removes_its_rules() {
    let mut pod = Pod::create();
    let target = pod.spawn_target();
    let port = free_port();
    let _service = pod.service(port);
    let before = pod.ruleset();
    let (mut process, addr) = start_binary(target, &[]);
    let mut alice = Client::connect(addr, "alice").await;
    subscribe(&mut alice, port, IncomingMode::Mirror)
        .await
        .0
        .unwrap();
    assert_ne!(pod.ruleset(), before);

    signal(&process, nix::sys::signal::Signal::SIGTERM);
    let status = tokio::task::spawn_blocking(move || process.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(pod.ruleset(), before, "removed before the agent exited");
    service_answers(&pod, port).await;
}

// ---------------------------------------------------------------- iptables

fn remora_chains(pod: &Pod) -> String {
    ["iptables", "ip6tables"]
        .iter()
        .map(|tool| pod.exec_ok(&[tool, "-t", "nat", "-S"]))
        .filter(|rules| rules.contains("REMORA_"))
        .collect()
}

#[tokio::test]
async fn the_iptables_fallback_steals_and_its_guard_cleans_up_after_sigkill() {
    let mut pod = Pod::create();
    let target = pod.spawn_target();
    let port = free_port();
    let service = pod.service(port);
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let (mut process, addr) = start_binary(target, &["--netfilter", "iptables"]);
    let mut alice = Client::connect(addr, "alice").await;
    subscribe(&mut alice, port, IncomingMode::Steal)
        .await
        .0
        .unwrap();
    let chain = format!("REMORA_{}", process.0.id());
    let rules = remora_chains(&pod);
    assert!(rules.contains(&format!("-A OUTPUT -j {chain}")), "{rules}");
    assert!(!pod.ruleset().contains("remora_"), "no nftables table");

    let mut caller = pod.connect(localhost(port)).await.unwrap();
    let call = tokio::spawn(async move { ask(&mut caller, b"via iptables").await });
    let IncomingServer::NewConnection { conn, local, .. } = incoming(&mut alice).await else {
        panic!("expected a new connection");
    };
    assert_eq!(local, localhost(port));
    assert_eq!(read_until_shutdown(&mut alice, conn).await, b"via iptables");
    answer(&mut alice, conn, b"stolen").await;
    assert_eq!(call.await.unwrap(), b"stolen");
    assert!(service.seen().is_empty());
    let guard = children_named(&process, "sh");
    assert_eq!(guard.len(), 1, "one guard process");

    signal(&process, nix::sys::signal::Signal::SIGKILL);
    process.0.wait().unwrap();
    wait_exit_of_orphan(guard[0]).await;
    pod.wait_until("the guard removed the chains", || {
        remora_chains(&pod).is_empty()
    })
    .await;
    service_answers(&pod, port).await;
}

// ---------------------------------------------------------------- leftovers

#[tokio::test]
async fn tables_and_chains_of_dead_agents_are_removed_at_start() {
    let mut pod = Pod::create();
    let target = pod.spawn_target();
    let port = free_port();
    let _service = pod.service(port);
    let before = pod.ruleset();

    // What a dead agent left: a table that sends the port nowhere.
    let dead = dead_pid();
    let stale = format!("remora_{dead}");
    pod.exec_ok(&[
        "nft",
        &format!(
            "add table inet {stale} ; add chain inet {stale} output {{ type nat hook output \
             priority -110 ; }} ; add rule inet {stale} output tcp dport {port} redirect to :1"
        ),
    ]);
    assert!(
        pod.connect(localhost(port)).await.is_err(),
        "the leftover makes the service unreachable"
    );
    let agent = agent_in(target, NetfilterBackend::Auto).await;
    pod.wait_until("the leftover table is gone", || pod.ruleset() == before)
        .await;
    service_answers(&pod, port).await;
    drop(agent);

    // The same with iptables chains, found by the iptables backend.
    let chain = format!("REMORA_{dead}");
    let add = |args: &str| {
        let args: Vec<&str> = args.split_whitespace().collect();
        pod.exec_ok(&args);
    };
    add(&format!("iptables -t nat -N {chain}"));
    add(&format!(
        "iptables -t nat -A {chain} -p tcp --dport {port} -j REDIRECT --to-ports 1"
    ));
    add(&format!("iptables -t nat -I OUTPUT 1 -j {chain}"));
    assert!(pod.connect(localhost(port)).await.is_err());
    let _agent = agent_in(target, NetfilterBackend::Iptables).await;
    pod.wait_until("the leftover chain is gone", || {
        remora_chains(&pod).is_empty()
    })
    .await;
    service_answers(&pod, port).await;
}

// ---------------------------------------------------------------- HTTP filter

/// A real HTTP service in the pod (`python3 -m http.server`) serving a
/// directory with `file.bin`; returns the directory and the file's bytes.
async fn http_service(pod: &mut Pod, port: u16) -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let content: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.path().join("file.bin"), &content).unwrap();
    let port_arg = port.to_string();
    let dir_arg = dir.path().to_str().unwrap().to_owned();
    pod.spawn(&[
        "/usr/bin/python3",
        "-m",
        "http.server",
        &port_arg,
        "--bind",
        "127.0.0.1",
        "--directory",
        &dir_arg,
    ]);
    let deadline = std::time::Instant::now() + WAIT;
    while pod.connect(localhost(port)).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "http.server never listened"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    (dir, content)
}

async fn subscribe_filtered(client: &mut Client, port: u16, filter: HttpFilter) {
    client
        .send(ClientMessage::Incoming(IncomingClient::Subscribe {
            port: RemotePort(port),
            mode: IncomingMode::Steal,
            filter: Some(filter),
        }))
        .await;
    match incoming(client).await {
        IncomingServer::Subscribed { port: p, result } => {
            assert_eq!(p, RemotePort(port));
            result.expect("filtered steal works");
        }
        other => panic!("expected Subscribed, got {other:?}"),
    }
}

/// The next `Request`, skipping the end of earlier requests' bodies.
async fn next_request(client: &mut Client) -> (HttpRequestId, HttpRequestHead) {
    loop {
        match incoming(client).await {
            IncomingServer::Request { request, head, .. } => return (request, head),
            IncomingServer::RequestBody { .. } => {}
            other => panic!("expected a request, got {other:?}"),
        }
    }
}

/// Answer `request` with 200 and `body`.
async fn respond(client: &mut Client, request: HttpRequestId, body: &'static [u8]) {
    let head = HttpResponseHead {
        status: 200,
        version: HttpVersion::Http11,
        headers: vec![("content-type".into(), Bytes::from_static(b"text/plain"))],
    };
    client
        .send(ClientMessage::Incoming(IncomingClient::ResponseHead {
            request,
            head,
        }))
        .await;
    client
        .send(ClientMessage::Incoming(IncomingClient::ResponseBody {
            request,
            chunk: Bytes::from_static(body),
            last: true,
        }))
        .await;
}

fn header<'a>(head: &'a HttpRequestHead, name: &str) -> Option<&'a [u8]> {
    head.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| &v[..])
}

#[tokio::test]
async fn a_filtered_steal_takes_matching_requests_and_the_service_answers_the_rest() {
    let mut pod = Pod::create();
    let target = pod.spawn_target();
    let port = free_port();
    let (_dir, content) = http_service(&mut pod, port).await;
    let agent = agent_in(target, NetfilterBackend::Auto).await;
    let mut alice = Client::connect(agent.local_addr(), "alice").await;
    subscribe_filtered(
        &mut alice,
        port,
        HttpFilter::Header("^x-user: alice$".into()),
    )
    .await;
    let url = format!("http://127.0.0.1:{port}/file.bin?from=curl");

    let curl = {
        let args = [
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-H",
            "X-User: alice",
            &url,
        ];
        pod.exec_async(&args)
    };
    let answered = async {
        let (request, head) = next_request(&mut alice).await;
        assert_eq!(head.method, "GET");
        assert_eq!(head.uri, "/file.bin?from=curl");
        assert_eq!(header(&head, "x-user"), Some(&b"alice"[..]));
        respond(&mut alice, request, b"stolen").await;
    };
    let (output, ()) = tokio::join!(curl, answered);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(output.stdout, b"stolen");

    // Not taken: the real service's file, byte for byte.
    let output = pod
        .exec_async(&["curl", "-sS", "--max-time", "10", "-H", "X-User: bob", &url])
        .await;
    assert!(output.status.success(), "{output:?}");
    assert!(output.stdout == content, "the file changed on the way");

    // Not HTTP: passed through raw to the service, whose own error page
    // names the bytes it got (hyper would have answered a bare 400).
    let mut stream = pod.connect(localhost(port)).await.unwrap();
    let answer = ask(&mut stream, b"\x16\x03\x01 hello\r\n\r\n").await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.contains("Bad HTTP/0.9 request type"), "{answer}");
    drop(agent);
}

/// One keep-alive connection from python's `http.client`: a taken request,
/// one for the service, then a taken chunked POST.
const KEEP_ALIVE_CLIENT: &str = r#"
import http.client, sys
port = int(sys.argv[1])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
c.request("GET", "/mine", headers={"X-User": "alice"})
r = c.getresponse(); a = r.read()
c.request("GET", "/file.bin")
r = c.getresponse(); b = r.read()
c.request("POST", "/upload", body=iter([b"part-one;", b"part-two"]), headers={"X-User": "alice"}, encode_chunked=True)
r = c.getresponse(); d = r.read()
sock = c.sock
print(a.decode(), len(b), d.decode(), sock is not None)
"#;

#[tokio::test]
async fn a_filtered_steal_keeps_order_on_a_keep_alive_connection_and_streams_chunked_bodies() {
    let mut pod = Pod::create();
    let target = pod.spawn_target();
    let port = free_port();
    let (_dir, content) = http_service(&mut pod, port).await;
    let agent = agent_in(target, NetfilterBackend::Auto).await;
    let mut alice = Client::connect(agent.local_addr(), "alice").await;
    subscribe_filtered(
        &mut alice,
        port,
        HttpFilter::Header("^x-user: alice$".into()),
    )
    .await;

    let port_arg = port.to_string();
    let client = pod.exec_async(&["/usr/bin/python3", "-c", KEEP_ALIVE_CLIENT, &port_arg]);
    let answered = async {
        let (first, head) = next_request(&mut alice).await;
        assert_eq!(head.uri, "/mine");
        respond(&mut alice, first, b"first").await;
        let (post, head) = next_request(&mut alice).await;
        assert_eq!(
            (head.method.as_str(), head.uri.as_str()),
            ("POST", "/upload")
        );
        let (mut body, mut chunks) = (Vec::new(), 0);
        loop {
            match incoming(&mut alice).await {
                IncomingServer::RequestBody {
                    request,
                    chunk,
                    last,
                } if request == post => {
                    body.extend_from_slice(&chunk);
                    chunks += 1;
                    if last {
                        break;
                    }
                }
                IncomingServer::RequestBody { request, .. } if request == first => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(body, b"part-one;part-two");
        assert!(chunks >= 2, "{chunks} chunk(s)");
        respond(&mut alice, post, b"uploaded").await;
    };
    let (output, ()) = tokio::join!(client, answered);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("first {} uploaded True", content.len())
    );
    drop(agent);
}

/// Regression (issue 11): a request taken just before its port is given
/// back is still answered, and the table goes after its connection. The
/// agent used to delete its table with the last port; its chains were the
/// pod's only NAT chains, so the kernel stopped translating the redirected
/// connection, and the answer left from the listener's port and never
/// reached curl (it timed out with 0 bytes).
#[tokio::test]
async fn a_request_taken_just_before_the_port_is_given_back_is_still_answered() {
    let mut pod = Pod::create();
    let target = pod.spawn_target();
    let port = free_port();
    let (_dir, _content) = http_service(&mut pod, port).await;
    let before = pod.ruleset();
    let agent = agent_in(target, NetfilterBackend::Nftables).await;
    let mut alice = Client::connect(agent.local_addr(), "alice").await;
    subscribe_filtered(
        &mut alice,
        port,
        HttpFilter::Header("^x-user: alice$".into()),
    )
    .await;
    let url = format!("http://127.0.0.1:{port}/mine");
    let curl = pod.exec_async(&[
        "curl",
        "-sS",
        "--max-time",
        "10",
        "-H",
        "X-User: alice",
        &url,
    ]);
    let answered = async {
        let (request, _) = next_request(&mut alice).await;
        alice
            .send(ClientMessage::Incoming(IncomingClient::Unsubscribe {
                port: RemotePort(port),
            }))
            .await;
        // Answered once the redirect is gone.
        let deadline = std::time::Instant::now() + WAIT;
        while pod.ruleset().contains(&format!("{port} : ")) {
            assert!(
                std::time::Instant::now() < deadline,
                "the port stays redirected"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        respond(&mut alice, request, b"stolen").await;
    };
    let (output, ()) = tokio::join!(curl, answered);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(output.stdout, b"stolen");
    let deadline = std::time::Instant::now() + WAIT;
    while pod.ruleset() != before {
        assert!(
            std::time::Instant::now() < deadline,
            "the table outlived its last connection: {}",
            pod.ruleset()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(agent);
}
