//! The iptables backend, for images without `nft`: a chain
//! `REMORA_<agent pid>` in the `nat` table of `iptables` and, when it works,
//! `ip6tables` (whichever of the nft or legacy variants is installed).
//!
//! # Rules
//! ```text
//! -N REMORA_4242
//! -A REMORA_4242 -m mark --mark 0x72656d6f -j RETURN
//! -I PREROUTING 1 -j REMORA_4242
//! -I OUTPUT 1 -j REMORA_4242
//! -A REMORA_4242 -p tcp -m addrtype --dst-type LOCAL --dport 8080 -j REDIRECT --to-ports 40123
//! ```
//!
//! # Cleanup
//! iptables has no owner concept, so while the chain exists a **guard**
//! process runs in the target's network namespace: `sh -c` reading a pipe
//! whose write end only the agent holds. When the agent dies, even by
//! `SIGKILL`, the read sees EOF and the guard deletes the jumps and the chain.
//! The guard runs in its own process group, so a Ctrl-C on the agent's
//! terminal does not take it down first. On an orderly removal the agent
//! kills its guard (and waits for it) before deleting the chain itself, so a
//! late guard never deletes a chain set up again afterwards. Leftovers of a
//! guard that was killed too are removed by the next agent's
//! [`Redirector::remove_stale`].

use super::redirect::{ListenerPort, RedirectError, Redirector, installed};
use remora_protocol::incoming::RemotePort;
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

/// The agent's chain.
pub fn chain_name(pid: u32) -> String {
    format!("REMORA_{pid}")
}

/// The pid in a remora chain name, if it is one.
pub fn chain_pid(name: &str) -> Option<u32> {
    name.strip_prefix("REMORA_")?.parse().ok()
}

/// Arguments that create the chain and hook it in, in order.
pub fn setup_args(chain: &str) -> Vec<Vec<String>> {
    let mark = format!("{:#x}", super::REMORA_MARK);
    [
        vec!["-N", chain],
        vec!["-A", chain, "-m", "mark", "--mark", &mark, "-j", "RETURN"],
        vec!["-I", "PREROUTING", "1", "-j", chain],
        vec!["-I", "OUTPUT", "1", "-j", chain],
    ]
    .into_iter()
    .map(nat)
    .collect()
}

/// Arguments that unhook and delete the chain, in order.
pub fn teardown_args(chain: &str) -> Vec<Vec<String>> {
    [
        vec!["-D", "PREROUTING", "-j", chain],
        vec!["-D", "OUTPUT", "-j", chain],
        vec!["-F", chain],
        vec!["-X", chain],
    ]
    .into_iter()
    .map(nat)
    .collect()
}

/// Arguments that append (`-A`) or delete (`-D`) the rule of one port.
pub fn port_args(op: &str, chain: &str, port: RemotePort, to: ListenerPort) -> Vec<String> {
    let (port, to) = (port.0.to_string(), to.0.to_string());
    nat(vec![
        op,
        chain,
        "-p",
        "tcp",
        "-m",
        "addrtype",
        "--dst-type",
        "LOCAL",
        "--dport",
        &port,
        "-j",
        "REDIRECT",
        "--to-ports",
        &to,
    ])
}

fn nat(args: Vec<&str>) -> Vec<String> {
    ["-w", "5", "-t", "nat"]
        .into_iter()
        .chain(args)
        .map(str::to_owned)
        .collect()
}

/// The guard's shell script: wait for EOF on stdin, then tear down. Every
/// word comes from [`teardown_args`] and a fixed list of programs, so none
/// needs quoting.
pub fn guard_script(tools: &[String], chain: &str) -> String {
    let mut script = String::from("while read -r _; do :; done");
    for tool in tools {
        for args in teardown_args(chain) {
            script.push_str(&format!("; {tool} {} >/dev/null 2>&1", args.join(" ")));
        }
    }
    script
}

/// Remora chains in `iptables -t nat -S` output.
pub fn remora_chains(listing: &str) -> Vec<(String, u32)> {
    listing
        .lines()
        .filter_map(|line| {
            let name = line.strip_prefix("-N ")?.trim();
            Some((name.to_owned(), chain_pid(name)?))
        })
        .collect()
}

/// Run one tool invocation.
fn run(tool: &str, args: &[String]) -> Result<String, RedirectError> {
    let output = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| RedirectError::spawn(tool, &e))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(RedirectError::Command {
            command: format!("{tool} {}", args.join(" ")),
            output: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// The guard process (see the module docs).
#[derive(Debug)]
struct Guard {
    child: Child,
}

impl Guard {
    fn spawn(script: &str) -> Result<Guard, RedirectError> {
        let child = Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| RedirectError::spawn("the cleanup guard (sh)", &e))?;
        Ok(Guard { child })
    }

    /// Stop the guard without letting it clean up.
    fn disarm(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The iptables [`Redirector`] (see the module docs).
#[derive(Debug)]
pub struct Iptables {
    chain: String,
    /// `iptables` first, then `ip6tables` when it works.
    tools: Vec<String>,
    guard: Option<Guard>,
    ports: BTreeMap<RemotePort, ListenerPort>,
}

impl Iptables {
    /// Find the tools: `iptables`, `iptables-nft` or `iptables-legacy`, and
    /// the matching `ip6tables` when its `nat` table works.
    ///
    /// # Errors
    /// [`RedirectError::NoBackend`] when none is installed.
    pub fn detect(pid: u32) -> Result<Self, RedirectError> {
        let suffix = ["", "-nft", "-legacy"]
            .into_iter()
            .find(|suffix| installed(&format!("iptables{suffix}")))
            .ok_or(RedirectError::NoBackend)?;
        let mut tools = vec![format!("iptables{suffix}")];
        let ip6 = format!("ip6tables{suffix}");
        match run(&ip6, &nat(vec!["-S"])) {
            Ok(_) => tools.push(ip6),
            Err(e) => tracing::warn!(error = %e, "no ip6tables: IPv6 traffic is not redirected"),
        }
        Ok(Self::with_tools(pid, tools))
    }

    /// A redirector driving exactly `tools`.
    pub fn with_tools(pid: u32, tools: Vec<String>) -> Self {
        Iptables {
            chain: chain_name(pid),
            tools,
            guard: None,
            ports: BTreeMap::new(),
        }
    }

    /// Create the chain in every tool, guarded; all or nothing.
    fn set_up(&mut self) -> Result<(), RedirectError> {
        let guard = Guard::spawn(&guard_script(&self.tools, &self.chain))?;
        for tool in &self.tools {
            for args in setup_args(&self.chain) {
                if let Err(e) = run(tool, &args) {
                    let _ = self.tear_down_chain();
                    guard.disarm();
                    return Err(e);
                }
            }
        }
        self.guard = Some(guard);
        Ok(())
    }

    /// Unhook and delete the chain in every tool, ignoring what is missing.
    /// Returns the first error.
    fn tear_down_chain(&self) -> Result<(), RedirectError> {
        let mut first = None;
        for tool in &self.tools {
            for args in teardown_args(&self.chain) {
                if let Err(e) = run(tool, &args) {
                    tracing::debug!(error = %e, "teardown step failed");
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Redirector for Iptables {
    fn add(&mut self, port: RemotePort, to: ListenerPort) -> Result<(), RedirectError> {
        if self.guard.is_none() {
            self.set_up()?;
        }
        for (done, tool) in self.tools.iter().enumerate() {
            if let Err(e) = run(tool, &port_args("-A", &self.chain, port, to)) {
                for tool in &self.tools[..done] {
                    let _ = run(tool, &port_args("-D", &self.chain, port, to));
                }
                if self.ports.is_empty() {
                    let _ = self.remove_all();
                }
                return Err(e);
            }
        }
        self.ports.insert(port, to);
        Ok(())
    }

    fn remove(&mut self, port: RemotePort) -> Result<(), RedirectError> {
        let Some(to) = self.ports.remove(&port) else {
            return Ok(());
        };
        let mut first = None;
        for tool in &self.tools {
            if let Err(e) = run(tool, &port_args("-D", &self.chain, port, to)) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn remove_all(&mut self) -> Result<(), RedirectError> {
        let Some(guard) = self.guard.take() else {
            return Ok(());
        };
        guard.disarm();
        self.ports.clear();
        self.tear_down_chain()
    }

    fn remove_stale(
        &mut self,
        is_alive: &dyn Fn(u32) -> bool,
    ) -> Result<Vec<String>, RedirectError> {
        let mut removed = Vec::new();
        for tool in &self.tools {
            let listing = run(tool, &nat(vec!["-S"]))?;
            for (chain, pid) in remora_chains(&listing) {
                if chain == self.chain || is_alive(pid) {
                    continue;
                }
                // A jump may already be gone; the chain deletion (last) says.
                let mut deleted = Ok(String::new());
                for args in teardown_args(&chain) {
                    deleted = run(tool, &args);
                }
                match deleted {
                    Ok(_) => removed.push(format!("{tool} chain {chain}")),
                    Err(e) => tracing::debug!(error = %e, "cannot remove a leftover chain"),
                }
            }
        }
        Ok(removed)
    }
}

impl Drop for Iptables {
    fn drop(&mut self) {
        if let Err(e) = self.remove_all() {
            tracing::warn!(error = %e, "cannot remove the agent's iptables rules");
        }
    }
}

#[cfg(test)]
mod tests;
