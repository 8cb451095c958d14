//! Ready-made pods shared by the end-to-end tests and `scripts/demo.sh`.
//!
//! The "checkout" pod looks like a small service of a staging cluster: its own
//! environment, config files only it has, a cluster-only hostname, and an HTTP
//! service listening on the pod's loopback only.

use crate::{Pod, PodProcess, PodSpec, Result, Sandbox};
use std::process::{Command, Output};
use std::time::Duration;

/// Port of the checkout pod's HTTP service (on the pod's 127.0.0.1 only).
pub const CHECKOUT_PORT: u16 = 18080;
/// Secret only the pod's environment has.
pub const CHECKOUT_SECRET: &str = "s3cr3t-from-the-pod";
/// Config file only the pod has.
pub const CHECKOUT_CONFIG: &str = "/etc/checkout/config.yaml";
/// Its contents.
pub const CHECKOUT_CONFIG_BODY: &str = "feature_flags:\n  new_checkout: true\nregion: staging-eu\n";
/// Name that resolves only inside the pod (to the pod's loopback).
pub const PAYMENTS_HOST: &str = "payments.staging.internal";
/// Directory the service serves, only in the pod.
pub const CHECKOUT_WWW: &str = "/srv/checkout/www";

/// A running checkout pod: the pod and its service process.
#[derive(Debug)]
pub struct CheckoutPod {
    pub pod: Pod,
    pub service: PodProcess,
}

/// Start the checkout pod and wait until its service answers.
pub fn checkout_pod(sandbox: &Sandbox) -> Result<CheckoutPod> {
    let spec = PodSpec::new("checkout")
        .env("APP_SECRET", CHECKOUT_SECRET)
        .env(
            "DATABASE_URL",
            "postgres://db.staging.internal:5432/checkout",
        )
        .env(
            "PAYMENTS_URL",
            format!("http://{PAYMENTS_HOST}:{CHECKOUT_PORT}"),
        )
        .file(CHECKOUT_CONFIG, CHECKOUT_CONFIG_BODY)
        .file(
            format!("{CHECKOUT_WWW}/index.html"),
            "hello from the checkout pod\n",
        )
        .file(format!("{CHECKOUT_WWW}/health"), "ok\n")
        .file(
            "/srv/checkout/data/orders.csv",
            "id,total\n1,9.99\n2,42.00\n",
        )
        .host(PAYMENTS_HOST, std::net::Ipv4Addr::LOCALHOST);
    let pod = sandbox.pod(spec)?;
    let port = CHECKOUT_PORT.to_string();
    // The service's access log would interleave with test and demo output.
    let service = pod
        .command("python3")?
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            CHECKOUT_WWW,
            &port,
        ])
        .stderr(std::process::Stdio::null())
        .spawn()?;
    pod.wait_for_tcp(CHECKOUT_PORT, Duration::from_secs(20))?;
    Ok(CheckoutPod { pod, service })
}

/// `remora run --target <pod> -- <args>` with the workspace's `remora`.
pub fn remora_run(pod: &Pod, args: &[&str]) -> Result<Output> {
    remora_run_with(pod, &[], args)
}

/// Like [`remora_run`] with extra `remora run` flags before `--`.
pub fn remora_run_with(pod: &Pod, flags: &[&str], args: &[&str]) -> Result<Output> {
    let remora = crate::bin_path("remora")?;
    let target = pod.target();
    let out = Command::new(&remora)
        .arg("run")
        .args(["--target", &target])
        .args(flags)
        .arg("--")
        .args(args)
        .output()
        .map_err(|source| crate::Error::Spawn {
            what: "remora run".into(),
            program: remora.display().to_string(),
            source,
        })?;
    Ok(out)
}

/// `curl -s -m 5 [-H header] url` from this machine: the body, or an empty
/// string when curl fails (tests compare bodies).
pub fn curl(url: &str, header: Option<&str>) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-m", "5", url]);
    if let Some(h) = header {
        cmd.args(["-H", h]);
    }
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Poll `ready` every 100 ms until it holds.
///
/// # Panics
/// After `timeout`, naming `what`.
pub fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The UDP responder [`udp_responder`] runs: one process, one socket bound to
/// `127.0.0.1:PORT`, answering each datagram from that address.
const UDP_RESPONDER: &str = "\
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
s.bind(('127.0.0.1', int(sys.argv[1])))
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(b'pod got ' + data.split(b'\\n')[0].strip() + b'\\n', peer)
";

/// A UDP service on `pod`'s loopback, port `port`: answers `pod got TEXT\n`
/// to each datagram `TEXT\n`, from its own address. One python3 process
/// answers every datagram (socat's `UDP4-RECVFROM,fork` forks a shell per
/// datagram, which under a loaded test run cost most of a round trip);
/// the caller waits until it answers.
pub fn udp_responder(pod: &Pod, port: u16) -> Result<PodProcess> {
    pod.command("python3")?
        .args(["-c", UDP_RESPONDER, &port.to_string()])
        .spawn()
}
