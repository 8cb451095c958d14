//! The nftables backend: one table per agent, `inet remora_<agent pid>`,
//! owned by the agent so that the kernel itself removes it when the agent
//! dies.
//!
//! # Ruleset
//! Installed in one transaction with the first port (here port 8080 sent to
//! the agent's listener on 40123):
//!
//! ```text
//! table inet remora_4242 {
//!     flags owner
//!     comment "remora agent pid 4242: incoming traffic redirection"
//!     map ports { type inet_service : inet_service ; elements = { 8080 : 40123 } }
//!     chain prerouting {
//!         type nat hook prerouting priority -110; policy accept;
//!         meta mark 0x72656d6f return
//!         meta l4proto tcp fib daddr type local redirect to :tcp dport map @ports
//!     }
//!     chain output {
//!         type nat hook output priority -110; policy accept;
//!         meta mark 0x72656d6f return
//!         meta l4proto tcp fib daddr type local redirect to :tcp dport map @ports
//!     }
//! }
//! ```
//!
//! `prerouting` takes connections from other hosts, `output` those of the
//! target's own processes (to `127.0.0.1`, `::1` or its own addresses). Only
//! traffic to a local address is touched (`fib daddr type local`): the target
//! calling port 8080 of another host is not stolen. The agent's own
//! pass-through sockets carry the mark and are let through. Priority -110
//! runs before the usual `dstnat` (-100) chains, so a sidecar's own redirect
//! does not take the traffic first. Later ports are `add element` / `delete
//! element` on the map.
//!
//! # Ownership and cleanup
//! A table created with `flags owner` belongs to the netlink socket that
//! created it: other processes cannot change it (`EPERM`), and the kernel
//! deletes it when that socket closes. The agent keeps that socket in an
//! `nft -i` child fed through a pipe only the agent holds: when the agent
//! exits, however it exits, the pipe closes, `nft` reads EOF and exits, and
//! the table goes with it. If `nft` itself is killed, the table goes too.
//! The child runs in its own process group (a Ctrl-C on the agent's terminal
//! does not reach it; the agent cleans up on SIGINT itself) with
//! `HOME=/dev/null`, so it writes no `~/.nft.history`.

use super::redirect::{ListenerPort, RedirectError, Redirector};
use remora_protocol::incoming::RemotePort;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long `nft` gets to apply one transaction.
pub const NFT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long `nft -i` gets to exit once its input is closed.
pub const NFT_EXIT_TIMEOUT: Duration = Duration::from_secs(2);

/// Lines of `nft` error output buffered between two reads.
pub const STDERR_LINES: usize = 256;

/// The name of the agent's table (family `inet`).
pub fn table_name(pid: u32) -> String {
    format!("remora_{pid}")
}

/// The pid in a remora table name, if it is one.
pub fn table_pid(name: &str) -> Option<u32> {
    name.strip_prefix("remora_")?.parse().ok()
}

/// The whole table with its first port, as one `nft` line (one transaction).
pub fn create_table(pid: u32, port: RemotePort, to: ListenerPort) -> String {
    let t = table_name(pid);
    let mark = super::REMORA_MARK;
    let rule = "meta l4proto tcp fib daddr type local redirect to :tcp dport map @ports";
    [
        format!(
            "add table inet {t} {{ flags owner ; comment \"remora agent pid {pid}: incoming \
             traffic redirection\" ; }}"
        ),
        format!("add map inet {t} ports {{ type inet_service : inet_service ; }}"),
        format!(
            "add chain inet {t} prerouting {{ type nat hook prerouting priority -110 ; policy \
             accept ; }}"
        ),
        format!(
            "add chain inet {t} output {{ type nat hook output priority -110 ; policy accept ; }}"
        ),
        format!("add rule inet {t} prerouting meta mark {mark:#x} return"),
        format!("add rule inet {t} prerouting {rule}"),
        format!("add rule inet {t} output meta mark {mark:#x} return"),
        format!("add rule inet {t} output {rule}"),
        add_port(pid, port, to),
    ]
    .join(" ; ")
}

/// Redirect one more port.
pub fn add_port(pid: u32, port: RemotePort, to: ListenerPort) -> String {
    format!(
        "add element inet {} ports {{ {} : {} }}",
        table_name(pid),
        port.0,
        to.0
    )
}

/// Stop redirecting a port.
pub fn remove_port(pid: u32, port: RemotePort) -> String {
    format!(
        "delete element inet {} ports {{ {} }}",
        table_name(pid),
        port.0
    )
}

/// Remora tables in `nft list tables` output: `(family, name, pid)`.
pub fn remora_tables(listing: &str) -> Vec<(String, String, u32)> {
    listing
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "table").then_some(())?;
            let family = words.next()?;
            let name = words.next()?;
            Some((family.to_owned(), name.to_owned(), table_pid(name)?))
        })
        .collect()
}

/// Split what `nft -i` wrote to stderr up to a sync marker into the output of
/// the command before it. The marker is a line `nft` cannot parse: its error
/// message comes first, then the marker line itself (then a caret line, read
/// separately). Returns `None` until the marker line is in `lines`.
pub fn command_output(lines: &[String], marker: &str) -> Option<Vec<String>> {
    let at = lines.iter().position(|line| line.trim() == marker)?;
    let mut before = lines[..at].to_vec();
    if before.last().is_some_and(|line| line.starts_with("Error:")) {
        before.pop();
    }
    before.retain(|line| !line.trim().is_empty());
    Some(before)
}

/// A running `nft -i` holding the netlink socket that owns the table.
#[derive(Debug)]
struct NftSession {
    child: Child,
    stdin: Option<ChildStdin>,
    /// stderr reader thread --lines--> session
    stderr_rx: mpsc::Receiver<String>,
    syncs: u64,
}

impl NftSession {
    fn spawn() -> Result<Self, RedirectError> {
        let mut child = Command::new("nft")
            .arg("-i")
            .env("HOME", "/dev/null")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| RedirectError::spawn("nft -i", &e))?;
        let (Some(stdin), Some(stderr)) = (child.stdin.take(), child.stderr.take()) else {
            // Both were requested as pipes just above.
            let _ = child.kill();
            let _ = child.wait();
            return Err(RedirectError::Exited { tool: "nft" });
        };
        // The reader ends at EOF, when nft exits.
        let (lines_tx, stderr_rx) = mpsc::sync_channel(STDERR_LINES);
        let reader = std::thread::Builder::new()
            .name("remora-nft-err".into())
            .spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { return };
                    if lines_tx.send(line).is_err() {
                        return;
                    }
                }
            });
        if let Err(e) = reader {
            let _ = child.kill();
            let _ = child.wait();
            return Err(RedirectError::spawn("a reader thread for nft", &e));
        }
        Ok(NftSession {
            child,
            stdin: Some(stdin),
            stderr_rx,
            syncs: 0,
        })
    }

    /// Run one line (one transaction) and wait until `nft` is done with it.
    fn run(&mut self, line: &str) -> Result<(), RedirectError> {
        // Leftovers of an earlier exchange (a late caret line) are not ours.
        while self.stderr_rx.try_recv().is_ok() {}
        self.syncs += 1;
        let marker = format!("remora_sync_{}", self.syncs);
        let stdin = self
            .stdin
            .as_mut()
            .ok_or(RedirectError::Exited { tool: "nft" })?;
        stdin
            .write_all(format!("{line}\n{marker}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|_| RedirectError::Exited { tool: "nft" })?;
        let deadline = Instant::now() + NFT_TIMEOUT;
        let mut lines = Vec::new();
        let output = loop {
            if let Some(output) = command_output(&lines, &marker) {
                break output;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_rx.recv_timeout(left) {
                Ok(next) => lines.push(next),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(RedirectError::Timeout {
                        tool: "nft",
                        secs: NFT_TIMEOUT.as_secs(),
                    });
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(RedirectError::Exited { tool: "nft" });
                }
            }
        };
        // The caret line under the marker.
        let _ = self.stderr_rx.recv_timeout(Duration::from_millis(200));
        if output.iter().any(|line| line.starts_with("Error:")) {
            return Err(RedirectError::Command {
                command: format!("nft {line}"),
                output: output.join(" / "),
            });
        }
        for warning in output {
            tracing::debug!(%warning, "nft said");
        }
        Ok(())
    }

    /// Close `nft`'s input and wait for it (and so for the table) to go.
    fn close(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + NFT_EXIT_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => {
                    tracing::warn!("nft -i did not exit after its input closed; killing it");
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

impl Drop for NftSession {
    fn drop(&mut self) {
        self.close();
    }
}

/// The nftables [`Redirector`] (see the module docs).
#[derive(Debug)]
pub struct Nftables {
    pid: u32,
    session: Option<NftSession>,
    ports: BTreeMap<RemotePort, ListenerPort>,
}

impl Nftables {
    /// The redirector of the agent with this pid; nothing is installed yet.
    pub fn new(pid: u32) -> Self {
        Nftables {
            pid,
            session: None,
            ports: BTreeMap::new(),
        }
    }

    /// Run `line` in the session, dropping the session when `nft` is gone.
    fn run(&mut self, line: &str) -> Result<(), RedirectError> {
        let session = self
            .session
            .as_mut()
            .ok_or(RedirectError::Exited { tool: "nft" })?;
        let result = session.run(line);
        if let Err(RedirectError::Exited { .. } | RedirectError::Timeout { .. }) = &result {
            // Whatever it held died with it.
            self.session = None;
            self.ports.clear();
        }
        result
    }
}

impl Redirector for Nftables {
    fn add(&mut self, port: RemotePort, to: ListenerPort) -> Result<(), RedirectError> {
        if self.session.is_none() {
            self.session = Some(NftSession::spawn()?);
            self.ports.clear();
            if let Err(e) = self.run(&create_table(self.pid, port, to)) {
                // Nothing was created; the session has nothing to keep.
                self.session = None;
                return Err(e);
            }
        } else {
            self.run(&add_port(self.pid, port, to))?;
        }
        self.ports.insert(port, to);
        Ok(())
    }

    fn remove(&mut self, port: RemotePort) -> Result<(), RedirectError> {
        if self.ports.remove(&port).is_none() || self.session.is_none() {
            return Ok(());
        }
        self.run(&remove_port(self.pid, port))
    }

    fn remove_all(&mut self) -> Result<(), RedirectError> {
        let Some(session) = self.session.as_mut() else {
            return Ok(());
        };
        // Explicit, so the removal does not depend on nft's exit; closing the
        // session would remove the owned table anyway.
        let result = session.run(&format!("delete table inet {}", table_name(self.pid)));
        self.session = None;
        self.ports.clear();
        result
    }

    fn remove_stale(
        &mut self,
        is_alive: &dyn Fn(u32) -> bool,
    ) -> Result<Vec<String>, RedirectError> {
        let listing = Command::new("nft")
            .args(["list", "tables"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| RedirectError::spawn("nft list tables", &e))?;
        if !listing.status.success() {
            return Err(RedirectError::Command {
                command: "nft list tables".into(),
                output: String::from_utf8_lossy(&listing.stderr).trim().to_owned(),
            });
        }
        let mut removed = Vec::new();
        for (family, name, pid) in remora_tables(&String::from_utf8_lossy(&listing.stdout)) {
            if pid == self.pid || is_alive(pid) {
                continue;
            }
            let deleted = Command::new("nft")
                .args(["delete", "table", &family, &name])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| RedirectError::spawn("nft delete table", &e))?;
            if deleted.status.success() {
                removed.push(format!("table {family} {name}"));
            } else {
                // Typically EPERM: owned by a live agent in another pid namespace.
                tracing::debug!(
                    table = %name,
                    error = %String::from_utf8_lossy(&deleted.stderr).trim(),
                    "cannot remove a leftover table"
                );
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests;
