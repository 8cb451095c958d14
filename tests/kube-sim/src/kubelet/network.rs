//! The pod network of one run: a bridge `rksbr<N>` with 10.216.N.1/24, and per pod a veth
//! pair (`rks<N>p<host>` on the bridge, `eth0` in the pod's network namespace) with an
//! address from 10.216.N.2–254. The bridge's name is the run's claim on the subnet: creating
//! it fails if another run holds N. Pods and this machine reach each other over the bridge
//! (layer 2, no forwarding, no sysctl, no netfilter rule).

use std::{
    collections::BTreeSet,
    io,
    net::Ipv4Addr,
    path::Path,
    process::{Command, Stdio},
    sync::Arc,
};

use parking_lot::Mutex;

/// First two octets of every pod address.
const PREFIX: [u8; 2] = [10, 216];
/// The subnet index (third octet) is recorded here in the run's state dir, for the sweep.
const SUBNET_FILE: &str = "subnet";

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn bridge_name(index: u8) -> String {
    format!("rksbr{index}")
}

/// The run's bridge and address pool.
#[derive(Debug, Clone)]
pub struct Network {
    index: u8,
    used: Arc<Mutex<BTreeSet<u8>>>,
}

/// A pod's address and the host side of its veth pair.
#[derive(Debug)]
pub struct PodAddress {
    pub ip: Ipv4Addr,
    pub host_veth: String,
}

impl Network {
    /// Claims a free 10.216.N.0/24 (starting at an index derived from `seed`), creates its
    /// bridge and records N in `state_dir`.
    pub fn create(seed: u32, state_dir: &Path) -> io::Result<Self> {
        let start = (seed % 256) as u8;
        let mut last_err = None;
        for offset in 0..=255u8 {
            let index = start.wrapping_add(offset);
            if subnet_in_use(index) {
                continue;
            }
            let bridge = bridge_name(index);
            // Fails with "File exists" when another run holds this index.
            if let Err(e) = ip(&["link", "add", &bridge, "type", "bridge"]) {
                last_err = Some(e);
                continue;
            }
            let net = Self {
                index,
                used: Arc::default(),
            };
            std::fs::write(state_dir.join(SUBNET_FILE), index.to_string())?;
            let gateway = format!("{}/24", net.gateway());
            ip(&["addr", "add", &gateway, "dev", &bridge])
                .and_then(|()| ip(&["link", "set", &bridge, "up"]))
                .inspect_err(|_| net.remove())?;
            return Ok(net);
        }
        Err(last_err
            .unwrap_or_else(|| io::Error::other("every 10.216.N.0/24 is in use on this machine")))
    }

    /// `N` of the run's 10.216.N.0/24 (also its service range 10.215.N.0/24).
    pub fn index(&self) -> u8 {
        self.index
    }

    pub fn bridge(&self) -> String {
        bridge_name(self.index)
    }

    /// The bridge's address: this machine as the pods see it.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(PREFIX[0], PREFIX[1], self.index, 1)
    }

    /// Takes a free pod address.
    pub fn allocate(&self) -> io::Result<PodAddress> {
        let mut used = self.used.lock();
        let host = (2..=254u8)
            .find(|h| !used.contains(h))
            .ok_or_else(|| io::Error::other("the pod subnet is full (253 pods)"))?;
        used.insert(host);
        Ok(PodAddress {
            ip: Ipv4Addr::new(PREFIX[0], PREFIX[1], self.index, host),
            host_veth: format!("rks{}p{host}", self.index),
        })
    }

    /// Gives an address back (its veth is gone with the pod's network namespace; deleting
    /// it again is harmless).
    pub fn release(&self, addr: &PodAddress) {
        let _ = ip(&["link", "del", &addr.host_veth]);
        self.used.lock().remove(&addr.ip.octets()[3]);
    }

    /// Creates the veth pair: `eth0` in the namespace of `pid`, the host side on the bridge.
    pub fn attach(&self, addr: &PodAddress, pid: u32) -> io::Result<()> {
        // A leftover of an earlier pod with this address (its namespace may still be dying).
        let _ = ip(&["link", "del", &addr.host_veth]);
        let pid = pid.to_string();
        ip(&[
            "link",
            "add",
            &addr.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pid,
        ])?;
        ip(&[
            "link",
            "set",
            &addr.host_veth,
            "master",
            &self.bridge(),
            "up",
        ])
    }

    /// Deletes the bridge.
    pub fn remove(&self) {
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

/// Whether an address of 10.216.N.0/24 exists on this machine already.
fn subnet_in_use(index: u8) -> bool {
    let prefix = format!("{}.{}.{index}.0/24", PREFIX[0], PREFIX[1]);
    Command::new("ip")
        .args(["-4", "-o", "addr", "show", "to", &prefix])
        .output()
        .is_ok_and(|o| !o.stdout.is_empty())
}

/// Deletes the bridge of a dead run whose state dir is `state_dir`.
pub fn sweep(state_dir: &Path) {
    if let Some(index) = std::fs::read_to_string(state_dir.join(SUBNET_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<u8>().ok())
    {
        let _ = ip(&["link", "del", &bridge_name(index)]);
    }
}
