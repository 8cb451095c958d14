//! Finding a Kubernetes container's main process on this node from its
//! runtime container id (`containerd://<id>`, `cri-o://<id>`, `docker://<id>`
//! or the bare id), see [`Lookup::find_pid`]: first by asking the runtimes'
//! APIs over their sockets ([`containerd`], [`crio`], [`docker`]), the one
//! the id's scheme names first; else by scanning `/proc/*/cgroup`
//! ([`find_container_pid`]): every runtime (containerd, CRI-O, Docker, cgroup
//! v1 or v2, systemd or cgroupfs driver) puts the container id in the cgroup
//! path (`.../cri-containerd-<id>.scope`, `.../crio-<id>.scope`,
//! `/kubepods/.../<id>`).
//!
//! The agent runs with the host's PID namespace (`hostPID`), so the pids the
//! runtimes give are valid here and `/proc` shows every process of the node;
//! for the scan, the container's init is the matching process whose parent
//! does not match (its parent is the runtime shim).

use std::path::{Path, PathBuf};

pub mod containerd;
pub mod crio;
pub mod docker;
mod grpc;

/// A container runtime whose API the agent can ask for a container's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// containerd's `Tasks/Get` ([`containerd`]).
    Containerd,
    /// CRI-O's CRI `ContainerStatus` ([`crio`]).
    CriO,
    /// Docker's Engine API ([`docker`]).
    Docker,
}

impl Runtime {
    /// Every runtime, in the order they are asked when the id has no scheme.
    pub const ALL: [Runtime; 3] = [Runtime::Containerd, Runtime::CriO, Runtime::Docker];

    /// The scheme Kubernetes puts before this runtime's container ids.
    pub fn scheme(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
        }
    }

    /// Its name in logs.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "CRI-O",
            Runtime::Docker => "Docker",
        }
    }

    /// The order the runtimes are asked in for an id with `scheme`: the
    /// runtime the scheme names first, then the others in [`Runtime::ALL`]'s order.
    pub fn order(scheme: Option<&str>) -> Vec<Runtime> {
        let first = Runtime::ALL
            .into_iter()
            .find(|r| Some(r.scheme()) == scheme);
        first
            .into_iter()
            .chain(Runtime::ALL.into_iter().filter(|r| Some(*r) != first))
            .collect()
    }
}

/// How a container's process was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// A runtime's API gave it.
    Api(Runtime),
    /// The `/proc/*/cgroup` scan found it.
    Cgroup,
}

/// Where to look for a container's process: the runtimes' API sockets (one
/// that does not exist is skipped) and the `/proc` to scan last.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// containerd's socket.
    pub containerd: PathBuf,
    /// CRI-O's socket.
    pub crio: PathBuf,
    /// Docker's socket.
    pub docker: PathBuf,
    /// The `/proc` scanned when no runtime answered.
    pub proc_root: PathBuf,
}

impl Default for Lookup {
    fn default() -> Self {
        Lookup {
            containerd: containerd::DEFAULT_SOCKET.into(),
            crio: crio::DEFAULT_SOCKET.into(),
            docker: docker::DEFAULT_SOCKET.into(),
            proc_root: "/proc".into(),
        }
    }
}

impl Lookup {
    /// The socket of `runtime`.
    pub fn socket(&self, runtime: Runtime) -> &Path {
        match runtime {
            Runtime::Containerd => &self.containerd,
            Runtime::CriO => &self.crio,
            Runtime::Docker => &self.docker,
        }
    }

    async fn ask(&self, runtime: Runtime, id: &str) -> Result<u32, String> {
        let socket = self.socket(runtime);
        match runtime {
            Runtime::Containerd => {
                containerd::task_pid(socket, containerd::K8S_NAMESPACE, id).await
            }
            Runtime::CriO => crio::container_pid(socket, id).await,
            Runtime::Docker => docker::container_pid(socket, id).await,
        }
    }

    /// The main process of container `id` (with or without its scheme):
    /// each runtime of [`Runtime::order`] whose socket exists is asked in
    /// turn, and the first pid given wins; when none gives one, the
    /// `/proc/*/cgroup` scan. Every step is logged (info).
    ///
    /// # Errors
    /// [`ContainerError`] for an invalid id, or when the scan finds nothing
    /// ([`ContainerError::RuntimesSaid`] with what each runtime asked answered).
    pub async fn find_pid(&self, id: &str) -> Result<(u32, Found), ContainerError> {
        let bare = normalize_id(id)?;
        let scheme = id.split_once("://").map(|(scheme, _)| scheme);
        let order = Runtime::order(scheme);
        tracing::info!(container_id = %bare, scheme = scheme.unwrap_or("(none)"),
            order = %order.iter().map(|r| r.name()).collect::<Vec<_>>().join(", "),
            "asking the runtimes for the container's process in this order, then scanning /proc");
        let mut answers = Vec::new();
        for runtime in order {
            let socket = self.socket(runtime);
            if !socket.exists() {
                tracing::info!(runtime = runtime.name(), socket = %socket.display(),
                    "no socket: not asking this runtime");
                continue;
            }
            match self.ask(runtime, &bare).await {
                Ok(pid) => {
                    tracing::info!(container_id = %bare, pid, socket = %socket.display(),
                        "found the container's process through {}'s API", runtime.name());
                    return Ok((pid, Found::Api(runtime)));
                }
                Err(reason) => {
                    tracing::info!(container_id = %bare, %reason,
                        "{} did not give the container's process", runtime.name());
                    answers.push(format!("{}: {reason}", runtime.name()));
                }
            }
        }
        let pid = match find_container_pid(&self.proc_root, &bare) {
            // What the runtimes said (a stopped container, an unknown id) is
            // the likelier cause than a missing hostPID: say it.
            Err(ContainerError::NotFound(id)) if !answers.is_empty() => {
                return Err(ContainerError::RuntimesSaid {
                    id,
                    answers: answers.join("; "),
                });
            }
            found => found?,
        };
        tracing::info!(container_id = %bare, pid, "found the container's process by its cgroup");
        Ok((pid, Found::Cgroup))
    }
}

/// Shortest container id accepted: shorter ones could match unrelated paths.
pub const MIN_CONTAINER_ID_LEN: usize = 12;

/// Why a container's process was not found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContainerError {
    /// The id is too short or not hexadecimal.
    #[error(
        "invalid container id {0:?}: expected the runtime's hexadecimal id (at least 12 digits)"
    )]
    InvalidId(String),
    /// `/proc` could not be read.
    #[error("reading {path}: {reason}")]
    Proc {
        /// What was read.
        path: String,
        /// Why it failed.
        reason: String,
    },
    /// No process is in the container's cgroup.
    #[error(
        "no process of container {0} on this node (is the agent on the pod's node, with hostPID?)"
    )]
    NotFound(String),
    /// No process is in the container's cgroup, and the runtimes asked
    /// said why they gave none.
    #[error(
        "no process of container {id} on this node; the runtimes said: {answers} (is the \
         container running? is the agent on the pod's node, with hostPID?)"
    )]
    RuntimesSaid {
        /// The container id.
        id: String,
        /// Each runtime asked and its answer (`Docker: ...; CRI-O: ...`).
        answers: String,
    },
}

/// Strip a `containerd://`-style scheme and check the id.
///
/// # Errors
/// [`ContainerError::InvalidId`].
pub fn normalize_id(id: &str) -> Result<String, ContainerError> {
    let bare = id.rsplit("://").next().unwrap_or(id).to_ascii_lowercase();
    if bare.len() < MIN_CONTAINER_ID_LEN || !bare.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ContainerError::InvalidId(id.to_owned()));
    }
    Ok(bare)
}

/// The parent pid from the content of `/proc/<PID>/stat`.
fn parent_pid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// Whether a cgroup file's content places the process in the container.
fn in_container(cgroup: &str, id: &str) -> bool {
    cgroup.lines().any(|line| {
        let path = line.splitn(3, ':').nth(2).unwrap_or(line);
        path.split('/').any(|segment| {
            let segment = segment.strip_suffix(".scope").unwrap_or(segment);
            segment == id || segment.rsplit('-').next() == Some(id)
        })
    })
}

/// The container's main process: among the processes under `proc_root`
/// whose cgroup names the container, the one whose parent is not in it
/// (the lowest pid if several).
///
/// # Errors
/// [`ContainerError`] saying what was wrong or not found.
pub fn find_container_pid(proc_root: &Path, container_id: &str) -> Result<u32, ContainerError> {
    let id = normalize_id(container_id)?;
    let entries = std::fs::read_dir(proc_root).map_err(|e| ContainerError::Proc {
        path: proc_root.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut members: Vec<(u32, Option<u32>)> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let dir = proc_root.join(pid.to_string());
            // Processes may exit during the scan: skip what cannot be read.
            let cgroup = std::fs::read_to_string(dir.join("cgroup")).ok()?;
            in_container(&cgroup, &id).then(|| {
                let ppid = std::fs::read_to_string(dir.join("stat"))
                    .ok()
                    .as_deref()
                    .and_then(parent_pid);
                (pid, ppid)
            })
        })
        .collect();
    members.sort_unstable();
    let pids: Vec<u32> = members.iter().map(|(pid, _)| *pid).collect();
    members
        .iter()
        .find(|(_, ppid)| ppid.is_none_or(|p| !pids.contains(&p)))
        .or(members.first())
        .map(|(pid, _)| *pid)
        .ok_or(ContainerError::NotFound(id))
}

#[cfg(test)]
mod tests;
