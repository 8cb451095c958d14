//! Removing one pod's objects by name: shared by [`Pod`](super::Pod) teardown, failed
//! pod creation and the sweeper, so all three remove exactly the same things.

use std::{fs, io::ErrorKind, process::Child};

use super::{
    net::{link_exists, netns_exists, netns_inode},
    pod_state_dir,
    process::{KILL_DEADLINE, kill_all, ns_inode, pids_in_namespaces},
};
use crate::cmd::ip;

/// What [`remove_pod_objects`] found and removed, and what it could not.
#[derive(Debug, Default)]
pub(crate) struct Removed {
    pub link: bool,
    pub netns: bool,
    pub state_dir: bool,
    pub killed: Vec<u32>,
    pub errors: Vec<String>,
}

/// Removes, in this order: the host veth (taking the pod side with it), every process in
/// the pod's network namespace or in the pause's mount namespace (SIGKILL, then polled
/// until gone), the named netns, and the pod's state directory.
///
/// `pause` is the pause child when this process started it: it is killed and reaped.
/// If some process survives the kill deadline the netns is kept, so the processes stay
/// findable by a later sweep, and the failure is reported in `errors`.
pub(crate) fn remove_pod_objects(name: &str, pause: Option<&mut Child>) -> Removed {
    let mut removed = Removed::default();
    if link_exists(name) {
        match ip(
            &format!("deleting veth of pod {name}"),
            &["link", "del", name],
        ) {
            Ok(_) => removed.link = true,
            Err(e) => removed.errors.push(e.to_string()),
        }
    }
    let net = netns_inode(name);
    // The mount namespace is only identified through a live pause: once it died, the
    // inode number may already be reused by someone else's namespace.
    let mnt = pause
        .as_ref()
        .map(|child| child.id())
        .filter(|&pid| super::naming::process_alive(pid))
        .and_then(|pid| ns_inode(pid, "mnt"));
    let pids = pids_in_namespaces(net, mnt);
    if let Some(child) = pause {
        let _ = child.kill();
        if let Err(e) = child.wait() {
            removed
                .errors
                .push(format!("reaping pause of pod {name}: {e}"));
        }
    }
    let left = kill_all(&pids, KILL_DEADLINE);
    removed.killed = pids.into_iter().filter(|p| !left.contains(p)).collect();
    if !left.is_empty() {
        removed.errors.push(format!(
            "pod {name}: processes {left:?} survived SIGKILL for {KILL_DEADLINE:?}; \
             keeping netns {name} so a later sweep finds them"
        ));
    } else if netns_exists(name) {
        match ip(
            &format!("deleting netns of pod {name}"),
            &["netns", "del", name],
        ) {
            Ok(_) => removed.netns = true,
            Err(e) => removed.errors.push(e.to_string()),
        }
    }
    let dir = pod_state_dir(name);
    match fs::remove_dir_all(&dir) {
        Ok(()) => removed.state_dir = true,
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => removed
            .errors
            .push(format!("removing {}: {e}", dir.display())),
    }
    removed
}
