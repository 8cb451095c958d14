//! The benchmarks behind `scripts/bench.sh` and `docs/benchmarks.md`: one sandbox pod
//! with private files and a TCP server, and every benchmark measured both "direct"
//! and "through remora" in the same run, printed as a markdown table on stdout
//! (progress goes to stderr).
//!
//! "direct" is what a user would otherwise do: for start-up and local calls, the same
//! command without remora; for the pod's files and services, the same program run
//! inside the pod. "remora" is the program run on this machine under
//! `remora run --target pid/<pod>`, and for the pod's files and services also with
//! `REMORA_LOCAL_FAST_PATH=off` (the proxied path Kubernetes targets take). The
//! measured programs time their own loops
//! (`remora-bench-app`), so remora's start-up only counts in the start-up row.
//! Each command runs [`RUNS`] times ([`LOCAL_RUNS`] for the local-call rows, whose
//! 5% target is smaller than three runs' spread on a small VM), direct and remora
//! alternating (each remora run's intproxy and agent are gone before the next run
//! starts); the table shows medians.
//! Nothing printed is a constant: every number comes from this run.

use remora_tests::fixtures::remora_run;
use remora_tests::{Pod, PodSpec, Sandbox, bin_path};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, ExitCode, Output};
use std::time::{Duration, Instant};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// Runs of each measured command; the table shows their median.
const RUNS: usize = 3;
/// Runs of the local-call rows: each takes well under a second, and a 5% target
/// needs more than three on a VM whose runs spread by 5-10%.
const LOCAL_RUNS: usize = 15;
/// The pod's small file (remote read latency).
const SMALL_FILE: &str = "/srv/bench/small.txt";
const SMALL_LEN: usize = 1024;
/// The pod's large file (remote read throughput).
const BIG_FILE: &str = "/srv/bench/big.bin";
const BIG_LEN: usize = 64 * 1024 * 1024;
/// The pod's 7 KiB file (read one byte per `read` call).
const MEDIUM_FILE: &str = "/srv/bench/medium.txt";
const MEDIUM_LEN: usize = 7 * 1024;
/// Port of `remora-bench-app serve` inside the pod.
const SERVER_PORT: u16 = 19000;
/// Loop counts handed to `remora-bench-app`.
const FILES_LOCAL_OPS: &str = "200000";
const SOCK_LOCAL_OPS: &str = "50000";
const SMALL_READS: &str = "2000";
const BIG_READS: &str = "3";
const BYTE_READS: &str = "100";
const TCP_ROUND_TRIPS: &str = "5000";
const TCP_STREAM_MIB: &str = "256";
/// How long the intproxy and agent of one `remora run` may take to go away.
const REMORA_EXIT_DEADLINE: Duration = Duration::from_secs(15);
/// The target for local calls under remora: at most this much slower.
const LOCAL_OVERHEAD_TARGET: f64 = 0.05;

fn main() -> ExitCode {
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("remora-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench() -> Result<()> {
    let remora = bin_path("remora")?;
    let app = bin_path("remora-bench-app")?;
    let app = app.to_str().ok_or("remora-bench-app path is not UTF-8")?;
    let header = header(&remora)?;
    // Remora's 127.0.0.1:19000 must be the pod's: a local listener on the same port
    // would make a broken redirect look like a working one.
    let local = SocketAddr::from((Ipv4Addr::LOCALHOST, SERVER_PORT));
    if TcpStream::connect_timeout(&local, Duration::from_secs(1)).is_ok() {
        return Err(format!(
            "something on this machine listens on {local}; stop it so the TCP rows \
             measure the pod's server"
        )
        .into());
    }

    let sandbox = Sandbox::new()?;
    progress(format!(
        "starting a sandbox pod with {SMALL_FILE} ({SMALL_LEN} B), {BIG_FILE} ({} MiB) and \
         `remora-bench-app serve {SERVER_PORT}`",
        BIG_LEN >> 20
    ));
    let spec = PodSpec::new("bench")
        .file(SMALL_FILE, text(SMALL_LEN))
        .file(MEDIUM_FILE, text(MEDIUM_LEN))
        .file(BIG_FILE, pattern(BIG_LEN, 1));
    let pod = sandbox.pod(spec)?;
    let _server = pod
        .command(app)?
        .args(["serve", &SERVER_PORT.to_string()])
        .spawn()?;
    pod.wait_for_tcp(SERVER_PORT, Duration::from_secs(20))?;
    let runner = Runner { pod: &pod, app };

    let mut rows = Vec::new();
    progress("start-up: hyperfine `true` vs `remora run -- true`".into());
    rows.push(Row {
        name: "start-up: `true`, hyperfine mean of 20".into(),
        unit: Unit::Millis,
        measured: startup(&remora, &pod)?,
    });

    let mut local = Vec::new();
    for (name, args) in [
        (
            "local files: open+read 4 KiB+close + stat, files-local",
            ["files-local", FILES_LOCAL_OPS],
        ),
        (
            "local sockets: unix connect+close, sock-local",
            ["sock-local", SOCK_LOCAL_OPS],
        ),
    ] {
        progress(format!("{name}: plain vs remora run"));
        // Wall-clock and CPU time of the same runs: on a loaded machine the
        // CPU time of the timed loop moves far less than the wall clock,
        // which also counts the waits for a CPU.
        let keys = ["ns_per_op", "cpu_ns_per_op"];
        let [wall, cpu] = runner.measure_keys(Where::Local, &args, keys, LOCAL_RUNS)?;
        local.push((args[0].to_owned(), rows.len()));
        rows.push(Row {
            name: name.into(),
            unit: Unit::Nanos,
            measured: wall,
        });
        local.push((format!("{}, CPU time", args[0]), rows.len()));
        rows.push(Row {
            name: format!("{name}, CPU time of the timed loop"),
            unit: Unit::Nanos,
            measured: cpu,
        });
    }

    let addr = format!("127.0.0.1:{SERVER_PORT}");
    let remote: [(String, Unit, [&str; 3], &str); 5] = [
        (
            format!("pod file {SMALL_LEN} B: std::fs::read latency"),
            Unit::Micros,
            ["read-file", SMALL_FILE, SMALL_READS],
            "ns_per_op",
        ),
        (
            format!("pod file {MEDIUM_LEN} B: open + 1 byte per read() to the end"),
            Unit::Micros,
            ["read-bytes", MEDIUM_FILE, BYTE_READS],
            "ns_per_op",
        ),
        (
            format!("pod file {} MiB: std::fs::read throughput", BIG_LEN >> 20),
            Unit::MibPerSec,
            ["read-file", BIG_FILE, BIG_READS],
            "mib_per_s",
        ),
        (
            "pod TCP 127.0.0.1: 1-byte round trip".into(),
            Unit::Micros,
            ["tcp-rr", &addr, TCP_ROUND_TRIPS],
            "ns_per_op",
        ),
        (
            format!("pod TCP 127.0.0.1: {TCP_STREAM_MIB} MiB upload throughput"),
            Unit::MibPerSec,
            ["tcp-stream", &addr, TCP_STREAM_MIB],
            "mib_per_s",
        ),
    ];
    for (name, unit, args, key) in remote {
        progress(format!("{name}: in the pod vs remora run"));
        let measured = runner.measure(Where::Pod, &args, key, RUNS)?;
        rows.push(Row {
            name,
            unit,
            measured,
        });
    }

    print!("{header}");
    println!(
        "- load average (1/5/15 min) after the run: {}\n",
        load_average()?
    );
    println!(
        "| benchmark | direct | remora | ratio (remora/direct) | remora, proxied path | \
         ratio (proxied/direct) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for row in &rows {
        println!("{row}");
    }
    println!();
    for (bench, index) in local {
        let row = &rows[index];
        let overhead = row.measured.ratio() - 1.0;
        let verdict = if overhead <= LOCAL_OVERHEAD_TARGET {
            "yes"
        } else {
            "no"
        };
        let noise = if row.measured.ranges_overlap() {
            "; the runs overlap, so noise is as large as the difference"
        } else {
            ""
        };
        println!(
            "- target: local call overhead within {:.0}% ({bench}): {verdict} ({:+.1}%; \
             runs: direct {}, remora {}{noise})",
            LOCAL_OVERHEAD_TARGET * 100.0,
            overhead * 100.0,
            row.range(&row.measured.direct),
            row.range(&row.measured.remora),
        );
    }
    progress("cleaning up the sandbox".into());
    Ok(())
}

fn progress(what: String) {
    eprintln!("==> {what}");
}

/// Date, machine, load and build, so a table can be compared with another one.
fn header(remora: &Path) -> Result<String> {
    let date = capture(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))?;
    let uname = capture(Command::new("uname").arg("-srm"))?;
    let nproc = capture(&mut Command::new("nproc"))?;
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo")?;
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or("unknown", |(_, model)| model.trim());
    let bins = remora.parent().ok_or("remora has no parent directory")?;
    let profile = build_profile(bins);
    Ok(format!(
        "## remora benchmarks\n\n\
         - date: {date}\n\
         - machine: `{uname}`, {nproc} CPUs, {cpu}\n\
         - build: {profile} (binaries in {})\n\
         - method: median of {RUNS} runs per command ({LOCAL_RUNS} for the local calls), \
         direct and remora alternating\n\
         - load average (1/5/15 min) before the run: {}\n",
        bins.display(),
        load_average()?,
    ))
}

/// The first three fields of `/proc/loadavg`: other work on the machine skews every
/// number, so the table says how busy it was.
fn load_average() -> Result<String> {
    let text = std::fs::read_to_string("/proc/loadavg")?;
    Ok(text
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" "))
}

/// `release`/`debug` from a cargo profile directory (`target/release`).
fn build_profile(bins: &Path) -> String {
    let dir = if bins.ends_with("deps") {
        bins.parent().unwrap_or(bins)
    } else {
        bins
    };
    dir.file_name()
        .map_or_else(|| "unknown".into(), |n| n.to_string_lossy().into_owned())
}

/// Trimmed stdout of a successful command.
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

/// Mean wall time (ms) of `true` and of `remora run -- true`, from [`RUNS`] hyperfine
/// runs that each measure both.
fn startup(remora: &Path, pod: &Pod) -> Result<Measured> {
    let json = std::env::temp_dir().join(format!("remora-bench-{}.json", std::process::id()));
    let through = format!("{} run --target {} -- true", remora.display(), pod.target());
    let mut measured = Measured::default();
    for _ in 0..RUNS {
        let mut cmd = Command::new("hyperfine");
        cmd.args(["-N", "--warmup", "3", "--runs", "20", "--style", "none"])
            .arg("--export-json")
            .arg(&json)
            .args(["true", &through]);
        capture(&mut cmd)?;
        wait_for_remora_exit(pod);
        let means = hyperfine_means(&json);
        let _ = std::fs::remove_file(&json);
        let [direct, remora] = means?;
        measured.direct.push(direct * 1e3);
        measured.remora.push(remora * 1e3);
    }
    measured.log("mean ms");
    Ok(measured)
}

/// The `mean` (seconds) of both results of a hyperfine JSON export.
fn hyperfine_means(json: &Path) -> Result<[f64; 2]> {
    let text = std::fs::read_to_string(json).map_err(|e| format!("{}: {e}", json.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)?;
    let mean = |i: usize| {
        value["results"][i]["mean"]
            .as_f64()
            .ok_or_else(|| format!("{}: no results[{i}].mean", json.display()))
    };
    Ok([mean(0)?, mean(1)?])
}

/// Where the "direct" run of a benchmark happens.
#[derive(Debug, Clone, Copy)]
enum Where {
    /// On this machine without remora: local-call baseline.
    Local,
    /// Inside the pod: the baseline for the pod's files and services.
    Pod,
}

/// Every run's value of one benchmark, direct and through remora.
#[derive(Debug, Default)]
struct Measured {
    direct: Vec<f64>,
    remora: Vec<f64>,
    /// Under remora with the local fast path off ([`FAST_PATH_OFF`]): the
    /// path Kubernetes targets take. Empty for the local-call rows.
    proxied: Vec<f64>,
}

impl Measured {
    /// Median remora value over median direct value.
    fn ratio(&self) -> f64 {
        median(&self.remora) / median(&self.direct)
    }

    /// Whether the ranges of the direct and the remora runs overlap: then the
    /// run-to-run noise is as large as the difference between them.
    fn ranges_overlap(&self) -> bool {
        let (dmin, dmax) = min_max(&self.direct);
        let (rmin, rmax) = min_max(&self.remora);
        dmin.max(rmin) <= dmax.min(rmax)
    }

    /// Shows every run on stderr, so a noisy machine is visible while it runs.
    fn log(&self, key: &str) {
        let runs = |values: &[f64]| {
            values
                .iter()
                .map(|v| format!("{v:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        eprintln!(
            "    {key}: direct [{}], remora [{}], proxied [{}]",
            runs(&self.direct),
            runs(&self.remora),
            runs(&self.proxied)
        );
    }
}

#[derive(Debug)]
struct Runner<'a> {
    pod: &'a Pod,
    app: &'a str,
}

impl Runner<'_> {
    /// Runs `remora-bench-app args` `runs` times directly and `runs` times under
    /// `remora run`, alternating, and collects the value of `key` they report.
    fn measure(&self, direct_at: Where, args: &[&str], key: &str, runs: usize) -> Result<Measured> {
        let [measured] = self.measure_keys(direct_at, args, [key], runs)?;
        Ok(measured)
    }

    /// [`Runner::measure`] collecting several keys of the same runs.
    fn measure_keys<const K: usize>(
        &self,
        direct_at: Where,
        args: &[&str],
        keys: [&str; K],
        runs: usize,
    ) -> Result<[Measured; K]> {
        let mut measured: [Measured; K] = std::array::from_fn(|_| Measured::default());
        let collect = |measured: &mut [Measured; K],
                       out: &Output,
                       how: &str,
                       pick: fn(&mut Measured) -> &mut Vec<f64>|
         -> Result<()> {
            for (m, key) in measured.iter_mut().zip(keys) {
                pick(m).push(value(out, args, key, how)?);
            }
            Ok(())
        };
        for _ in 0..runs {
            let out = match direct_at {
                Where::Local => Command::new(self.app).args(args).output()?,
                Where::Pod => self.pod.command(self.app)?.args(args).output()?,
            };
            collect(&mut measured, &out, "direct", |m| &mut m.direct)?;
            let mut argv = vec![self.app];
            argv.extend_from_slice(args);
            let out = remora_run(self.pod, &argv)?;
            collect(&mut measured, &out, "under remora", |m| &mut m.remora)?;
            if let Where::Pod = direct_at {
                wait_for_remora_exit(self.pod);
                let out = remora_run_env(self.pod, FAST_PATH_OFF, &argv)?;
                let how = "under remora, proxied path";
                collect(&mut measured, &out, how, |m| &mut m.proxied)?;
                wait_for_remora_exit(self.pod);
            }
        }
        for (m, key) in measured.iter().zip(keys) {
            m.log(key);
        }
        Ok(measured)
    }
}

/// Waits until no intproxy or agent of a `remora run` against `pod` is left. After
/// the program exits, its intproxy lingers (for exec'd children that reconnect),
/// then stops the agent: that teardown must not land in the next measurement.
fn wait_for_remora_exit(pod: &Pod) {
    let target = pod.target();
    let deadline = Instant::now() + REMORA_EXIT_DEADLINE;
    while remora_tests::procs::any_serving(&target) {
        if Instant::now() >= deadline {
            eprintln!(
                "    warning: remora processes for {target} still running after \
                 {REMORA_EXIT_DEADLINE:?}; measuring anyway"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `remora run` with the local fast path off.
const FAST_PATH_OFF: (&str, &str) = ("REMORA_LOCAL_FAST_PATH", "off");

/// [`remora_run`] with one more environment variable for `remora run`.
fn remora_run_env(pod: &Pod, env: (&str, &str), args: &[&str]) -> Result<Output> {
    let remora = bin_path("remora")?;
    Ok(Command::new(remora)
        .args(["run", "--target", &pod.target(), "--"])
        .args(args)
        .env(env.0, env.1)
        .output()?)
}

/// The `key=value` a successful `remora-bench-app` run printed.
fn value(out: &Output, args: &[&str], key: &str, how: &str) -> Result<f64> {
    let what = format!("remora-bench-app {} ({how})", args.join(" "));
    checked(&what, out)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .split_whitespace()
        .find_map(|field| field.strip_prefix(key)?.strip_prefix('='))
        .ok_or_else(|| format!("{what}: no {key}= in its output {stdout:?}"))?
        .parse()
        .map_err(|e| format!("{what}: {key}: {e}").into())
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// How a row's values are shown.
#[derive(Debug, Clone, Copy)]
enum Unit {
    /// Value in milliseconds.
    Millis,
    /// Value in nanoseconds per operation.
    Nanos,
    /// Value in nanoseconds per operation, shown in microseconds.
    Micros,
    /// Value in MiB/s (higher is better).
    MibPerSec,
}

/// One line of the table.
#[derive(Debug)]
struct Row {
    name: String,
    unit: Unit,
    measured: Measured,
}

impl Row {
    fn show(&self, value: f64) -> String {
        match self.unit {
            Unit::Millis => format!("{value:.2} ms"),
            Unit::Nanos => format!("{value:.0} ns"),
            Unit::Micros => format!("{:.1} µs", value / 1e3),
            Unit::MibPerSec => format!("{value:.0} MiB/s"),
        }
    }

    /// `min to max` of some runs, in the row's unit.
    fn range(&self, values: &[f64]) -> String {
        let (min, max) = min_max(values);
        format!("{} to {}", self.show(min), self.show(max))
    }
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let better = match self.unit {
            Unit::MibPerSec => "higher is better",
            _ => "lower is better",
        };
        write!(
            f,
            "| {} ({better}) | {} | {} | {:.2}x |",
            self.name,
            self.show(median(&self.measured.direct)),
            self.show(median(&self.measured.remora)),
            self.measured.ratio()
        )?;
        if self.measured.proxied.is_empty() {
            return write!(f, " - | - |");
        }
        let proxied = median(&self.measured.proxied);
        write!(
            f,
            " {} | {:.2}x |",
            self.show(proxied),
            proxied / median(&self.measured.direct)
        )
    }
}

/// `len` bytes of numbered text lines.
fn text(len: usize) -> Vec<u8> {
    let mut out = String::with_capacity(len + 64);
    let mut line = 0;
    while out.len() < len {
        line += 1;
        out.push_str(&format!("remora bench small file, line {line:04}\n"));
    }
    out.truncate(len);
    out.into_bytes()
}

/// `len` deterministic pseudo-random bytes (xorshift64 from `seed`), so every run
/// reads the same content without shipping it.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}
