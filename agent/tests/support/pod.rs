//! A "pod" for the agent's integration tests: a network namespace this test
//! creates, optionally with a veth pair to the host (`10.214.x.y/30`), a
//! target process inside it, a TCP service inside it, and ways to connect
//! from inside it. Everything is removed on drop, also when the test fails.
//! Traffic only goes to the namespace's own addresses.
#![allow(dead_code)]

use remora_agent::TargetPid;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const WAIT: Duration = Duration::from_secs(10);

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A network namespace and what runs in it.
pub struct Pod {
    pub name: String,
    /// Host side of the veth pair (same name as the namespace).
    veth: bool,
    /// (host address, pod address) on the veth.
    pub addrs: Option<(Ipv4Addr, Ipv4Addr)>,
    children: Vec<Child>,
}

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .status()
        .expect("run ip (iproute2)");
    assert!(status.success(), "ip {args:?} failed");
}

impl Pod {
    /// A namespace with `lo` up.
    pub fn create() -> Pod {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("rmin{}x{seq}", std::process::id());
        assert!(name.len() <= 15, "{name} is too long for a link name");
        let pod = Pod {
            name,
            veth: false,
            addrs: None,
            children: Vec::new(),
        };
        ip(&["netns", "add", &pod.name]);
        ip(&["-n", &pod.name, "link", "set", "lo", "up"]);
        pod
    }

    /// A namespace with `lo` up and a veth pair to the host: the host side
    /// gets `10.214.a.(b+1)/30`, the pod's `eth0` `10.214.a.(b+2)/30`.
    pub fn with_veth() -> Pod {
        let mut pod = Pod::create();
        let index = (std::process::id() * 16 + SEQ.load(Ordering::Relaxed)) % 16384;
        let (a, b) = ((index / 64) as u8, ((index % 64) * 4) as u8);
        let host = Ipv4Addr::new(10, 214, a, b + 1);
        let inside = Ipv4Addr::new(10, 214, a, b + 2);
        ip(&[
            "link", "add", &pod.name, "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
        ]);
        pod.veth = true;
        ip(&["addr", "add", &format!("{host}/30"), "dev", &pod.name]);
        ip(&["link", "set", &pod.name, "up"]);
        ip(&[
            "-n",
            &pod.name,
            "addr",
            "add",
            &format!("{inside}/30"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &pod.name, "link", "set", "eth0", "up"]);
        pod.addrs = Some((host, inside));
        pod
    }

    /// The pod's own address on its veth.
    pub fn pod_ip(&self) -> Ipv4Addr {
        self.addrs.expect("a pod with a veth").1
    }

    /// Run a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ip netns exec")
    }

    /// Run a command inside the namespace; it must succeed.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        let output = self.exec(args);
        assert!(
            output.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `nft list ruleset` inside the namespace.
    pub fn ruleset(&self) -> String {
        self.exec_ok(&["nft", "list", "ruleset"])
    }

    /// Poll until `check` holds, or fail naming `what`. Yields to the
    /// runtime in between: an in-process agent runs on it.
    pub async fn wait_until(&self, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Start `sleep` inside the namespace and wait until it runs there.
    pub fn spawn_target(&mut self) -> TargetPid {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, "sleep", "120"])
            .stdin(Stdio::null())
            .spawn()
            .expect("ip netns exec");
        let pid = child.id();
        self.children.push(child);
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let net = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
            if comm.trim() == "sleep" && net.is_some_and(|n| n != ours) {
                return TargetPid(pid);
            }
            assert!(
                Instant::now() < deadline,
                "the target never ran in the namespace"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start a program inside the namespace; it is killed when the pod goes.
    pub fn spawn(&mut self, args: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ip netns exec");
        self.children.push(child);
    }

    /// Run a command inside the namespace on a blocking thread (the agent
    /// under test may run on the caller's runtime).
    pub fn exec_async(&self, args: &[&str]) -> impl Future<Output = Output> + 'static {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::null());
        let output = tokio::task::spawn_blocking(move || command.output());
        async move {
            output
                .await
                .expect("command thread")
                .expect("run ip netns exec")
        }
    }

    fn ns_file(&self) -> std::fs::File {
        std::fs::File::open(format!("/run/netns/{}", self.name)).expect("open the netns file")
    }

    /// Run `f` on a thread inside the namespace (sockets it creates stay there).
    pub fn inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = self.ns_file();
        std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread inside the namespace")
    }

    /// A TCP connection made from inside the namespace (as a process of the
    /// pod would), ready for the async runtime.
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        let ns = self.ns_file();
        let stream = tokio::task::spawn_blocking(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            stream.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(stream)
        })
        .await
        .expect("connect thread")?;
        tokio::net::TcpStream::from_std(stream)
    }

    /// A service inside the namespace on `0.0.0.0:port`.
    pub fn service(&self, port: u16) -> Service {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let listener = self.inside(move || {
            let listener = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
                .expect("bind the service");
            listener.set_nonblocking(true).unwrap();
            listener
        });
        let (thread_stop, thread_seen) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || serve(listener, &thread_stop, &thread_seen));
        Service {
            port,
            stop,
            seen,
            thread: Some(thread),
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.veth {
            let _ = Command::new("ip")
                .args(["link", "del", &self.name])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// The pod's real service: answers `service:<request>` after each request's
/// half close, and remembers who connected.
pub struct Service {
    pub port: u16,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<SocketAddr>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Service {
    /// The peers of every connection the service accepted.
    pub fn seen(&self) -> Vec<SocketAddr> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(listener: std::net::TcpListener, stop: &AtomicBool, seen: &Mutex<Vec<SocketAddr>>) {
    while !stop.load(Ordering::Relaxed) {
        let (mut stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => panic!("service accept: {e}"),
        };
        seen.lock().unwrap().push(peer);
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(WAIT));
        let mut got = Vec::new();
        if stream.read_to_end(&mut got).is_ok() {
            let _ = stream.write_all(&[b"service:", &got[..]].concat());
        }
    }
}

/// Send `request`, half-close, and read the answer to its end.
pub async fn ask(stream: &mut tokio::net::TcpStream, request: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .expect("readable answer");
    answer
}

/// A pid that no process has (one that just exited).
pub fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    child.wait().unwrap();
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    pid
}
