//! End-to-end: programs `LD_PRELOAD` cannot reach (a pure-Go program, a
//! `gcc -static` C program, busybox-static) run through `remora run`, which
//! picks the seccomp supervisor for them, against a sandbox pod.
//!
//! `remora run` itself runs inside a *client* namespace (network, mount and
//! UTS of its own, with the default resolv.conf naming its own loopback,
//! where nothing listens): if a program escaped remora, its file reads would
//! see the host, its lookups would fail fast on the client's loopback and no
//! query could leave the machine.

#[path = "support/seccomp.rs"]
mod seccomp;

use remora_tests::fixtures::{
    CHECKOUT_CONFIG, CHECKOUT_CONFIG_BODY, CHECKOUT_PORT, CHECKOUT_SECRET, PAYMENTS_HOST,
};
use remora_tests::{Pod, PodSpec, Sandbox, bin_path, fixtures, require_sandbox};
use seccomp::{Apps, setup};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// `remora doctor` runs the real probe (filter, pidfd_getfd, ADDFD + SEND)
/// and names the mode a program would get.
#[test]
fn doctor_probes_seccomp_and_names_the_mode() {
    let out = Command::new(bin_path("remora").unwrap())
        .args(["doctor", "--", "/bin/busybox"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("seccomp user notification: works (with SECCOMP_IOCTL_NOTIF_ADDFD + SECCOMP_ADDFD_FLAG_SEND and pidfd_getfd)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("/bin/busybox: seccomp supervisor (/bin/busybox is statically linked"),
        "{stdout}"
    );
    // A script is judged by its interpreter; a missing program is named so.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script");
    std::fs::write(&script, "#!/bin/busybox sh\necho hi\n").unwrap();
    let missing = dir.path().join("missing");
    let out = Command::new(bin_path("remora").unwrap())
        .args(["doctor", "--"])
        .arg(&script)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let script = script.display();
    assert!(
        stdout.contains(&format!(
            "{script}: seccomp supervisor ({script} is a script run by /bin/busybox; \
             /bin/busybox is statically linked"
        )),
        "{stdout}"
    );
    let out = Command::new(bin_path("remora").unwrap())
        .args(["doctor", "--"])
        .arg(&missing)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let missing = missing.display();
    assert!(
        stdout.contains(&format!(
            "{missing}: LD_PRELOAD layer ({missing} does not exist)"
        )),
        "{stdout}"
    );
    // Whether the kernel takes synchronous wake-ups (Linux 6.6) is said.
    assert!(
        stdout.contains("seccomp synchronous wake-ups (SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP): "),
        "{stdout}"
    );
}

#[test]
fn pure_go_program_sees_env_files_dirs_dns_and_the_pods_loopback() {
    require_sandbox!();
    let apps = Apps::new();
    let probe = apps.go_probe();
    let probe = probe.to_str().unwrap();
    let s = setup();
    // Without remora, the Go program sees the client namespace, not the pod.
    let direct = s.client.exec(&[probe, "cat", CHECKOUT_CONFIG]).unwrap();
    assert!(!direct.status.success());

    assert_eq!(s.ok(&[probe, "env", "APP_SECRET"]).trim(), CHECKOUT_SECRET);
    assert_eq!(s.ok(&[probe, "cat", CHECKOUT_CONFIG]), CHECKOUT_CONFIG_BODY);
    assert_eq!(
        s.ok(&[probe, "ls", "/srv/checkout/www"]).trim(),
        "health index.html"
    );
    assert_eq!(
        s.ok(&[probe, "stat", CHECKOUT_CONFIG]).trim(),
        format!("{} false", CHECKOUT_CONFIG_BODY.len())
    );
    assert_eq!(
        s.ok(&[probe, "stat", "/srv/checkout/data"])
            .trim()
            .split(' ')
            .nth(1),
        Some("true")
    );
    assert_eq!(s.ok(&[probe, "resolve", PAYMENTS_HOST]).trim(), "127.0.0.1");
    let addr = format!("127.0.0.1:{CHECKOUT_PORT}");
    assert_eq!(s.ok(&[probe, "get", &addr, "/health"]), "ok\n");
    let by_name = format!("{PAYMENTS_HOST}:{CHECKOUT_PORT}");
    assert_eq!(
        s.ok(&[probe, "get", &by_name, "/"]),
        "hello from the checkout pod\n"
    );
    // The connection's peer is the pod's service, not the interceptor.
    assert_eq!(s.ok(&[probe, "peer", &by_name]).trim(), addr);
    // A missing pod file is missing for the program too.
    let out = s.run(&[], &[probe, "cat", "/etc/checkout/nope.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such file"));
    // fs mode `local`: the pod's files are out of reach, the env is not.
    let local = ["--fs-mode", "local"];
    let out = s.run(&local, &[probe, "cat", CHECKOUT_CONFIG]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such file"));
    assert_eq!(
        s.ok_with(&local, &[probe, "env", "APP_SECRET"]).trim(),
        CHECKOUT_SECRET
    );
}

/// `chdir` into a pod directory (which does not exist here): relative paths,
/// `getcwd`, listing `.`, and children (which inherit the working
/// directory) all see the pod's directory.
#[test]
fn chdir_into_a_pod_directory_works_for_go_busybox_and_their_children() {
    require_sandbox!();
    let apps = Apps::new();
    let probe = apps.go_probe();
    let s = setup();
    let www = "/srv/checkout/www";
    assert_eq!(
        s.ok(&[probe.to_str().unwrap(), "cdcat", www, "health"]),
        format!("ok\n{www}\n")
    );
    // A static shell: `cd`, then its builtin `cat`-less reads through
    // forked and exec'd busybox applets, which inherit the directory.
    let script = "cd /srv/checkout/www && /bin/busybox cat health && /bin/busybox pwd \
                  && /bin/busybox ls . && cd ../data && /bin/busybox cat orders.csv";
    assert_eq!(
        s.ok(&["/bin/busybox", "sh", "-c", script]),
        format!("ok\n{www}\nhealth\nindex.html\nid,total\n1,9.99\n2,42.00\n")
    );
}

/// The cgo build (dynamically linked, libc's resolver): `auto` picks the
/// supervisor for it (a Go program), and libc's own calls are covered too.
#[test]
fn cgo_go_program_sees_files_and_resolves_pod_names_through_libc() {
    require_sandbox!();
    let apps = Apps::new();
    let probe = apps.go_probe_cgo();
    let probe = probe.to_str().unwrap();
    let s = setup();
    assert_eq!(s.ok(&[probe, "env", "APP_SECRET"]).trim(), CHECKOUT_SECRET);
    assert_eq!(s.ok(&[probe, "cat", CHECKOUT_CONFIG]), CHECKOUT_CONFIG_BODY);
    assert_eq!(
        s.ok(&[probe, "ls", "/srv/checkout/www"]).trim(),
        "health index.html"
    );
    assert_eq!(
        s.ok(&[probe, "stat", CHECKOUT_CONFIG]).trim(),
        format!("{} false", CHECKOUT_CONFIG_BODY.len())
    );
    assert_eq!(s.ok(&[probe, "resolve", PAYMENTS_HOST]).trim(), "127.0.0.1");
    let addr = format!("127.0.0.1:{CHECKOUT_PORT}");
    assert_eq!(s.ok(&[probe, "get", &addr, "/health"]), "ok\n");
    let by_name = format!("{PAYMENTS_HOST}:{CHECKOUT_PORT}");
    assert_eq!(s.ok(&[probe, "get", &by_name, "/health"]), "ok\n");
}

/// SIGTERM to `remora run` goes to the supervised program, which still has
/// its supervisor while it shuts down (here: reads a pod file).
#[test]
fn sigterm_reaches_the_program_while_the_supervisor_serves_it() {
    require_sandbox!();
    use std::io::{BufRead, Read};
    let apps = Apps::new();
    let probe = apps.go_probe();
    let s = setup();
    let mut run = s
        .client
        .command(bin_path("remora").unwrap())
        .unwrap()
        .args(["run", "--target", &s.checkout.pod.target(), "--"])
        .arg(&probe)
        .args(["on-term", CHECKOUT_CONFIG])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = run.child_mut().stdout.take().unwrap();
    let mut stdout = std::io::BufReader::new(stdout);
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.pid() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, CHECKOUT_CONFIG_BODY);
    assert_eq!(run.wait().unwrap().code(), Some(0));
}

#[test]
fn children_of_a_go_program_inherit_the_filter_static_or_dynamic() {
    require_sandbox!();
    let apps = Apps::new();
    let probe = apps.go_probe();
    let s = setup();
    // The Go program execs the dynamically linked `cat`, which has no layer
    // (LD_PRELOAD is not set in seccomp mode) but inherits the filter.
    let out = s.ok(&[
        probe.to_str().unwrap(),
        "child",
        "/srv/checkout/data/orders.csv",
    ]);
    assert_eq!(out, "id,total\n1,9.99\n2,42.00\n");
}

/// The reverse: a dynamically linked program that has the layer (`sh`,
/// `python3`) starts static and Go programs (execve, posix_spawnp with a
/// PATH search); each child runs under `remora supervise` and sees the pod.
#[test]
fn a_dynamic_program_with_the_layer_hands_static_and_go_children_to_the_supervisor() {
    require_sandbox!();
    let apps = Apps::new();
    let go = apps.go_probe();
    let go = go.to_str().unwrap();
    // The cgo build is dynamically linked: found by its Go build-id note.
    let cgo = apps.go_probe_cgo();
    let cgo = cgo.to_str().unwrap();
    let s = setup();
    let script = format!(
        "/bin/busybox cat {CHECKOUT_CONFIG} && {go} cat {CHECKOUT_CONFIG} \
         && busybox ls /srv/checkout/www && cat {CHECKOUT_CONFIG} && {cgo} cat {CHECKOUT_CONFIG}"
    );
    let out = s.run(&[], &["sh", "-c", &script]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "{CHECKOUT_CONFIG_BODY}{CHECKOUT_CONFIG_BODY}health\nindex.html\n{CHECKOUT_CONFIG_BODY}\
             {CHECKOUT_CONFIG_BODY}"
        )
    );
    assert_eq!(
        stderr.matches("runs under the seccomp supervisor").count(),
        4,
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{cgo} runs under the seccomp supervisor")),
        "{stderr}"
    );
    assert!(
        stderr.contains("started by a program with the LD_PRELOAD layer"),
        "{stderr}"
    );
    // posix_spawnp searching PATH, from Python; the exit code comes back.
    let py = format!(
        "import os\n\
         pid = os.posix_spawnp('busybox', ['busybox', 'cat', '{CHECKOUT_CONFIG}'], dict(os.environ))\n\
         _, status = os.waitpid(pid, 0)\n\
         pid = os.posix_spawnp('busybox', ['busybox', 'cat', '/nope'], dict(os.environ))\n\
         _, failed = os.waitpid(pid, 0)\n\
         print(os.waitstatus_to_exitcode(status), os.waitstatus_to_exitcode(failed))\n"
    );
    let out = s.run(&[], &["python3", "-c", &py]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{CHECKOUT_CONFIG_BODY}0 1\n")
    );
    // The child keeps its pid: the parent's pid becomes busybox itself (the
    // supervisor is a detached process of its own), and its status is the
    // program's.
    let py = "import os, time\n\
              r, w = os.pipe()\n\
              pid = os.posix_spawnp('busybox', ['busybox', 'sh', '-c', 'read x; exit 7'], \
                  dict(os.environ), file_actions=[(os.POSIX_SPAWN_DUP2, r, 0)])\n\
              deadline = time.time() + 60\n\
              while not os.readlink(f'/proc/{pid}/exe').endswith('busybox') and time.time() < deadline:\n\
              \x20   time.sleep(0.05)\n\
              print(os.readlink(f'/proc/{pid}/exe'))\n\
              os.write(w, b'x\\n')\n\
              _, status = os.waitpid(pid, 0)\n\
              print(os.waitstatus_to_exitcode(status))\n";
    let out = s.run(&[], &["python3", "-c", py]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.len() == 2 && lines[0].ends_with("/busybox"),
        "{stdout}"
    );
    assert_eq!(lines[1], "7");
    // Forced preload: no hand-off, the static child sees this machine.
    let only_static = format!("/bin/busybox cat {CHECKOUT_CONFIG}");
    let out = s.run(&["--interception", "preload"], &["sh", "-c", &only_static]);
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("seccomp supervisor"));
}

#[test]
fn static_c_program_reads_lists_stats_and_connects_through_the_pod() {
    require_sandbox!();
    let apps = Apps::new();
    let probe = apps.c_probe();
    let probe = probe.to_str().unwrap();
    let s = setup();
    assert_eq!(s.ok(&[probe, "env", "APP_SECRET"]).trim(), CHECKOUT_SECRET);
    assert_eq!(s.ok(&[probe, "cat", CHECKOUT_CONFIG]), CHECKOUT_CONFIG_BODY);
    assert_eq!(
        s.ok(&[probe, "ls", "/srv/checkout/www"]).trim(),
        "health index.html"
    );
    assert_eq!(
        s.ok(&[probe, "stat", CHECKOUT_CONFIG]).trim(),
        format!("{} 0", CHECKOUT_CONFIG_BODY.len())
    );
    // On the local platform the file is the pod's file itself, handed over
    // by the agent's fd broker; without the fast path (as on Kubernetes) a
    // snapshot in a memfd named after it. The same bytes either way.
    let fast = s.ok(&[probe, "link", CHECKOUT_CONFIG]);
    let (link, content) = fast.split_once('\n').unwrap();
    assert!(!link.starts_with("/memfd:"), "fast path not taken: {link}");
    assert_eq!(content, CHECKOUT_CONFIG_BODY);
    let mut proxied = s.command(&[], &[probe, "link", CHECKOUT_CONFIG]);
    proxied.env("REMORA_LOCAL_FAST_PATH", "off");
    let proxied = String::from_utf8(proxied.output().unwrap().stdout).unwrap();
    let (link, content) = proxied.split_once('\n').unwrap();
    assert!(
        link.starts_with(&format!("/memfd:remora:{CHECKOUT_CONFIG}")),
        "{link}"
    );
    assert_eq!(content, CHECKOUT_CONFIG_BODY);
    // A missing file is missing on the fast path too.
    let out = s.run(&[], &[probe, "link", "/etc/checkout/nope.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such file"));
    let port = CHECKOUT_PORT.to_string();
    assert_eq!(s.ok(&[probe, "get", "127.0.0.1", &port, "/health"]), "ok\n");
    // io_uring would bypass the filter: refused by remora, with a warning.
    let out = s.run(&[], &[probe, "uring", "x"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Function not implemented\n"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("io_uring is not available"));
}

/// The supervisor opens the pod's files itself under the root the agent's
/// broker handed over once (`openat2` with `RESOLVE_IN_ROOT`), with no
/// round trip per open, and still asks the broker what only it can answer:
/// procfs, which answers by who asks (a pod symlink to `/proc/self/status`
/// reads the agent's status, as it always did). The agent's debug log says
/// which requests the broker saw.
#[test]
fn static_c_program_opens_pod_files_without_a_broker_round_trip() {
    require_sandbox!();
    let apps = Apps::new();
    let probe = apps.c_probe();
    let probe = probe.to_str().unwrap();
    let s = setup();
    let status = "/etc/checkout/status";
    s.checkout
        .pod
        .exec_ok(&["ln", "-s", "/proc/self/status", status])
        .unwrap();
    for direct in ["on", "off"] {
        let run = |args: &[&str]| {
            let mut cmd = s.command(&[], args);
            cmd.env("REMORA_AGENT_LOG", "remora_agent::broker=debug")
                .env("REMORA_FD_BROKER_DIRECT", direct);
            let out = cmd.output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(out.status.success(), "{args:?} ({direct}): {stderr}");
            let requests: Vec<String> = stderr
                .lines()
                .filter(|l| l.contains("fd broker request"))
                .map(str::to_owned)
                .collect();
            (String::from_utf8(out.stdout).unwrap(), requests)
        };
        let asked = |requests: &[String], path: &str| {
            requests
                .iter()
                .any(|r| r.contains(&format!("OpenRead {{ path: \"{path}\"")))
        };
        let (out, requests) = run(&[probe, "link", CHECKOUT_CONFIG]);
        let (link, content) = out.split_once('\n').unwrap();
        assert!(!link.starts_with("/memfd:"), "fast path not taken: {link}");
        assert_eq!(content, CHECKOUT_CONFIG_BODY);
        let roots = requests.iter().filter(|r| r.contains("OpenRoot")).count();
        if direct == "on" {
            assert!(!asked(&requests, CHECKOUT_CONFIG), "{requests:#?}");
            assert_eq!(roots, 1, "{requests:#?}");
        } else {
            assert!(asked(&requests, CHECKOUT_CONFIG), "{requests:#?}");
            assert_eq!(roots, 0, "{requests:#?}");
        }
        let (out, requests) = run(&[probe, "cat", status]);
        assert!(
            out.lines().any(|l| l == "Name:\tremora-agent"),
            "({direct}) {out}"
        );
        assert!(asked(&requests, status), "{requests:#?}");
    }
}

/// The supervisor's shadow directories (where the pod's directories it
/// lists are mirrored, under the temporary directory) are removed however
/// the run ends: the program exits, the program is killed, `remora` gets
/// SIGTERM; those of a `remora` killed outright go with the next run.
#[test]
fn shadow_directories_are_removed_however_the_run_ends() {
    require_sandbox!();
    use std::io::BufRead;
    let apps = Apps::new();
    let probe = apps.c_probe();
    let probe = probe.to_str().unwrap();
    let s = setup();
    let tmp = tempfile::tempdir().unwrap();
    let shadows = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("remora-shadow-")
            })
            .map(|e| e.path())
            .collect()
    };
    let www = "/srv/checkout/www";
    let run = |args: &[&str]| {
        let mut cmd = s.command(&[], args);
        cmd.env("TMPDIR", tmp.path());
        cmd.output().unwrap()
    };
    // A listing, then a normal exit.
    let out = run(&[probe, "ls", www]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "health index.html\n");
    assert_eq!(
        shadows(),
        Vec::<std::path::PathBuf>::new(),
        "after a normal exit"
    );
    // The program killed by a signal after its listing.
    let out = run(&[probe, "hold", www, "kill"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ready 4\n");
    assert_eq!(out.status.code(), Some(128 + 9));
    assert_eq!(
        shadows(),
        Vec::<std::path::PathBuf>::new(),
        "after the program was killed"
    );
    // `remora` gets SIGTERM (which it forwards) while the program waits.
    let held = |signal| {
        let mut cmd = s.command(&[], &[probe, "hold", www]);
        cmd.env("TMPDIR", tmp.path())
            .stdout(std::process::Stdio::piped());
        let mut run = cmd.spawn().unwrap();
        let mut stdout = std::io::BufReader::new(run.child_mut().stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line, "ready 4\n");
        assert_eq!(shadows().len(), 1, "the listing made a shadow directory");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(run.pid() as i32), signal).unwrap();
        run.wait().unwrap()
    };
    let status = held(nix::sys::signal::SIGTERM);
    assert_eq!(status.code(), Some(128 + 15));
    assert_eq!(
        shadows(),
        Vec::<std::path::PathBuf>::new(),
        "after SIGTERM to remora"
    );
    // `remora` killed outright: its directory stays until the next run,
    // which removes it (nobody holds its lock; it is older than a moment).
    held(nix::sys::signal::SIGKILL);
    let left = shadows();
    assert_eq!(left.len(), 1, "SIGKILL leaves the directory");
    let old = std::time::SystemTime::now() - Duration::from_secs(60);
    std::fs::File::open(&left[0])
        .unwrap()
        .set_modified(old)
        .unwrap();
    let out = run(&[probe, "env", "APP_SECRET"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), CHECKOUT_SECRET);
    assert_eq!(
        shadows(),
        Vec::<std::path::PathBuf>::new(),
        "the next run sweeps it"
    );
}

#[test]
fn busybox_static_cat_ls_and_wget_see_the_pod() {
    require_sandbox!();
    let busybox = "/bin/busybox";
    assert!(
        Path::new(busybox).exists(),
        "busybox-static is installed (scripts/setup.sh)"
    );
    let s = setup();
    assert_eq!(
        s.ok(&[busybox, "cat", CHECKOUT_CONFIG]),
        CHECKOUT_CONFIG_BODY
    );
    assert_eq!(
        s.ok(&[busybox, "ls", "/srv/checkout/data"]).trim(),
        "orders.csv"
    );
    let url = format!("http://{PAYMENTS_HOST}:{CHECKOUT_PORT}/health");
    assert_eq!(s.ok(&[busybox, "wget", "-q", "-O", "-", &url]), "ok\n");
    // A script whose `#!` interpreter is static is chosen by that
    // interpreter (it used to get the layer, which busybox ignores).
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("show-config");
    std::fs::write(&script, format!("#!{busybox} sh\ncat {CHECKOUT_CONFIG}\n")).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    assert_eq!(s.ok(&[script.to_str().unwrap()]), CHECKOUT_CONFIG_BODY);
}

/// A nameserver on the pod's loopback answering every A query with
/// 10.9.8.7 (the pod's resolv.conf names 127.0.0.1); prints "ready".
const POD_NAMESERVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 53))
print("ready", flush=True)
while True:
    q, peer = s.recvfrom(512)
    i = 12
    while q[i] != 0:
        i += 1 + q[i]
    question, qtype = q[12:i + 5], q[i + 1:i + 3]
    answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + bytes([10, 9, 8, 7])
    count = b"\x00\x01" if qtype == b"\x00\x01" else b"\x00\x00"
    head = q[:2] + b"\x81\x80\x00\x01" + count + b"\x00\x00\x00\x00"
    s.sendto(head + question + (answer if count == b"\x00\x01" else b""), peer)
"#;

/// busybox's own resolver (`nslookup`, no libc), Go's pure resolver and
/// glibc's (a cgo build) read the pod's resolv.conf and ask the pod's
/// nameserver over UDP through the supervisor.
#[test]
fn busybox_nslookup_and_go_resolvers_ask_the_pods_nameserver() {
    require_sandbox!();
    use std::io::BufRead;
    let apps = Apps::new();
    let go = apps.go_probe();
    let cgo = apps.go_probe_cgo();
    let s = setup();
    let mut dns = s
        .checkout
        .pod
        .command("python3")
        .unwrap()
        .args(["-c", POD_NAMESERVER])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = dns.child_mut().stdout.take().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    let name = "orders.pod-only.test";
    let out = s.ok(&["/bin/busybox", "nslookup", name]);
    assert!(out.contains("Address: 10.9.8.7"), "{out}");
    for probe in [&go, &cgo] {
        let out = s.ok(&[probe.to_str().unwrap(), "resolve", name]);
        assert_eq!(out.trim(), "10.9.8.7", "{probe:?}");
    }
}

#[test]
fn in_write_mode_go_and_busybox_write_mkdir_rename_and_unlink_in_the_pod() {
    require_sandbox!();
    let apps = Apps::new();
    let probe = apps.go_probe();
    let probe = probe.to_str().unwrap();
    let busybox = "/bin/busybox";
    let s = setup();
    let pod = &s.checkout.pod;
    let cat = |path: &str| pod.exec_ok(&["cat", path]).unwrap();
    let exists = |path: &str| pod.exec(&["test", "-e", path]).unwrap().status.success();
    let w = ["--fs-mode", "write"];
    // Go's os.WriteFile: O_WRONLY|O_CREAT|O_TRUNC, streamed to the pod.
    let new = "/srv/checkout/data/new.txt";
    s.ok_with(&w, &[probe, "write", new, "from go\n"]);
    assert_eq!(cat(new), "from go\n");
    // A static shell's redirections, truncating then appending.
    let sh = "/srv/checkout/data/sh.txt";
    let script = format!("echo one > {sh}; echo two >> {sh}");
    s.ok_with(&w, &[busybox, "sh", "-c", &script]);
    assert_eq!(cat(sh), "one\ntwo\n");
    // mkdir, rename, unlink, rmdir happen in the pod.
    let dir = "/srv/checkout/data/reports";
    s.ok_with(&w, &[busybox, "mkdir", dir]);
    assert!(pod.exec(&["test", "-d", dir]).unwrap().status.success());
    let moved = format!("{dir}/moved.txt");
    s.ok_with(&w, &[busybox, "mv", new, &moved]);
    assert_eq!(cat(&moved), "from go\n");
    assert!(!exists(new));
    s.ok_with(&w, &[busybox, "rm", &moved]);
    s.ok_with(&w, &[busybox, "rmdir", dir]);
    assert!(!exists(dir));
    // None of it happened in the client namespace.
    let local = s.client.exec(&["test", "-e", "/srv/checkout"]).unwrap();
    assert!(!local.status.success());
}

/// Read-write opens (Go and static C, through pwrite, write, writev on a
/// dup, ftruncate, fsync), truncate, chmod, utimensat, link and symlink of pod paths
/// happen in the pod in fs mode `write`; in the default mode `read` they
/// stay local, as with the layer.
#[test]
fn in_write_mode_read_write_opens_truncate_chmod_and_links_reach_the_pod() {
    require_sandbox!();
    let apps = Apps::new();
    let go = apps.go_probe();
    let go = go.to_str().unwrap();
    let c = apps.c_probe();
    let c = c.to_str().unwrap();
    let busybox = "/bin/busybox";
    let s = setup();
    let pod = &s.checkout.pod;
    let cat = |path: &str| pod.exec_ok(&["cat", path]).unwrap();
    let w = ["--fs-mode", "write"];
    // Go: read it, overwrite byte 0, append, read back through the same fd.
    let orders = "/srv/checkout/data/orders.csv";
    let before = cat(orders);
    let after = format!("#{}3,1.00\n", &before[1..]);
    assert_eq!(
        s.ok_with(&w, &[go, "rdwr", orders, "3,1.00\n"]),
        format!("{}\n{after}", before.len())
    );
    assert_eq!(cat(orders), after);
    // Static C: pwrite, write at the end, writev on a dup, ftruncate, fsync.
    let notes = "/srv/checkout/data/notes.txt";
    pod.exec_ok(&["sh", "-c", &format!("printf 'abc\\n' > {notes}")])
        .unwrap();
    assert_eq!(s.ok_with(&w, &[c, "rdwr", notes, "x"]), "#bc\nxx!");
    assert_eq!(cat(notes), "#bc\nxx!");
    // truncate(2) from Go; chmod, link and symlink from busybox.
    s.ok_with(&w, &[go, "truncate", notes, "3"]);
    assert_eq!(cat(notes), "#bc");
    s.ok_with(&w, &[busybox, "chmod", "640", notes]);
    assert_eq!(
        pod.exec_ok(&["stat", "-c", "%a", notes]).unwrap().trim(),
        "640"
    );
    let hard = "/srv/checkout/data/notes.hard";
    s.ok_with(&w, &[busybox, "ln", notes, hard]);
    assert_eq!(cat(hard), "#bc");
    let soft = "/srv/checkout/data/notes.link";
    s.ok_with(&w, &[busybox, "ln", "-s", "notes.txt", soft]);
    assert_eq!(
        pod.exec_ok(&["readlink", soft]).unwrap().trim(),
        "notes.txt"
    );
    // readlink(2) of the pod's symlink, by Go and busybox (fs mode read).
    assert_eq!(s.ok(&[go, "readlink", soft]).trim(), "notes.txt");
    assert_eq!(s.ok(&[busybox, "readlink", soft]).trim(), "notes.txt");
    // The mirror's content is what the pod has: read back by a Go program.
    assert_eq!(s.ok(&[go, "cat", soft]), "#bc");
    // touch: utimensat of an existing file, and O_RDWR|O_CREAT of a new one.
    s.ok_with(&w, &[busybox, "touch", "-d", "@1577934245", notes]);
    let mtime = pod.exec_ok(&["stat", "-c", "%Y", notes]).unwrap();
    assert_eq!(mtime.trim(), "1577934245");
    let touched = "/srv/checkout/data/touched";
    s.ok_with(&w, &[busybox, "touch", touched]);
    assert!(pod.exec(&["test", "-f", touched]).unwrap().status.success());
    // None of it happened in the client namespace.
    let local = s.client.exec(&["test", "-e", "/srv/checkout"]).unwrap();
    assert!(!local.status.success());
    // In fs mode read these stay local (the path does not exist here).
    let out = s.run(&[], &[busybox, "chmod", "600", notes]);
    assert!(!out.status.success());
    let out = s.run(&[], &[go, "rdwr", orders, "4,0.00\n"]);
    assert!(!out.status.success());
    assert_eq!(
        pod.exec_ok(&["stat", "-c", "%a", notes]).unwrap().trim(),
        "640"
    );
    assert_eq!(cat(orders), after);
}

/// A read-write open of a pod file bigger than 64 MiB (sparse: 72 MiB, a
/// few bytes of data) is mirrored by streaming it into the local copy, holes
/// left as holes; the write reaches the pod's file, and read-only opens of
/// it (busybox head and tail) see the pod's content.
#[test]
fn read_write_open_of_a_pod_file_over_64_mib_is_streamed_into_its_mirror() {
    require_sandbox!();
    let apps = Apps::new();
    let c = apps.c_probe();
    let c = c.to_str().unwrap();
    let s = setup();
    let pod = &s.checkout.pod;
    let big = "/srv/checkout/data/big.bin";
    let size: u64 = 72 << 20;
    pod.exec_ok(&[
        "sh",
        "-c",
        &format!("truncate -s {size} {big} && printf start | dd of={big} conv=notrunc status=none"),
    ])
    .unwrap();
    let out = s.ok_with(&["--fs-mode", "write"], &[c, "rdwr-end", big, "-end-"]);
    assert_eq!(out, format!("{size} {} 0000 -end-\n", size + 5));
    assert_eq!(
        pod.exec_ok(&["stat", "-c", "%s", big]).unwrap().trim(),
        (size + 5).to_string()
    );
    assert_eq!(pod.exec_ok(&["tail", "-c", "5", big]).unwrap(), "-end-");
    assert_eq!(s.ok(&["/bin/busybox", "head", "-c", "5", big]), "start");
    assert_eq!(s.ok(&["/bin/busybox", "tail", "-c", "5", big]), "-end-");
}

/// `fexecve` (Python's `os.execve` with an fd; a C program with an
/// `O_CLOEXEC` fd) and `execveat` (relative to a directory fd, and
/// `AT_EMPTY_PATH` on an `O_PATH` fd) of a static or Go program, from a
/// dynamic program that has the layer: handed to `remora supervise` like
/// `execve`, so the program sees the pod.
#[test]
fn fexecve_and_execveat_of_static_and_go_programs_hand_them_to_the_supervisor() {
    require_sandbox!();
    let apps = Apps::new();
    let go = apps.go_probe();
    let go = go.to_str().unwrap();
    let exec_fd = apps.c_dynamic("exec_fd");
    let exec_fd = exec_fd.to_str().unwrap();
    let s = setup();
    let handed = |args: &[&str]| {
        let out = s.run(&[], args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(
            stderr.contains("started by a program with the LD_PRELOAD layer"),
            "{args:?}: {stderr}"
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let cat = ["cat", CHECKOUT_CONFIG];
    let busybox_cat = ["busybox", "cat", CHECKOUT_CONFIG];
    let body = CHECKOUT_CONFIG_BODY;
    assert_eq!(
        handed(&[&[exec_fd, "fexecve", "/bin/busybox"][..], &busybox_cat].concat()),
        body
    );
    assert_eq!(
        handed(&[&[exec_fd, "fexecve", go, "probe"][..], &cat].concat()),
        body
    );
    assert_eq!(
        handed(&[&[exec_fd, "execveat", "/bin", "busybox"][..], &busybox_cat].concat()),
        body
    );
    assert_eq!(
        handed(&[&[exec_fd, "empty-path", go, "probe"][..], &cat].concat()),
        body
    );
    // Python's os.execve with an fd is fexecve.
    let py = format!(
        "import os\n\
         fd = os.open('/bin/busybox', os.O_RDONLY)\n\
         os.execve(fd, ['busybox', 'cat', '{CHECKOUT_CONFIG}'], dict(os.environ))\n"
    );
    assert_eq!(handed(&["python3", "-c", &py]), body);
    // A dynamic program by fd keeps the layer, as with execve.
    let out = s.run(
        &[],
        &[exec_fd, "fexecve", "/bin/cat", "cat", CHECKOUT_CONFIG],
    );
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), body);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("seccomp supervisor"));
}

/// The pod's port whose traffic the Go server takes, and the Go server's own.
const API_PORT: u16 = 18095;
const GO_SERVER_PORT: u16 = 18395;

/// A pod whose service answers "answer from the pod" on 0.0.0.0:API_PORT.
fn api_pod(sandbox: &Sandbox) -> (Pod, remora_tests::PodProcess) {
    let pod = sandbox
        .pod(PodSpec::new("api").file("/srv/api/index.html", "answer from the pod\n"))
        .unwrap();
    let port = API_PORT.to_string();
    let service = pod
        .command("python3")
        .unwrap()
        .args(["-m", "http.server", "--bind", "0.0.0.0"])
        .args(["--directory", "/srv/api", &port])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    pod.wait_for_tcp(API_PORT, Duration::from_secs(20)).unwrap();
    (pod, service)
}

/// The Go probe's HTTP server `probe` (listening on the wildcard, as Go
/// servers do) under `remora run --interception seccomp <flags>` from a
/// client namespace; requests it serves are logged to `log` as "PATH PEER_IP".
fn go_server(
    probe: &Path,
    pod: &Pod,
    client: &Pod,
    flags: &[&str],
    log: &Path,
) -> remora_tests::PodProcess {
    let listen = format!(":{GO_SERVER_PORT}");
    let log = log.to_str().unwrap();
    let argv = [probe.to_str().unwrap(), "serve", &listen, log];
    server(pod, client, flags, &argv)
}

/// `remora run --interception seccomp -p GO_SERVER_PORT:API_PORT <flags> --
/// argv` from `client`, in the background.
fn server(pod: &Pod, client: &Pod, flags: &[&str], argv: &[&str]) -> remora_tests::PodProcess {
    let mapping = format!("{GO_SERVER_PORT}:{API_PORT}");
    client
        .command(bin_path("remora").unwrap())
        .unwrap()
        .args(["run", "--target", &pod.target(), "-p", &mapping])
        .args(["--interception", "seccomp"])
        .args(flags)
        .arg("--")
        .args(argv)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn curl_pod(pod: &Pod, header: Option<&str>) -> String {
    fixtures::curl(&format!("http://{}:{API_PORT}/", pod.ip()), header)
}

fn wait_for(what: &str, ready: impl FnMut() -> bool) {
    fixtures::wait_for(what, Duration::from_secs(30), ready);
}

/// Both Go builds, pure and cgo. The cgo one under `remora run
/// --interception seccomp` (auto would give that dynamically linked program
/// the layer, which sees none of Go's own calls).
#[test]
fn go_http_server_under_a_filtered_steal_gets_only_matching_requests() {
    require_sandbox!();
    let apps = Apps::new();
    for probe in [apps.go_probe(), apps.go_probe_cgo()] {
        filtered_steal_reaches_the_go_server(&apps, &probe);
    }
}

fn filtered_steal_reaches_the_go_server(apps: &Apps, probe: &Path) {
    let sandbox = Sandbox::new().unwrap();
    let (pod, _service) = api_pod(&sandbox);
    let client = sandbox.pod(PodSpec::new("client")).unwrap();
    let log = apps.dir.path().join("requests.log");
    let _ = std::fs::remove_file(&log);
    let flags = ["--steal", "--http-header-filter", "^x-user: alice$"];
    let server = go_server(probe, &pod, &client, &flags, &log);
    wait_for("alice's requests to reach the Go server", || {
        curl_pod(&pod, Some("X-User: alice")) == "answer from the laptop\n"
    });
    // Everyone else still gets the pod.
    assert_eq!(curl_pod(&pod, None), "answer from the pod\n");
    assert_eq!(curl_pod(&pod, Some("X-User: bob")), "answer from the pod\n");
    // The Go server saw the real peer (this machine, through the pod's
    // veth), not the intproxy's loopback socket.
    let seen = std::fs::read_to_string(&log).unwrap();
    assert!(
        !seen.is_empty() && seen.lines().all(|l| l == format!("/ {}", pod.host_ip())),
        "{seen}"
    );
    drop(server);
    wait_for("the pod to answer alice again", || {
        curl_pod(&pod, Some("X-User: alice")) == "answer from the pod\n"
    });
}

/// A Go program that closes its listener (and goes on running) gives the
/// target's port back: the supervisor notices the closed socket.
#[test]
fn closing_the_listener_gives_the_port_back_while_the_program_runs() {
    require_sandbox!();
    let apps = Apps::new();
    let probe = apps.go_probe();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _service) = api_pod(&sandbox);
    let client = sandbox.pod(PodSpec::new("client")).unwrap();
    let listen = format!(":{GO_SERVER_PORT}");
    let argv = [probe.to_str().unwrap(), "serve-once", &listen];
    let mut server = server(&pod, &client, &["--steal"], &argv);
    wait_for("the stolen request", || {
        curl_pod(&pod, None) == "answer from the laptop\n"
    });
    wait_for("the pod to answer again", || {
        curl_pod(&pod, None) == "answer from the pod\n"
    });
    assert!(
        server.try_wait().unwrap().is_none(),
        "the program must still run"
    );
}

/// A static C server with a *blocking* `accept` (waited for by a
/// supervisor thread): matching requests reach it, with the real peer from
/// `accept` and from `getpeername` alike.
#[test]
fn static_c_server_with_a_blocking_accept_gets_stolen_requests_and_real_peers() {
    require_sandbox!();
    let apps = Apps::new();
    let probe = apps.c_probe();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _service) = api_pod(&sandbox);
    let client = sandbox.pod(PodSpec::new("client")).unwrap();
    let log = apps.dir.path().join("requests.log");
    let port = GO_SERVER_PORT.to_string();
    let argv = [
        probe.to_str().unwrap(),
        "serve",
        &port,
        log.to_str().unwrap(),
    ];
    let flags = ["--steal", "--http-header-filter", "^x-user: alice$"];
    let _server = server(&pod, &client, &flags, &argv);
    wait_for("alice's requests to reach the C server", || {
        curl_pod(&pod, Some("X-User: alice")) == "answer from the laptop\n"
    });
    assert_eq!(curl_pod(&pod, None), "answer from the pod\n");
    // Several in a row: the server is back in accept, with nothing pending,
    // before each one, so every accept is waited for by a supervisor thread.
    for _ in 0..3 {
        assert_eq!(
            curl_pod(&pod, Some("X-User: alice")),
            "answer from the laptop\n"
        );
    }
    // accept's address and getpeername on the accepted connection agree:
    // the real peer, not the intproxy's loopback socket.
    let seen = std::fs::read_to_string(&log).unwrap();
    let peer = pod.host_ip();
    assert!(
        seen.lines().count() >= 4 && seen.lines().all(|l| l == format!("/ {peer} {peer}")),
        "{seen}"
    );
}

#[test]
fn go_http_server_under_mirror_gets_copies_while_the_pod_answers() {
    require_sandbox!();
    let apps = Apps::new();
    let probe = apps.go_probe();
    let sandbox = Sandbox::new().unwrap();
    let (pod, _service) = api_pod(&sandbox);
    let client = sandbox.pod(PodSpec::new("client")).unwrap();
    let log = apps.dir.path().join("requests.log");
    let _server = go_server(&probe, &pod, &client, &["--mirror"], &log);
    wait_for("a mirrored request", || {
        // Every request is answered by the pod while the copy goes local.
        assert_eq!(curl_pod(&pod, None), "answer from the pod\n");
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains('/'))
    });
}

/// The config key `interception` forces the mode as the flag does, and the
/// startup line says which one was taken.
#[test]
fn the_config_key_interception_forces_the_mode() {
    require_sandbox!();
    let apps = Apps::new();
    let probe = apps.go_probe();
    let probe = probe.to_str().unwrap();
    let s = setup();
    let config = |mode: &str| {
        let path = apps.dir.path().join(format!("{mode}.toml"));
        std::fs::write(&path, format!("interception = \"{mode}\"\n")).unwrap();
        path.to_str().unwrap().to_owned()
    };
    // `preload` for a Go program: the layer never runs in it, so the pod's
    // file stays out of reach, and no supervisor is announced.
    let preload = config("preload");
    let out = s.run(&["-f", &preload], &[probe, "cat", CHECKOUT_CONFIG]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(!stderr.contains("seccomp supervisor"), "{stderr}");
    // `seccomp` for a dynamically linked program (coreutils' cat), which
    // auto would give the layer: the supervisor serves it.
    let seccomp = config("seccomp");
    assert_eq!(
        s.ok_with(&["-f", &seccomp], &["cat", CHECKOUT_CONFIG]),
        CHECKOUT_CONFIG_BODY
    );
}

/// On a kernel without part of user notification (simulated by
/// `tests/apps/c/old_kernel.c`, a plain filter failing `seccomp(2)` or the
/// `ADDFD` ioctl for the remora it execs), `doctor` names what is missing
/// and the kernel version that has it, and `run` warns in one line and
/// falls back to the layer.
#[test]
fn without_seccomp_or_addfd_doctor_says_what_is_missing_and_run_falls_back() {
    require_sandbox!();
    let apps = Apps::new();
    let old = apps.c_static("old_kernel");
    let old = old.to_str().unwrap();
    let remora = bin_path("remora").unwrap();
    let remora = remora.to_str().unwrap();
    let doctor = |what: &str| {
        let out = Command::new(old)
            .args([what, remora, "doctor", "--", "/bin/busybox"])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "doctor exits 1 when seccomp is unavailable"
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let stdout = doctor("no-seccomp");
    assert!(
        stdout.contains(
            "seccomp user notification: unavailable: installing a seccomp filter with a \
             listener failed: Function not implemented"
        ) && stdout.contains("(Linux 5.0 or later with CONFIG_SECCOMP_FILTER is needed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("/bin/busybox: cannot run under the seccomp supervisor here"),
        "{stdout}"
    );
    let stdout = doctor("no-addfd");
    assert!(
        stdout.contains(
            "seccomp user notification: unavailable: SECCOMP_IOCTL_NOTIF_ADDFD with \
             SECCOMP_ADDFD_FLAG_SEND is not supported"
        ) && stdout.contains("(Linux 5.14 or later is needed)"),
        "{stdout}"
    );
    // `run`: one warning line, then the layer (which a static busybox
    // ignores, so the pod's file is not there).
    let s = setup();
    let target = s.checkout.pod.target();
    let out = s
        .client
        .command(old)
        .unwrap()
        .args(["no-addfd", remora, "run", "--target", &target, "--"])
        .args(["/bin/busybox", "cat", CHECKOUT_CONFIG])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("needs the seccomp supervisor"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].starts_with("remora: warning: /bin/busybox needs the seccomp supervisor")
            && warnings[0]
                .contains("(Linux 5.14 or later is needed); falling back to the LD_PRELOAD layer"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("runs under the seccomp supervisor"),
        "{stderr}"
    );
}

/// What the supervisor cannot emulate on a pod file fails with a clear
/// errno and a one-line warning each, never silently wrong data: an
/// `O_PATH` open (`EROFS`), a writable shared `mmap` of a read-write open
/// (`ENODEV`) and `fallocate` on it (`EOPNOTSUPP`); the pod's file is
/// unchanged.
#[test]
fn calls_that_cannot_be_emulated_get_an_errno_and_a_warning() {
    require_sandbox!();
    let apps = Apps::new();
    let probe = apps.c_probe();
    let probe = probe.to_str().unwrap();
    let s = setup();
    let out = s.run(
        &["--fs-mode", "write"],
        &[probe, "unfaithful", CHECKOUT_CONFIG],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "o_path: Read-only file system\nshared mmap: No such device\n\
         fallocate: Operation not supported\n"
    );
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 3, "{stderr}");
    for (warning, call) in warnings.iter().zip(["O_PATH", "mmap", "fallocate"]) {
        assert!(warning.contains(call), "{warning}: not about {call}");
    }
    assert_eq!(
        s.checkout.pod.exec_ok(&["cat", CHECKOUT_CONFIG]).unwrap(),
        CHECKOUT_CONFIG_BODY
    );
}
