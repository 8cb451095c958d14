//! End-to-end tests of the sandbox harness itself: isolation of pod services, names,
//! files, environment and hostname; complete teardown; sweeping of crashed runs; and
//! allocation under parallelism. They need root + netns (skipped loudly otherwise).

use std::{
    collections::BTreeSet,
    env, fs,
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Barrier, mpsc},
    thread,
    time::Duration,
};

use remora_tests::{
    Error, Pod, PodProcess, PodSpec, Result, Sandbox, require_sandbox,
    sandbox::{
        DEFAULT_PATH, DEFAULT_RESOLV_CONF, POD_IFACE, link_exists, netns_exists, pod_state_dir,
        process_alive,
    },
};

const READY: Duration = Duration::from_secs(15);
const SECRET_PATH: &str = "/etc/remora-demo/secret.txt";
const SECRET: &str = "s3cr3t-only-in-the-pod\n";
const CONFIG_PATH: &str = "/srv/app/config.yaml";
const CONFIG: &str = "database: postgres://backend.staging.internal/app\n";

/// A port that was free on the host's loopback a moment ago.
fn free_host_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding port 0");
    listener.local_addr().expect("local addr").port()
}

/// `python3 -m http.server` inside `pod`, serving `dir` on `bind:port`, once listening.
fn http_server(pod: &Pod, bind: Ipv4Addr, port: u16, dir: &str) -> Result<PodProcess> {
    let server = pod
        .command("python3")?
        .args([
            "-m",
            "http.server",
            "--bind",
            &bind.to_string(),
            "--directory",
            dir,
        ])
        .arg(port.to_string())
        .stderr(Stdio::null())
        .spawn()?;
    pod.wait_for_tcp(port, READY)?;
    Ok(server)
}

fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

fn app_spec(name: &str) -> PodSpec {
    PodSpec::new(name)
        .file(SECRET_PATH, SECRET)
        .file(CONFIG_PATH, CONFIG)
        .file("/srv/app/index.html", "hello from the pod\n")
}

fn ip_output(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn netns_listed(name: &str) -> bool {
    ip_output(&["netns", "list"])
        .lines()
        .any(|line| line.split_whitespace().next() == Some(name))
}

fn link_listed(name: &str) -> bool {
    ip_output(&["-o", "link"]).lines().any(|line| {
        line.split(": ")
            .nth(1)
            .is_some_and(|n| n.split('@').next() == Some(name))
    })
}

/// Everything a pod leaves on the host, to check it is all gone later.
#[derive(Debug, Clone)]
struct Footprint {
    netns: String,
    pause: u32,
    lease: PathBuf,
    state_dir: PathBuf,
}

impl Footprint {
    fn of(pod: &Pod) -> Footprint {
        Footprint {
            netns: pod.netns_name().to_owned(),
            pause: pod.pause_pid(),
            lease: pod.lease_file().to_path_buf(),
            state_dir: pod_state_dir(pod.netns_name()),
        }
    }

    fn assert_present(&self) {
        assert!(netns_listed(&self.netns), "netns {} missing", self.netns);
        assert!(link_listed(&self.netns), "veth {} missing", self.netns);
        assert!(
            process_alive(self.pause),
            "pause {} not running",
            self.pause
        );
        assert!(
            self.lease.exists(),
            "lease {} missing",
            self.lease.display()
        );
    }

    fn assert_gone(&self) {
        assert!(
            !netns_listed(&self.netns) && !netns_exists(&self.netns),
            "netns {}",
            self.netns
        );
        assert!(
            !link_listed(&self.netns) && !link_exists(&self.netns),
            "veth {}",
            self.netns
        );
        assert!(
            !process_alive(self.pause),
            "pause {} still running",
            self.pause
        );
        assert!(!self.lease.exists(), "lease {} left", self.lease.display());
        assert!(
            !self.state_dir.exists(),
            "state dir {} left",
            self.state_dir.display()
        );
    }
}

#[test]
fn service_on_pod_loopback_is_reachable_inside_but_not_from_host() -> Result<()> {
    require_sandbox!(Ok(()));
    let sandbox = Sandbox::new()?;
    let pod = sandbox.pod(app_spec("web"))?;
    let port = free_host_port();
    let _server = http_server(&pod, Ipv4Addr::LOCALHOST, port, "/srv/app")?;

    let url = format!("http://127.0.0.1:{port}/index.html");
    let body = pod.exec_ok(&["curl", "-sS", "--max-time", "5", &url])?;
    assert_eq!(body, "hello from the pod\n");
    let inside =
        pod.run_in_netns(|| http_get(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), "/"))?;
    assert!(
        inside
            .expect("GET inside the pod")
            .starts_with("HTTP/1.0 200")
    );

    let from_host = TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_secs(2),
    );
    assert_eq!(
        from_host.map_err(|e| e.kind()).err(),
        Some(ErrorKind::ConnectionRefused)
    );
    // Same port, different loopback: the host can bind it while the pod serves on it.
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("host port taken by the pod?");
    Ok(())
}

#[test]
fn service_on_pod_ip_is_reachable_from_host_through_the_veth() -> Result<()> {
    require_sandbox!(Ok(()));
    let sandbox = Sandbox::new()?;
    let pod = sandbox.pod(app_spec("api"))?;
    assert_ne!(pod.ip(), pod.host_ip());
    let port = 8080;
    let _server = http_server(&pod, pod.ip(), port, "/srv/app")?;

    let response = http_get(SocketAddr::from((pod.ip(), port)), "/config.yaml")
        .expect("GET from the host to the pod IP");
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    assert!(response.ends_with(CONFIG), "{response}");
    let routes = pod.exec_ok(&["ip", "-4", "route"])?;
    assert!(
        routes.contains(&format!("default via {} dev {POD_IFACE}", pod.host_ip())),
        "{routes}"
    );
    Ok(())
}

#[test]
fn pod_only_hostnames_resolve_inside_and_not_on_host() -> Result<()> {
    require_sandbox!(Ok(()));
    let sandbox = Sandbox::new()?;
    let backend = sandbox.pod(PodSpec::new("backend").alias("backend.staging.internal"))?;
    let frontend =
        sandbox.pod(PodSpec::new("frontend").host("backend.staging.internal", backend.ip()))?;

    let resolved = frontend.exec_ok(&["getent", "hosts", "backend.staging.internal"])?;
    assert_eq!(
        resolved.split_whitespace().next(),
        Some(backend.ip().to_string().as_str())
    );
    let own = backend.exec_ok(&["getent", "hosts", "backend.staging.internal"])?;
    assert!(own.starts_with(&backend.ip().to_string()), "{own}");
    let self_name = frontend.exec_ok(&["getent", "hosts", "frontend"])?;
    assert!(
        self_name.starts_with(&frontend.ip().to_string()),
        "{self_name}"
    );
    let localhost = frontend.exec_ok(&["getent", "hosts", "localhost"])?;
    assert!(
        localhost.contains("127.0.0.1") || localhost.contains("::1"),
        "{localhost}"
    );

    // The host: files only, so the lookup never becomes a DNS query leaving the machine.
    let on_host = Command::new("getent")
        .args(["-s", "files", "hosts", "backend.staging.internal"])
        .output()
        .expect("running getent on the host");
    assert_eq!(
        on_host.status.code(),
        Some(2),
        "host resolved it: {on_host:?}"
    );
    let host_hosts = fs::read_to_string("/etc/hosts").expect("reading host /etc/hosts");
    assert!(!host_hosts.contains("staging.internal"), "{host_hosts}");
    Ok(())
}

#[test]
fn private_files_are_readable_inside_and_absent_on_host() -> Result<()> {
    require_sandbox!(Ok(()));
    let sandbox = Sandbox::new()?;
    let pod = sandbox.pod(app_spec("files"))?;

    assert_eq!(pod.exec_ok(&["cat", SECRET_PATH])?, SECRET);
    assert_eq!(pod.exec_ok(&["cat", CONFIG_PATH])?, CONFIG);
    assert_eq!(
        pod.exec_ok(&["cat", "/etc/resolv.conf"])?,
        DEFAULT_RESOLV_CONF
    );
    // Files the pod did not override still come from the host (overlay lower layer).
    assert_eq!(
        pod.exec_ok(&["cat", "/etc/os-release"])?,
        fs::read_to_string("/etc/os-release").expect("reading host os-release")
    );
    // What the agent reads: the pause's root as seen from the host.
    let via_root = format!("/proc/{}/root{SECRET_PATH}", pod.pause_pid());
    assert_eq!(
        fs::read_to_string(&via_root).expect("reading via /proc/PID/root"),
        SECRET
    );

    assert!(
        !Path::new(SECRET_PATH).exists(),
        "{SECRET_PATH} visible on the host"
    );
    assert!(
        !Path::new(CONFIG_PATH).exists(),
        "{CONFIG_PATH} visible on the host"
    );
    assert!(!Path::new("/etc/remora-demo").exists());
    assert!(no_file_contains(
        &pod_state_dir(pod.netns_name()),
        SECRET.as_bytes()
    ));
    Ok(())
}

/// Whether no regular file under `dir` (recursively) contains `needle`.
fn no_file_contains(dir: &Path, needle: &[u8]) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return true;
    };
    entries.flatten().all(|entry| {
        let path = entry.path();
        if path.is_dir() {
            no_file_contains(&path, needle)
        } else {
            !fs::read(&path)
                .unwrap_or_default()
                .windows(needle.len())
                .any(|w| w == needle)
        }
    })
}

#[test]
fn pause_process_environ_is_exactly_the_spec_env() -> Result<()> {
    require_sandbox!(Ok(()));
    let sandbox = Sandbox::new()?;
    let pod = sandbox.pod(
        PodSpec::new("envy")
            .env("APP_MODE", "staging")
            .env(
                "DATABASE_URL",
                "postgres://backend.staging.internal:5432/app",
            )
            .env("WITH_SPACES", "a b  c"),
    )?;

    let raw = fs::read(format!("/proc/{}/environ", pod.pause_pid())).expect("reading environ");
    let environ: BTreeSet<String> = raw
        .split(|&b| b == 0)
        .filter(|var| !var.is_empty())
        .map(|var| String::from_utf8_lossy(var).into_owned())
        .collect();
    let expected: BTreeSet<String> = [
        format!("PATH={DEFAULT_PATH}"),
        "APP_MODE=staging".to_owned(),
        "DATABASE_URL=postgres://backend.staging.internal:5432/app".to_owned(),
        "WITH_SPACES=a b  c".to_owned(),
    ]
    .into();
    assert_eq!(environ, expected);

    // Processes started in the pod get the same environment, nothing from the host.
    let spawned: BTreeSet<String> = pod.exec_ok(&["env"])?.lines().map(str::to_owned).collect();
    assert_eq!(spawned, expected);
    Ok(())
}

#[test]
fn hostname_inside_the_pod_is_the_pods() -> Result<()> {
    require_sandbox!(Ok(()));
    let sandbox = Sandbox::new()?;
    let pod = sandbox.pod(PodSpec::new("payments-7f9c"))?;

    assert_eq!(pod.exec_ok(&["hostname"])?.trim(), "payments-7f9c");
    assert_eq!(pod.name(), "payments-7f9c");
    let host = Command::new("hostname").output().expect("running hostname");
    assert_ne!(
        String::from_utf8_lossy(&host.stdout).trim(),
        "payments-7f9c"
    );
    let etc_hostname = format!("/proc/{}/root/etc/hostname", pod.pause_pid());
    assert_eq!(
        fs::read_to_string(etc_hostname).expect("reading etc/hostname"),
        "payments-7f9c\n"
    );
    Ok(())
}

/// Reaps a dead child of this process whose handle was leaked on purpose.
fn reap(pid: u32) {
    assert!(!process_alive(pid), "{pid} is still running");
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
}

/// Starts `sh` that backgrounds a `sleep` (a grandchild outside any handle's reach);
/// returns the handle and the grandchild's PID.
fn spawn_with_grandchild(pod: &Pod) -> Result<(PodProcess, u32)> {
    let mut shell = pod
        .command("sh")?
        .args(["-c", "sleep 600 & echo $!; wait"])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = shell.child_mut().stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("reading grandchild pid");
    let grandchild = line.trim().parse().expect("grandchild pid");
    Ok((shell, grandchild))
}

#[test]
fn dropping_the_sandbox_removes_netns_veth_and_processes() -> Result<()> {
    require_sandbox!(Ok(()));
    let sandbox = Sandbox::new()?;
    let pod = sandbox.pod(app_spec("doomed"))?;
    let footprint = Footprint::of(&pod);
    let (held, grandchild) = spawn_with_grandchild(&pod)?;
    let (leaked, leaked_grandchild) = spawn_with_grandchild(&pod)?;
    let leaked_pid = leaked.pid();
    std::mem::forget(leaked);
    footprint.assert_present();
    assert!(process_alive(grandchild) && process_alive(leaked_grandchild));

    // The sandbox goes first, while the test still holds the Pod and a process handle.
    drop(sandbox);
    footprint.assert_gone();
    for pid in [held.pid(), grandchild, leaked_pid, leaked_grandchild] {
        assert!(!process_alive(pid), "process {pid} survived the sandbox");
    }
    assert!(matches!(pod.exec(&["true"]), Err(Error::TornDown { .. })));
    pod.teardown()?; // idempotent
    drop(held);
    reap(leaked_pid);
    Ok(())
}

#[test]
fn a_panicking_test_still_removes_its_pods() -> Result<()> {
    require_sandbox!(Ok(()));
    let (footprint_tx, footprint_rx) = mpsc::channel();
    let outcome = thread::spawn(move || {
        let sandbox = Sandbox::new().expect("sandbox");
        let pod = sandbox.pod(PodSpec::new("panicky")).expect("pod");
        let worker = pod.spawn(&["sleep", "600"]).expect("spawn");
        footprint_tx
            .send((Footprint::of(&pod), worker.pid()))
            .expect("send");
        panic!("simulated test failure");
    })
    .join();
    assert!(outcome.is_err(), "the thread should have panicked");
    let (footprint, worker) = footprint_rx.recv().expect("footprint");
    footprint.assert_gone();
    assert!(!process_alive(worker));
    Ok(())
}

/// Stand-in for a test process; dies on request (or when the test fails early).
struct FakeOwner(Child);

impl FakeOwner {
    fn die(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for FakeOwner {
    fn drop(&mut self) {
        self.die();
    }
}

#[test]
fn sandbox_new_sweeps_dead_owners_and_spares_live_ones() -> Result<()> {
    require_sandbox!(Ok(()));
    // A stand-in test process that will "crash" while its pod is up.
    let mut fake_owner = FakeOwner(Command::new("sleep").arg("600").spawn().expect("spawning"));
    let crashed = Sandbox::for_owner(fake_owner.0.id());
    let orphan = crashed.pod(app_spec("orphan"))?;
    let orphan_footprint = Footprint::of(&orphan);
    let (orphan_worker, orphan_grandchild) = spawn_with_grandchild(&orphan)?;
    let orphan_worker_pid = orphan_worker.pid();
    std::mem::forget(orphan_worker);
    orphan.abandon();
    crashed.abandon();

    let live = Sandbox::new()?;
    let survivor = live.pod(PodSpec::new("survivor"))?;
    let survivor_footprint = Footprint::of(&survivor);

    Sandbox::new()?; // owner still alive: nothing of it may be touched
    orphan_footprint.assert_present();

    fake_owner.die();
    let _next = Sandbox::new()?;

    orphan_footprint.assert_gone();
    for pid in [orphan_worker_pid, orphan_grandchild] {
        assert!(
            !process_alive(pid),
            "orphan process {pid} survived the sweep"
        );
    }
    reap(orphan_footprint.pause);
    reap(orphan_worker_pid);
    survivor_footprint.assert_present();
    assert_eq!(survivor.exec_ok(&["hostname"])?.trim(), "survivor");
    Ok(())
}

#[test]
fn parallel_sandboxes_get_distinct_names_and_addresses() -> Result<()> {
    require_sandbox!(Ok(()));
    const THREADS: usize = 3;
    let barrier = Arc::new(Barrier::new(THREADS));
    let workers: Vec<_> = (0..THREADS)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || -> Result<(String, Ipv4Addr, Ipv4Addr)> {
                let sandbox = Sandbox::new()?;
                let pod = sandbox.pod(PodSpec::new(format!("twin-{i}")))?;
                barrier.wait(); // all pods exist at the same time
                let seen = pod.exec_ok(&["ip", "-4", "-o", "addr", "show", POD_IFACE])?;
                assert!(seen.contains(&format!("{}/30", pod.ip())), "{seen}");
                let reply = pod.run_in_netns(|| {
                    TcpStream::connect_timeout(
                        &SocketAddr::from((pod.host_ip(), 9)),
                        Duration::from_secs(2),
                    )
                    .map_err(|e| e.kind())
                })?;
                // Nothing listens on the host's discard port: refused proves the route.
                assert_eq!(reply.err(), Some(ErrorKind::ConnectionRefused));
                let found = (pod.netns_name().to_owned(), pod.ip(), pod.host_ip());
                barrier.wait(); // nobody tears down before everyone checked
                Ok(found)
            })
        })
        .collect();
    let results: Vec<_> = workers
        .into_iter()
        .map(|worker| worker.join().expect("worker panicked"))
        .collect::<Result<_>>()?;
    let names: BTreeSet<_> = results.iter().map(|(name, _, _)| name).collect();
    let pod_ips: BTreeSet<_> = results.iter().map(|(_, ip, _)| ip).collect();
    let host_ips: BTreeSet<_> = results.iter().map(|(_, _, ip)| ip).collect();
    assert_eq!(
        (names.len(), pod_ips.len(), host_ips.len()),
        (THREADS, THREADS, THREADS)
    );
    Ok(())
}

/// Target of `skips_loudly_unprivileged_and_fails_when_ci_requires_the_sandbox`.
#[test]
fn probe_requires_sandbox() {
    require_sandbox!();
    assert!(nix_euid_is_root(), "the sandbox ran without root");
}

fn nix_euid_is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}

#[test]
fn skips_loudly_unprivileged_and_fails_when_ci_requires_the_sandbox() {
    require_sandbox!();
    let exe = env::current_exe().expect("current exe");
    let run_as_nobody = |require: Option<&str>| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&exe)
            .args([
                "--exact",
                "probe_requires_sandbox",
                "--nocapture",
                "--test-threads=1",
            ])
            .env_remove("REMORA_REQUIRE_SANDBOX");
        if let Some(value) = require {
            cmd.env("REMORA_REQUIRE_SANDBOX", value);
        }
        cmd.output().expect("running the probe as nobody")
    };

    let skipped = run_as_nobody(None);
    let stderr = String::from_utf8_lossy(&skipped.stderr);
    assert!(skipped.status.success(), "{skipped:?}");
    assert!(
        stderr.contains("SKIPPED (needs root + netns): harness::probe_requires_sandbox"),
        "{stderr}"
    );

    let required = run_as_nobody(Some("1"));
    let output =
        String::from_utf8_lossy(&required.stdout) + String::from_utf8_lossy(&required.stderr);
    assert!(!required.status.success(), "{output}");
    assert!(output.contains("REMORA_REQUIRE_SANDBOX=1"), "{output}");
}
