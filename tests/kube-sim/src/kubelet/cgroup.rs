//! cgroup v2 directories: one per run (`<cgroup2 mount>/remora-kube-sim-<pid>`), one per pod
//! (`pod<uid>`) and one per container (`<container id>`), so that a container's processes
//! are found by its id in `/proc/<pid>/cgroup`, as on a real node.

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// How long a removal waits for the killed processes of a cgroup to be gone.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// The run's cgroup.
#[derive(Debug, Clone)]
pub struct Cgroups {
    root: PathBuf,
}

impl Cgroups {
    /// Creates the run's cgroup `name` at the top of the cgroup v2 hierarchy.
    pub fn create(name: &str) -> io::Result<Self> {
        let root = cgroup2_mount()?.join(name);
        fs::create_dir_all(&root).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "creating the cgroup {}: {e} (the simulator must run as root)",
                    root.display()
                ),
            )
        })?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join(format!("pod{uid}"))
    }

    /// Creates a container's cgroup; the container's init joins it before it execs.
    pub fn container(&self, pod_uid: &str, id: &str) -> io::Result<ContainerCgroup> {
        let dir = self.pod_dir(pod_uid).join(id);
        fs::create_dir_all(&dir)?;
        Ok(ContainerCgroup { dir })
    }

    /// The processes of one container, lowest pid first.
    pub fn container_pids(&self, pod_uid: &str, id: &str) -> Vec<u32> {
        let mut pids: Vec<u32> =
            fs::read_to_string(self.pod_dir(pod_uid).join(id).join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
        pids.sort_unstable();
        pids
    }

    /// The processes of a pod's containers, lowest pid first.
    pub fn pod_pids(&self, uid: &str) -> Vec<u32> {
        let mut pids: Vec<u32> = fs::read_dir(self.pod_dir(uid))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| fs::read_to_string(e.path().join("cgroup.procs")).ok())
            .flat_map(|procs| {
                procs
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect();
        pids.sort_unstable();
        pids
    }

    /// Kills what is left of a pod and removes its cgroups (also in v1 hierarchies).
    pub fn remove_pod(&self, uid: &str) {
        remove_tree(&self.pod_dir(uid));
        remove_v1(&format!("{}/pod{uid}", self.name()));
    }

    /// Kills what is left of the run and removes all its cgroups (also in v1 hierarchies).
    pub fn remove_all(&self) {
        remove_tree(&self.root);
        remove_v1(&self.name());
    }

    /// The run's cgroup name (its directory under every hierarchy's root).
    pub fn name(&self) -> String {
        self.root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// One container's cgroup.
#[derive(Debug)]
pub struct ContainerCgroup {
    pub dir: PathBuf,
}

impl ContainerCgroup {
    /// Kills the processes still in the cgroup and removes it.
    pub fn remove(self) {
        remove_tree(&self.dir);
    }
}

/// Moves the calling process into the cgroup `dir`.
pub fn join(dir: &Path) -> io::Result<()> {
    fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
}

/// The mount point of the cgroup v1 hierarchy of `controller` (hybrid hosts), if any.
fn v1_mount(controller: &str) -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split_whitespace().nth(4)?;
        let mut fields = right.split_whitespace();
        (fields.next()? == "cgroup" && fields.nth(1)?.split(',').any(|o| o == controller))
            .then(|| PathBuf::from(mount_point))
    })
}

/// CFS period of CPU limits (the kubelet's default).
const CPU_PERIOD_US: u64 = 100_000;

/// Applies a container's `resources.limits` to the calling process (already in the container's
/// cgroup v2 directory `dir`): memory in bytes, CPU in millicores (as a CFS quota per
/// 100 ms period, like a kubelet). Where the v2 directory has the controller's files they are
/// written there; otherwise (a hybrid host, whose memory and cpu controllers are in v1
/// hierarchies) the process joins the same relative path in the `memory`/`cpu` v1
/// hierarchy, made here, and the limit is written there. Those v1 directories go with the
/// pod (`remove_pod`), at shutdown and in the sweep, like runc's.
pub fn set_limits(dir: &Path, memory: Option<u64>, cpu_milli: Option<u64>) -> io::Result<()> {
    let rel = dir
        .strip_prefix(cgroup2_mount()?)
        .map_err(|_| io::Error::other("the container's cgroup is outside the v2 hierarchy"))?
        .to_owned();
    let limits = [
        (
            "memory",
            memory.map(|m| m.to_string()),
            "memory.max",
            memory.map(|m| vec![("memory.limit_in_bytes", m.to_string())]),
        ),
        (
            "cpu",
            cpu_milli.map(|c| format!("{} {CPU_PERIOD_US}", (c * CPU_PERIOD_US / 1000).max(1000))),
            "cpu.max",
            cpu_milli.map(|c| {
                vec![
                    ("cpu.cfs_period_us", CPU_PERIOD_US.to_string()),
                    (
                        "cpu.cfs_quota_us",
                        (c * CPU_PERIOD_US / 1000).max(1000).to_string(),
                    ),
                ]
            }),
        ),
    ];
    for (controller, v2_value, v2_file, v1_files) in limits {
        let (Some(v2_value), Some(v1_files)) = (v2_value, v1_files) else {
            continue;
        };
        if dir.join(v2_file).exists() {
            fs::write(dir.join(v2_file), v2_value)?;
            continue;
        }
        let root = v1_mount(controller).ok_or_else(|| {
            io::Error::other(format!(
                "no {controller} controller in the container's cgroup nor a v1 hierarchy"
            ))
        })?;
        let v1 = root.join(&rel);
        fs::create_dir_all(&v1)?;
        for (file, value) in v1_files {
            fs::write(v1.join(file), value)?;
        }
        join(&v1)?;
    }
    Ok(())
}

/// Parses a Kubernetes quantity (`64Mi`, `1G`, `250m`, `0.5`, `1e3`) into a number.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let suffixes: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    for (suffix, factor) in suffixes {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    q.parse::<f64>().ok()
}

/// Kills whatever is still in `dir` and its descendants, and removes them, deepest first.
pub fn remove_tree(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path());
        }
    }
    let _ = fs::write(dir.join("cgroup.kill"), "1");
    // rmdir fails (EBUSY) until the killed processes have fully exited, which may be a
    // little after cgroup.procs reads empty.
    let start = Instant::now();
    while fs::remove_dir(dir).is_err() && dir.exists() && start.elapsed() < KILL_WAIT {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Mount points of the cgroup v1 hierarchies (a hybrid host has them beside the v2 one).
pub fn v1_mounts() -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup").then(|| PathBuf::from(mount_point))
        })
        .collect()
}

/// Removes the directory tree `rel` (relative to each hierarchy's root) from every cgroup
/// v1 hierarchy, deepest first (runc makes a container's cgroup path in each of them).
pub fn remove_v1(rel: &str) {
    fn rmdir_tree(dir: &Path) {
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&entry.path());
            }
        }
        let _ = fs::remove_dir(dir);
    }
    for mount in v1_mounts() {
        let dir = mount.join(rel.trim_start_matches('/'));
        if dir.is_dir() {
            rmdir_tree(&dir);
        }
    }
}

/// Removes the cgroups of earlier runs named `<prefix><pid>` whose pid is gone (also their
/// v1 trees, left by runc).
pub fn sweep(prefix: &str) {
    let Ok(mount) = cgroup2_mount() else {
        return;
    };
    let Ok(entries) = fs::read_dir(&mount) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(prefix) else {
            continue;
        };
        if pid.parse::<u32>().is_ok_and(|pid| !crate::run_alive(pid)) {
            remove_tree(&entry.path());
        }
    }
    for mount in v1_mounts() {
        for entry in fs::read_dir(&mount).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name
                .strip_prefix(prefix)
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !crate::run_alive(pid))
            {
                remove_v1(&name);
            }
        }
    }
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
/// on a hybrid host).
pub fn cgroup2_mount() -> io::Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no cgroup v2 hierarchy is mounted (see /proc/self/mountinfo); mount one at /sys/fs/cgroup",
            )
        })
}
