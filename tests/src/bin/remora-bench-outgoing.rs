//! Outgoing traffic with real clients, three ways in the same run (issue 16,
//! item 2): **in the pod** (the client runs inside the pod's network
//! namespace), through a **relay** (the shape of `kubectl port-forward`: socat
//! on this machine, then socat in the pod, two userspace hops), and through
//! **remora** (`remora run --target pid/<pod> -- client`), once on the local
//! fast path (the agent hands the client a socket it connected inside the
//! pod, `SCM_RIGHTS`) and once on the proxied path Kubernetes targets take
//! (`REMORA_LOCAL_FAST_PATH=off`: interceptor, intproxy, agent). The clients:
//! `pgbench -S` with 4 clients against a PostgreSQL that listens only on the
//! pod's loopback, `redis-benchmark` GET with 8 clients against a Redis on
//! the pod's loopback, and `remora-bench-app`'s 1-byte round trips and
//! 256 MiB upload against its server in the pod.
//!
//! Each measurement runs [`RUNS`] times, the four ways alternating; the
//! table (markdown, stdout) shows medians and the ratios remora/relay and
//! remora/pod. Progress and every run's value go to stderr. Nothing printed
//! is a constant: every number comes from this run.

use remora_tests::fixtures::remora_run;
use remora_tests::sandbox::PodProcess;
use remora_tests::{Pod, PodSpec, Sandbox, bin_path};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// Runs per way and client; the table shows the median.
const RUNS: usize = 3;
/// Ports on the pod's loopback.
const PG_PORT: u16 = 15432;
const REDIS_PORT: u16 = 16379;
const APP_PORT: u16 = 19100;
/// Where the relay's pod half listens (on the pod's address).
const RELAY_POD_PORT_BASE: u16 = 25000;
/// Where the relay's local half listens (127.0.0.1 on this machine).
const RELAY_LOCAL_PORT_BASE: u16 = 26000;
const PGBENCH_SECONDS: &str = "5";
const REDIS_REQUESTS: &str = "100000";
const ROUND_TRIPS: &str = "5000";
const UPLOAD_MIB: &str = "256";

fn main() -> ExitCode {
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("remora-bench-outgoing: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One client, and how to read its result.
#[derive(Debug)]
struct Client {
    name: &'static str,
    unit: &'static str,
    /// The command, given the host and port it should use.
    argv: fn(&str, u16) -> Vec<String>,
    /// The measured value from its stdout (higher is better).
    parse: fn(&str) -> Option<f64>,
    /// The service's port on the pod's loopback.
    port: u16,
}

fn bench() -> Result<()> {
    let app = bin_path("remora-bench-app")?;
    let app = app
        .to_str()
        .ok_or("remora-bench-app path is not UTF-8")?
        .to_owned();
    let pg_bin = postgres_bin_dir()?;
    for port in [PG_PORT, REDIS_PORT, APP_PORT] {
        let local = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        if TcpStream::connect_timeout(&local, Duration::from_millis(300)).is_ok() {
            return Err(format!(
                "something on this machine listens on {local}: the remora runs must reach \
                 the pod's service, not a local one; stop it first"
            )
            .into());
        }
    }
    let load_before = load_average()?;
    let sandbox = Sandbox::new()?;
    eprintln!(
        "==> starting a sandbox pod with PostgreSQL, Redis and remora-bench-app on its loopback"
    );
    let pod = sandbox.pod(PodSpec::new("bench-out"))?;
    let pgdata = TempDir::new("remora-bench-outgoing-pgdata")?;
    let _pg = start_postgres(&pod, &pg_bin, pgdata.0.clone())?;
    let _redis = pod
        .command("redis-server")?
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &REDIS_PORT.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()?;
    let _server = pod
        .command(&app)?
        .args(["serve", &APP_PORT.to_string()])
        .spawn()?;
    for port in [PG_PORT, REDIS_PORT, APP_PORT] {
        pod.wait_for_tcp(port, Duration::from_secs(30))?;
    }
    let init = pod
        .command("pgbench")?
        .args(["-i", "-q", "-s", "1", "-h", "127.0.0.1"])
        .args(["-p", &PG_PORT.to_string(), "-U", "postgres", "postgres"])
        .output()?;
    checked("pgbench -i", &init)?;

    let clients = clients(app.clone());
    let mut rows = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let relay = Relay::start(&pod, client.port, i as u16)?;
        eprintln!(
            "==> {}: in the pod, relay, remora ({RUNS} runs each, alternating)",
            client.name
        );
        let mut values = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..RUNS {
            let argv = (client.argv)("127.0.0.1", client.port);
            let out = pod.command(&argv[0])?.args(&argv[1..]).output()?;
            values[0].push(parse(client, "in the pod", &out)?);

            let argv = (client.argv)("127.0.0.1", relay.local_port);
            let out = Command::new(&argv[0]).args(&argv[1..]).output()?;
            values[1].push(parse(client, "through the relay", &out)?);

            let argv = (client.argv)("127.0.0.1", client.port);
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let out = remora_run(&pod, &argv)?;
            values[2].push(parse(client, "through remora", &out)?);
            wait_for_remora_exit(&pod);

            let out = Command::new(bin_path("remora")?)
                .args(["run", "--target", &pod.target(), "--"])
                .args(&argv)
                .env("REMORA_LOCAL_FAST_PATH", "off")
                .output()?;
            values[3].push(parse(client, "through remora, proxied", &out)?);
            wait_for_remora_exit(&pod);
        }
        eprintln!(
            "    {}: pod {:?}, relay {:?}, remora {:?}, remora proxied {:?}",
            client.unit, values[0], values[1], values[2], values[3]
        );
        rows.push((client, values.map(|v| median(&v))));
    }

    println!("## outgoing traffic: in the pod, a two-hop relay, remora\n");
    println!(
        "- date: {}",
        capture(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))?
    );
    println!(
        "- machine: `{}`, {} CPUs",
        capture(Command::new("uname").arg("-srm"))?,
        capture(&mut Command::new("nproc"))?
    );
    println!("- method: median of {RUNS} runs per way, the four ways alternating");
    println!("- load average (1/5/15 min) before the run: {load_before}");
    println!(
        "- load average (1/5/15 min) after the run: {}\n",
        load_average()?
    );
    println!(
        "| client (higher is better) | in the pod | relay | remora | remora / relay | \
         remora / pod | remora, proxied | proxied / relay | proxied / pod |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (client, [pod_v, relay_v, remora_v, proxied_v]) in rows {
        println!(
            "| {} | {pod_v:.0} {u} | {relay_v:.0} {u} | {remora_v:.0} {u} | {:.2}x | {:.2}x \
             | {proxied_v:.0} {u} | {:.2}x | {:.2}x |",
            client.name,
            remora_v / relay_v,
            remora_v / pod_v,
            proxied_v / relay_v,
            proxied_v / pod_v,
            u = client.unit,
        );
    }
    Ok(())
}

fn clients(app: String) -> Vec<Client> {
    // `fn` pointers cannot capture the app's path: it is set once here.
    APP.set(app).ok();
    vec![
        Client {
            name: "pgbench -S, 4 clients",
            unit: "tps",
            argv: |host, port| {
                [
                    "pgbench",
                    "-S",
                    "-n",
                    "-c",
                    "4",
                    "-j",
                    "2",
                    "-T",
                    PGBENCH_SECONDS,
                    "-h",
                    host,
                ]
                .into_iter()
                .map(String::from)
                .chain([
                    "-p".into(),
                    port.to_string(),
                    "-U".into(),
                    "postgres".into(),
                ])
                .chain(["postgres".into()])
                .collect()
            },
            parse: |out| {
                out.lines()
                    .find(|l| l.starts_with("tps = "))?
                    .strip_prefix("tps = ")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            },
            port: PG_PORT,
        },
        Client {
            name: "redis-benchmark GET, 8 clients",
            unit: "rps",
            argv: |host, port| {
                [
                    "redis-benchmark",
                    "-h",
                    host,
                    "-t",
                    "get",
                    "-c",
                    "8",
                    "-n",
                    REDIS_REQUESTS,
                    "-q",
                ]
                .into_iter()
                .map(String::from)
                .chain(["-p".into(), port.to_string()])
                .collect()
            },
            parse: |out| {
                // "GET: 75187.97 requests per second, p50=0.055 msec"
                let line = out.split(['\r', '\n']).rfind(|l| l.starts_with("GET: "))?;
                line.strip_prefix("GET: ")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            },
            port: REDIS_PORT,
        },
        Client {
            name: "1-byte round trips (remora-bench-app tcp-rr)",
            unit: "rt/s",
            argv: |host, port| {
                vec![
                    app_path(),
                    "tcp-rr".into(),
                    format!("{host}:{port}"),
                    ROUND_TRIPS.into(),
                ]
            },
            parse: |out| Some(1e9 / field(out, "ns_per_op")?),
            port: APP_PORT,
        },
        Client {
            name: "256 MiB upload (remora-bench-app tcp-stream)",
            unit: "MiB/s",
            argv: |host, port| {
                vec![
                    app_path(),
                    "tcp-stream".into(),
                    format!("{host}:{port}"),
                    UPLOAD_MIB.into(),
                ]
            },
            parse: |out| field(out, "mib_per_s"),
            port: APP_PORT,
        },
    ]
}

static APP: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn app_path() -> String {
    APP.get().cloned().unwrap_or_default()
}

/// `key=value` in a `remora-bench-app` report.
fn field(out: &str, key: &str) -> Option<f64> {
    out.split_whitespace()
        .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))?
        .parse()
        .ok()
}

fn parse(client: &Client, how: &str, out: &Output) -> Result<f64> {
    checked(&format!("{} {how}", client.name), out)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    (client.parse)(&stdout)
        .ok_or_else(|| format!("{} {how}: no result in {stdout:?}", client.name).into())
}

/// The two socat hops: 127.0.0.1:`local_port` here → the pod's address →
/// 127.0.0.1:`port` inside the pod.
struct Relay {
    local_port: u16,
    _pod_half: PodProcess,
    local_half: Child,
}

impl Relay {
    fn start(pod: &Pod, port: u16, index: u16) -> Result<Relay> {
        let pod_port = RELAY_POD_PORT_BASE + index;
        let local_port = RELAY_LOCAL_PORT_BASE + index;
        let pod_half = pod
            .command("socat")?
            .args([
                format!("TCP-LISTEN:{pod_port},reuseaddr,fork,nodelay"),
                format!("TCP:127.0.0.1:{port},nodelay"),
            ])
            .spawn()?;
        pod.wait_for_tcp(pod_port, Duration::from_secs(10))?;
        let local_half = Command::new("socat")
            .args([
                format!("TCP-LISTEN:{local_port},bind=127.0.0.1,reuseaddr,fork,nodelay"),
                format!("TCP:{}:{pod_port},nodelay", pod.ip()),
            ])
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, local_port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                return Err(format!("the relay's local half on {addr} never listened").into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Relay {
            local_port,
            _pod_half: pod_half,
            local_half,
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.local_half.kill();
        let _ = self.local_half.wait();
    }
}

/// A directory removed when dropped (after the server using it is gone:
/// declare it before the server).
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Result<TempDir> {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Debian's PostgreSQL server binaries (`/usr/lib/postgresql/<v>/bin`).
fn postgres_bin_dir() -> Result<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop().ok_or_else(|| {
        "no PostgreSQL server under /usr/lib/postgresql (run scripts/setup.sh)".into()
    })
}

/// A throwaway cluster owned by `postgres`, listening on the pod's loopback.
fn start_postgres(pod: &Pod, bin: &std::path::Path, data: PathBuf) -> Result<PodProcess> {
    let chown = Command::new("chown")
        .args(["postgres:postgres"])
        .arg(&data)
        .status()?;
    if !chown.success() {
        return Err("chown of the PostgreSQL data dir failed".into());
    }
    let initdb = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join("initdb"))
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
        .arg(&data)
        .output()?;
    checked("initdb", &initdb)?;
    let server = pod
        .command("runuser")?
        .args(["-u", "postgres", "--"])
        .arg(bin.join("postgres"))
        .arg("-D")
        .arg(&data)
        .args(["-h", "127.0.0.1", "-p", &PG_PORT.to_string(), "-k"])
        .arg(&data)
        .args(["-c", "fsync=off", "-c", "max_connections=50"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(server)
}

/// Waits until no intproxy or agent of a `remora run` against `pod` is left,
/// so one run's teardown is not measured in the next.
fn wait_for_remora_exit(pod: &Pod) {
    let target = pod.target();
    let deadline = Instant::now() + Duration::from_secs(15);
    while remora_tests::procs::any_serving(&target) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` gives them.
fn load_average() -> Result<String> {
    Ok(std::fs::read_to_string("/proc/loadavg")?
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" "))
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn capture(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().map_err(|e| format!("running {cmd:?}: {e}"))?;
    checked(&format!("{cmd:?}"), &out)?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn checked(what: &str, out: &Output) -> Result<()> {
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into())
    }
}
