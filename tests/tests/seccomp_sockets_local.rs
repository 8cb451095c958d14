//! End-to-end: sockets of Go and static C programs under the seccomp
//! supervisor, where the layer's socket hooks have no reach: datagrams to
//! an address on unconnected UDP sockets, and the addresses `getsockname`
//! reports for sockets the supervisor connected through the target.
//! `remora run` runs in a client namespace where nothing listens, so an
//! answer can only come from the pod.

#[path = "support/seccomp.rs"]
mod seccomp;

use remora_tests::{PodProcess, fixtures, require_sandbox};
use seccomp::{Apps, setup};
use std::time::Duration;

/// A UDP service on the pod's loopback: answers "pod got TEXT" to each
/// datagram, from its own address.
const UDP_PORT: u16 = 18097;
/// A TCP service on the pod's loopback: sends the client's address as it
/// sees it.
const TCP_PORT: u16 = 18098;

fn socat(s: &seccomp::Setup, args: &[&str]) -> PodProcess {
    s.checkout
        .pod
        .command("socat")
        .unwrap()
        .args(args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// `sendto`/`sendmsg` with a destination on a socket that never called
/// `connect` (Go's `WriteTo`, C's `sendto` and `sendmsg`) reach the pod's
/// loopback, and the answer's source (`ReadFrom`, `recvfrom`, `recvmsg`,
/// a blocking one in C) is the pod's service, not remora's interceptor.
#[test]
fn unconnected_udp_sendto_and_sendmsg_reach_the_pod_and_answers_name_it() {
    require_sandbox!();
    let apps = Apps::new();
    let go = apps.go_probe();
    let go = go.to_str().unwrap();
    let c = apps.c_probe();
    let c = c.to_str().unwrap();
    let s = setup();
    let listen = format!("UDP4-RECVFROM:{UDP_PORT},bind=127.0.0.1,fork");
    let _service = socat(&s, &[&listen, "SYSTEM:read x; echo pod got $x"]);
    let addr = format!("127.0.0.1:{UDP_PORT}");
    let port = UDP_PORT.to_string();
    // The service is up once it answers inside the pod.
    fixtures::wait_for("the pod's UDP service", Duration::from_secs(30), || {
        s.checkout
            .pod
            .exec(&["sh", "-c", &format!("echo up | socat -t 2 - UDP4:{addr}")])
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("pod got up"))
    });
    assert_eq!(
        s.ok(&[go, "udp", &addr, "from-go"]),
        format!("pod got from-go from {addr}\n")
    );
    assert_eq!(
        s.ok(&[c, "udp", "127.0.0.1", &port, "from-c"]),
        format!("pod got from-c from {addr}\n")
    );
    assert_eq!(
        s.ok(&[c, "udpmsg", "127.0.0.1", &port, "by-sendmsg"]),
        format!("pod got by-sendmsg from {addr}\n")
    );
}

/// A Go program's TCP connection through the target: `LocalAddr`
/// (`getsockname`) is the address the pod's service sees it come from, as
/// with the layer, and `RemoteAddr` (`getpeername`) the address it dialed.
#[test]
fn getsockname_of_a_redirected_socket_is_its_address_in_the_pod() {
    require_sandbox!();
    let apps = Apps::new();
    let go = apps.go_probe();
    let go = go.to_str().unwrap();
    let s = setup();
    let listen = format!("TCP4-LISTEN:{TCP_PORT},bind=127.0.0.1,reuseaddr,fork");
    // (socat would split "ADDR:PORT" at the colon: a space instead.)
    let _service = socat(
        &s,
        &[&listen, "SYSTEM:echo $SOCAT_PEERADDR $SOCAT_PEERPORT"],
    );
    s.checkout
        .pod
        .wait_for_tcp(TCP_PORT, Duration::from_secs(30))
        .unwrap();
    let addr = format!("127.0.0.1:{TCP_PORT}");
    let out = s.ok(&[go, "addrs", &addr]);
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(fields.len(), 4, "{out}");
    assert_eq!(fields[1], addr, "{out}");
    let seen = format!("{}:{}", fields[2], fields[3]);
    assert_eq!(fields[0], seen, "local address vs what the pod saw: {out}");
}
