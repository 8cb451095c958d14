//! Operator scale benchmark behind `scripts/bench.sh` (issue 5): one sandbox
//! pod whose service answers `pod`, one `remora-operator`, and up to
//! `SESSIONS` `remora run --operator` sessions, session `u<N>` stealing the
//! same port with `--http-header-filter '^x-user: u<N>$'` into a local app
//! answering `u<N>`. A load client (keep-alive HTTP/1.1, `CONNECTIONS`
//! connections from this machine) rotates `x-user` over every session plus
//! one unmatched value per `UNMATCHED_EVERY` requests, and checks that every
//! answer came from the right place. Measured with 0 sessions (the service
//! directly), 1 session and `SESSIONS` sessions; every number is from this run.

use remora_tests::operator::OperatorProcess;
use remora_tests::{PodSpec, Sandbox, bin_path};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const POD_PORT: u16 = 19090;
/// Local ports of the sessions' apps: `LOCAL_BASE + N`.
const LOCAL_BASE: u16 = 19200;
const SESSIONS: usize = 50;
const CONNECTIONS: usize = 32;
const DURATION: Duration = Duration::from_secs(5);
/// One request in this many carries an `x-user` no session holds.
const UNMATCHED_EVERY: usize = 5;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("remora-bench-operator: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Kills a `remora run` (the local app it became) on drop.
struct App(Child);

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one load run saw.
#[derive(Debug, Default)]
struct Load {
    requests: u64,
    wrong: u64,
    errors: u64,
    to_sessions: u64,
    to_pod: u64,
    latencies_us: Vec<u64>,
    elapsed: Duration,
    /// A few failures, to explain the errors column.
    samples: Vec<String>,
}

impl Load {
    fn merge(&mut self, other: Load) {
        self.requests += other.requests;
        self.wrong += other.wrong;
        self.errors += other.errors;
        self.to_sessions += other.to_sessions;
        self.to_pod += other.to_pod;
        self.latencies_us.extend(other.latencies_us);
        self.samples.extend(other.samples);
        self.samples.truncate(5);
    }

    fn percentile(&mut self, p: f64) -> u64 {
        self.latencies_us.sort_unstable();
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us.get(i).copied().unwrap_or(0)
    }
}

/// One keep-alive GET with `x-user: <user>`; returns the body and whether
/// the server keeps the connection open.
fn get(conn: &mut BufReader<TcpStream>, user: &str) -> std::io::Result<(String, bool)> {
    let request = format!("GET / HTTP/1.1\r\nHost: bench\r\nx-user: {user}\r\n\r\n");
    conn.get_mut().write_all(request.as_bytes())?;
    let mut length = None;
    let mut keep_alive = true;
    let mut status = String::new();
    conn.read_line(&mut status)?;
    if !status.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("status {status:?}")));
    }
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("connection")
                && value.trim().eq_ignore_ascii_case("close")
            {
                keep_alive = false;
            }
        }
    }
    let mut body = vec![0; length.ok_or_else(|| std::io::Error::other("no content-length"))?];
    conn.read_exact(&mut body)?;
    Ok((String::from_utf8_lossy(&body).into_owned(), keep_alive))
}

/// `CONNECTIONS` clients for `DURATION`, users rotating over `sessions`.
fn load(addr: SocketAddr, sessions: usize) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|worker| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen = Load::default();
                let mut conn = None;
                let mut i = worker;
                while !stop.load(Ordering::Relaxed) {
                    i += CONNECTIONS;
                    let matched = sessions > 0 && i % UNMATCHED_EVERY != 0;
                    let (user, want) = if matched {
                        let u = format!("u{}", i % sessions);
                        (u.clone(), u)
                    } else {
                        (format!("nobody-{i}"), "pod".to_owned())
                    };
                    if conn.is_none() {
                        match TcpStream::connect(addr) {
                            Ok(s) => {
                                let _ = s.set_nodelay(true);
                                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                                conn = Some(BufReader::new(s));
                            }
                            Err(_) => {
                                seen.errors += 1;
                                std::thread::sleep(Duration::from_millis(10));
                                continue;
                            }
                        }
                    }
                    let Some(c) = conn.as_mut() else { continue };
                    let t = Instant::now();
                    match get(c, &user) {
                        Ok((body, keep_alive)) => {
                            if !keep_alive {
                                conn = None;
                            }
                            seen.latencies_us.push(t.elapsed().as_micros() as u64);
                            seen.requests += 1;
                            if body != want {
                                seen.wrong += 1;
                            } else if matched {
                                seen.to_sessions += 1;
                            } else {
                                seen.to_pod += 1;
                            }
                        }
                        Err(e) => {
                            seen.errors += 1;
                            if seen.samples.len() < 5 {
                                seen.samples.push(format!("{user}: {e}"));
                            }
                            conn = None;
                        }
                    }
                }
                seen
            })
        })
        .collect();
    std::thread::sleep(DURATION);
    stop.store(true, Ordering::Relaxed);
    let mut total = Load::default();
    for w in workers {
        if let Ok(seen) = w.join() {
            total.merge(seen);
        }
    }
    total.elapsed = started.elapsed();
    total
}

fn curl(url: &str, header: &str) -> String {
    Command::new("curl")
        .args(["-s", "-m", "5", "-H", header, url])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Session `u<n>`, through `op` or (without) directly with its own agent.
fn start_session(op: Option<&OperatorProcess>, target: &str, app: &str, n: usize) -> Result<App> {
    let port = LOCAL_BASE + n as u16;
    let mut command = match op {
        Some(op) => op.remora(&format!("u{n}"))?,
        None => Command::new(bin_path("remora")?),
    };
    let child = command
        .args(["run", "--target", target, "--steal", "--http-header-filter"])
        .arg(format!("^x-user: u{n}$"))
        .arg("-p")
        .arg(format!("{port}:{POD_PORT}"))
        .args([
            "--",
            app,
            "http-serve",
            &format!("127.0.0.1:{port}"),
            &format!("u{n}"),
        ])
        .stdout(Stdio::null())
        .spawn()?;
    Ok(App(child))
}

fn wait_routed(url: &str, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while curl(url, &format!("x-user: u{n}")) != format!("u{n}") {
        if Instant::now() > deadline {
            return Err(format!("session u{n} never received its requests").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn bench() -> Result<()> {
    let app = bin_path("remora-bench-app")?;
    let app = app.to_string_lossy().into_owned();
    let sandbox = Sandbox::new()?;
    let pod = sandbox.pod(PodSpec::new("bench-op"))?;
    let listen = format!("0.0.0.0:{POD_PORT}");
    let _service = pod
        .command(&app)?
        .args(["http-serve", &listen, "pod"])
        .spawn()?;
    pod.wait_for_tcp(POD_PORT, Duration::from_secs(20))?;
    let addr = SocketAddr::from((pod.ip(), POD_PORT));
    let url = format!("http://{addr}/");
    let op = OperatorProcess::start(None)?;
    let target = pod.target();

    let mut rows = Vec::new();
    eprintln!("bench: 0 sessions (the pod's service directly)");
    rows.push(("0 (the service directly)".to_owned(), load(addr, 0)));
    {
        let _direct = start_session(None, &target, &app, 0)?;
        wait_routed(&url, 0)?;
        eprintln!("bench: 1 session without the operator");
        rows.push(("1, without the operator".to_owned(), load(addr, 1)));
    }
    // The direct session's agent must be gone before the operator's starts.
    let deadline = Instant::now() + Duration::from_secs(30);
    while remora_tests::procs::any_serving(&target) {
        if Instant::now() > deadline {
            return Err("the direct session's agent did not stop".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut apps = vec![start_session(Some(&op), &target, &app, 0)?];
    wait_routed(&url, 0)?;
    eprintln!("bench: 1 session through the operator");
    rows.push(("1, through the operator".to_owned(), load(addr, 1)));
    for n in 1..SESSIONS {
        apps.push(start_session(Some(&op), &target, &app, n)?);
    }
    for n in 0..SESSIONS {
        wait_routed(&url, n)?;
    }
    eprintln!("bench: {SESSIONS} sessions through the operator");
    rows.push((
        format!("{SESSIONS}, through the operator"),
        load(addr, SESSIONS),
    ));

    println!("## operator: {SESSIONS} filtered sessions on one port\n");
    println!(
        "- one `remora-operator` (local platform), session `u<N>`: `remora run --operator \
         --steal --http-header-filter '^x-user: u<N>$'` into `remora-bench-app http-serve` \
         answering `u<N>`; the pod's service answers `pod`"
    );
    println!(
        "- load: {CONNECTIONS} keep-alive HTTP/1.1 connections from this machine for {}s, \
         `x-user` rotating over every session, 1 request in {UNMATCHED_EVERY} unmatched; \
         every body checked\n",
        DURATION.as_secs()
    );
    println!(
        "| sessions | requests | to sessions | to the pod | wrong | errors | req/s | p50 | p99 |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut p50 = Vec::new();
    let mut all_right = true;
    let mut failed = 0;
    for (label, mut l) in rows {
        let rps = l.requests as f64 / l.elapsed.as_secs_f64();
        let (a, b) = (l.percentile(0.5), l.percentile(0.99));
        p50.push(a as f64);
        for sample in &l.samples {
            eprintln!("bench: {label}: a request failed: {sample}");
        }
        all_right &= l.wrong == 0;
        failed += l.errors;
        println!(
            "| {label} | {} | {} | {} | {} | {} | {rps:.0} | {a} µs | {b} µs |",
            l.requests, l.to_sessions, l.to_pod, l.wrong, l.errors
        );
    }
    let one = (p50[2] - p50[0]).max(1.0);
    let many = p50[3] - p50[0];
    println!(
        "\n- every answered request reached the right place: {}",
        if all_right { "yes" } else { "no" }
    );
    println!(
        "- requests that failed (reset or empty reply, counted in `errors`, the client \
         reconnects): {failed}"
    );
    println!(
        "- routing cost (p50 over the direct path) with {SESSIONS} filters vs 1: {:.2}x \
         (linear would be {SESSIONS}x); sublinear: {}",
        many / one,
        if many / one < SESSIONS as f64 / 2.0 {
            "yes"
        } else {
            "no"
        }
    );
    drop(apps);
    // Let the sessions end on their own before the operator stops.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !remora_tests::procs::serving(&target, "remora").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if !all_right {
        return Err("some requests reached the wrong place".into());
    }
    Ok(())
}
