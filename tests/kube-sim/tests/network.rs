//! Pod networking held to real programs: every pod has its own network namespace, an address
//! from 10.216.N.0/24 that this machine and the other pods reach (curl), its own hostname, the
//! API server on the bridge; Endpoints carry the pod addresses; services are reached at their
//! cluster IPs and by DNS name; `hostNetwork` pods share the node's network and hostname.

mod common;

use std::{net::Ipv4Addr, process::Command};

use common::{Sim, poll, web_pod};

fn pod_ip(sim: &Sim, name: &str) -> Ipv4Addr {
    sim.ok(&["get", "pod", name, "-o", "jsonpath={.status.podIP}"])
        .parse()
        .expect("an IPv4 podIP")
}

fn curl(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "-m", "10", url])
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn netns_of(pid: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

#[test]
fn pods_have_their_own_address_hostname_and_reach_each_other() {
    let sim = Sim::start();
    // 8000 on every pod: each has its own namespace, so the same port does not collide.
    web_pod(&sim, "web", 8000, "0.0.0.0");
    let web = pod_ip(&sim, "web");
    assert_eq!(web.octets()[..2], [10, 216], "{web}");
    assert_eq!(
        sim.ok(&["get", "pod", "web", "-o", "jsonpath={.status.podIPs[0].ip}"]),
        web.to_string()
    );
    // This machine reaches the pod.
    assert_eq!(
        curl(&format!("http://{web}:8000/hello.txt")),
        "hello from the pod\n"
    );

    // Another pod reaches it, sees its own name as hostname and address, and the API server.
    let client = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  restartPolicy: Never
  containers:
  - name: client
    image: curl
    command:
    - sh
    - -c
    - |
      echo hostname=$(hostname) ip=$POD_IP
      ip -4 -o addr show dev eth0
      curl -sS -m 10 http://{web}:8000/hello.txt
      curl -sS -m 10 -o /dev/null -w 'api=%{{http_code}}\n' http://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/version
    env:
    - name: POD_IP
      valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
"#
    );
    sim.apply_yaml(&client, &[]);
    poll(
        || sim.ok(&["get", "pod", "client", "-o", "jsonpath={.status.phase}"]) == "Succeeded",
        "the client pod to finish",
    );
    let client_ip = pod_ip(&sim, "client");
    assert_ne!(client_ip, web);
    let logs = sim.ok(&["logs", "client"]);
    assert!(
        logs.contains(&format!("hostname=client ip={client_ip}")),
        "{logs}"
    );
    assert!(logs.contains(&format!("inet {client_ip}/24")), "{logs}");
    assert!(logs.contains("hello from the pod\n"), "{logs}");
    assert!(logs.contains("api=200"), "{logs}");

    // Endpoints carry the pod's address.
    sim.apply_yaml(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8000}]\n",
        &[],
    );
    poll(
        || {
            sim.ok(&[
                "get",
                "endpoints",
                "web",
                "-o",
                "jsonpath={.subsets[0].addresses[0].ip}",
            ]) == web.to_string()
        },
        "the endpoints to carry the pod's address",
    );

    // Deleting the pod removes its host-side veth.
    let veth = format!("rks{}p{}", web.octets()[2], web.octets()[3]);
    assert!(link_exists(&veth), "{veth} exists while the pod runs");
    sim.ok(&["delete", "pod", "web"]);
    poll(|| !link_exists(&veth), "the pod's veth to be gone");
}

fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn host_network_pods_share_the_node_network_and_hostname() {
    let sim = Sim::start();
    let pod = r#"
apiVersion: v1
kind: Pod
metadata: {name: node-agent}
spec:
  hostNetwork: true
  hostPID: true
  containers:
  - name: agent
    image: agent
    command: [sh, -c, "echo hostname=$(hostname); exec sleep 1000"]
    securityContext: {privileged: true}
"#;
    sim.apply_yaml(pod, &[]);
    sim.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/node-agent",
        "--timeout=30s",
    ]);
    assert_eq!(pod_ip(&sim, "node-agent"), Ipv4Addr::LOCALHOST);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    poll(
        || {
            sim.ok(&["logs", "node-agent"])
                .contains(&format!("hostname={}", host.trim()))
        },
        "the node's hostname in the pod",
    );
    let id = sim.ok(&[
        "get",
        "pod",
        "node-agent",
        "-o",
        "jsonpath={.status.containerStatuses[0].containerID}",
    ]);
    let pid = remora_agent::container::find_container_pid(std::path::Path::new("/proc"), &id)
        .expect("the agent finds the container");
    assert_eq!(
        netns_of(&pid.to_string()),
        netns_of("self"),
        "the node's network namespace"
    );
}

#[test]
fn cluster_dns_and_cluster_ips_reach_services_by_short_and_full_names() {
    let sim = Sim::start();
    web_pod(&sim, "web", 8000, "0.0.0.0");
    let web = pod_ip(&sim, "web");
    sim.apply_yaml(
        r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8000}]
---
apiVersion: v1
kind: Service
metadata: {name: web-headless}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{port: 8000}]
---
apiVersion: v1
kind: Service
metadata: {name: nobody}
spec:
  selector: {app: nobody}
  ports: [{port: 80}]
"#,
        &[],
    );
    for svc in ["web", "web-headless"] {
        poll(
            || {
                sim.ok(&[
                    "get",
                    "endpoints",
                    svc,
                    "-o",
                    "jsonpath={.subsets[0].addresses[0].ip}",
                ]) == web.to_string()
            },
            "the endpoints",
        );
    }
    // The EndpointSlice, as kube-proxy and newer clients read it.
    poll(
        || {
            sim.ok(&[
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=web",
                "-o",
                "jsonpath={.items[0].addressType} {.items[0].endpoints[0].addresses[0]} \
                 {.items[0].endpoints[0].conditions.ready} {.items[0].ports[0].name} \
                 {.items[0].ports[0].port} {.items[0].metadata.ownerReferences[0].name}",
            ]) == format!("IPv4 {web} true http 8000 web")
        },
        "the service's EndpointSlice",
    );
    let cluster_ip =
        |svc: &str| sim.ok(&["get", "service", svc, "-o", "jsonpath={.spec.clusterIP}"]);
    let web_ip = cluster_ip("web");
    let subnet = std::fs::read_to_string(sim.state_dir().join("subnet")).unwrap();
    assert!(
        web_ip.starts_with(&format!("10.215.{}.", subnet.trim())),
        "{web_ip}: from the run's service range"
    );
    assert_eq!(cluster_ip("web-headless"), "None");
    // This machine reaches the service at its cluster IP and port (relayed to targetPort),
    // once the proxy has seen the service.
    poll(
        || std::net::TcpStream::connect((web_ip.as_str(), 80)).is_ok(),
        "the service proxy to listen",
    );
    assert_eq!(
        curl(&format!("http://{web_ip}/hello.txt")),
        "hello from the pod\n"
    );
    let nobody = Command::new("curl")
        .args([
            "-sS",
            "-m",
            "10",
            &format!("http://{}/", cluster_ip("nobody")),
        ])
        .output()
        .unwrap();
    assert!(
        !nobody.status.success(),
        "a service without endpoints refuses: {}",
        String::from_utf8_lossy(&nobody.stdout)
    );
    sim.apply_yaml(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  restartPolicy: Never
  containers:
  - name: client
    image: busybox
    command:
    - sh
    - -c
    - |
      for n in web web.default web.default.svc.cluster.local web-headless nope.default.svc.cluster.local client; do
        echo "$n => $(getent hosts $n | cut -d' ' -f1)"
      done
      # The same over TCP only (glibc's use-vc option).
      for n in web web.default.svc.cluster.local; do
        echo "tcp $n => $(RES_OPTIONS=use-vc getent hosts $n | cut -d' ' -f1)"
      done
      curl -sS -m 10 http://web/hello.txt
      curl -sS -m 10 http://web.default.svc.cluster.local:80/hello.txt
      curl -sS -m 10 http://web-headless:8000/hello.txt
"#,
        &[],
    );
    poll(
        || sim.ok(&["get", "pod", "client", "-o", "jsonpath={.status.phase}"]) == "Succeeded",
        "the client pod to finish",
    );
    let client = pod_ip(&sim, "client");
    let logs = sim.ok(&["logs", "client"]);
    for line in [
        format!("web => {web_ip}"),
        format!("web.default => {web_ip}"),
        format!("web.default.svc.cluster.local => {web_ip}"),
        format!("web-headless => {web}"),
        "nope.default.svc.cluster.local => \n".to_owned(),
        format!("client => {client}"),
        format!("tcp web => {web_ip}"),
        format!("tcp web.default.svc.cluster.local => {web_ip}"),
    ] {
        assert!(logs.contains(&line), "{line:?} in {logs}");
    }
    assert_eq!(
        logs.matches("hello from the pod").count(),
        3,
        "through both cluster-IP names and the headless one: {logs}"
    );

    // The cluster IP is an address of the run's bridge only while the service exists.
    let bridge_addrs = || {
        let out = Command::new("ip")
            .args([
                "-o",
                "addr",
                "show",
                "dev",
                &format!("rksbr{}", subnet.trim()),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(bridge_addrs().contains(&format!("{web_ip}/32")));
    sim.ok(&["delete", "service", "web"]);
    poll(
        || !bridge_addrs().contains(&format!("{web_ip}/32")),
        "the cluster IP to leave the bridge",
    );
}
