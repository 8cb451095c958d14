//! Incoming-traffic benchmark behind `scripts/bench.sh` (issues 4 and 16):
//! `wrk` against a sandbox pod's HTTP service (a) directly, (b) for requests
//! that do not match a filtered steal and pass through the agent to the
//! service, (c) for requests that match and are delivered to the local app,
//! (d) against the local app directly, and (e) through a real reverse proxy,
//! HAProxy, run in the pod in front of the same service with HTTP/1.1
//! keep-alive to it. (a), (b) and (e) run alternately, `REMORA_BENCH_RUNS`
//! rounds (default 3), and each row is the median of its runs. Prints a
//! markdown table; every number is measured in this run.
//!
//! The stolen port is redirected for the pod's own connections too, so (a)
//! and (e) reach a second instance of the same service on [`TWIN_PORT`] (the
//! same program and arguments), which the steal does not touch.
//!
//! With [`AGENT_B_ENV`] naming another `remora-agent` binary (say, the build
//! before a change), a second pod of the same shape gets its own filtered
//! steal served by that agent, and its pass-through row (b2) alternates with
//! the others: an A/B of two agents in one run.

use remora_tests::fixtures::curl;
use remora_tests::{Pod, PodSpec, Sandbox, bin_path, procs};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const POD_PORT: u16 = 19080;
/// The same service again, not stolen: what (a) and HAProxy reach.
const TWIN_PORT: u16 = 19081;
/// HAProxy's port in the pod.
const PROXY_PORT: u16 = 19090;
const LOCAL_PORT: u16 = 19181;
/// The local app of agent B's pod ([`AGENT_B_ENV`]).
const LOCAL_PORT_B: u16 = 19182;
/// Rounds per comparison (`REMORA_BENCH_RUNS`, default 3; odd numbers
/// give a true median).
fn rounds() -> usize {
    std::env::var("REMORA_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(3)
}
/// Load: as many requests as 32 connections get through.
const WRK_ARGS: [&str; 6] = ["-t2", "-c32", "-d3s", "--latency", "--timeout", "5s"];
/// Latency: one connection, one request at a time (the machine is not
/// saturated, so this shows what each hop adds).
const WRK_ONE: [&str; 6] = ["-t1", "-c1", "-d3s", "--latency", "--timeout", "5s"];
const HEADER: &str = "x-user: alice";
/// CPU the pod's service spends per request in the last table: a service
/// that does real work, next to one that does none.
const WORK_US: u64 = 1000;

/// Another `remora-agent` binary to compare with the one next to `remora`.
const AGENT_B_ENV: &str = "REMORA_BENCH_AGENT_B";

/// Set (with `REMORA_BENCH_HOLD_SECS`): hold the second setup too.
const HOLD_WORK_ENV: &str = "REMORA_BENCH_HOLD_WORK";

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
    // In a session of its own (util-linux `setsid` execs wrk in place): with
    // autogroup scheduling each session is one scheduling group, and wrk in
    // the driver's session would share a group with the pod's services
    // (see `service_pod`), favouring the direct path.
    let mut cmd = Command::new("setsid");
    cmd.arg("wrk").args(args);
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
    let runs = (0..rounds())
        .map(|_| wrk_once(args, url, header))
        .collect::<Result<Vec<_>>>()?;
    Ok(summary(&runs))
}

/// Medians of several runs (and all their requests).
fn summary(runs: &[Wrk]) -> Wrk {
    Wrk {
        requests: runs.iter().map(|r| r.requests).sum(),
        rps: median(runs.iter().map(|r| r.rps).collect()),
        p50_us: median(runs.iter().map(|r| r.p50_us).collect()),
        p99_us: median(runs.iter().map(|r| r.p99_us).collect()),
    }
}

/// One path of an alternating comparison: where wrk goes, and the process
/// whose CPU per request is reported.
struct Path<'a> {
    url: &'a str,
    cpu_of: Option<u32>,
}

/// `wrk args` against each path in turn, [`rounds`] rounds: each path's
/// medians and, when it names a process, that process's CPU µs per request
/// over its own runs.
fn alternate(args: &[&str], paths: &[Path<'_>]) -> Result<Vec<(Wrk, Option<f64>)>> {
    let mut runs: Vec<Vec<Wrk>> = paths.iter().map(|_| Vec::new()).collect();
    let mut cpu = vec![0.0; paths.len()];
    for _ in 0..rounds() {
        for (i, path) in paths.iter().enumerate() {
            let before = path.cpu_of.and_then(procs::cpu_seconds);
            runs[i].push(wrk_once(args, path.url, None)?);
            if let (Some(pid), Some(before)) = (path.cpu_of, before) {
                let after = procs::cpu_seconds(pid).ok_or("no CPU time")?;
                cpu[i] += after - before;
            }
        }
    }
    Ok(paths
        .iter()
        .zip(runs)
        .zip(cpu)
        .map(|((path, runs), cpu)| {
            let w = summary(&runs);
            (w, path.cpu_of.map(|_| cpu * 1e6 / w.requests))
        })
        .collect())
}

/// HAProxy in front of the service on [`TWIN_PORT`]: HTTP mode, keep-alive
/// on both sides, idle server connections reused by any client.
const HAPROXY_CFG: &str = "global\n\
\x20   maxconn 4096\n\
defaults\n\
\x20   mode http\n\
\x20   option http-keep-alive\n\
\x20   http-reuse always\n\
\x20   timeout connect 5s\n\
\x20   timeout client 30s\n\
\x20   timeout server 30s\n\
frontend bench\n\
\x20   bind 0.0.0.0:19090\n\
\x20   default_backend service\n\
backend service\n\
\x20   server twin 127.0.0.1:19081\n";

/// Where the pod finds [`HAPROXY_CFG`].
const HAPROXY_CFG_PATH: &str = "/etc/remora-bench/haproxy.cfg";

/// The host's HAProxy, or why there is none.
fn haproxy() -> std::result::Result<String, String> {
    let found = Command::new("sh")
        .args(["-c", "command -v haproxy"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    found.ok_or_else(|| {
        "HAProxy is not installed here: no reverse-proxy rows (scripts/setup.sh installs it: \
         apt-get install haproxy)"
            .to_owned()
    })
}

/// Where HAProxy, started as a daemon in the pod, writes its PID.
fn haproxy_pid_path(pod: &str) -> String {
    format!("/tmp/remora-bench-haproxy-{}-{pod}.pid", std::process::id())
}

/// SIGKILLs a process this driver started (by its PID) on drop.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0 as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

/// A pod named `name` running the service twice (POD_PORT, TWIN_PORT), each
/// spending `work_us` per request, and HAProxy when there is one; also the
/// twin's and HAProxy's PIDs.
struct ServicePod {
    _proxy: Option<KillOnDrop>,
    pod: Pod,
    _procs: Vec<remora_tests::PodProcess>,
    twin: u32,
    proxy: Option<u32>,
}

fn service_pod(
    sandbox: &Sandbox,
    name: &str,
    app: &str,
    work_us: u64,
    proxy: Option<&str>,
) -> Result<ServicePod> {
    let pod = sandbox.pod(PodSpec::new(name).file(HAPROXY_CFG_PATH, HAPROXY_CFG))?;
    let work = work_us.to_string();
    let mut procs = Vec::new();
    for port in [POD_PORT, TWIN_PORT] {
        let listen = format!("0.0.0.0:{port}");
        procs.push(
            pod.command(app)?
                .args(["http-serve", &listen, "pod", &work])
                .spawn()?,
        );
        pod.wait_for_tcp(port, Duration::from_secs(20))?;
    }
    let twin = procs[1].pid();
    // HAProxy as a daemon (`-D`: it forks and calls setsid), so that it
    // runs in a session of its own like the agent (whose intproxy calls
    // setsid): with the kernel's autogroup scheduling (the default of most
    // distributions' kernels) each session is one scheduling group, and
    // HAProxy in the session of wrk and the service would share their group
    // while the agent competes on its own with every other session.
    let proxy = match proxy {
        Some(haproxy) => {
            let pid_path = haproxy_pid_path(name);
            let out = pod
                .command(haproxy)?
                .args(["-D", "-p", &pid_path, "-f", HAPROXY_CFG_PATH])
                .output()?;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                return Err(format!("HAProxy did not start: {err}").into());
            }
            let read = pod.command("cat")?.arg(&pid_path).output()?;
            let _ = pod.command("rm")?.args(["-f", &pid_path]).output();
            let pid: u32 = String::from_utf8_lossy(&read.stdout)
                .trim()
                .parse()
                .map_err(|_| "no HAProxy PID file")?;
            let guard = KillOnDrop(pid);
            pod.wait_for_tcp(PROXY_PORT, Duration::from_secs(20))?;
            Some(guard)
        }
        None => None,
    };
    Ok(ServicePod {
        proxy: proxy.as_ref().map(|p| p.0),
        _proxy: proxy,
        pod,
        _procs: procs,
        twin,
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

/// `remora run` stealing the pod's port with the header filter, the local
/// app on `local_port`; its agent is `agent` when given (else the one next
/// to `remora`).
fn start_local_app(pod: &Pod, app: &str, local_port: u16, agent: Option<&str>) -> Result<App> {
    let mapping = format!("{local_port}:{POD_PORT}");
    let listen = format!("127.0.0.1:{local_port}");
    let mut cmd = Command::new(bin_path("remora")?);
    if let Some(agent) = agent {
        cmd.env("REMORA_AGENT_BIN", agent);
    }
    let child = cmd
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

/// The second agent of an A/B run, from [`AGENT_B_ENV`].
fn agent_b() -> Option<String> {
    std::env::var(AGENT_B_ENV).ok().filter(|v| !v.is_empty())
}

/// A pod of the same shape as the main one, without HAProxy, whose port is
/// stolen (same filter) through agent B; the local app on [`LOCAL_PORT_B`].
struct PodB {
    // Declared first: `remora run` ends before its pod goes.
    _app: App,
    _service: ServicePod,
    url: String,
    agent: u32,
}

fn pod_b(sandbox: &Sandbox, name: &str, app: &str, work_us: u64, agent: &str) -> Result<PodB> {
    let service = service_pod(sandbox, name, app, work_us, None)?;
    let url = format!("http://{}:{POD_PORT}/", service.pod.ip());
    let local = start_local_app(&service.pod, app, LOCAL_PORT_B, Some(agent))?;
    wait_for_laptop(&url)?;
    let pid = procs::agent_of(&service.pod.target()).ok_or("no agent B serves its pod")?;
    Ok(PodB {
        _app: local,
        _service: service,
        url,
        agent: pid,
    })
}

fn bench() -> Result<()> {
    let app = bin_path("remora-bench-app")?;
    let app = app.to_string_lossy().into_owned();
    let haproxy = haproxy();
    if let Err(why) = &haproxy {
        eprintln!("bench: {why}");
    }
    let haproxy = haproxy.as_ref().ok().map(String::as_str);
    let agent_b = agent_b();
    let sandbox = Sandbox::new()?;
    let service = service_pod(&sandbox, "bench-http", &app, 0, haproxy)?;
    let pod = &service.pod;
    let url = format!("http://{}:{POD_PORT}/", pod.ip());
    let twin_url = format!("http://{}:{TWIN_PORT}/", pod.ip());
    let proxy_url = format!("http://{}:{PROXY_PORT}/", pod.ip());
    let local_url = format!("http://127.0.0.1:{LOCAL_PORT}/");

    let local_app = start_local_app(pod, &app, LOCAL_PORT, None)?;
    wait_for_laptop(&url)?;
    // Both sides answer what they should before and after the load.
    let check = |url: &str| -> Result<()> {
        if curl(url, None) != "pod" || curl(url, Some(HEADER)) != "laptop" {
            return Err("a request reached the wrong side".into());
        }
        Ok(())
    };
    check(&url)?;
    if haproxy.is_some() && curl(&proxy_url, None) != "pod" {
        return Err("HAProxy does not reach the service".into());
    }
    let agent = procs::agent_of(&pod.target()).ok_or("no agent serves the pod")?;
    let b = match &agent_b {
        Some(bin) => Some(pod_b(&sandbox, "bench-http-b", &app, 0, bin)?),
        None => None,
    };
    if let Some(b) = &b {
        check(&b.url)?;
        eprintln!(
            "bench: agent B pid {} ({}), (b2) {}",
            b.agent,
            agent_b.as_deref().unwrap_or(""),
            b.url
        );
    }
    hold(
        agent,
        service.twin,
        service.proxy,
        &url,
        &twin_url,
        &proxy_url,
    );
    let mut paths = vec![
        Path {
            url: &twin_url,
            cpu_of: Some(service.twin),
        },
        Path {
            url: &url,
            cpu_of: Some(agent),
        },
    ];
    let mut names = vec![
        "(a) pod service directly",
        "(b) unmatched, passed through the agent",
    ];
    let mut proxy_row = None;
    if let Some(pid) = service.proxy {
        proxy_row = Some(paths.len());
        paths.push(Path {
            url: &proxy_url,
            cpu_of: Some(pid),
        });
        names.push("(e) HAProxy in the pod, keep-alive to the service");
    }
    let mut b_row = None;
    if let Some(b) = &b {
        b_row = Some(paths.len());
        paths.push(Path {
            url: &b.url,
            cpu_of: Some(b.agent),
        });
        names.push("(b2) unmatched, passed through agent B");
    }
    eprintln!("bench: (a) direct, (b) unmatched through the agent, (e) HAProxy, alternating");
    let load = alternate(&WRK_ARGS, &paths)?;
    let one = alternate(&WRK_ONE, &paths)?;
    eprintln!("bench: (c) matched requests delivered to the local app");
    let matched = wrk(&WRK_ARGS, &url, Some(HEADER))?;
    let matched_one = wrk(&WRK_ONE, &url, Some(HEADER))?;
    eprintln!("bench: (d) the local app directly");
    let local = wrk(&WRK_ARGS, &local_url, None)?;
    let local_one = wrk(&WRK_ONE, &local_url, None)?;
    check(&url)?;
    if let Some(b) = &b {
        check(&b.url)?;
    }

    // The same in front of a service that works per request.
    drop(paths);
    drop(b);
    drop(local_app);
    drop(service);
    let service = service_pod(&sandbox, "bench-work", &app, WORK_US, haproxy)?;
    let pod = &service.pod;
    let url = format!("http://{}:{POD_PORT}/", pod.ip());
    let twin_url = format!("http://{}:{TWIN_PORT}/", pod.ip());
    let proxy_url = format!("http://{}:{PROXY_PORT}/", pod.ip());
    let _local = start_local_app(pod, &app, LOCAL_PORT, None)?;
    wait_for_laptop(&url)?;
    let b = match &agent_b {
        Some(bin) => Some(pod_b(&sandbox, "bench-work-b", &app, WORK_US, bin)?),
        None => None,
    };
    if let Some(b) = &b {
        eprintln!("bench: agent B pid {}, (b2') {}", b.agent, b.url);
    }
    if std::env::var_os(HOLD_WORK_ENV).is_some() {
        let agent = procs::agent_of(&pod.target()).ok_or("no agent serves the pod")?;
        hold(
            agent,
            service.twin,
            service.proxy,
            &url,
            &twin_url,
            &proxy_url,
        );
    }
    let mut paths = vec![
        Path {
            url: &twin_url,
            cpu_of: None,
        },
        Path {
            url: &url,
            cpu_of: None,
        },
    ];
    let mut work_names = vec![
        "(a') that service directly",
        "(b') unmatched, passed through the agent",
    ];
    if service.proxy.is_some() {
        paths.push(Path {
            url: &proxy_url,
            cpu_of: None,
        });
        work_names.push("(e') HAProxy in the pod, keep-alive to it");
    }
    if let Some(b) = &b {
        paths.push(Path {
            url: &b.url,
            cpu_of: None,
        });
        work_names.push("(b2') unmatched, passed through agent B");
    }
    eprintln!("bench: (a') (b') (e') a service working {WORK_US} µs per request, alternating");
    let work = alternate(&WRK_ARGS, &paths)?;
    if curl(&url, None) != "pod" {
        return Err("a request reached the wrong side".into());
    }

    println!("## incoming traffic (filtered steal, HTTP/1.1)\n");
    println!(
        "- wrk against the pod's IP from this machine (another host for the pod); (a), (b) and \
         (e) alternate, {} rounds, medians; (c) and (d) median of {} runs",
        rounds(),
        rounds()
    );
    println!(
        "- filter: `--http-header-filter '^{HEADER}$'`; service and local app: `remora-bench-app \
         http-serve`; (a) and (e) reach a twin of the service the steal does not redirect"
    );
    match haproxy {
        Some(path) => println!(
            "- (e): {} in the pod (`-D`: its own session, as the agent; HTTP mode, `option \
             http-keep-alive`, `http-reuse always`)",
            version_of(path)
        ),
        None => println!("- (e): HAProxy is not installed here: no reverse-proxy rows"),
    }
    if let Some(bin) = &agent_b {
        println!(
            "- (b2): agent B, `{bin}` ({AGENT_B_ENV}), stealing a second pod of the same shape \
             with the same filter; it alternates with the others"
        );
    }
    println!();
    for (title, args, alternated, matched, local) in [
        ("under load", WRK_ARGS, &load, matched, local),
        (
            "one connection, one request at a time",
            WRK_ONE,
            &one,
            matched_one,
            local_one,
        ),
    ] {
        println!("### {title}: `wrk {}`\n", args.join(" "));
        println!("| path | req/s | p50 | p99 | req/s vs (a) | p50 vs (a) |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: |");
        let direct = alternated[0].0;
        let mut rows: Vec<(&str, Wrk)> = names
            .iter()
            .copied()
            .zip(alternated.iter().map(|r| r.0))
            .collect();
        rows.insert(2, ("(c) matched, delivered to the local app", matched));
        rows.insert(3, ("(d) local app directly", local));
        for (name, w) in rows {
            println!(
                "| {name} | {:.0} | {:.0} µs | {:.0} µs | {:.2}x | {:+.0} µs |",
                w.rps,
                w.p50_us,
                w.p99_us,
                w.rps / direct.rps,
                w.p50_us - direct.p50_us,
            );
        }
        println!();
    }
    let cpu = |i: Option<usize>| i.and_then(|i| load.get(i)).and_then(|r| r.1);
    println!(
        "- CPU per request under load: the service {:.1} µs (direct); the agent {:.1} µs per \
         passed-through request{}{}\n",
        cpu(Some(0)).unwrap_or(f64::NAN),
        cpu(Some(1)).unwrap_or(f64::NAN),
        cpu(proxy_row).map_or(String::new(), |c| format!(
            "; HAProxy {c:.1} µs per proxied request"
        )),
        cpu(b_row).map_or(String::new(), |c| format!("; agent B {c:.1} µs")),
    );
    println!(
        "### a service spending {WORK_US} µs of CPU per request, under load: `wrk {}`\n",
        WRK_ARGS.join(" ")
    );
    println!("| path | req/s | p50 | p99 | req/s vs (a') | p50 vs (a') |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let direct_work = work[0].0;
    for (name, (w, _)) in work_names.iter().zip(&work) {
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
    let verdict = |ok: bool| if ok { "yes" } else { "no" };
    if let Some(i) = proxy_row {
        let (proxy, proxy_one) = (load[i].0, one[i].0);
        let (pass, pass_one) = (load[1].0, one[1].0);
        println!(
            "- target: unmatched pass-through at 1.0x or more of HAProxy's req/s under load: {} \
             ({:.3}x)",
            verdict(pass.rps >= proxy.rps),
            pass.rps / proxy.rps
        );
        println!(
            "- target: its p50 no higher than HAProxy's: {} under load ({:.0} vs {:.0} µs), {} \
             on one connection ({:.0} vs {:.0} µs)",
            verdict(pass.p50_us <= proxy.p50_us),
            pass.p50_us,
            proxy.p50_us,
            verdict(pass_one.p50_us <= proxy_one.p50_us),
            pass_one.p50_us,
            proxy_one.p50_us
        );
    }
    let ratio_work = work[1].0.rps / direct_work.rps;
    println!(
        "- target: at least 0.95x of direct for a service working {WORK_US} µs per request: {} \
         ({ratio_work:.3}x{})",
        verdict(ratio_work >= 0.95),
        proxy_row.map_or(String::new(), |i| format!(
            "; HAProxy {:.3}x",
            work[i].0.rps / direct_work.rps
        )),
    );
    if let Some(i) = b_row {
        println!(
            "- A/B: the agent vs agent B, req/s under load {:.3}x, one connection {:.3}x, \
             1 ms service {:.3}x; p50 under load {:.0} vs {:.0} µs, one connection {:.0} vs \
             {:.0} µs; CPU per request {:.1} vs {:.1} µs",
            load[1].0.rps / load[i].0.rps,
            one[1].0.rps / one[i].0.rps,
            work[1].0.rps / work[i].0.rps,
            load[1].0.p50_us,
            load[i].0.p50_us,
            one[1].0.p50_us,
            one[i].0.p50_us,
            cpu(Some(1)).unwrap_or(f64::NAN),
            cpu(Some(i)).unwrap_or(f64::NAN),
        );
    }
    Ok(())
}

/// With `REMORA_BENCH_HOLD_SECS=N`: keep the first setup up for N seconds
/// before the runs, printing the URLs and PIDs, to look at the processes
/// with other tools (`perf`, `strace`, `ss`) while driving `wrk` by hand;
/// with [`HOLD_WORK_ENV`] set too, the second one (the service working
/// [`WORK_US`] per request) as well.
fn hold(agent: u32, twin: u32, proxy: Option<u32>, url: &str, twin_url: &str, proxy_url: &str) {
    let Some(secs) = std::env::var("REMORA_BENCH_HOLD_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    eprintln!(
        "bench: holding {secs} s: agent pid {agent}, twin service pid {twin}, HAProxy pid {}; \
         (a) {twin_url} (b) {url} (e) {proxy_url}",
        proxy.map_or("none".to_owned(), |p| p.to_string())
    );
    std::thread::sleep(Duration::from_secs(secs));
}

/// `haproxy -v`'s first line.
fn version_of(haproxy: &str) -> String {
    Command::new(haproxy)
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "HAProxy".to_owned())
}
