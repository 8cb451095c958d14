//! A pod's sandbox, as the `pause` container of a real node: one process per pod
//! (`remora-kube-sim pod-sandbox`, hidden subcommand) that holds the pod's network and UTS
//! namespaces (unless `hostNetwork`) and lives in the pod's cgroup (`pod<uid>/sandbox`). The
//! containers join its namespaces before they exec; when it dies (pod deletion, shutdown,
//! the sweep's `cgroup.kill`), the kernel drops the namespaces and the pod's veth with them.
//!
//! Start-up handshake over the sandbox's stdin/stdout: it unshares and sets the hostname,
//! says `unshared`; the kubelet creates the veth pair into its namespace and says `go`; the
//! sandbox configures `lo`, `eth0`, the address and the default route, and says `ready`.

use std::{
    io::{self, BufRead, Write},
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, ChildStdout},
};

use super::network::{Network, PodAddress, ip};

/// The hidden subcommand's name.
pub const SUBCOMMAND: &str = "pod-sandbox";
/// How long a sandbox may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct SandboxArgs {
    /// The sandbox's cgroup directory.
    #[arg(long)]
    pub cgroup: PathBuf,
    /// With its own network and UTS namespaces: the pod's hostname.
    #[arg(long)]
    pub hostname: Option<String>,
    /// The pod's address with its prefix length (with `--hostname`).
    #[arg(long)]
    pub address: Option<String>,
    /// The default gateway (with `--hostname`).
    #[arg(long)]
    pub gateway: Option<String>,
}

/// The sandbox process: namespaces, handshake, then sleeps until killed.
pub fn sandbox_main(args: SandboxArgs) -> ! {
    if let Err(e) = sandbox_setup(&args) {
        println!("error: {e}");
        std::process::exit(1);
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn sandbox_setup(args: &SandboxArgs) -> io::Result<()> {
    use nix::sched::{CloneFlags, unshare};
    super::cgroup::join(&args.cgroup)?;
    let mut stdout = io::stdout();
    if let Some(hostname) = &args.hostname {
        unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS).map_err(io::Error::from)?;
        nix::unistd::sethostname(hostname).map_err(io::Error::from)?;
        writeln!(stdout, "unshared")?;
        stdout.flush()?;
        let mut line = String::new();
        io::stdin().lock().read_line(&mut line)?;
        if line.trim() != "go" {
            return Err(io::Error::other("the kubelet gave up"));
        }
        let (Some(address), Some(gateway)) = (&args.address, &args.gateway) else {
            return Err(io::Error::other("--address and --gateway are required"));
        };
        // Children of this (single-threaded) process run in its new network namespace.
        ip(&["link", "set", "lo", "up"])?;
        ip(&["addr", "add", address, "dev", "eth0"])?;
        ip(&["link", "set", "eth0", "up"])?;
        ip(&["route", "add", "default", "via", gateway])?;
    } else {
        writeln!(stdout, "unshared")?;
    }
    writeln!(stdout, "ready")?;
    stdout.flush()
}

/// A running sandbox.
#[derive(Debug)]
pub struct Sandbox {
    pub pid: u32,
    child: Child,
    /// The pod's own address (`None` with `hostNetwork`).
    pub addr: Option<PodAddress>,
    /// Whether the sandbox holds its own network and UTS namespaces.
    pub isolated: bool,
}

/// What a sandbox is started with.
#[derive(Debug)]
pub struct SandboxSpec<'a> {
    pub cgroup: PathBuf,
    pub hostname: &'a str,
    pub host_network: bool,
    pub network: &'a Network,
    pub env: Vec<(String, String)>,
    pub stderr: std::fs::File,
}

impl Sandbox {
    pub async fn start(spec: SandboxSpec<'_>) -> io::Result<Self> {
        let addr = if spec.host_network {
            None
        } else {
            Some(spec.network.allocate()?)
        };
        let mut cmd = tokio::process::Command::new(super::init::current_exe()?);
        cmd.arg(SUBCOMMAND).arg("--cgroup").arg(&spec.cgroup);
        if let Some(addr) = &addr {
            cmd.args(["--hostname", spec.hostname])
                .arg("--address")
                .arg(format!("{}/24", addr.ip))
                .arg("--gateway")
                .arg(spec.network.gateway().to_string());
        }
        let spawned = cmd
            .env_clear()
            .envs(spec.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(spec.stderr)
            .process_group(0)
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                if let Some(addr) = &addr {
                    spec.network.release(addr);
                }
                return Err(e);
            }
        };
        let pid = child.id().unwrap_or(0);
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let handshake = tokio::time::timeout(
            START_TIMEOUT,
            handshake(stdin, stdout, addr.as_ref(), spec.network, pid),
        )
        .await
        .unwrap_or_else(|_| Err(io::Error::other("the pod sandbox did not start in time")));
        if let Err(e) = handshake {
            let _ = child.start_kill();
            let _ = child.wait().await;
            if let Some(addr) = &addr {
                spec.network.release(addr);
            }
            return Err(e);
        }
        Ok(Self {
            pid,
            child,
            isolated: addr.is_some(),
            addr,
        })
    }

    /// Kills the sandbox (its namespaces go with it) and gives its address back.
    pub async fn stop(mut self, network: &Network) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        if let Some(addr) = &self.addr {
            network.release(addr);
        }
    }
}

async fn handshake(
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    addr: Option<&PodAddress>,
    network: &Network,
    pid: u32,
) -> io::Result<()> {
    let (Some(mut stdin), Some(stdout)) = (stdin, stdout) else {
        return Err(io::Error::other("the pod sandbox has no stdin/stdout"));
    };
    let mut lines = BufReader::new(stdout).lines();
    let mut expect = async |word: &str| -> io::Result<()> {
        match lines.next_line().await? {
            Some(line) if line == word => Ok(()),
            Some(line) => Err(io::Error::other(format!("pod sandbox: {line}"))),
            None => Err(io::Error::other("the pod sandbox exited while starting")),
        }
    };
    expect("unshared").await?;
    if let Some(addr) = addr {
        network.attach(addr, pid)?;
        stdin.write_all(b"go\n").await?;
    }
    expect("ready").await
}
