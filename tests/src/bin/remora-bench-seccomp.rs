//! The seccomp supervisor against the layer on the same work (issue 17): one
//! dynamically linked C program (`tests/apps/c/seccomp_probe.c`, `bench N
//! ...` mode timing N operations in-process) run plainly (local calls only),
//! through `remora run --interception preload` and `--interception
//! seccomp`, alternating, [`ROUNDS`] rounds each (or `REMORA_BENCH_ROUNDS`), from a client namespace
//! against the checkout pod. Prints a markdown table of medians (stdout);
//! every round's values go to stderr. Nothing printed is a constant. The
//! local `stat` rows also get the "floor": the same `stat` under a bare
//! notifying filter whose supervisor only answers `CONTINUE`
//! (`tests/apps/c/notif_floor.c`), in the same rounds.
//!
//! With `REMORA_BENCH_BASELINE=<dir>` (a directory holding another build's
//! `remora`, `remora-agent` and `libremora_layer.so`), that build's seccomp
//! path runs in the same rounds, alternating, as a "baseline" column: on a
//! shared machine whose load swings, before/after numbers are only
//! comparable when measured together.

use remora_tests::fixtures::{CHECKOUT_CONFIG, CHECKOUT_PORT, checkout_pod};
use remora_tests::{Pod, PodSpec, Sandbox, bin_path};
use std::path::Path;
use std::process::{Command, ExitCode, Output};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// Rounds per way; the table shows the median. `REMORA_BENCH_ROUNDS`
/// overrides it (a shorter run on a busy machine).
const ROUNDS: usize = 9;

fn rounds() -> usize {
    std::env::var("REMORA_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(ROUNDS)
}
/// The pod's UDP service (answers each datagram).
const UDP_PORT: u16 = 18099;

fn main() -> ExitCode {
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("remora-bench-seccomp: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `ns_per_op` printed by the probe's `bench` mode.
fn ns_per_op(what: &str, out: &Output) -> Result<f64> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("{what} failed ({}): {stderr}", out.status).into());
    }
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("ns_per_op "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("{what}: no ns_per_op in {stderr}").into())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `12.3 µs` or `1.23 ms`.
fn time(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.1} µs", ns / 1e3)
    }
}

/// `remora run --target <pod> --interception <mode> -- args` from `client`,
/// with the workspace's `remora` or `exe`.
fn remora(
    client: &Pod,
    pod: &Pod,
    mode: &str,
    flags: &[&str],
    args: &[&str],
    exe: Option<&Path>,
) -> Result<Output> {
    let exe = match exe {
        Some(exe) => exe.to_path_buf(),
        None => bin_path("remora")?,
    };
    let mut cmd = client.command(exe)?;
    cmd.args(["run", "--target", &pod.target(), "--interception", mode])
        .args(flags)
        .arg("--")
        .args(args);
    Ok(cmd.output()?)
}

/// The floor of a notified `stat` without remora, in the same namespace:
/// `tests/apps/c/notif_floor.c` (a child `stat`s `/usr/bin/env` N times
/// under a filter notifying `newfstatat`; its parent reads the path with
/// `process_vm_readv` and answers `CONTINUE`, with synchronous wake-ups, as
/// remora's supervisor does for a local path), in ns per `stat`.
fn floor_ns(client: &Pod, floor: &str, n: &str) -> Result<f64> {
    let out = client.exec(&[floor, n, "1", "1"])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("notif_floor failed ({}): {stdout}", out.status).into());
    }
    stdout
        .lines()
        .find_map(|l| l.split_once("ns_per_stat ").map(|(_, v)| v.to_owned()))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("notif_floor: no ns_per_stat in {stdout}").into())
}

/// A directory removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bench() -> Result<()> {
    let dir =
        TempDir(std::env::temp_dir().join(format!("remora-bench-seccomp-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let probe = dir.0.join("seccomp_probe_dynamic");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("apps/c/seccomp_probe.c");
    let status = Command::new("gcc")
        .args(["-O1", "-o"])
        .arg(&probe)
        .arg(&source)
        .status()?;
    if !status.success() {
        return Err("gcc failed on tests/apps/c/seccomp_probe.c".into());
    }
    let probe = probe.to_str().ok_or("temp path is not UTF-8")?;
    // The floor of a notification without remora (see `floor_ns`).
    let floor = dir.0.join("notif_floor");
    let status = Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&floor)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("apps/c/notif_floor.c"))
        .status()?;
    if !status.success() {
        return Err("gcc failed on tests/apps/c/notif_floor.c".into());
    }
    let floor = floor.to_str().ok_or("temp path is not UTF-8")?;
    let sandbox = Sandbox::new()?;
    eprintln!("==> starting the checkout pod and a client namespace");
    let checkout = checkout_pod(&sandbox)?;
    let pod = &checkout.pod;
    let client = sandbox.pod(PodSpec::new("client"))?;
    let port = CHECKOUT_PORT.to_string();
    // A UDP service on the pod's loopback for the unconnected-UDP row.
    let udp_port = UDP_PORT.to_string();
    let _udp = remora_tests::fixtures::udp_responder(pod, UDP_PORT)?;
    let write_mode: &[&str] = &["--fs-mode", "write"];
    let work: [(&str, Vec<&str>); 7] = [
        (
            "local `stat` (`/usr/bin/env`), x2000",
            vec!["2000", "stat", "/usr/bin/env"],
        ),
        (
            // The pod command's working directory is `/` (setns into its
            // mount namespace): this is /usr/bin/env again.
            "local `stat` of a relative path (`usr/bin/env`), x2000",
            vec!["2000", "stat", "usr/bin/env"],
        ),
        (
            "local `fstat` of an open fd (glibc: `newfstatat(fd, \"\", AT_EMPTY_PATH)`), x2000",
            vec!["2000", "fstat", "2"],
        ),
        (
            // fs mode write (below): `write` is checked by the filter.
            "local `write` of 1 byte to /dev/null, fs mode `write`, x20000",
            vec!["20000", "write1", "1"],
        ),
        (
            "remote file read (open+read+close), x200",
            vec!["200", "cat", CHECKOUT_CONFIG],
        ),
        (
            "outgoing TCP round trip (HTTP GET to the pod's loopback), x50",
            vec!["50", "get", "127.0.0.1", &port, "/health"],
        ),
        (
            "outgoing UDP round trip, unconnected socket (`sendto` + `recvfrom`), x50",
            vec!["50", "udp", "127.0.0.1", &udp_port, "ping"],
        ),
    ];
    let baseline = std::env::var_os("REMORA_BENCH_BASELINE")
        .map(|dir| Path::new(&dir).join("remora"))
        .filter(|exe| exe.exists());
    let base_head = if baseline.is_some() {
        " seccomp (baseline) |"
    } else {
        ""
    };
    let base_rule = if baseline.is_some() { " ---: |" } else { "" };
    println!(
        "| work | plain | layer |{base_head} seccomp | floor | seccomp / layer | seccomp / plain | floor / plain |"
    );
    println!("| --- | ---: | ---: |{base_rule} ---: | ---: | ---: | ---: | ---: |");
    for (name, args) in &work {
        let mut argv = vec![probe, "bench"];
        argv.extend(args.iter().copied());
        let local_only = matches!(args[1], "stat" | "fstat" | "write1");
        let flags: &[&str] = if args[1] == "write1" { write_mode } else { &[] };
        let (mut plain, mut layer, mut seccomp) = (Vec::new(), Vec::new(), Vec::new());
        let (mut base, mut floors) = (Vec::new(), Vec::new());
        for round in 1..=rounds() {
            if local_only {
                plain.push(ns_per_op("plain", &client.exec(&argv)?)?);
            }
            if args[1] == "stat" {
                floors.push(floor_ns(&client, floor, args[0])?);
            }
            layer.push(ns_per_op(
                "layer",
                &remora(&client, pod, "preload", flags, &argv, None)?,
            )?);
            if let Some(exe) = &baseline {
                base.push(ns_per_op(
                    "baseline seccomp",
                    &remora(&client, pod, "seccomp", flags, &argv, Some(exe))?,
                )?);
            }
            seccomp.push(ns_per_op(
                "seccomp",
                &remora(&client, pod, "seccomp", flags, &argv, None)?,
            )?);
            eprintln!(
                "{name} round {round}: plain {:?} layer {:?} baseline {:?} seccomp {:?} floor {:?} (ns/op)",
                plain.last(),
                layer.last(),
                base.last(),
                seccomp.last(),
                floors.last()
            );
        }
        let (l, s) = (median(layer), median(seccomp));
        let p = (!plain.is_empty()).then(|| median(plain));
        let f = (!floors.is_empty()).then(|| median(floors));
        let (plain, vs_plain) = match p {
            Some(p) => (time(p), format!("{:.2}x", s / p)),
            None => ("-".to_owned(), "-".to_owned()),
        };
        let (floor_cell, floor_vs_plain) = match (f, p) {
            (Some(f), Some(p)) => (time(f), format!("{:.2}x", f / p)),
            _ => ("-".to_owned(), "-".to_owned()),
        };
        let base = if base.is_empty() {
            String::new()
        } else {
            format!(" {} |", time(median(base)))
        };
        println!(
            "| {name} | {plain} | {} |{base} {} | {floor_cell} | {:.2}x | {vs_plain} | {floor_vs_plain} |",
            time(l),
            time(s),
            s / l
        );
    }
    Ok(())
}
