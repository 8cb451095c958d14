//! Names of everything the harness creates (`rmt<ownerpid>x<seq>`) and owner liveness.
//!
//! The owner PID inside every name is what lets [`sweep`](super::sweep) tell leftovers of
//! a crashed test process from objects of a test that is still running.

use std::{
    fmt, fs,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::error::{Error, Result};

/// Prefix of every netns, host veth, state directory and mount source the harness makes.
pub const PREFIX: &str = "rmt";

/// Linux interface names hold at most 15 bytes (`IFNAMSIZ` - 1).
const MAX_IFNAME: usize = 15;

/// Per-process sequence, so threads of one test process (cargo test) never collide.
static SEQ: AtomicU32 = AtomicU32::new(0);

/// `rmt<owner>x<seq>`: the netns name, host veth name and state directory name of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjectName {
    /// PID of the test process that owns the object.
    pub owner: u32,
    /// Sequence number within that owner.
    pub seq: u32,
}

impl ObjectName {
    /// A fresh name for `owner`, short enough to be an interface name.
    pub(crate) fn next(owner: u32) -> Result<ObjectName> {
        let name = ObjectName {
            owner,
            seq: SEQ.fetch_add(1, Ordering::Relaxed),
        };
        let len = name.to_string().len();
        if len > MAX_IFNAME {
            return Err(Error::InvalidSpec(format!(
                "object name {name} is {len} bytes, interface names allow {MAX_IFNAME}"
            )));
        }
        Ok(name)
    }

    /// Parses exactly `rmt<digits>x<digits>`; anything else is not ours.
    pub fn parse(name: &str) -> Option<ObjectName> {
        let rest = name.strip_prefix(PREFIX)?;
        let (owner, seq) = rest.split_once('x')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(owner) || !digits(seq) {
            return None;
        }
        Some(ObjectName {
            owner: owner.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}x{}", self.owner, self.seq)
    }
}

/// Whether `pid` is a running (not zombie, not dead) process.
///
/// A test process that crashed but was not reaped yet is a zombie: it counts as dead,
/// so its leftovers can be swept.
pub fn process_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state letter follows the parenthesised command name, which may itself
    // contain spaces or parentheses, hence the last ')'.
    stat.rfind(')')
        .and_then(|end| stat[end + 1..].trim_start().chars().next())
        .is_some_and(|state| state != 'Z' && state != 'X')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let name = ObjectName::next(4_194_304).unwrap();
        assert_eq!(ObjectName::parse(&name.to_string()), Some(name));
    }

    #[test]
    fn foreign_names_are_not_parsed() {
        for foreign in [
            "rmt", "rmtx1", "rmt12x", "rmt12y3", "rmt1x2h", "xrmt1x2", "rmt-1x2", "lo",
        ] {
            assert_eq!(ObjectName::parse(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn names_fit_in_an_interface_name() {
        let name = ObjectName {
            owner: 4_194_304,
            seq: 9999,
        };
        assert!(name.to_string().len() <= MAX_IFNAME);
    }

    #[test]
    fn sequence_makes_names_unique_within_a_process() {
        let a = ObjectName::next(7).unwrap();
        let b = ObjectName::next(7).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn liveness_of_self_and_of_a_reaped_child() {
        assert!(process_alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }
}
