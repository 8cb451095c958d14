//! Sweeping leftovers of crashed test runs: every harness object whose owner PID (from
//! its `rmt<owner>x<seq>` name) is no longer a live process.
//!
//! Objects considered: named netns under /run/netns, host interfaces, mounts in the
//! host's mount namespace (by mount point or source), pod state directories and address
//! leases. Processes are found through the netns they live in (every pod process is in
//! its pod's netns), so they are killed before that netns is deleted. Objects of a live
//! owner are never touched; a PID reused by an unrelated process only delays a sweep.

use std::{
    collections::BTreeSet,
    fs::{self, OpenOptions},
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};

use super::{
    STATE_ROOT,
    addr::{lease_dir, lease_owner},
    naming::{ObjectName, process_alive},
    net::{NETNS_DIR, list_dir, list_links, list_netns},
    pods_dir,
    teardown::remove_pod_objects,
};
use crate::{
    cmd,
    error::{Error, Result},
};

/// What one sweep removed, and what it failed to remove.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Pods (`rmt<owner>x<seq>`) whose owner was dead and that had something left.
    pub pods: Vec<String>,
    /// Processes killed.
    pub processes: Vec<u32>,
    /// Mount points unmounted in the host's mount namespace.
    pub mounts: Vec<String>,
    /// Lease files removed.
    pub leases: Vec<PathBuf>,
    /// Failures; the objects concerned stay for a later sweep.
    pub errors: Vec<String>,
}

impl SweepReport {
    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty() && self.mounts.is_empty() && self.leases.is_empty()
    }
}

/// Removes every leftover of dead owners. Serialised across processes by an flock on
/// `/run/remora-tests/sweep.lock`; failures on single objects are collected in the report.
///
/// # Errors
/// Only when the state directory or the lock cannot be set up.
pub fn sweep_stale() -> Result<SweepReport> {
    fs::create_dir_all(STATE_ROOT).map_err(|e| Error::io("creating", STATE_ROOT, e))?;
    let lock_path = Path::new(STATE_ROOT).join("sweep.lock");
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::io("opening", &lock_path, e))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| Error::sys(format!("locking {}", lock_path.display()), errno))?;

    let mut report = SweepReport::default();
    let stale = |name: &str| ObjectName::parse(name).filter(|n| !process_alive(n.owner));
    // Host-side mounts first, so the state directories below can be removed.
    for mount_point in stale_mounts(&stale) {
        let what = format!("unmounting stale {mount_point}");
        match cmd::run(
            &what,
            std::process::Command::new("umount").args(["-l", &mount_point]),
        ) {
            Ok(_) => report.mounts.push(mount_point),
            Err(e) => report.errors.push(e.to_string()),
        }
    }
    let names: BTreeSet<String> = list_netns()
        .into_iter()
        .chain(list_links())
        .chain(list_dir(&pods_dir()))
        .filter(|name| stale(name).is_some())
        .collect();
    for name in names {
        let removed = remove_pod_objects(&name, None);
        report.processes.extend(removed.killed);
        report.errors.extend(removed.errors);
        report.pods.push(name);
    }
    for lease in list_dir(&lease_dir()) {
        let path = lease_dir().join(lease);
        if lease_owner(&path).is_some_and(|owner| !process_alive(owner.owner)) {
            match fs::remove_file(&path) {
                Ok(()) => report.leases.push(path),
                Err(e) => report
                    .errors
                    .push(format!("removing {}: {e}", path.display())),
            }
        }
    }
    Ok(report)
}

/// Mount points (deepest first) of the host's mount namespace that belong to a stale
/// pod: one of their path components or their source is a stale pod name. Netns pins
/// under /run/netns are left to `ip netns del`, after the processes inside were found
/// through them.
fn stale_mounts(stale: &dyn Fn(&str) -> Option<ObjectName>) -> Vec<String> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    stale_mounts_in(&text, stale)
}

fn stale_mounts_in(mountinfo: &str, stale: &dyn Fn(&str) -> Option<ObjectName>) -> Vec<String> {
    let mut points: Vec<String> = parse_mountinfo(mountinfo)
        .into_iter()
        .filter(|(point, _)| !Path::new(point).starts_with(NETNS_DIR))
        .filter(|(point, source)| {
            stale(source).is_some() || point.split('/').any(|part| stale(part).is_some())
        })
        .map(|(point, _)| point)
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.len()));
    points.dedup();
    points
}

/// (mount point, source) of every line of a mountinfo file.
fn parse_mountinfo(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let source = right.split(' ').nth(1)?;
            Some((unescape(point), unescape(source)))
        })
        .collect()
}

/// Decodes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|digits| u8::from_str_radix(std::str::from_utf8(digits).ok()?, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:30 / /run/netns/rmt99x1 rw shared:5 - nsfs nsfs rw
41 22 0:31 / /run/remora-tests/pods/rmt99x1/mnt rw - tmpfs rmt99x1 rw,mode=700
42 22 0:32 / /mnt/with\\040space rw - tmpfs rmt7x3 rw
43 22 0:33 / /srv rw - overlay overlay rw
";

    #[test]
    fn parses_mount_points_and_sources() {
        let mounts = parse_mountinfo(MOUNTINFO);
        assert_eq!(mounts[0], ("/".into(), "/dev/vda".into()));
        assert_eq!(mounts[3], ("/mnt/with space".into(), "rmt7x3".into()));
    }

    #[test]
    fn stale_mounts_match_names_in_paths_or_sources_deepest_first() {
        let stale = |name: &str| ObjectName::parse(name).filter(|n| n.owner == 99 || n.owner == 7);
        assert_eq!(
            stale_mounts_in(MOUNTINFO, &stale),
            ["/run/remora-tests/pods/rmt99x1/mnt", "/mnt/with space"]
        );
    }

    #[test]
    fn unescape_leaves_plain_text_alone() {
        assert_eq!(unescape("/a/b\\134c"), "/a/b\\c");
        assert_eq!(unescape("/a\\"), "/a\\");
    }
}
