//! A private Docker Engine for one test: Debian's `dockerd` (package
//! docker.io, installed by scripts/setup.sh) with its own data root, exec
//! root, pidfile, config file, trust key and socket in a temp dir, no
//! iptables, no IP forwarding, no bridge, and containers under a cgroup
//! parent of its own. The system's Docker never runs and is never asked.
//!
//! dockerd runs in a private mount namespace (`unshare --mount --propagation
//! private`) with a tmpfs on `/run`: its overlay and shm mounts never reach
//! the host's mount table, the host's `/run/containerd` socket (if any) is
//! hidden, so dockerd supervises a containerd of its own (socket and state in
//! the temp dir), and the shims' sockets vanish with the namespace.
//!
//! # Guarantees
//! [`Dockerd::stop`] (also run on drop, so on a failing test's unwinding):
//! removes the containers, stops dockerd by its pid (SIGTERM, SIGKILL after
//! 20 s), kills what is left of its processes (its containerd and shims: their
//! command lines name the temp dir; the containers' processes: in its cgroup
//! parent), unmounts whatever is mounted under the temp dir, removes the
//! cgroup parent in every hierarchy and deletes the temp dir. A test process
//! killed before its drop (a timeout's SIGKILL) is covered by the next start:
//! it removes the same way what dockerds of test processes no longer alive left
//! (their names carry the test's pid).
#![allow(dead_code)]

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Debian's Docker Engine binaries (docker.io).
pub const DOCKERD: &str = "/usr/sbin/dockerd";
pub const DOCKER: &str = "/usr/bin/docker";

/// How long dockerd may take to answer, and to stop.
const START: Duration = Duration::from_secs(60);
const STOP: Duration = Duration::from_secs(20);

pub struct Dockerd {
    /// `<temp>/remora-dockerd-<test pid>-<n>-<random>`; its file name is
    /// also the containers' cgroup parent.
    dir: PathBuf,
    child: Option<Child>,
    cgroup_parent: String,
    containers: Vec<String>,
}

/// The prefix of every private dockerd's temp dir and cgroup parent.
const PREFIX: &str = "remora-dockerd-";

impl Dockerd {
    /// Starts a private dockerd and waits until it answers `docker version`.
    ///
    /// # Panics
    /// When docker.io is not installed (scripts/setup.sh installs it) or
    /// dockerd does not answer within a minute (its log's tail is shown).
    pub fn start() -> Dockerd {
        for binary in [DOCKERD, DOCKER] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: apt-get install docker.io (scripts/setup.sh does)"
            );
        }
        sweep();
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-{n}-", std::process::id()))
            .tempdir()
            .expect("temp dir")
            .keep();
        let cgroup_parent = dir
            .file_name()
            .expect("a temp dir name")
            .to_string_lossy()
            .into_owned();
        let mut me = Dockerd {
            dir,
            child: None,
            cgroup_parent,
            containers: Vec::new(),
        };
        for sub in ["data", "exec", "cli"] {
            std::fs::create_dir(me.dir.join(sub)).expect("dockerd dirs");
        }
        // Without `deprecated-key-path`, dockerd 20.10 writes /etc/docker/key.json.
        let config = serde_json::json!({ "deprecated-key-path": me.dir.join("key.json") });
        std::fs::write(me.dir.join("daemon.json"), config.to_string()).expect("daemon.json");
        let log = std::fs::File::create(me.dir.join("dockerd.log")).expect("dockerd.log");
        // `unshare` execs sh, which execs dockerd: the child's pid is dockerd's.
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(
                r#"mount -t tmpfs remora-dockerd-run /run && exec "$1" \
                    --data-root "$2/data" --exec-root "$2/exec" --pidfile "$2/docker.pid" \
                    -H "unix://$2/docker.sock" --config-file "$2/daemon.json" \
                    --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
                    --bridge=none --cgroup-parent "/$3""#,
            )
            .arg("sh")
            .arg(DOCKERD)
            .arg(&me.dir)
            .arg(&me.cgroup_parent)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn unshare + dockerd");
        me.child = Some(child);
        let deadline = Instant::now() + START;
        loop {
            if me.socket().exists() && me.docker(&["version"]).status.success() {
                break;
            }
            let exited = me.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "dockerd did not answer (exit {exited:?}):\n{}",
                me.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        me
    }

    /// dockerd's API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// The temp dir everything of this dockerd lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// dockerd's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    /// The containers' cgroup parent (without the leading `/`).
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// The last lines of dockerd's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// `docker ARGS` against this dockerd (at most a minute).
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .arg("60")
            .arg(DOCKER)
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .args(args)
            .env("DOCKER_CONFIG", self.dir.join("cli"))
            .stdin(Stdio::null())
            .output()
            .expect("run docker")
    }

    /// `docker ARGS`, which must succeed; its trimmed stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Imports image `tag` from a busybox-static rootfs (every applet
    /// hard-linked in `/bin`) plus `files` (path in the rootfs, content):
    /// no image can be pulled here.
    pub fn import_busybox(&self, tag: &str, files: &[(&str, &str)]) {
        let rootfs = self.dir.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).expect("rootfs");
        let busybox = rootfs.join("bin/busybox");
        std::fs::copy("/bin/busybox", &busybox)
            .expect("/bin/busybox (busybox-static, scripts/setup.sh)");
        let install = Command::new(&busybox)
            .arg("--install")
            .arg(rootfs.join("bin"))
            .status()
            .expect("busybox --install");
        assert!(install.success());
        for (path, content) in files {
            let path = rootfs.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(path.parent().expect("a file in a dir")).expect("rootfs dir");
            std::fs::write(path, content).expect("rootfs file");
        }
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("tar");
        let import = Command::new(DOCKER)
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .args(["import", "-", tag])
            .env("DOCKER_CONFIG", self.dir.join("cli"))
            .stdin(tar.stdout.take().expect("tar's stdout"))
            .output()
            .expect("docker import");
        assert!(
            tar.wait().expect("wait for tar").success(),
            "tar of the rootfs"
        );
        assert!(
            import.status.success(),
            "docker import: {}",
            String::from_utf8_lossy(&import.stderr)
        );
    }

    /// `docker run -d --network none ARGS`: the new container's full id.
    /// AppArmor unconfined: on a kernel with AppArmor (Debian's default) dockerd
    /// would apply its `docker-default` profile, which it cannot load without
    /// `apparmor_parser` (the apparmor package, which setup does not install).
    pub fn run(&mut self, args: &[&str]) -> String {
        let mut all = vec![
            "run",
            "-d",
            "--network",
            "none",
            "--security-opt",
            "apparmor=unconfined",
        ];
        all.extend_from_slice(args);
        let id = self.docker_ok(&all);
        assert_eq!(id.len(), 64, "not a container id: {id}");
        self.containers.push(id.clone());
        id
    }

    /// `docker inspect -f {{.State.Pid}}` of `id`.
    pub fn pid_of(&self, id: &str) -> u32 {
        self.docker_ok(&["inspect", "-f", "{{.State.Pid}}", id])
            .parse()
            .expect("a pid")
    }

    /// Removes everything this dockerd made; see the module's guarantees.
    /// Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                for id in std::mem::take(&mut self.containers) {
                    let _ = self.docker(&["rm", "-f", &id]);
                }
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
                let deadline = Instant::now() + STOP;
                while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        remove_remains(&self.dir);
    }

    /// Processes of this dockerd still alive; see [`leftover_pids`].
    pub fn leftover_pids(&self) -> Vec<u32> {
        leftover_pids(&self.dir)
    }

    /// Mount points under the temp dir in this (the host's) mount namespace.
    pub fn host_mounts(&self) -> Vec<PathBuf> {
        mount_points()
            .into_iter()
            .filter(|m| m.starts_with(&self.dir))
            .collect()
    }
}

/// What a private dockerd with temp dir `dir` left once dockerd itself is
/// stopped (or was SIGKILLed with its test): kills its processes, unmounts
/// anything under `dir`, removes its cgroup parent and `dir`.
fn remove_remains(dir: &Path) {
    let deadline = Instant::now() + STOP;
    loop {
        let left = leftover_pids(dir);
        if left.is_empty() || Instant::now() > deadline {
            break;
        }
        for pid in left {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mounted: Vec<PathBuf> = mount_points()
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect();
    for mount_point in mounted.into_iter().rev() {
        let _ = Command::new("umount").arg("-l").arg(&mount_point).status();
    }
    if let Some(name) = dir.file_name() {
        for hierarchy in cgroup_mounts() {
            remove_tree(&hierarchy.join(name));
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Removes what private dockerds of test processes that no longer run left
/// (a test SIGKILLed by a timeout never reaches its drop).
fn sweep() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let owner = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if owner.is_some_and(|pid| pid != std::process::id() && !alive(pid)) {
            remove_remains(&entry.path());
        }
    }
}

/// Processes of the private dockerd with temp dir `dir` still alive: those
/// whose command line names `dir` (dockerd, its containerd, the shims) and
/// those in its cgroup parent (the containers').
pub fn leftover_pids(dir: &Path) -> Vec<u32> {
    let text = dir.to_string_lossy().into_owned();
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&text))
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(name) = dir.file_name() {
        for hierarchy in cgroup_mounts() {
            collect_procs(&hierarchy.join(name), &mut pids);
        }
    }
    pids.retain(|pid| alive(*pid));
    pids.sort_unstable();
    pids.dedup();
    pids
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `pid` runs: it exists and is not a zombie (the shims daemonize:
/// when they die, init reaps them, in its own time).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|end| stat[end + 1..].split_ascii_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// Mount points of this process's mount namespace, in mount order.
pub fn mount_points() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .collect()
}

/// Every cgroup hierarchy's mount point (v1 and v2).
pub fn cgroup_mounts() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            let mount_point = left.split(' ').nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .collect()
}

fn collect_procs(dir: &Path, pids: &mut Vec<u32>) {
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_procs(&entry.path(), pids);
            }
        }
    }
}

/// `rmdir` a cgroup tree, children first (a cgroup's files cannot be removed).
fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
