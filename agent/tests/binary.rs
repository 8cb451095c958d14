//! The `remora-agent` binary's contract with the CLI that spawns it: the
//! announcement line, the token from the environment, one-line errors and
//! exit codes.

#[path = "support/harness.rs"]
mod harness;

use harness::*;

use remora_protocol::{ClientMessage, Request, Response};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

// ---------------------------------------------------------------- binary

struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent_command(target: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_remora-agent"));
    command
        .args(["--target", target, "--idle-timeout-secs", "20"])
        .env_remove("REMORA_AGENT_TOKEN")
        .env("REMORA_AGENT_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Start the binary and read its one announcement line.
fn start_binary(target: &Target) -> (AgentProcess, SocketAddr) {
    let mut child = agent_command(&target.pid().to_string())
        .env("REMORA_AGENT_TOKEN", TOKEN)
        .spawn()
        .expect("spawn remora-agent");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .strip_prefix("REMORA_AGENT_LISTENING ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .trim()
        .parse()
        .unwrap();
    (AgentProcess(child), addr)
}

fn wait_exit(process: &mut AgentProcess) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + STEP;
    loop {
        if let Some(status) = process.0.try_wait().unwrap() {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "agent did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stderr_of(process: &mut AgentProcess) -> String {
    let mut err = String::new();
    process
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    err
}

#[tokio::test]
async fn binary_announces_serves_and_exits_when_its_client_leaves() {
    let target = Target::sleep(&[]);
    let (mut process, addr) = start_binary(&target);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", process.0.id())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains(&format!("--target {}", target.pid())),
        "{cmdline}"
    );
    assert!(!cmdline.contains(TOKEN), "the token leaks into ps");

    let mut client = Client::connect(addr, "alice").await;
    assert_eq!(client.request(Request::Ping).await.unwrap(), Response::Pong);
    client.send(ClientMessage::Bye).await;
    drop(client);
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut process))
        .await
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn binary_exits_zero_on_sigterm() {
    let target = Target::sleep(&[]);
    let (mut process, _) = start_binary(&target);
    let pid = nix::unistd::Pid::from_raw(process.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut process))
        .await
        .unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn binary_refuses_to_start_without_a_token_or_a_target() {
    let target = Target::sleep(&[]);
    let mut no_token = AgentProcess(agent_command(&target.pid().to_string()).spawn().unwrap());
    assert!(!wait_exit(&mut no_token).success());
    let err = stderr_of(&mut no_token);
    assert!(err.contains("REMORA_AGENT_TOKEN is not set"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let mut missing = AgentProcess(
        agent_command("pid/999999999")
            .env("REMORA_AGENT_TOKEN", TOKEN)
            .spawn()
            .unwrap(),
    );
    assert!(!wait_exit(&mut missing).success());
    let err = stderr_of(&mut missing);
    assert!(
        err.contains("target pid/999999999 not found: no such process (is the workload running?)"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn binary_without_privileges_says_what_it_needs() {
    use std::os::unix::process::CommandExt;
    let target = Target::sleep(&[]);
    let mut unprivileged = AgentProcess(
        agent_command(&target.pid().to_string())
            .env("REMORA_AGENT_TOKEN", TOKEN)
            .uid(65534) // nobody: no capabilities, not the target's owner
            .gid(65534)
            .spawn()
            .unwrap(),
    );
    assert!(!wait_exit(&mut unprivileged).success());
    let err = stderr_of(&mut unprivileged);
    let expected = format!(
        "cannot enter the namespaces of {}: operation not permitted (the agent needs root, or \
         CAP_SYS_ADMIN + CAP_NET_ADMIN + CAP_SYS_PTRACE)",
        target.pid()
    );
    assert!(err.contains(&expected), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}
