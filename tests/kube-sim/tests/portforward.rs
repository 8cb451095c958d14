//! `pods/portforward` held to the real clients: `kubectl port-forward` (SPDY tunnelled in
//! WebSocket, its default, and plain SPDY) with curl through it, and kube-rs'
//! `Api::<Pod>::portforward` (`v4.channel.k8s.io`), to a python3 http.server in a pod.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use common::{Sim, web_pod};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `kubectl port-forward pod/web :<port>`, killed on drop; `local` is the port kubectl chose.
struct PortForward {
    child: Child,
    local: u16,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl PortForward {
    fn start(sim: &Sim, remote: u16, websockets: bool) -> Self {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&sim.kubeconfig)
            .args(["port-forward", "pod/web", &format!(":{remote}")])
            .env(
                "KUBECTL_PORT_FORWARD_WEBSOCKETS",
                if websockets { "true" } else { "false" },
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl port-forward");
        let stderr = child.stderr.take().unwrap();
        let stderr =
            std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        // kubectl writes a line per connection: keep reading, or it dies of EPIPE.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        // "Forwarding from 127.0.0.1:41234 -> 8000"
        let local = line
            .split_whitespace()
            .nth(2)
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no local port in {line:?}"));
        Self {
            child,
            local,
            stderr: Some(stderr),
        }
    }

    fn curl(&self, path: &str) -> std::process::Output {
        Command::new("curl")
            .args(["-sS", "-m", "10"])
            .arg(format!("http://127.0.0.1:{}{path}", self.local))
            .output()
            .expect("curl")
    }

    /// Waits for kubectl to exit (it does when the forward fails) and returns its stderr.
    fn wait_stderr(mut self) -> String {
        let _ = self.child.wait();
        self.stderr.take().unwrap().join().unwrap()
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn body(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn kubectl_port_forward_over_websocket_and_spdy() {
    let sim = Sim::start();
    let port = free_port();
    web_pod(&sim, "web", port, "127.0.0.1");
    for websockets in [true, false] {
        let pf = PortForward::start(&sim, port, websockets);
        // Several connections through one forward, each with its own stream pair.
        for _ in 0..3 {
            assert_eq!(body(&pf.curl("/hello.txt")), "hello from the pod\n");
        }
        assert!(
            body(&pf.curl("/missing")).contains("404"),
            "websockets={websockets}"
        );
    }
}

#[test]
fn kubectl_port_forward_to_a_closed_port_reports_the_error() {
    let sim = Sim::start();
    let port = free_port();
    web_pod(&sim, "web", port, "127.0.0.1");
    let closed = free_port();
    let pf = PortForward::start(&sim, closed, true);
    let out = pf.curl("/");
    assert!(!out.status.success(), "nothing answers on port {closed}");
    let stderr = pf.wait_stderr();
    assert!(
        stderr.contains(&format!("error forwarding port {closed} to pod web"))
            && stderr.contains("Connection refused"),
        "{stderr}"
    );
}

async fn client(sim: &Sim) -> Client {
    let kubeconfig = Kubeconfig::read_from(&sim.kubeconfig).expect("reading the kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(config).expect("client")
}

#[tokio::test]
async fn kube_rs_portforward() {
    let sim = Sim::start();
    let port = free_port();
    web_pod(&sim, "web", port, "127.0.0.1");
    let pods: Api<Pod> = Api::default_namespaced(client(&sim).await);

    // HTTP/1.1: the pod keeps the connection, the client ends the forward.
    let mut pf = pods.portforward("web", &[port]).await.expect("portforward");
    let mut stream = pf.take_stream(port).expect("the port's stream");
    let expected = "hello from the pod\n";
    let mut response = Vec::new();
    for _ in 0..2 {
        stream
            .write_all(b"GET /hello.txt HTTP/1.1\r\nHost: web\r\n\r\n")
            .await
            .unwrap();
        response.clear();
        while !String::from_utf8_lossy(&response).ends_with(expected) {
            let mut buf = [0; 4096];
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "EOF after {:?}", String::from_utf8_lossy(&response));
            response.extend_from_slice(&buf[..n]);
        }
        assert!(response.starts_with(b"HTTP/1.1 200"));
    }
    drop(stream);
    pf.join().await.expect("the forwarder ends cleanly");

    // `Connection: close`: the pod closes the connection, the client reads to the end.
    let mut pf = pods.portforward("web", &[port]).await.expect("portforward");
    let mut stream = pf.take_stream(port).expect("the port's stream");
    stream
        .write_all(b"GET /hello.txt HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with(expected), "{response}");

    // A port nothing listens on: the error channel says why.
    let closed = free_port();
    let mut pf = pods
        .portforward("web", &[closed])
        .await
        .expect("portforward");
    let error = pf.take_error(closed).unwrap().await;
    let error = error.expect("an error message");
    assert!(
        error.contains(&format!("error forwarding port {closed} to pod web")),
        "{error}"
    );
}

/// kube-rs 5.0 offers `v5.channel.k8s.io, v4.channel.k8s.io`; a kubelet (and the sim)
/// answers a port-forward with v4, which has no close signal.
#[tokio::test]
async fn kube_rs_offers_v5_first_and_gets_v4() {
    let sim = Sim::start();
    let port = free_port();
    web_pod(&sim, "web", port, "127.0.0.1");
    let client = client(&sim).await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let request = kube::core::Request::new(pods.resource_url())
        .portforward("web", &[port])
        .expect("request");
    let connection = client.connect(request).await.expect("upgrade");
    assert!(
        !connection.supports_stream_close(),
        "the sim picked v5 for a port-forward"
    );
}
