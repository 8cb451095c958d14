//! Shared by the seccomp end-to-end tests (`seccomp_local.rs`,
//! `seccomp_sockets_local.rs`): the probe programs, built per test, and a
//! checkout pod with a client namespace to run `remora run` from. Included
//! with `#[path = "support/seccomp.rs"] mod seccomp;`.
#![allow(dead_code)]

use remora_tests::fixtures::{CheckoutPod, PAYMENTS_HOST, checkout_pod};
use remora_tests::{Pod, PodSpec, Sandbox, bin_path};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where the programs are built: a fresh directory per test (tests run in
/// parallel processes), with Go's build cache shared under target/.
pub struct Apps {
    pub dir: tempfile::TempDir,
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

impl Apps {
    pub fn new() -> Apps {
        Apps {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The pure-Go probe (tests/apps/go/seccomp-probe), built offline.
    pub fn go_probe(&self) -> PathBuf {
        self.go_build(false)
    }

    /// The same probe built with cgo and the cgo resolver (`netcgo`): a
    /// dynamically linked program whose own syscalls still bypass libc.
    pub fn go_probe_cgo(&self) -> PathBuf {
        self.go_build(true)
    }

    fn go_build(&self, cgo: bool) -> PathBuf {
        let name = if cgo {
            "seccomp-probe-cgo"
        } else {
            "seccomp-probe"
        };
        let out = self.dir.path().join(name);
        let cache = remora_tests::bins::profile_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("go-cache");
        let status = Command::new("go")
            .args(["build", "-tags", if cgo { "netcgo" } else { "" }, "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(workspace().join("tests/apps/go/seccomp-probe"))
            .env("GOCACHE", &cache)
            .env("GOFLAGS", "-mod=mod")
            .env("GOPROXY", "off")
            .env("CGO_ENABLED", if cgo { "1" } else { "0" })
            .status()
            .expect("go is installed (scripts/setup.sh)");
        assert!(status.success(), "go build failed");
        out
    }

    /// A dynamically linked C program from tests/apps/c (it gets the layer).
    pub fn c_dynamic(&self, name: &str) -> PathBuf {
        let out = self.dir.path().join(name);
        let status = Command::new("gcc")
            .args(["-O1", "-o"])
            .arg(&out)
            .arg(workspace().join(format!("tests/apps/c/{name}.c")))
            .status()
            .expect("gcc is installed (scripts/setup.sh)");
        assert!(status.success(), "gcc {name}.c failed");
        out
    }

    /// A statically linked C program from tests/apps/c (`gcc -static
    /// -pthread`: it gets the seccomp supervisor).
    pub fn c_static(&self, name: &str) -> PathBuf {
        let out = self.dir.path().join(name);
        let status = Command::new("gcc")
            .args(["-static", "-pthread", "-O1", "-o"])
            .arg(&out)
            .arg(workspace().join(format!("tests/apps/c/{name}.c")))
            .status()
            .expect("gcc is installed (scripts/setup.sh)");
        assert!(status.success(), "gcc -static {name}.c failed");
        out
    }

    /// The static C probe (tests/apps/c/seccomp_probe.c).
    pub fn c_probe(&self) -> PathBuf {
        let out = self.dir.path().join("seccomp_probe");
        let status = Command::new("gcc")
            .args(["-static", "-O1", "-o"])
            .arg(&out)
            .arg(workspace().join("tests/apps/c/seccomp_probe.c"))
            .status()
            .expect("gcc is installed (scripts/setup.sh)");
        assert!(status.success(), "gcc -static failed");
        out
    }
}

/// A checkout pod and a client namespace to run remora from.
pub struct Setup {
    pub checkout: CheckoutPod,
    pub client: Pod,
    pub sandbox: Sandbox,
}

pub fn setup() -> Setup {
    let sandbox = Sandbox::new().unwrap();
    let checkout = checkout_pod(&sandbox).unwrap();
    let client = sandbox.pod(PodSpec::new("client")).unwrap();
    // The client's resolver is its own loopback: the pod-only name is unknown there.
    let local = client.exec(&["getent", "hosts", PAYMENTS_HOST]).unwrap();
    assert!(
        !local.status.success(),
        "{PAYMENTS_HOST} resolves in the client namespace"
    );
    Setup {
        checkout,
        client,
        sandbox,
    }
}

impl Setup {
    /// `remora run [flags] --target <checkout> -- args` from the client namespace.
    pub fn run(&self, flags: &[&str], args: &[&str]) -> Output {
        self.command(flags, args).output().unwrap()
    }

    /// The command [`Setup::run`] runs, to add to.
    pub fn command(&self, flags: &[&str], args: &[&str]) -> remora_tests::PodCommand {
        let remora = bin_path("remora").unwrap();
        let target = self.checkout.pod.target();
        let mut cmd = self.client.command(&remora).unwrap();
        cmd.arg("run")
            .args(["--target", &target])
            .args(flags)
            .arg("--")
            .args(args);
        cmd
    }

    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_with(&[], args)
    }

    #[track_caller]
    pub fn ok_with(&self, flags: &[&str], args: &[&str]) -> String {
        let out = self.run(flags, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{args:?} failed ({}):\nstdout: {}\nstderr: {stderr}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
        );
        assert!(
            stderr.contains("runs under the seccomp supervisor"),
            "{args:?} did not say its mode: {stderr}"
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
