//! The agent against a target in its own network namespace (and the mount
//! namespace `ip netns exec` gives it): connections, DNS and files must happen
//! there, not on the host. Needs root and `ip` (iproute2). Traffic stays on
//! loopback inside the namespace this test creates.

#[path = "support/harness.rs"]
mod harness;

use harness::*;

use remora_agent::{Agent, TargetPid};
use remora_protocol::dns::AddrFamily;
use remora_protocol::fs::{FsRequest, OpenRequest};
use remora_protocol::net::{RemoteAddr, Transport};
use remora_protocol::outgoing::OutgoingServer;
use remora_protocol::{ErrorCode, Response};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::net::TcpStream;

// ---------------------------------------------------------------- network namespace

/// A network namespace with files for `ip netns exec` to bind over the
/// target's `/etc`, and the processes started inside it. Everything is removed
/// on drop, also when the test fails.
struct Netns {
    name: String,
    etc: PathBuf,
    children: Vec<Child>,
}

impl Netns {
    fn create(hosts: &str, resolv: &str) -> Netns {
        let name = format!("rmagt{}", std::process::id());
        let etc = PathBuf::from("/etc/netns").join(&name);
        let netns = Netns {
            name,
            etc,
            children: Vec::new(),
        };
        std::fs::create_dir_all(&netns.etc).expect("create /etc/netns/<ns>");
        std::fs::write(netns.etc.join("hosts"), hosts).unwrap();
        std::fs::write(netns.etc.join("resolv.conf"), resolv).unwrap();
        netns.ip(&["netns", "add", &netns.name]);
        netns.ip(&["-n", &netns.name, "link", "set", "lo", "up"]);
        netns
    }

    fn ip(&self, args: &[&str]) {
        let status = Command::new("ip")
            .args(args)
            .status()
            .expect("run ip (iproute2)");
        assert!(status.success(), "ip {args:?} failed");
    }

    /// Start `sleep` inside the namespace (with its own mount namespace, as
    /// `ip netns exec` makes one) and wait until it runs there.
    fn spawn_target(&mut self) -> TargetPid {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, "sleep", "60"])
            .stdin(Stdio::null())
            .spawn()
            .expect("ip netns exec");
        let pid = child.id();
        self.children.push(child);
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        let deadline = std::time::Instant::now() + STEP;
        loop {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let net = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
            if comm.trim() == "sleep" && net.is_some_and(|n| n != ours) {
                return TargetPid(pid);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "target never entered the netns"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Listen on 127.0.0.1:`port` inside the namespace, answer one connection
    /// with `pod-echo:` + what it received up to its half-close.
    fn echo_server(&self, port: u16) -> std::thread::JoinHandle<()> {
        let ns_file = std::fs::File::open(format!("/run/netns/{}", self.name)).unwrap();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let server = std::thread::spawn(move || {
            nix::sched::setns(&ns_file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
            ready_tx.send(()).unwrap();
            let (mut stream, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            stream.read_to_end(&mut got).unwrap();
            stream
                .write_all(&[b"pod-echo:", &got[..]].concat())
                .unwrap();
        });
        ready_rx.recv_timeout(STEP).expect("echo server ready");
        server
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

#[tokio::test]
async fn connections_dns_and_files_happen_inside_the_targets_namespaces() {
    let mut netns = Netns::create(
        "127.0.0.1 localhost\n127.0.0.77 only-in-the-pod pod-alias\n",
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    );
    let target = netns.spawn_target();
    let agent = Agent::bind(config(target))
        .await
        .expect("agent enters the netns target");
    let mut client = Client::connect(agent.local_addr(), "alice").await;

    // A port free on the host, taken only inside the pod.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = netns.echo_server(port);
    let remote: SocketAddr = (Ipv4Addr::LOCALHOST, port).into();
    let on_host = TcpStream::connect(remote).await;
    assert!(on_host.is_err(), "something listens on the host's {remote}");

    client
        .connect_out(1, Transport::Tcp, RemoteAddr::Ip(remote))
        .await;
    let OutgoingServer::Connected { result, .. } = client.outgoing().await else {
        panic!("no connect reply");
    };
    result.expect("the pod's listener is reachable through the agent");
    client.data(1, b"ping").await;
    client.shutdown_write(1).await;
    assert_eq!(client.drain_until_closed(1).await, b"pod-echo:ping");
    server.join().unwrap();

    // The pod's hosts file (bind-mounted in its mount namespace) answers.
    let Response::Lookup(reply) = client
        .request(lookup("pod-alias", AddrFamily::Any))
        .await
        .unwrap()
    else {
        panic!("not a lookup reply");
    };
    assert_eq!(reply.addresses, [IpAddr::V4(Ipv4Addr::new(127, 0, 0, 77))]);
    assert_eq!(reply.canonical_name.as_deref(), Some("only-in-the-pod"));
    let hosts = opened(
        client
            .fs(FsRequest::Open(OpenRequest {
                path: "/etc/hosts".into(),
                options: read_only(),
                mode: 0,
                snapshot_limit: 4096,
            }))
            .await,
    );
    let content = hosts.snapshot.expect("snapshot of the pod's hosts file");
    assert!(String::from_utf8_lossy(&content).contains("only-in-the-pod"));

    // Not in the hosts file: DNS through the pod's resolv.conf, whose server
    // (127.0.0.1 inside the pod) does not exist. It fails fast and says so.
    let started = std::time::Instant::now();
    let err = client
        .request(lookup("not-in-hosts.example", AddrFamily::V4))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::TemporaryNameFailure, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
}
