//! Incoming-traffic benchmark behind `scripts/bench.sh` (issue 4): `wrk`
//! against a sandbox pod's HTTP service (a) directly, (b) for requests that do
//! not match a filtered steal and pass through the agent to the service, (c)
//! for requests that match and are delivered to the local app, and (d) against
//! the local app directly. Prints a markdown table; every number is measured
//! in this run (median of RUNS `wrk` runs each).

use remora_tests::fixtures::curl;
use remora_tests::{Pod, PodSpec, Sandbox, bin_path, procs};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const POD_PORT: u16 = 19080;
const LOCAL_PORT: u16 = 19181;
const RUNS: usize = 3;
/// Load: as many requests as 32 connections get through.
const WRK_ARGS: [&str; 6] = ["-t2", "-c32", "-d3s", "--latency", "--timeout", "5s"];
/// Latency: one connection, one request at a time (the machine is not
/// saturated, so this shows what each hop adds).
const WRK_ONE: [&str; 6] = ["-t1", "-c1", "-d3s", "--latency", "--timeout", "5s"];
const HEADER: &str = "x-user: alice";
/// CPU the pod's service spends per request in the last table: a service
/// that does real work, next to one that does none.
const WORK_US: u64 = 1000;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("remora-bench-incoming: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One wrk result.
#[derive(Debug, Clone, Copy)]
struct Wrk {
    /// Requests of all runs together.
    requests: f64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
}

fn parse_duration_us(text: &str) -> Option<f64> {
    let text = text.trim();
    let (num, mult) = if let Some(v) = text.strip_suffix("us") {
        (v, 1.0)
    } else if let Some(v) = text.strip_suffix("ms") {
        (v, 1000.0)
    } else if let Some(v) = text.strip_suffix('s') {
        (v, 1_000_000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|n| n * mult)
}

fn wrk_once(args: &[&str], url: &str, header: Option<&str>) -> Result<Wrk> {
    let mut cmd = Command::new("wrk");
    cmd.args(args);
    if let Some(h) = header {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("Non-2xx") || text.contains("Socket errors") {
        return Err(format!("wrk {url} failed or saw errors:\n{text}").into());
    }
    let field = |prefix: &str| {
        text.lines().find_map(|l| {
            l.trim()
                .strip_prefix(prefix)
                .map(str::trim)
                .map(String::from)
        })
    };
    let rps = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .ok_or("no Requests/sec")?;
    let p50 = field("50%")
        .and_then(|v| parse_duration_us(&v))
        .ok_or("no p50")?;
    let p99 = field("99%")
        .and_then(|v| parse_duration_us(&v))
        .ok_or("no p99")?;
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .ok_or("no request count")?;
    Ok(Wrk {
        requests,
        rps,
        p50_us: p50,
        p99_us: p99,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn wrk(args: &[&str], url: &str, header: Option<&str>) -> Result<Wrk> {
    let runs = (0..RUNS)
        .map(|_| wrk_once(args, url, header))
        .collect::<Result<Vec<_>>>()?;
    Ok(Wrk {
        requests: runs.iter().map(|r| r.requests).sum(),
        rps: median(runs.iter().map(|r| r.rps).collect()),
        p50_us: median(runs.iter().map(|r| r.p50_us).collect()),
        p99_us: median(runs.iter().map(|r| r.p99_us).collect()),
    })
}

/// Kills `remora run` (the local app it became) on drop.
struct App(Child);

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_local_app(pod: &Pod, app: &str) -> Result<App> {
    let mapping = format!("{LOCAL_PORT}:{POD_PORT}");
    let listen = format!("127.0.0.1:{LOCAL_PORT}");
    let child = Command::new(bin_path("remora")?)
        .args([
            "run",
            "--target",
            &pod.target(),
            "--steal",
            "--http-header-filter",
        ])
        .arg(format!("^{HEADER}$"))
        .args(["-p", &mapping, "--", app, "http-serve", &listen, "laptop"])
        .stdout(Stdio::null())
        .spawn()?;
    Ok(App(child))
}

/// Wait until the filtered steal delivers matching requests to the local app.
fn wait_for_laptop(url: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while curl(url, Some(HEADER)) != "laptop" {
        if Instant::now() > deadline {
            return Err("the filtered steal never delivered to the local app".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn bench() -> Result<()> {
    let app = bin_path("remora-bench-app")?;
    let app = app.to_string_lossy().into_owned();
    let sandbox = Sandbox::new()?;
    let pod = sandbox.pod(PodSpec::new("bench-http"))?;
    let listen = format!("0.0.0.0:{POD_PORT}");
    let service = pod
        .command(&app)?
        .args(["http-serve", &listen, "pod"])
        .spawn()?;
    let service_pid = service.pid();
    // CPU microseconds `pid` used per request while `run` ran.
    let cpu_per_request = |pid: u32, run: &dyn Fn() -> Result<Wrk>| -> Result<(Wrk, f64)> {
        let before = procs::cpu_seconds(pid).ok_or("no CPU time")?;
        let w = run()?;
        let after = procs::cpu_seconds(pid).ok_or("no CPU time")?;
        Ok((w, (after - before) * 1e6 / w.requests))
    };
    pod.wait_for_tcp(POD_PORT, Duration::from_secs(20))?;
    let url = format!("http://{}:{POD_PORT}/", pod.ip());
    let local_url = format!("http://127.0.0.1:{LOCAL_PORT}/");

    eprintln!("bench: (a) the pod's service directly");
    let (direct, service_cpu) = cpu_per_request(service_pid, &|| wrk(&WRK_ARGS, &url, None))?;
    let direct_one = wrk(&WRK_ONE, &url, None)?;
    let local_app = start_local_app(&pod, &app)?;
    wait_for_laptop(&url)?;
    // Both sides answer what they should before and after the load.
    let check = || -> Result<()> {
        if curl(&url, None) != "pod" || curl(&url, Some(HEADER)) != "laptop" {
            return Err("a request reached the wrong side".into());
        }
        Ok(())
    };
    check()?;
    eprintln!("bench: (b) unmatched requests through the filtered steal");
    let agent = procs::agent_of(&pod.target()).ok_or("no agent serves the pod")?;
    let (passthrough, agent_cpu) = cpu_per_request(agent, &|| wrk(&WRK_ARGS, &url, None))?;
    let passthrough_one = wrk(&WRK_ONE, &url, None)?;
    eprintln!("bench: (c) matched requests delivered to the local app");
    let matched = wrk(&WRK_ARGS, &url, Some(HEADER))?;
    let matched_one = wrk(&WRK_ONE, &url, Some(HEADER))?;
    eprintln!("bench: (d) the local app directly");
    let local = wrk(&WRK_ARGS, &local_url, None)?;
    let local_one = wrk(&WRK_ONE, &local_url, None)?;
    check()?;

    // The same pass-through in front of a service that works per request
    // (another pod: the first one's service is its target process).
    drop(local_app);
    drop(service);
    let pod = sandbox.pod(PodSpec::new("bench-work"))?;
    let work = WORK_US.to_string();
    let _service = pod
        .command(&app)?
        .args(["http-serve", &listen, "pod", &work])
        .spawn()?;
    pod.wait_for_tcp(POD_PORT, Duration::from_secs(20))?;
    let url = format!("http://{}:{POD_PORT}/", pod.ip());
    eprintln!("bench: (a') a service working {WORK_US} µs per request, directly");
    let direct_work = wrk(&WRK_ARGS, &url, None)?;
    let _local = start_local_app(&pod, &app)?;
    wait_for_laptop(&url)?;
    eprintln!("bench: (b') unmatched requests to it through the filtered steal");
    let passthrough_work = wrk(&WRK_ARGS, &url, None)?;
    if curl(&url, None) != "pod" {
        return Err("a request reached the wrong side".into());
    }

    println!("## incoming traffic (filtered steal, HTTP/1.1)\n");
    println!(
        "- wrk against the pod's IP from this machine (another host for the pod); median of {RUNS} runs"
    );
    println!(
        "- filter: `--http-header-filter '^{HEADER}$'`; service and local app: `remora-bench-app http-serve`\n"
    );
    for (title, args, rows) in [
        (
            "under load",
            WRK_ARGS,
            [direct, passthrough, matched, local],
        ),
        (
            "one connection, one request at a time",
            WRK_ONE,
            [direct_one, passthrough_one, matched_one, local_one],
        ),
    ] {
        println!("### {title}: `wrk {}`\n", args.join(" "));
        println!("| path | req/s | p50 | p99 | req/s vs (a) | p50 vs (a) |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: |");
        let names = [
            "(a) pod service directly",
            "(b) unmatched, passed through the agent",
            "(c) matched, delivered to the local app",
            "(d) local app directly",
        ];
        for (name, w) in names.iter().zip(rows) {
            println!(
                "| {name} | {:.0} | {:.0} µs | {:.0} µs | {:.2}x | {:+.0} µs |",
                w.rps,
                w.p50_us,
                w.p99_us,
                w.rps / rows[0].rps,
                w.p50_us - rows[0].p50_us,
            );
        }
        println!();
    }
    println!(
        "- CPU per request under load: the pod's service {service_cpu:.1} µs (direct); the agent \
         {agent_cpu:.1} µs per passed-through request\n"
    );
    println!(
        "### a service spending {WORK_US} µs of CPU per request, under load: `wrk {}`\n",
        WRK_ARGS.join(" ")
    );
    println!("| path | req/s | p50 | p99 | req/s vs (a') | p50 vs (a') |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (name, w) in [
        ("(a') that service directly", direct_work),
        ("(b') unmatched, passed through the agent", passthrough_work),
    ] {
        println!(
            "| {name} | {:.0} | {:.0} µs | {:.0} µs | {:.2}x | {:+.0} µs |",
            w.rps,
            w.p50_us,
            w.p99_us,
            w.rps / direct_work.rps,
            w.p50_us - direct_work.p50_us,
        );
    }
    println!();
    let cost_work = 1.0 - passthrough_work.rps / direct_work.rps;
    let cost = 1.0 - passthrough.rps / direct.rps;
    let added = passthrough_one.p50_us - direct_one.p50_us;
    println!(
        "- target: passthrough costs under 10% of direct throughput under load: {} ({:+.1}%)",
        if cost < 0.10 { "yes" } else { "no" },
        -cost * 100.0
    );
    println!(
        "- the same for a service working {WORK_US} µs per request: {} ({:+.1}%)",
        if cost_work < 0.10 { "yes" } else { "no" },
        -cost_work * 100.0
    );
    println!(
        "- target: passthrough adds under 100 µs p50 (one connection): {} ({added:+.0} µs)",
        if added < 100.0 { "yes" } else { "no" }
    );
    Ok(())
}
