//! Finding a Kubernetes container's main process on this node from its
//! runtime container id (`containerd://<id>` without the scheme), by scanning
//! `/proc/*/cgroup`: every runtime (containerd, CRI-O, Docker, cgroup v1 or
//! v2, systemd or cgroupfs driver) puts the container id in the cgroup path
//! (`.../cri-containerd-<id>.scope`, `.../crio-<id>.scope`, `/kubepods/.../<id>`).
//!
//! The agent runs with the host's PID namespace (`hostPID`), so `/proc` shows
//! every process of the node; the container's init is the matching process
//! whose parent does not match (its parent is the runtime shim).

use std::path::Path;

pub mod containerd;

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
