//! The demo behind `scripts/demo.sh`: builds a sandbox "checkout" pod (its own
//! network namespace, hostname, hosts file, private files, environment and a
//! service on its loopback), then runs the same local program twice, once
//! plainly and once through `remora run --target pid/<pod>`, and prints what
//! each saw. Then two developers share the pod's service through the
//! operator: each steals only the requests carrying their own header, while
//! everyone else keeps talking to the pod. Last, the Kubernetes act
//! (`kube.rs`): a small shop on the test cluster `remora-kube-sim`, and the
//! same kind of script without and with `remora run --target
//! deployment/storefront`. Everything it creates is removed when it exits.
//!
//! `remora-demo -- CMD...` runs your own command against the same pod instead;
//! `remora-demo --kubernetes` runs only the Kubernetes act.

mod kube;

use remora_tests::fixtures::{
    CHECKOUT_CONFIG, CHECKOUT_PORT, PAYMENTS_HOST, checkout_pod, remora_run,
};
use remora_tests::operator::OperatorProcess;
use remora_tests::{Pod, Sandbox, bin_path};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(rest) = args.strip_prefix(&["--".to_string()]) {
        return match try_it(rest) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("demo: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let result = if args == ["--kubernetes"] {
        kube::act()
    } else {
        demo()
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("demo: remora did not show the pod's view (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The script both runs execute. Name lookups use `getent -s files` so the
/// plain run never asks this machine's DNS servers about pod-only names (with
/// remora the layer answers getaddrinfo from the pod whatever the NSS source).
fn demo() -> Result<bool, Box<dyn std::error::Error>> {
    let sandbox = Sandbox::new()?;
    println!("==> starting a sandbox pod \"checkout\" (network + mount + UTS namespaces)");
    let c = checkout_pod(&sandbox)?;
    println!(
        "    pod IP {}, target {}, a service on the pod's 127.0.0.1:{CHECKOUT_PORT}",
        c.pod.ip(),
        c.pod.target()
    );
    let probe = bin_path("remora-probe")?;
    let probe = probe.to_string_lossy().into_owned();
    let port = CHECKOUT_PORT;
    let script = format!(
        "echo \"hostname:        $(hostname)\"; \
         echo \"APP_SECRET:      ${{APP_SECRET:-<unset>}}\"; \
         echo \"{CHECKOUT_CONFIG}: $(head -1 {CHECKOUT_CONFIG} 2>&1)\"; \
         echo \"ls /srv/checkout: $(ls /srv/checkout 2>&1 | tr '\\n' ' ')\"; \
         r=$(getent -s files ahosts {PAYMENTS_HOST} | head -1); \
         echo \"resolve {PAYMENTS_HOST}: ${{r:-<not found>}}\"; \
         echo \"GET 127.0.0.1:{port}/health: $({probe} get 127.0.0.1:{port} /health 2>&1)\"; \
         echo \"python urllib: $(python3 -c 'import urllib.request as u; print(u.urlopen(\"http://127.0.0.1:{port}/\", timeout=5).read().decode().strip())' 2>&1 | tail -1)\""
    );
    println!("\n==> without remora: bash -c '...'");
    let plain = Command::new("bash").args(["-c", &script]).output()?;
    print!("{}", indent(&String::from_utf8_lossy(&plain.stdout)));
    println!(
        "\n==> with remora: remora run --target {} -- bash -c '...'",
        c.pod.target()
    );
    let remote = remora_run(&c.pod, &["bash", "-c", &script])?;
    let seen = String::from_utf8_lossy(&remote.stdout).into_owned();
    print!("{}", indent(&seen));
    eprint!("{}", String::from_utf8_lossy(&remote.stderr));
    let ok = remote.status.success()
        && seen.contains("s3cr3t-from-the-pod")
        && seen.contains("feature_flags")
        && seen.contains("/health: ok");
    let shared = shared_target(&c.pod)?;
    println!("\n==> cleaning up the sandbox");
    drop(c);
    drop(sandbox);
    let kube = kube::act()?;
    Ok(ok && shared && kube)
}

/// Stops a background `remora run` (and the app it became) on drop.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Alice and Bob steal the pod's service port through one operator, each
/// with their own header filter; the pod's own clients see all three answers.
fn shared_target(pod: &Pod) -> Result<bool, Box<dyn std::error::Error>> {
    println!("\n==> a shared target: remora-operator, and two developers on the same port");
    let operator = OperatorProcess::start(None)?;
    let app = bin_path("remora-bench-app")?;
    let mut laptops = Vec::new();
    for (user, port) in [("alice", 19401), ("bob", 19402)] {
        let filter = format!("^x-user: {user}$");
        let mapping = format!("{port}:{CHECKOUT_PORT}");
        let listen = format!("127.0.0.1:{port}");
        let answer = format!("{user}'s laptop");
        println!(
            "    {user}$ remora run --operator {} --target {} --steal --http-header-filter \
             '{filter}' -p {mapping} -- <a server answering \"{answer}\">",
            operator.addr(),
            pod.target()
        );
        let child = operator
            .remora(user)?
            .args(["run", "--target", &pod.target(), "--steal"])
            .args(["--http-header-filter", &filter, "-p", &mapping, "--"])
            .arg(&app)
            .args(["http-serve", &listen, &answer])
            .stdout(Stdio::null())
            .spawn()?;
        laptops.push(Background(child));
    }
    // The pod's own clients: curl inside the pod, to its loopback service.
    let curl = |header: Option<&str>| -> String {
        let mut cmd = match pod.command("curl") {
            Ok(cmd) => cmd,
            Err(_) => return String::new(),
        };
        cmd.args(["-s", "-m", "5"]);
        if let Some(h) = header {
            cmd.args(["-H", h]);
        }
        cmd.arg(format!("http://127.0.0.1:{CHECKOUT_PORT}/health"));
        cmd.output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while curl(Some("x-user: alice")) != "alice's laptop"
        || curl(Some("x-user: bob")) != "bob's laptop"
    {
        if std::time::Instant::now() > deadline {
            println!("    the steals did not start in time");
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut ok = true;
    for (header, expected) in [
        (Some("x-user: alice"), "alice's laptop"),
        (Some("x-user: bob"), "bob's laptop"),
        (None, "ok"),
    ] {
        let got = curl(header);
        let shown = header.map_or_else(String::new, |h| format!(" -H '{h}'"));
        println!("    in the pod: curl{shown} 127.0.0.1:{CHECKOUT_PORT}/health -> {got}");
        ok &= got == expected;
    }
    let ls = operator.remora("demo")?.args(["session", "ls"]).output()?;
    println!("    remora session ls:");
    print!("{}", indent(&indent(&String::from_utf8_lossy(&ls.stdout))));
    drop(laptops);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let back = loop {
        if curl(Some("x-user: alice")) == "ok" {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!(
        "    both sessions ended: curl -H 'x-user: alice' -> {}",
        if back {
            "ok (the pod again)"
        } else {
            "still stolen!"
        }
    );
    Ok(ok && back)
}

/// `remora-demo -- CMD...`: run your own command against the demo pod.
fn try_it(command: &[String]) -> Result<u8, Box<dyn std::error::Error>> {
    let sandbox = Sandbox::new()?;
    let c = checkout_pod(&sandbox)?;
    eprintln!(
        "demo: running {command:?} through remora against {}",
        c.pod.target()
    );
    let args: Vec<&str> = command.iter().map(String::as_str).collect();
    let out = remora_run(&c.pod, &args)?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    Ok(out.status.code().unwrap_or(1) as u8)
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}
