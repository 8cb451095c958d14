//! The end-to-end sandbox: [`Sandbox`] owns the "pods" of one test on the local platform.
//!
//! A pod is a named network namespace joined to the host by a veth pair, plus a pause
//! process that also has its own mount and UTS namespaces (private `/etc/hosts`,
//! `/etc/resolv.conf`, files and hostname) and exactly the spec's environment. remora
//! targets it as `pid/<pause pid>`.
//!
//! # Design
//! - **Names**: every object is named `rmt<owner pid>x<seq>` (netns, host veth, state dir
//!   `/run/remora-tests/pods/<name>`, mount source), at most 15 bytes so it is also a
//!   valid interface name. The pod side of the veth is `eth0` inside the netns.
//! - **Addresses**: each pod leases one /30 of `10.213.0.0/16` (host `.1`, pod `.2`)
//!   through an atomically created file in `/run/remora-tests/leases/`, skipping any
//!   network already configured on the host. The pod's default route points at the host
//!   side; host forwarding and NAT are not changed, so pods reach only the host.
//! - **Mounts**: overlayfs over each top-level directory that gets pod files (`/etc`
//!   always), upper layer on a tmpfs that exists only in the pod's mount namespace; see
//!   the `pause` module. Nothing private is ever visible from the host afterwards.
//! - **Sweeping**: [`Sandbox::new`] first removes every object whose owner PID is not a
//!   live process (see [`sweep_stale`]); objects of live owners are never touched, so
//!   tests may run in parallel as threads (cargo test) or processes (cargo-nextest).
//!
//! # Guarantees
//! - Dropping a [`Pod`] or its [`Sandbox`] (including during panic unwinding) kills
//!   every process of the pod, deletes its netns, host veth, state directory and lease,
//!   and waits until the processes are gone before returning.
//! - A test process that dies without unwinding (SIGKILL, abort) leaves objects that the
//!   next `Sandbox::new` on the machine removes, including the processes.
//! - Network traffic a pod can generate stays on this machine: its only route leads to
//!   the host, and its default `resolv.conf` points at its own loopback.

mod addr;
mod naming;
mod net;
mod pause;
mod pod;
mod privilege;
mod process;
mod sweep;
mod teardown;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

pub use addr::{POOL, lease_dir};
pub use naming::{ObjectName, PREFIX, process_alive};
pub use net::{NETNS_DIR, POD_IFACE, link_exists, netns_exists};
pub use pod::{DEFAULT_PATH, DEFAULT_RESOLV_CONF, Pod, PodSpec};
pub use privilege::{REQUIRE_SANDBOX_ENV, sandbox_unavailable_reason, skip_unless_privileged};
pub use process::{PodCommand, PodProcess};
pub use sweep::{SweepReport, sweep_stale};

use crate::error::{Error, Result};
use pod::PodInner;

/// Root of the harness's state on this machine (leases, pod state dirs, sweep lock).
pub const STATE_ROOT: &str = "/run/remora-tests";

/// Directory holding one state directory per pod.
pub fn pods_dir() -> PathBuf {
    Path::new(STATE_ROOT).join("pods")
}

/// State directory of the pod `name`.
pub fn pod_state_dir(name: &str) -> PathBuf {
    pods_dir().join(name)
}

/// One test's set of pods. Create one per test with [`Sandbox::new`].
///
/// # Guarantees
/// Dropping the sandbox (also while unwinding) tears down every pod it created that is
/// still up, even if `Pod` handles are still held elsewhere (they then fail with
/// [`Error::TornDown`]). See [`Pod`] for what teardown removes.
#[derive(Debug)]
pub struct Sandbox {
    owner: u32,
    pods: Mutex<Vec<Arc<PodInner>>>,
}

impl Sandbox {
    /// Sweeps leftovers of dead test processes, then returns an empty sandbox owned by
    /// this process.
    ///
    /// # Errors
    /// When the state directory or sweep lock cannot be set up. Objects the sweep could
    /// not remove are only reported on stderr.
    pub fn new() -> Result<Sandbox> {
        let report = sweep_stale()?;
        if !report.is_empty() || !report.errors.is_empty() {
            eprintln!("remora-tests: swept leftovers of crashed runs: {report:?}");
        }
        Ok(Sandbox::for_owner(std::process::id()))
    }

    /// A sandbox whose objects carry `owner` as owner PID, without sweeping. Only for
    /// testing the sweeper: objects are swept once `owner` is no longer alive.
    #[doc(hidden)]
    pub fn for_owner(owner: u32) -> Sandbox {
        Sandbox {
            owner,
            pods: Mutex::new(Vec::new()),
        }
    }

    /// PID recorded as owner in the names of this sandbox's objects.
    pub fn owner(&self) -> u32 {
        self.owner
    }

    /// Creates a pod and waits until its pause process is set up.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] for a spec that cannot be realised, else the failing step
    /// (address lease, `ip`, pause setup); whatever was created is removed again.
    pub fn pod(&self, spec: PodSpec) -> Result<Pod> {
        let inner = Arc::new(PodInner::create(self.owner, spec)?);
        let mut pods = self.pods.lock().unwrap_or_else(PoisonError::into_inner);
        pods.retain(|pod| !pod.is_torn_down());
        pods.push(Arc::clone(&inner));
        Ok(Pod { inner })
    }

    /// Tears down every pod now and reports leftovers (drop does the same, printing).
    ///
    /// # Errors
    /// [`Error::Teardown`] listing what could not be removed.
    pub fn close(self) -> Result<()> {
        self.teardown_all()
    }

    /// Leaks the sandbox without cleanup, like a crashed test. Only for sweeper tests.
    #[doc(hidden)]
    pub fn abandon(self) {
        std::mem::forget(self);
    }

    fn teardown_all(&self) -> Result<()> {
        let pods = std::mem::take(&mut *self.pods.lock().unwrap_or_else(PoisonError::into_inner));
        let errors: Vec<String> = pods
            .iter()
            .filter_map(|pod| pod.teardown().err())
            .map(|e| e.to_string())
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Teardown {
                what: format!("sandbox of owner {}", self.owner),
                details: errors.join("; "),
            })
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Err(e) = self.teardown_all() {
            eprintln!("remora-tests: {e}");
        }
    }
}
