//! End-to-end: sockets of Go and static C programs under the seccomp
//! supervisor, where the layer's socket hooks have no reach: datagrams to
//! an address on unconnected UDP sockets, and the addresses `getsockname`
//! reports for sockets the supervisor connected through the target.
//! `remora run` runs in a client namespace where nothing listens, so an
//! answer can only come from the pod.

#[path = "support/seccomp.rs"]
mod seccomp;

use remora_tests::fixtures::CHECKOUT_PORT;
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

/// Start the pod's UDP service on [`UDP_PORT`] and wait until it answers.
fn udp_service(s: &seccomp::Setup) -> PodProcess {
    let service = fixtures::udp_responder(&s.checkout.pod, UDP_PORT).unwrap();
    let addr = format!("127.0.0.1:{UDP_PORT}");
    // The service is up once it answers inside the pod.
    fixtures::wait_for("the pod's UDP service", Duration::from_secs(30), || {
        s.checkout
            .pod
            .exec(&["sh", "-c", &format!("echo up | socat -t 2 - UDP4:{addr}")])
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("pod got up"))
    });
    service
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
    let _service = udp_service(&s);
    let addr = format!("127.0.0.1:{UDP_PORT}");
    let port = UDP_PORT.to_string();
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
    // On the local fast path (a socket connected in the pod) and on the
    // proxied path (connected to an interceptor, the addresses rewritten).
    for fast_path in ["on", "off"] {
        let out = s
            .command(&[], &[go, "addrs", &addr])
            .env("REMORA_LOCAL_FAST_PATH", fast_path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let out = String::from_utf8_lossy(&out.stdout);
        let fields: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(fields.len(), 4, "{out}");
        assert_eq!(fields[1], addr, "{out}");
        let seen = format!("{}:{}", fields[2], fields[3]);
        assert_eq!(fields[0], seen, "local address vs what the pod saw: {out}");
    }
}

/// On the local platform a TCP connect to the pod takes the fast path, as
/// with the layer: the program's socket is replaced, under its number, by
/// one the agent connected inside the pod's network namespace (so no
/// intproxy or agent is in between any more), keeping its close-on-exec
/// flag; with the fast path off it stays the program's own socket,
/// connected to an interceptor. A refused connect is refused either way.
#[test]
fn tcp_connects_take_the_fast_path_into_the_pods_network_namespace() {
    require_sandbox!();
    let apps = Apps::new();
    let c = apps.c_probe();
    let c = c.to_str().unwrap();
    let s = setup();
    let port = CHECKOUT_PORT.to_string();
    let run = |fast_path: &str, port: &str| {
        s.command(&[], &[c, "netns", "127.0.0.1", port])
            .env("REMORA_LOCAL_FAST_PATH", fast_path)
            .output()
            .unwrap()
    };
    let out = run("on", &port);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "socket netns: other, close-on-exec: yes\n",
        "{out:?}"
    );
    let out = run("off", &port);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "socket netns: own, close-on-exec: yes\n",
        "{out:?}"
    );
    // Nothing listens on the UDP service's port over TCP.
    let closed = UDP_PORT.to_string();
    for fast_path in ["on", "off"] {
        let out = run(fast_path, &closed);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("connect: Connection refused"),
            "{fast_path}: {out:?}"
        );
    }
}

/// A pod port where nothing listens: datagrams sent there get no answer.
const DEAD_UDP_PORT: u16 = 18096;

/// A receive the supervisor waits for on a routed socket ends when the
/// program's timeout says so: `SO_RCVTIMEO` of a blocking socket (static C,
/// and Go's `syscall` package) gives `EAGAIN`, a Go deadline its timeout
/// error; the socket then still gets the pod's answers. (Before, a
/// blocking receive ignored `SO_RCVTIMEO` and the program hung; the
/// programs' own watchdogs turn a hang into a failure.)
#[test]
fn receive_timeouts_end_udp_receives_the_supervisor_waits_for() {
    require_sandbox!();
    let apps = Apps::new();
    let go = apps.go_probe();
    let go = go.to_str().unwrap();
    let c = apps.c_static("udp_recv");
    let c = c.to_str().unwrap();
    let s = setup();
    let _service = udp_service(&s);
    let live = format!("127.0.0.1:{UDP_PORT}");
    let dead = format!("127.0.0.1:{DEAD_UDP_PORT}");
    assert_eq!(
        s.ok(&[go, "udp-timeout", &dead, &live]),
        format!(
            "timed out: deadline\ntimed out: resource temporarily unavailable\n\
             pod got ping from {live}\n"
        )
    );
    let (dead_port, live_port) = (DEAD_UDP_PORT.to_string(), UDP_PORT.to_string());
    assert_eq!(
        s.ok(&[c, "timeout", "127.0.0.1", &dead_port, &live_port]),
        format!("timed out: Resource temporarily unavailable\npod got ping from {live}\n")
    );
}

/// `recvmmsg` on a routed socket fills every message it can, as the
/// kernel: a blocking call without `MSG_WAITFORONE` returns all `vlen`
/// answers at once (it returned one per call before), each with the pod's
/// source; with nothing pending `MSG_DONTWAIT` gets `EAGAIN`; and when
/// `SO_RCVTIMEO` passes with some messages in, it returns those. Static C
/// and Go (the raw call golang.org/x/net's `ReadBatch` makes).
#[test]
fn recvmmsg_on_a_routed_socket_returns_every_pending_datagram_in_one_call() {
    require_sandbox!();
    let apps = Apps::new();
    let go = apps.go_probe();
    let go = go.to_str().unwrap();
    let c = apps.c_static("udp_recv");
    let c = c.to_str().unwrap();
    let s = setup();
    let _service = udp_service(&s);
    let addr = format!("127.0.0.1:{UDP_PORT}");
    let replies: String = (0..3)
        .map(|i| format!("pod got m{i} from {addr}\n"))
        .collect();
    assert_eq!(
        s.ok(&[c, "mmsg", "127.0.0.1", &UDP_PORT.to_string(), "3"]),
        format!("one call: 3\n{replies}then: Resource temporarily unavailable\ntimeout: 2\n")
    );
    assert_eq!(
        s.ok(&[go, "udp-mmsg", &addr, "3"]),
        format!("one call: 3\n{replies}")
    );
}

/// A blocking receive the supervisor waits for ends as the kernel's would
/// when a signal comes (the filter keeps signals from ending a notified call
/// once the supervisor has it, so the waiter must end it): `EINTR` without
/// `SA_RESTART`, a restarted call with it, and `EINTR` for a signal to the
/// whole process; each handler runs.
#[test]
fn a_signal_ends_a_waited_udp_receive_as_the_kernels_would() {
    require_sandbox!();
    let apps = Apps::new();
    let c = apps.c_static("udp_recv");
    let c = c.to_str().unwrap();
    let s = setup();
    let _service = udp_service(&s);
    assert_eq!(
        s.ok(&[c, "interrupt", "127.0.0.1", &UDP_PORT.to_string(), "300"]),
        "plain: Interrupted system call, handler ran 1\n\
         restart: pod got late, handler ran 2\n\
         process: Interrupted system call, handler ran 3\n"
    );
}

/// A program killed by a signal's default action while the supervisor waits
/// for its receive ends, and so does `remora run`, saying how it ended.
#[test]
fn a_fatal_signal_ends_a_program_in_a_waited_udp_receive() {
    require_sandbox!();
    let apps = Apps::new();
    let c = apps.c_static("udp_recv");
    let c = c.to_str().unwrap();
    let s = setup();
    let _service = udp_service(&s);
    let mut child = s
        .command(&[], &[c, "die", "127.0.0.1", &UDP_PORT.to_string(), "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A guard against a hang, not a measurement: the program's alarm comes
    // after 1 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("remora run did not end within 60 s of a fatal SIGALRM");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stdout = String::new();
    let mut pipe = child.child_mut().stdout.take().unwrap();
    std::io::Read::read_to_string(&mut pipe, &mut stdout).unwrap();
    assert_eq!(stdout, "waiting\n");
    assert!(!status.success(), "{status}");
}

/// A signal that interrupts a receive after the supervisor took the
/// datagram but before the answer reached the program no longer loses it:
/// it is put back on the socket and the retried receive gets it. The
/// receiving thread gets SIGUSR1 every 100 µs during 150 request/reply
/// rounds: a blocking `recvfrom` of static C (waited for by a supervisor
/// thread, EINTR retried) and Go's non-blocking `ReadFrom` (answered at
/// once). Before, a reply was lost now and then and its round timed out.
#[test]
fn a_signal_during_a_udp_receive_loses_no_datagram() {
    require_sandbox!();
    let apps = Apps::new();
    let go = apps.go_probe();
    let go = go.to_str().unwrap();
    let c = apps.c_static("udp_recv");
    let c = c.to_str().unwrap();
    let s = setup();
    let _service = udp_service(&s);
    let addr = format!("127.0.0.1:{UDP_PORT}");
    assert_eq!(
        s.ok(&[c, "signals", "127.0.0.1", &UDP_PORT.to_string(), "150"]),
        "replies 150 of 150\n"
    );
    assert_eq!(
        s.ok(&[go, "udp-signals", &addr, "150"]),
        "replies 150 of 150\n"
    );
}
