//! `--runtime containerd`: containers run through a real containerd + runc (Debian's
//! packages), with no image: the rootfs is a directory of the run whose system directories
//! are read-only binds of this machine's (`/tmp` read-write), so host programs run as with
//! the process runtime.
//!
//! The run starts a private containerd (config, socket, `root`, `state` and `opt` in the
//! run's state dir; CRI plugin off) inside a private mount namespace with a tmpfs on `/run`,
//! so the shims' sockets and runc's state (hard-wired under `/run/containerd`) vanish with
//! it; it lives in the run's cgroup `runtime`, so killing the run's cgroup kills it and its
//! shims. Each container is `ctr run --rm --rootfs` in the pod's sandbox network and UTS
//! namespaces with cgroup path `/<run>/pod<uid>/<id>`: its processes are found by the id,
//! and containerd's API (`ctr task ls`) gives its pid. On a hybrid cgroup host runc also
//! makes that path in every v1 hierarchy: the run removes those trees per pod, at shutdown
//! and in the sweep of a SIGKILLed run.

use std::{
    io,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{
    mounts::MountSpec,
    security::{DEFAULT_CAPS, Security},
};

/// The containerd namespace the containers live in (as under a kubelet).
pub const NAMESPACE: &str = "k8s.io";
/// Top-level directories of this machine that containers do not get bound in.
const NOT_BOUND: [&str; 6] = ["proc", "sys", "dev", "run", "tmp", "lost+found"];

/// A private containerd of one run.
#[derive(Debug)]
pub struct Containerd {
    child: parking_lot::Mutex<Child>,
    dir: PathBuf,
    /// `/<run cgroup name>`: containers' cgroup paths start with it.
    cgroup_prefix: String,
}

impl Containerd {
    /// Starts containerd under `state_dir/containerd`, in the run's cgroup `run_cgroup`.
    pub fn start(state_dir: &Path, run_cgroup: &Path) -> io::Result<Self> {
        for tool in ["containerd", "ctr", "runc"] {
            if !on_path(tool) {
                return Err(io::Error::other(format!(
                    "--runtime containerd needs {tool}: apt-get install containerd runc (scripts/setup.sh does)"
                )));
            }
        }
        let dir = state_dir.join("containerd");
        for sub in ["root", "state", "opt", "fifo", "rootfs"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#,
                d = dir.display()
            ),
        )?;
        let runtime_cgroup = run_cgroup.join("runtime");
        std::fs::create_dir_all(&runtime_cgroup)?;
        let log = std::fs::File::create(dir.join("containerd.log"))?;
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(
                r#"echo $$ > "$1/cgroup.procs" && mount -t tmpfs remora-kube-sim-run /run && exec containerd --config "$2""#,
            )
            .arg("sh")
            .arg(&runtime_cgroup)
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let cgroup_prefix = format!(
            "/{}",
            run_cgroup
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let me = Self {
            child: parking_lot::Mutex::new(child),
            dir,
            cgroup_prefix,
        };
        let start = Instant::now();
        while !me.ready() {
            let exited = me.child.lock().try_wait();
            if let Ok(Some(status)) = exited {
                let log =
                    std::fs::read_to_string(me.dir.join("containerd.log")).unwrap_or_default();
                return Err(io::Error::other(format!(
                    "containerd exited ({status}): {}",
                    log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
                )));
            }
            if start.elapsed() > Duration::from_secs(30) {
                me.stop();
                return Err(io::Error::other("containerd did not answer within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(me)
    }

    fn ready(&self) -> bool {
        self.socket().exists()
            && Command::new("ctr")
                .arg("-a")
                .arg(self.socket())
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    }

    /// containerd's API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// `ctr -a SOCK -n k8s.io` and its arguments: runs container `id` (its cgroup under
    /// `pod<pod_uid>`) in the namespaces of `sandbox_pid` (and the PID namespace at
    /// `pid_ns`; else one of its own), with `security`, `env`, `mounts`
    /// and `workdir`. The command follows (after [`user_prefix`]).
    #[allow(clippy::too_many_arguments)]
    pub fn run_args(
        &self,
        id: &str,
        pod_uid: &str,
        sandbox_pid: u32,
        pid_ns: Option<&str>,
        security: &Security,
        env: &[(String, String)],
        mounts: &[MountSpec],
        workdir: Option<&str>,
    ) -> Vec<String> {
        let mut args = self.ctr();
        args.extend(["run".into(), "--rm".into(), "--rootfs".into()]);
        args.extend([
            "--cgroup".into(),
            format!("{}/pod{pod_uid}/{id}", self.cgroup_prefix),
        ]);
        args.extend(["--fifo-dir".into(), self.fifo_dir()]);
        args.extend([
            "--with-ns".into(),
            format!("network:/proc/{sandbox_pid}/ns/net"),
            "--with-ns".into(),
            format!("uts:/proc/{sandbox_pid}/ns/uts"),
        ]);
        // hostPID (the simulator's own) or an ephemeral container's target's.
        if let Some(path) = pid_ns {
            args.extend(["--with-ns".into(), format!("pid:{path}")]);
        }
        match &security.capabilities {
            None => args.push("--privileged".into()),
            Some(keep) => {
                for cap in DEFAULT_CAPS.iter().filter(|c| !keep.contains(**c)) {
                    args.extend(["--cap-drop".into(), format!("CAP_{cap}")]);
                }
                for cap in keep.iter().filter(|c| !DEFAULT_CAPS.contains(&c.as_str())) {
                    args.extend(["--cap-add".into(), format!("CAP_{cap}")]);
                }
            }
        }
        // ctr sets NoNewPrivileges unless told; Kubernetes only with
        // allowPrivilegeEscalation: false.
        if !security.no_new_privs {
            args.push("--allow-new-privs".into());
        }
        for (k, v) in env {
            args.extend(["--env".into(), format!("{k}={v}")]);
        }
        for m in host_binds().iter().chain(mounts) {
            args.extend([
                "--mount".into(),
                format!(
                    "type=bind,src={},dst={},options=rbind:{}",
                    m.source.display(),
                    m.target.display(),
                    if m.read_only { "ro" } else { "rw" }
                ),
            ]);
        }
        if let Some(dir) = workdir {
            args.extend(["--cwd".into(), dir.to_owned()]);
        }
        args.push(self.dir.join("rootfs").display().to_string());
        args.push(id.to_owned());
        args
    }

    /// `ctr … task exec` arguments for a command in container `id` (the command follows).
    pub fn exec_args(&self, id: &str) -> Vec<String> {
        let mut args = self.ctr();
        args.extend([
            "task".into(),
            "exec".into(),
            "--fifo-dir".into(),
            self.fifo_dir(),
            "--exec-id".into(),
            format!("exec-{}", crate::store::random_hex(8)),
            id.to_owned(),
        ]);
        args
    }

    fn ctr(&self) -> Vec<String> {
        vec![
            "-a".into(),
            self.socket().display().to_string(),
            "-n".into(),
            NAMESPACE.into(),
        ]
    }

    fn fifo_dir(&self) -> String {
        self.dir.join("fifo").display().to_string()
    }

    /// Stops containerd (its shims go with the run's cgroup).
    pub fn stop(&self) {
        let mut child = self.child.lock();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// ctr cannot set the process user: `setpriv` (util-linux, from the bound `/usr`) switches
/// to `runAsUser`/`runAsGroup` before the command, in the container and for every exec.
pub fn user_prefix(security: &Security) -> Vec<String> {
    let Some(user) = security.user else {
        return Vec::new();
    };
    vec![
        "setpriv".into(),
        format!("--reuid={user}"),
        format!("--regid={}", security.group.unwrap_or(0)),
        "--clear-groups".into(),
        "--".into(),
    ]
}

/// This machine's top-level directories, bound into every container: read-only, `/tmp`
/// read-write.
fn host_binds() -> Vec<MountSpec> {
    let mut binds: Vec<MountSpec> = std::fs::read_dir("/")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (!NOT_BOUND.contains(&name.as_str())).then(|| MountSpec {
                source: e.path(),
                target: e.path(),
                read_only: true,
            })
        })
        .collect();
    binds.sort_by(|a, b| a.target.cmp(&b.target));
    binds.push(MountSpec {
        source: "/tmp".into(),
        target: "/tmp".into(),
        read_only: false,
    });
    binds
}

fn on_path(tool: &str) -> bool {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .any(|d| Path::new(d).join(tool).is_file())
}
