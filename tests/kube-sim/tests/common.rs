//! Shared helpers of the kube-sim tests: a simulator process guard and a kubectl runner.

#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

/// How long anything may take before a test gives up.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A running `remora-kube-sim serve`; SIGTERMed (and waited for) on drop.
#[derive(Debug)]
pub struct Sim {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
}

impl Sim {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// With extra `serve` flags (e.g. `--tls`).
    pub fn start_with(flags: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        let child = Command::new(env!("CARGO_BIN_EXE_remora-kube-sim"))
            .args(["serve", "--exit-with-parent"])
            .args(flags)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning remora-kube-sim");
        let sim = Self {
            child,
            dir,
            kubeconfig,
        };
        poll(|| sim.kubeconfig.exists(), "the kubeconfig to appear");
        sim
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The run's cgroup (`<cgroup2 mount>/remora-kube-sim-<pid>`).
    pub fn cgroup(&self) -> PathBuf {
        cgroup2_mount().join(format!("remora-kube-sim-{}", self.pid()))
    }

    /// The network links of the run (its bridge `rksbr<N>` and the pods' `rks<N>p<host>`).
    pub fn links(&self) -> Vec<String> {
        let index = std::fs::read_to_string(self.state_dir().join("subnet"))
            .expect("the run records its subnet");
        links_of_subnet(index.trim())
    }

    /// The run's state dir (container logs, pids).
    pub fn state_dir(&self) -> PathBuf {
        std::env::temp_dir().join(format!("remora-kube-sim-{}", self.pid()))
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .expect("running kubectl")
    }

    /// Runs kubectl and returns stdout; panics with stderr when it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn apply_yaml(&self, yaml: &str, extra: &[&str]) -> String {
        let path = self.dir.path().join(format!("m-{}.yaml", rand_suffix()));
        std::fs::write(&path, yaml).expect("writing manifest");
        let mut args = vec!["apply", "-f", path.to_str().expect("utf-8")];
        args.extend_from_slice(extra);
        self.ok(&args)
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.ok(&all)).expect("kubectl -o json output")
    }

    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.terminate();
        }
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Polls `f` until it holds, or panics after [`DEADLINE`].
pub fn poll(mut f: impl FnMut() -> bool, what: &str) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Processes whose environment names `state` (the containers of one simulator run).
pub fn processes_of(state: &Path) -> Vec<u32> {
    let marker = format!("REMORA_KUBE_SIM_STATE={}", state.display());
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .unwrap_or_default()
                .split(|b| *b == 0)
                .any(|kv| kv == marker.as_bytes())
        })
        .collect()
}

/// Where the cgroup v2 hierarchy is mounted.
pub fn cgroup2_mount() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .expect("a cgroup v2 hierarchy is mounted")
}

/// Pids whose cgroup path has `segment` as one of its segments.
pub fn pids_in_cgroup_segment(segment: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .unwrap_or_default()
                .lines()
                .any(|l| l.starts_with("0::") && l[3..].split('/').any(|s| s == segment))
        })
        .collect()
}

/// Serves the directory of `argv[2]` on 127.0.0.1:`argv[1]`; says so once it listens.
const SERVER: &str = "import functools, http.server, socketserver, sys
http.server.SimpleHTTPRequestHandler.protocol_version = 'HTTP/1.1'
class Server(http.server.ThreadingHTTPServer):
    def server_bind(self):
        # HTTPServer's own server_bind looks up the FQDN: no DNS wait before listening.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = 'web', self.server_address[1]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[2])
server = Server((sys.argv[3], int(sys.argv[1])), handler)
print('listening', flush=True)
server.serve_forever()
";

/// A pod `name` serving the test's directory on `bind`:`port` (inside the pod), once it
/// listens.
pub fn web_pod(sim: &Sim, name: &str, port: u16, bind: &str) {
    std::fs::write(sim.dir.path().join("hello.txt"), "hello from the pod\n").unwrap();
    std::fs::write(sim.dir.path().join("server.py"), SERVER).unwrap();
    let yaml = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: {name}}}}}
spec:
  containers:
  - name: web
    image: python
    command: [python3, "{dir}/server.py", "{port}", "{dir}", "{bind}"]
"#,
        dir = sim.dir.path().display()
    );
    sim.apply_yaml(&yaml, &[]);
    sim.ok(&[
        "wait",
        "--for=condition=Ready",
        &format!("pod/{name}"),
        "--timeout=30s",
    ]);
    poll(
        || sim.ok(&["logs", name]).contains("listening"),
        "the server in the pod to listen",
    );
}

/// The names of the links of the run that holds subnet `index`.
pub fn links_of_subnet(index: &str) -> Vec<String> {
    link_ids_of_subnet(index)
        .into_iter()
        .map(|(_, name)| name)
        .collect()
}

/// [`links_of_subnet`] with each link's interface index. Indexes are not
/// reused soon, so `(index, name)` tells a leftover from a link of the same
/// name that a later run (another test's sim claiming the freed subnet) made.
pub fn link_ids_of_subnet(index: &str) -> Vec<(u32, String)> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut fields = l.split(": ");
            let ifindex = fields.next()?.trim().parse().ok()?;
            let name = fields.next()?;
            Some((ifindex, name.split('@').next().unwrap_or(name).to_owned()))
        })
        .filter(|(_, name)| {
            *name == format!("rksbr{index}") || name.starts_with(&format!("rks{index}p"))
        })
        .collect()
}

/// Which of `links` (from [`link_ids_of_subnet`]) still exist. Once a run has
/// freed its subnet, another test's sim may claim it at once and make links
/// of the same names: only the earlier run's own links count.
pub fn links_still_there(index: &str, links: &[(u32, String)]) -> Vec<(u32, String)> {
    link_ids_of_subnet(index)
        .into_iter()
        .filter(|link| links.contains(link))
        .collect()
}
