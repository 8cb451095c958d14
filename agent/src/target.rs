//! Which process the agent serves: the `pid/<PID>` target syntax and the
//! liveness checks done through `/proc` (the host's view, not the target's).

use std::path::PathBuf;
use std::str::FromStr;

/// A process on this machine that the agent works for (`pid/4242`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TargetPid(pub u32);

impl TargetPid {
    /// `/proc/<PID>` in the agent's own view of `/proc`.
    pub fn proc_dir(self) -> PathBuf {
        PathBuf::from(format!("/proc/{}", self.0))
    }
}

impl std::fmt::Display for TargetPid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid/{}", self.0)
    }
}

/// A target string that is not `pid/<PID>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid target {0:?}: the agent serves a local process, written pid/<PID> (e.g. pid/4242)"
)]
pub struct TargetParseError(pub String);

impl FromStr for TargetPid {
    type Err = TargetParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let pid = s
            .strip_prefix("pid/")
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|&n| n > 0)
            .ok_or_else(|| TargetParseError(s.to_owned()))?;
        Ok(TargetPid(pid))
    }
}

/// What `/proc/<PID>/stat` says about a process, as far as the agent cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Single-letter state (`R`, `S`, `Z`...).
    pub state: char,
    /// Start time in clock ticks since boot: tells a PID reuse apart.
    pub start_time: u64,
}

impl ProcStat {
    /// Parse the content of `/proc/<PID>/stat`.
    ///
    /// The command name (field 2) may hold spaces and parentheses, so the
    /// fields are counted from the last `)`.
    pub fn parse(stat: &str) -> Option<Self> {
        let rest = &stat[stat.rfind(')')? + 1..];
        let mut fields = rest.split_ascii_whitespace();
        let state = fields.next()?.chars().next()?;
        // After the state come fields 4..=21; the start time is field 22.
        let start_time = fields.nth(18)?.parse().ok()?;
        Some(ProcStat { state, start_time })
    }

    /// A zombie or dead process has no namespaces left to work in.
    pub fn is_gone(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }

    /// Read the stat of `pid`; `None` when the process does not exist (or is
    /// unreadable, which for `/proc/<PID>/stat` means the same).
    pub fn read(pid: TargetPid) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(pid.proc_dir().join("stat"))?;
        Self::parse(&text).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unexpected format of /proc/{}/stat", pid.0),
            )
        })
    }
}

#[cfg(test)]
mod tests;
