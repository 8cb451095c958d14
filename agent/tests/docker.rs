//! The agent against a real Docker Engine (Debian's docker.io 20.10): each
//! test starts a private dockerd (support/dockerd.rs: own roots and socket,
//! no iptables, no bridge, its mounts in a mount namespace of its own),
//! imports an image from a busybox-static rootfs (nothing can be pulled) and
//! runs a container with `--network none`. The `remora-agent` binary, given
//! `--container-id docker://<id> --docker-socket <its socket>`, must find the
//! pid `docker inspect` gives and serve the container's files, hostname and
//! environment; a stopped container and an unknown id must be clear errors.
//! Needs root (dockerd).

#[path = "support/dockerd.rs"]
mod dockerd;
#[path = "support/harness.rs"]
mod harness;

use dockerd::Dockerd;
use harness::*;

use remora_agent::container::docker;
use remora_protocol::env::EnvRequest;
use remora_protocol::fs::{FsRequest, OpenRequest};
use remora_protocol::{ClientMessage, Request, Response};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "remora-busybox:test";
/// A file only the image's rootfs has.
const MARKER: &str = "/etc/remora-docker-marker";
const MARKER_TEXT: &str = "written into the image by agent/tests/docker.rs\n";
const HOSTNAME: &str = "remora-in-docker";
/// No container has this id.
const UNKNOWN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn dockerd_with_image() -> Dockerd {
    let dockerd = Dockerd::start();
    dockerd.import_busybox(IMAGE, &[(MARKER, MARKER_TEXT)]);
    dockerd
}

/// The agent binary with only Docker's socket (containerd's and CRI-O's absent).
fn agent(container_id: &str, docker_socket: &Path, idle_secs: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_remora-agent"));
    command
        .args([
            "--container-id",
            container_id,
            "--idle-timeout-secs",
            idle_secs,
        ])
        .args(["--containerd-socket", "/nonexistent/containerd.sock"])
        .args(["--crio-socket", "/nonexistent/crio.sock"])
        .arg("--docker-socket")
        .arg(docker_socket)
        .env("REMORA_AGENT_TOKEN", TOKEN)
        .env("REMORA_AGENT_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    command
}

/// Runs the agent to its end (it exits by itself: no client within its idle timeout,
/// or an error); its exit and stderr.
fn agent_output(container_id: &str, docker_socket: &Path) -> Output {
    agent(container_id, docker_socket, "1")
        .output()
        .expect("run remora-agent")
}

/// A running agent binary, killed on drop.
struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_finds_a_docker_containers_process_through_a_real_docker_engine_and_enters_it() {
    let mut dockerd = dockerd_with_image();
    let id = dockerd.run(&[
        "--hostname",
        HOSTNAME,
        "-e",
        "REMORA_DOCKER_TEST=from the container",
        IMAGE,
        "sleep",
        "1000",
    ]);
    let inspect_pid = dockerd.pid_of(&id);
    assert!(inspect_pid > 0);
    assert!(
        !Path::new(MARKER).exists(),
        "{MARKER} must exist only in the image"
    );

    // The library call, against the real Engine API.
    assert_eq!(
        docker::container_pid(&dockerd.socket(), &id).await,
        Ok(inspect_pid)
    );

    // The binary: finds it through Docker's API, enters its namespaces, serves it.
    let log = dockerd.dir().join("agent.log");
    let mut process = AgentProcess(
        agent(&format!("docker://{id}"), &dockerd.socket(), "20")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn remora-agent"),
    );
    let stdout = process.0.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let addr: SocketAddr = line
        .strip_prefix("REMORA_AGENT_LISTENING ")
        .unwrap_or_else(|| {
            panic!(
                "no announcement ({line:?}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })
        .trim()
        .parse()
        .unwrap();
    let mut client = Client::connect(addr, "alice").await;
    assert_eq!(
        client.request(Request::Hostname).await.unwrap(),
        Response::Hostname(HOSTNAME.into())
    );
    let Response::Env(env) = client
        .request(Request::Env(EnvRequest {
            include: vec!["REMORA_DOCKER_*".into()],
            exclude: vec![],
        }))
        .await
        .unwrap()
    else {
        panic!("not an env reply");
    };
    assert_eq!(env.vars["REMORA_DOCKER_TEST"], "from the container");
    let marker = opened(
        client
            .fs(FsRequest::Open(OpenRequest {
                path: MARKER.into(),
                options: read_only(),
                mode: 0,
                snapshot_limit: 4096,
            }))
            .await,
    );
    assert_eq!(marker.snapshot.as_deref(), Some(MARKER_TEXT.as_bytes()));
    client.send(ClientMessage::Bye).await;
    drop(client);
    let deadline = Instant::now() + STEP;
    let status = loop {
        if let Some(status) = process.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the agent did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}:\n{log}");
    assert!(
        log.lines().any(
            |l| l.contains("found the container's process through Docker's API")
                && l.contains(&format!("pid={inspect_pid}"))
        ),
        "docker inspect says pid {inspect_pid}:\n{log}"
    );

    // Without Docker's socket: the /proc/*/cgroup scan finds the same process.
    let out = agent_output(&id, Path::new("/nonexistent/docker.sock"));
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.lines().any(
            |l| l.contains("found the container's process by its cgroup")
                && l.contains(&format!("pid={inspect_pid}"))
        ),
        "docker inspect says pid {inspect_pid}:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_docker_container_and_an_unknown_id_are_clear_errors() {
    let mut dockerd = dockerd_with_image();
    let id = dockerd.run(&[IMAGE, "sleep", "1000"]);
    let was = dockerd.pid_of(&id);
    // busybox sleep as pid 1 ignores SIGTERM: SIGKILL after a second.
    dockerd.docker_ok(&["stop", "-t", "1", &id]);
    assert_eq!(dockerd.pid_of(&id), 0);
    assert!(!dockerd::alive(was));

    let not_running = "Docker says pid 0: the container is not running (State.Status \"exited\")";
    assert_eq!(
        docker::container_pid(&dockerd.socket(), &id).await,
        Err(not_running.to_owned())
    );
    let out = agent_output(&format!("docker://{id}"), &dockerd.socket());
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let error = stderr.lines().last().unwrap_or_default();
    assert_eq!(
        error,
        format!(
            "remora-agent: no process of container {id} on this node; the runtimes said: \
             Docker: {not_running} (is the container running? is the agent on the pod's \
             node, with hostPID?)"
        ),
        "{stderr}"
    );

    let no_such =
        format!("the container inspect answered HTTP 404 Not Found: No such container: {UNKNOWN}");
    assert_eq!(
        docker::container_pid(&dockerd.socket(), UNKNOWN).await,
        Err(no_such.clone())
    );
    let out = agent_output(&format!("docker://{UNKNOWN}"), &dockerd.socket());
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr
            .lines()
            .last()
            .is_some_and(|l| l.contains(&format!("the runtimes said: Docker: {no_such}"))),
        "{stderr}"
    );
}

/// support/dockerd.rs's guarantee: a test that panics with a container
/// running leaves no process, mount, cgroup or file of its dockerd behind.
#[test]
fn a_failing_test_leaves_nothing_of_its_dockerd_behind() {
    let mut seen = None;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut dockerd = dockerd_with_image();
        let id = dockerd.run(&[IMAGE, "sleep", "1000"]);
        let container = dockerd.pid_of(&id);
        let pids = dockerd.leftover_pids();
        assert!(
            pids.contains(&dockerd.pid()) && pids.contains(&container),
            "{pids:?}"
        );
        // Mounted inside dockerd's mount namespace, not in the host's.
        let dockerd_mounts =
            std::fs::read_to_string(format!("/proc/{}/mountinfo", dockerd.pid())).unwrap();
        let dir = dockerd.dir().to_owned();
        assert!(dockerd_mounts.contains(&format!("{}/data/overlay2", dir.display())));
        assert_eq!(dockerd.host_mounts(), Vec::<std::path::PathBuf>::new());
        seen = Some((dir, dockerd.cgroup_parent().to_owned(), pids));
        panic!("a deliberate failure with dockerd and its container running");
    }));
    assert!(outcome.is_err());
    let (dir, cgroup_parent, pids) = seen.expect("dockerd started");
    for pid in &pids {
        assert!(
            !dockerd::alive(*pid),
            "pid {pid} of the dockerd is still alive"
        );
    }
    assert!(!dir.exists(), "{} is still there", dir.display());
    assert!(
        dockerd::mount_points().iter().all(|m| !m.starts_with(&dir)),
        "a mount under {} is left",
        dir.display()
    );
    for hierarchy in dockerd::cgroup_mounts() {
        assert!(
            !hierarchy.join(&cgroup_parent).exists(),
            "{}",
            hierarchy.display()
        );
    }
}
