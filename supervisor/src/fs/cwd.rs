//! Working directories in the target. `chdir` to a remote directory cannot
//! change the program's real working directory (the directory does not
//! exist here), so the supervisor keeps a *virtual* one per process: relative
//! paths of notified calls resolve against it, `getcwd` reports it, and a
//! forked child inherits it (found through its ancestors, checked by start
//! time so a reused pid never inherits a stranger's). `fchdir` into a
//! shadow directory is a real change of directory; `getcwd` then reports
//! the remote path the shadow stands for.

use super::Place;
use crate::notify::{Memory, Verdict};
use crate::{Call, Supervisor};
use std::collections::HashMap;

/// Virtual working directories, by process.
#[derive(Debug, Default)]
pub struct Cwds {
    /// pid → (its start time, its remote working directory or `None` when
    /// it went back to a local one).
    by_pid: HashMap<u32, (u64, Option<String>)>,
}

/// Most entries kept before those of exited processes are dropped.
const PRUNE_AT: usize = 1024;

/// `(ppid, start time)` of process `pid`, from `/proc/PID/stat`.
fn stat_of(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and parentheses).
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // state(3) ppid(4) ... starttime(22): indices from field 3.
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((ppid, start))
}

/// `path` with `.` and `..` resolved lexically (a working directory's name).
pub fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

impl Cwds {
    /// Whether no process ever changed to a remote directory (the fast path).
    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }

    /// The remote working directory of process `tgid`: its own, or the one
    /// it inherited from the nearest ancestor with an entry.
    pub fn remote_of(&self, tgid: u32) -> Option<String> {
        if self.by_pid.is_empty() {
            return None;
        }
        let me = std::process::id();
        let mut pid = tgid;
        for _ in 0..64 {
            let (ppid, start) = stat_of(pid)?;
            if let Some((s, cwd)) = self.by_pid.get(&pid) {
                if *s == start {
                    return cwd.clone();
                }
            }
            if ppid <= 1 || ppid == me {
                return None;
            }
            pid = ppid;
        }
        None
    }

    /// Process `tgid` changed to `cwd` (`None`: a local directory).
    pub fn set(&mut self, tgid: u32, cwd: Option<String>) {
        if cwd.is_none() && self.by_pid.is_empty() {
            return;
        }
        let Some((_, start)) = stat_of(tgid) else {
            return;
        };
        if self.by_pid.len() >= PRUNE_AT {
            self.by_pid
                .retain(|pid, (s, _)| stat_of(*pid).is_some_and(|(_, now)| now == *s));
        }
        self.by_pid.insert(tgid, (start, cwd));
    }
}

impl Supervisor {
    /// `chdir(path)`.
    pub(crate) fn chdir(
        &mut self,
        call: &Call,
        mem: &Memory,
        path: u64,
    ) -> std::io::Result<Verdict> {
        let Some(tgid) = call.tgid() else {
            return Ok(Verdict::Continue);
        };
        let relative = !mem.read_cstr(path)?.starts_with(b"/");
        match self.place(call, mem, libc::AT_FDCWD as i64, path, false)? {
            Place::Local => {
                if relative && self.cwds.remote_of(tgid).is_some() {
                    // The kernel would resolve it against the real cwd.
                    self.warn_once(
                        "changing from a directory of the target to a local one by a relative \
                         path is not supported under seccomp interception (use an absolute \
                         path); the program gets ENOTSUP",
                    );
                    return Ok(Verdict::Errno(libc::ENOTSUP));
                }
                self.cwds.set(tgid, None);
                Ok(Verdict::Continue)
            }
            Place::NotFound => Ok(Verdict::Errno(libc::ENOENT)),
            Place::Remote(remote) => match self.stat_remote(remote.clone(), true) {
                Ok(m) if m.mode & libc::S_IFMT == libc::S_IFDIR => {
                    self.cwds.set(tgid, Some(normalize(&remote)));
                    Ok(Verdict::Return(0))
                }
                Ok(_) => Ok(Verdict::Errno(libc::ENOTDIR)),
                Err(errno) => Ok(Verdict::Errno(errno)),
            },
        }
    }

    /// `fchdir(fd)`: a real change of directory (a shadow directory stands
    /// for a remote one); any virtual one ends.
    pub(crate) fn fchdir(&mut self, call: &Call) -> Verdict {
        if !self.cwds.is_empty() {
            if let Some(tgid) = call.tgid() {
                self.cwds.set(tgid, None);
            }
        }
        Verdict::Continue
    }

    /// `getcwd(buf, size)`: the virtual working directory, or the remote
    /// directory a shadow working directory stands for.
    pub(crate) fn getcwd(
        &mut self,
        call: &Call,
        mem: &Memory,
        buf: u64,
        size: u64,
    ) -> std::io::Result<Verdict> {
        let remote = match call.tgid().and_then(|tgid| self.cwds.remote_of(tgid)) {
            Some(cwd) => cwd,
            None => {
                let real = std::fs::read_link(format!("/proc/{}/cwd", call.tid))?;
                match self.shadow.remote_of(&real.to_string_lossy()) {
                    Some(remote) => remote,
                    None => return Ok(Verdict::Continue),
                }
            }
        };
        let mut bytes = remote.into_bytes();
        bytes.push(0);
        if (size as usize) < bytes.len() {
            return Ok(Verdict::Errno(libc::ERANGE));
        }
        if call.still_valid(self) {
            mem.write(buf, &bytes)?;
        }
        Ok(Verdict::Return(bytes.len() as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_resolves_dots() {
        assert_eq!(normalize("/srv/a/../b/./c/"), "/srv/b/c");
        assert_eq!(normalize("/.."), "/");
        assert_eq!(normalize("/"), "/");
    }

    #[test]
    fn the_walk_to_ancestors_stops_at_the_supervisor() {
        let mut cwds = Cwds::default();
        let me = std::process::id();
        cwds.set(me, Some("/srv/app".into()));
        assert_eq!(cwds.remote_of(me).as_deref(), Some("/srv/app"));
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        // The walk stops at the supervisor (this process): a child of ours
        // is a supervised program's root, which inherits nothing.
        assert_eq!(cwds.remote_of(child.id()), None);
        cwds.set(child.id(), None);
        assert_eq!(cwds.remote_of(child.id()), None);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
