//! A container's securityContext, held to what the kernel reports (`/proc/self/status`, `id`):
//! the runtime's default capabilities, `add`/`drop` (with `ALL`), `privileged`,
//! `runAsUser`/`runAsGroup` from the pod or the container (also for `kubectl exec`),
//! `allowPrivilegeEscalation: false`, and `runAsNonRoot` refusing root; with the process
//! runtime and with containerd.

mod common;

use common::{Sim, poll};

/// The `Cap*`/`NoNewPrivs` lines of /proc/self/status and the ids, as the container prints
/// them.
const REPORT: &str = "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; echo uid=$(id -u) gid=$(id -g); exec sleep 1000";

fn field(report: &str, name: &str) -> String {
    report
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no {name} in {report}"))
}

fn mask(bits: &[u32]) -> String {
    format!("{:016x}", bits.iter().fold(0u64, |m, b| m | (1 << b)))
}

#[test]
fn capabilities_users_and_non_root_as_a_runtime_applies_them() {
    check(&Sim::start());
}

#[test]
fn containerd_applies_them_the_same_way() {
    check(&Sim::start_with(&["--runtime", "containerd"]));
}

fn check(sim: &Sim) {
    let pod = |name: &str, pod_sc: &str, sc: &str| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  securityContext: {pod_sc}
  containers:
  - name: main
    image: busybox
    command: [sh, -c, "{REPORT}"]
    securityContext: {sc}
"#
        )
    };
    let manifest = [
        pod("defaults", "{}", "{}"),
        pod(
            "narrow",
            "{}",
            "{capabilities: {drop: [ALL], add: [NET_ADMIN]}}",
        ),
        pod("privileged", "{}", "{privileged: true}"),
        pod(
            "user",
            "{runAsUser: 1000, runAsGroup: 2000}",
            "{runAsUser: 1001, allowPrivilegeEscalation: false}",
        ),
        pod("nonroot", "{runAsNonRoot: true}", "{}"),
    ]
    .join("---");
    sim.apply_yaml(&manifest, &[]);
    let report = |name: &str| {
        let mut text = String::new();
        poll(
            || {
                // Fails until the container has started.
                let out = sim.kubectl(&["logs", name]);
                text = String::from_utf8_lossy(&out.stdout).into_owned();
                out.status.success() && text.contains("uid=")
            },
            &format!("the report of {name}"),
        );
        text
    };

    // containerd's default set: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP
    // NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP.
    let defaults = report("defaults");
    let default_mask = mask(&[0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31]);
    assert_eq!(default_mask, "00000000a80425fb", "Docker's well-known mask");
    assert_eq!(field(&defaults, "CapEff"), default_mask, "{defaults}");
    assert_eq!(field(&defaults, "CapBnd"), default_mask, "{defaults}");
    assert!(defaults.contains("uid=0 gid=0"), "{defaults}");

    let narrow = report("narrow");
    assert_eq!(
        field(&narrow, "CapEff"),
        mask(&[12]),
        "only NET_ADMIN: {narrow}"
    );

    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    assert_eq!(
        field(&report("privileged"), "CapEff"),
        field(&own, "CapEff"),
        "privileged keeps the node's capabilities"
    );

    let user = report("user");
    assert!(user.contains("uid=1001 gid=2000"), "{user}");
    assert_eq!(
        field(&user, "CapEff"),
        mask(&[]),
        "a non-root user has none: {user}"
    );
    assert_eq!(field(&user, "NoNewPrivs"), "1", "{user}");
    assert_eq!(
        sim.ok(&["exec", "user", "--", "id", "-u"]).trim(),
        "1001",
        "exec runs as the container's user"
    );

    poll(
        || {
            sim.ok(&[
                "get",
                "pod",
                "nonroot",
                "-o",
                "jsonpath={.status.containerStatuses[0].state.waiting.reason}",
            ]) == "CreateContainerConfigError"
        },
        "runAsNonRoot without a user to be refused",
    );
    let message = sim.ok(&[
        "get",
        "pod",
        "nonroot",
        "-o",
        "jsonpath={.status.containerStatuses[0].state.waiting.message}",
    ]);
    assert!(
        message.contains("runAsNonRoot and image will run as root"),
        "{message}"
    );
}
