//! One test's world: a fake agent, an in-process intproxy connected to it,
//! and real programs started with the real layer preloaded, the way
//! `remora run` starts them (see `cli/src/run.rs`).

use super::fake_agent::{FakeAgent, Script};
use remora_config::{Config, RESOLVED_CONFIG_ENV};
use remora_intproxy::{IntProxy, IntProxyConfig};
use remora_protocol::{ClientIdentity, SessionToken};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

/// A program that has not finished after this long is killed and the test fails.
pub const CHILD_TIMEOUT: Duration = Duration::from_secs(20);
/// The intproxy outlives the gaps between a test's programs.
const INTPROXY_IDLE: Duration = Duration::from_secs(300);
const AGENT_TOKEN: &str = "fake-agent-token";
/// The layer's environment variables (`layer/src/state.rs`).
pub const INTPROXY_ADDR_ENV: &str = "REMORA_INTPROXY_ADDR";
pub const LAYER_TOKEN_ENV: &str = "REMORA_LAYER_TOKEN";
pub const LAYER_DEBUG_ENV: &str = "REMORA_LAYER_DEBUG";

/// `target/<profile>/libremora_layer.so`, next to this test's `deps/` directory.
///
/// # Panics
/// When the library is missing: these tests must never pass without it.
pub fn layer_path() -> PathBuf {
    let exe = std::env::current_exe().expect("locating the test executable");
    // target/<profile>/deps/<test> → target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps");
    let layer = profile_dir.join("libremora_layer.so");
    assert!(
        layer.is_file(),
        "{} does not exist: build the layer first with `cargo build -p remora-layer` \
         (these tests load it into real programs)",
        layer.display()
    );
    layer
}

/// The system Python, so the interpreter and its standard library come from
/// `/usr` (local by default) rather than through a version-manager shim.
pub fn python() -> &'static str {
    if Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// A finished program.
#[derive(Debug)]
pub struct Finished {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panics with everything the program said unless it exited with 0.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(self.status.success(), "{self}");
        self
    }

    /// The `remora:` lines the layer printed on stderr.
    pub fn remora_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("remora:"))
            .collect()
    }
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what, self.status, self.stdout, self.stderr
        )
    }
}

/// Human-readable `program arg ...`.
fn describe(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Environment every program gets: a minimal, predictable one.
fn base_command(program: &str, args: &[&str], cwd: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("LC_ALL", "C")
        .current_dir(cwd)
        .kill_on_drop(true);
    cmd
}

/// Run `cmd` to completion, killing it and failing the test after [`CHILD_TIMEOUT`].
pub async fn finish(what: String, child: Child) -> Finished {
    let pid = child.id();
    // On timeout the future (and the Child in it) is dropped: kill_on_drop
    // sends SIGKILL to that pid.
    match tokio::time::timeout(CHILD_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) => Finished {
            what,
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        Ok(Err(e)) => panic!("waiting for `{what}`: {e}"),
        Err(_) => panic!(
            "`{what}` (pid {pid:?}) hung: still running after {} s, killed it",
            CHILD_TIMEOUT.as_secs()
        ),
    }
}

async fn spawn_and_finish(what: String, mut cmd: Command) -> Finished {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting `{what}`: {e}"));
    finish(what, child).await
}

/// Run a program without any layer (the reference behaviour).
pub async fn run_plain(program: &str, args: &[&str], cwd: &Path) -> Finished {
    let cmd = base_command(program, args, cwd, cwd);
    spawn_and_finish(describe(program, args), cmd).await
}

/// Run a program with the layer preloaded but no intproxy address (plus
/// `extra` environment).
pub async fn run_inactive(
    program: &str,
    args: &[&str],
    cwd: &Path,
    extra: &[(&str, &str)],
) -> Finished {
    let mut cmd = base_command(program, args, cwd, cwd);
    cmd.env("LD_PRELOAD", layer_path())
        .env(LAYER_TOKEN_ENV, "unused-token")
        .env(RESOLVED_CONFIG_ENV, Config::default().to_env_value())
        .envs(extra.iter().copied());
    spawn_and_finish(describe(program, args), cmd).await
}

/// A fake agent, an intproxy connected to it, and a working directory.
#[derive(Debug)]
pub struct Harness {
    pub agent: FakeAgent,
    proxy_addr: SocketAddr,
    layer_token: String,
    config: String,
    proxy: JoinHandle<remora_intproxy::Result<()>>,
    workdir: tempfile::TempDir,
}

/// The intproxy's lifetime settings (see `IntProxyConfig`).
#[derive(Debug, Clone)]
pub struct Lifetime {
    pub first_connect: Duration,
    pub linger: Duration,
    pub setup_sessions: usize,
}

impl Default for Lifetime {
    /// Long enough never to end during a test.
    fn default() -> Self {
        Lifetime {
            first_connect: INTPROXY_IDLE,
            linger: INTPROXY_IDLE,
            setup_sessions: 0,
        }
    }
}

impl Harness {
    /// Start with `config` as the resolved config handed to the layer
    /// (`Config::default()` is what `remora run` hands it without a config
    /// file: outgoing TCP/UDP and DNS all remote, files read from the target
    /// except the built-in local paths).
    pub async fn start(script: Script, config: Config) -> Harness {
        Harness::start_with_lifetime(script, config, Lifetime::default()).await
    }

    /// Like [`Harness::start`], with the intproxy's lifetime settings.
    pub async fn start_with_lifetime(script: Script, config: Config, life: Lifetime) -> Harness {
        static RUN: AtomicUsize = AtomicUsize::new(0);
        let layer_token = format!(
            "layer-token-{}-{}",
            std::process::id(),
            RUN.fetch_add(1, Ordering::SeqCst)
        );
        let agent = FakeAgent::start(script).await;
        let proxy = IntProxy::start(IntProxyConfig {
            agent: agent.addr().into(),
            agent_token: SessionToken(AGENT_TOKEN.into()),
            layer_token: SessionToken(layer_token.clone()),
            identity: ClientIdentity {
                user: "tester@localhost".into(),
                hostname: "localhost".into(),
                pid: std::process::id(),
                program: "layer_suite".into(),
                remora_version: "test".into(),
            },
            target: Some("pid/1".into()),
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            first_connect_timeout: life.first_connect,
            linger: life.linger,
            setup_sessions: life.setup_sessions,
            override_filters: false,
            on_idle: None,
        })
        .await
        .expect("starting the intproxy against the fake agent");
        let proxy_addr = proxy.local_addr().expect("intproxy address");
        let proxy = tokio::spawn(proxy.run());
        let hellos = agent.hellos();
        assert_eq!(hellos.len(), 1, "the intproxy handshakes exactly once");
        assert_eq!(hellos[0].token, SessionToken(AGENT_TOKEN.into()));
        // Working directory inside target/: neither /tmp nor any other
        // built-in local path, so only the "cwd is local" rule keeps it local.
        let scratch = layer_path()
            .parent()
            .expect("layer lives in a directory")
            .join("layer-suite-tmp");
        std::fs::create_dir_all(&scratch).expect("creating the scratch directory");
        let workdir = tempfile::tempdir_in(&scratch).expect("creating a working directory");
        Harness {
            agent,
            proxy_addr,
            layer_token,
            config: config.to_env_value(),
            proxy,
            workdir,
        }
    }

    /// Whether the intproxy has exited.
    pub fn proxy_finished(&self) -> bool {
        self.proxy.is_finished()
    }

    /// Where the intproxy accepts layers.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// The working directory of every program.
    pub fn workdir(&self) -> &Path {
        self.workdir.path()
    }

    /// `program args` with the layer's environment, as `remora run` sets it.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        assert!(
            !self.proxy.is_finished(),
            "the intproxy exited before the program started"
        );
        let mut cmd = base_command(program, args, self.workdir(), self.workdir());
        cmd.env("LD_PRELOAD", layer_path())
            .env(INTPROXY_ADDR_ENV, self.proxy_addr.to_string())
            .env(LAYER_TOKEN_ENV, &self.layer_token)
            .env(RESOLVED_CONFIG_ENV, &self.config);
        cmd
    }

    /// Run `program args` under the layer to completion.
    pub async fn run(&self, program: &str, args: &[&str]) -> Finished {
        spawn_and_finish(describe(program, args), self.command(program, args)).await
    }

    /// `python3 -c code` under the layer.
    pub async fn python(&self, code: &str) -> Finished {
        self.run(python(), &["-c", code]).await
    }

    /// Start `program args` under the layer with piped stdin/stdout, for
    /// tests that act between the program's steps.
    pub fn spawn_interactive(&self, program: &str, args: &[&str]) -> Interactive {
        let what = describe(program, args);
        let mut child = self
            .command(program, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting `{what}`: {e}"));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        Interactive {
            what,
            child: Some(child),
            stdin: Some(stdin),
            stdout,
            transcript: String::new(),
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.proxy.abort();
    }
}

/// A running program driven line by line.
#[derive(Debug)]
pub struct Interactive {
    what: String,
    /// `None` once handed to [`finish`].
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    transcript: String,
}

impl Interactive {
    /// The next stdout line (the program is killed if none comes in time).
    pub async fn line(&mut self) -> String {
        let next = tokio::time::timeout(CHILD_TIMEOUT, self.stdout.next_line()).await;
        match next {
            Ok(Ok(Some(line))) => {
                self.transcript.push_str(&line);
                self.transcript.push('\n');
                line
            }
            Ok(Ok(None)) => {
                let child = self.child.take().expect("the program is still ours");
                let ended = finish(self.what.clone(), child).await;
                panic!(
                    "`{}` ended before printing the expected line; stdout so far:\n{}\n{ended}",
                    self.what, self.transcript
                )
            }
            Ok(Err(e)) => panic!("reading from `{}`: {e}", self.what),
            // Dropping self drops the Child: kill_on_drop kills it.
            Err(_) => panic!(
                "`{}` printed nothing for {} s (stdout so far:\n{}); killed it",
                self.what,
                CHILD_TIMEOUT.as_secs(),
                self.transcript
            ),
        }
    }

    /// Write one line to the program's stdin.
    pub async fn send_line(&mut self, line: &str) {
        let data = format!("{line}\n");
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin
            .write_all(data.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("writing to `{}`: {e}", self.what));
        stdin.flush().await.ok();
    }

    /// Close stdin and wait for the end; the result's stdout is everything
    /// the program printed, including the lines already read.
    pub async fn finish(mut self) -> Finished {
        drop(self.stdin.take());
        let mut rest = String::new();
        let read_rest = async {
            while let Ok(Some(line)) = self.stdout.next_line().await {
                rest.push_str(&line);
                rest.push('\n');
            }
        };
        assert!(
            tokio::time::timeout(CHILD_TIMEOUT, read_rest).await.is_ok(),
            "`{}` did not finish within {} s (stdout so far:\n{}); killed it",
            self.what,
            CHILD_TIMEOUT.as_secs(),
            self.transcript
        );
        let child = self.child.take().expect("the program is still ours");
        let mut finished = finish(self.what.clone(), child).await;
        finished.stdout = format!("{}{rest}", self.transcript);
        finished
    }
}
