//! The demo behind `scripts/demo.sh`: builds a sandbox "checkout" pod (its own
//! network namespace, hostname, hosts file, private files, environment and a
//! service on its loopback), then runs the same local program twice, once
//! plainly and once through `remora run --target pid/<pod>`, and prints what
//! each saw. Everything it creates is removed when it exits.
//!
//! `remora-demo -- CMD...` runs your own command against the same pod instead.

use remora_tests::fixtures::{
    CHECKOUT_CONFIG, CHECKOUT_PORT, PAYMENTS_HOST, checkout_pod, remora_run,
};
use remora_tests::{Sandbox, bin_path};
use std::process::{Command, ExitCode};

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
    match demo() {
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
    println!("\n==> cleaning up the sandbox");
    Ok(ok)
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
