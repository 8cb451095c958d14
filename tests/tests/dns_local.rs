//! End-to-end: the resolver entry points that bypass `getaddrinfo`'s
//! usual path (issue 15, item 3): `res_query`/`res_search` (raw DNS
//! messages, which glibc sends through internal calls) and
//! `getaddrinfo_a` (glibc's worker threads) are answered by the pod's
//! resolver: its hosts file, its nameserver and its search list.

use remora_tests::fixtures::remora_run;
use remora_tests::operator::OperatorProcess;
use remora_tests::{PodSpec, Sandbox, require_sandbox};
use std::net::Ipv4Addr;
use std::process::Output;
use std::time::Duration;

/// A nameserver for the pod's loopback: `orders.pod.test` A 10.1.2.3,
/// `config.pod.test` TXT, NOERROR without data for other types of those,
/// NXDOMAIN for everything else. TCP port 53 only tells that it is ready.
const DNS_SERVER: &str = r#"
import socket, struct
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", 53))
ready = socket.socket()
ready.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ready.bind(("127.0.0.1", 53))
ready.listen()
RECORDS = {
    ("orders.pod.test", 1): socket.inet_aton("10.1.2.3"),
    ("config.pod.test", 16): bytes([18]) + b"hello from the pod",
}
NAMES = {name for name, _ in RECORDS}
while True:
    query, peer = udp.recvfrom(512)
    labels, at = [], 12
    while query[at]:
        labels.append(query[at + 1: at + 1 + query[at]].decode().lower())
        at += 1 + query[at]
    qtype, qclass = struct.unpack("!HH", query[at + 1: at + 5])
    question = query[12: at + 5]
    name = ".".join(labels)
    data = RECORDS.get((name, qtype))
    rcode = 0 if name in NAMES else 3
    answer = b""
    if data is not None:
        answer = struct.pack("!HHHIH", 0xC00C, qtype, qclass, 60, len(data)) + data
    header = query[:2] + struct.pack("!HHHHH", 0x8180 | rcode, 1, 1 if answer else 0, 0, 0)
    udp.sendto(header + question + answer, peer)
"#;

/// ctypes calls of the raw resolver functions, as a C program makes them.
const PY_RES: &str = r#"
import ctypes, socket
libc = ctypes.CDLL(None)
libc.__h_errno_location.restype = ctypes.POINTER(ctypes.c_int)
buf = ctypes.create_string_buffer(512)

def ask(fn, name, rtype):
    n = fn(name.encode(), 1, rtype, buf, 512)
    if n < 0:
        return f"h_errno={libc.__h_errno_location()[0]}"
    msg = buf.raw[:n]
    answers = int.from_bytes(msg[6:8], "big")
    if rtype == 1:
        return f"{answers} A {socket.inet_ntoa(msg[-4:])}"
    return f"{answers} TXT {msg.split(bytes([18]))[-1].decode()}"

print("res_query", ask(libc.res_query, "orders.pod.test", 1))
print("res_search", ask(libc.res_search, "orders", 1))
print("__res_query", ask(libc.__res_query, "config.pod.test", 16))
print("nxdomain", ask(libc.res_query, "missing.pod.test", 1))
print("no data", ask(libc.res_query, "orders.pod.test", 28))
"#;

fn dns_pod(sandbox: &Sandbox) -> (remora_tests::Pod, remora_tests::PodProcess) {
    let pod = sandbox
        .pod(
            PodSpec::new("dns")
                .resolv_conf(
                    "search pod.test\nnameserver 127.0.0.1\noptions ndots:1 timeout:1 attempts:1\n",
                )
                .host("ledger.pod.test", Ipv4Addr::new(10, 4, 5, 6)),
        )
        .unwrap();
    let server = pod
        .command("python3")
        .unwrap()
        .args(["-c", DNS_SERVER])
        .spawn()
        .unwrap();
    pod.wait_for_tcp(53, Duration::from_secs(20)).unwrap();
    (pod, server)
}

#[track_caller]
fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn res_query_and_res_search_ask_the_pods_nameserver() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _server) = dns_pod(&sandbox);
    let out = ok(remora_run(&pod, &["python3", "-c", PY_RES]).unwrap());
    // h_errno: 1 HOST_NOT_FOUND, 4 NO_DATA.
    assert_eq!(
        out,
        "res_query 1 A 10.1.2.3\nres_search 1 A 10.1.2.3\n__res_query 1 TXT hello from the pod\n\
         nxdomain h_errno=1\nno data h_errno=4\n"
    );
}

#[test]
fn getaddrinfo_a_resolves_with_the_pods_hosts_file_and_nameserver() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _server) = dns_pod(&sandbox);
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("gai_async");
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/apps/c/gai_async.c");
    let built = std::process::Command::new("gcc")
        .arg("-o")
        .arg(&program)
        .arg(source)
        .status()
        .unwrap();
    assert!(built.success());
    let out = ok(remora_run(
        &pod,
        &[
            program.to_str().unwrap(),
            "ledger.pod.test",
            "orders.pod.test",
            "missing.pod.test",
        ],
    )
    .unwrap());
    assert_eq!(
        out,
        "ledger.pod.test: 10.4.5.6\norders.pod.test: 10.1.2.3\n\
         missing.pod.test: Name or service not known\n"
    );
}

#[test]
fn through_the_operator_raw_queries_for_a_blocked_name_are_refused() {
    require_sandbox!();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _server) = dns_pod(&sandbox);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[policy]]\ntargets = [\"pid/*\"]\noutgoing_block = [\"orders.pod.test\"]\n",
    )
    .unwrap();
    let op = OperatorProcess::start(Some(&policy)).unwrap();
    let out = op
        .remora("alice")
        .unwrap()
        .args([
            "run",
            "--target",
            &pod.target(),
            "--",
            "python3",
            "-c",
            PY_RES,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        stderr.contains("DNS queries for orders.pod.test are refused: policy #1"),
        "{stderr}\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The blocked name is refused (h_errno 3, NO_RECOVERY) whether asked
    // for directly or found through the pod's search list (`orders`);
    // other names are answered.
    assert_eq!(
        ok(out),
        "res_query h_errno=3\nres_search h_errno=3\n__res_query 1 TXT hello from the pod\n\
         nxdomain h_errno=1\nno data h_errno=3\n"
    );
}
