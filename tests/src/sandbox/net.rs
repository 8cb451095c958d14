//! Network plumbing of a pod: the named netns, the veth pair to the host and the pod's
//! routes, plus existence checks used by teardown and the sweeper.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::addr::Lease;
use crate::{cmd::ip, error::Result};

/// Where `ip netns add` pins named network namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Name of the pod side of the veth pair, inside the pod's netns (like a real pod).
pub const POD_IFACE: &str = "eth0";

/// Creates netns `name` with `lo` up, and a veth pair: host side `name` with
/// `lease.host_ip()`, pod side [`POD_IFACE`] with `lease.pod_ip()` and a default route
/// via the host side. The host's forwarding and NAT settings are left untouched.
pub(crate) fn create(name: &str, lease: &Lease) -> Result<()> {
    let what = format!("creating the network of pod {name}");
    let host_cidr = format!("{}/{}", lease.host_ip(), lease.prefix_len());
    let pod_cidr = format!("{}/{}", lease.pod_ip(), lease.prefix_len());
    let host_ip = lease.host_ip().to_string();
    ip(&what, &["netns", "add", name])?;
    ip(
        &what,
        &[
            "link", "add", name, "type", "veth", "peer", "name", POD_IFACE, "netns", name,
        ],
    )?;
    ip(&what, &["addr", "add", &host_cidr, "dev", name])?;
    ip(&what, &["link", "set", name, "up"])?;
    ip(&what, &["-n", name, "link", "set", "lo", "up"])?;
    ip(
        &what,
        &["-n", name, "addr", "add", &pod_cidr, "dev", POD_IFACE],
    )?;
    ip(&what, &["-n", name, "link", "set", POD_IFACE, "up"])?;
    ip(
        &what,
        &["-n", name, "route", "add", "default", "via", &host_ip],
    )?;
    Ok(())
}

/// `/run/netns/<name>`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Whether the named netns exists (its pin file is there).
pub fn netns_exists(name: &str) -> bool {
    netns_path(name).exists()
}

/// Whether a host interface called `name` exists.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Inode of the network namespace pinned at `/run/netns/<name>`, only if the pin really
/// is an nsfs mount (a bare file left by a crash mid `ip netns add` has no namespace).
pub(crate) fn netns_inode(name: &str) -> Option<u64> {
    let pinned = fs::metadata(netns_path(name)).ok()?;
    let nsfs = fs::metadata("/proc/self/ns/net").ok()?;
    (pinned.dev() == nsfs.dev()).then_some(pinned.ino())
}

/// Names of the named network namespaces, as listed in [`NETNS_DIR`].
pub(crate) fn list_netns() -> Vec<String> {
    list_dir(Path::new(NETNS_DIR))
}

/// Names of the host's network interfaces.
pub(crate) fn list_links() -> Vec<String> {
    list_dir(Path::new("/sys/class/net"))
}

pub(crate) fn list_dir(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}
