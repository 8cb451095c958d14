//! `remora ls [-n NS] [--json]`: the targets a user can pick, per platform.
//!
//! [`Platform`] is the seam: [`LocalPlatform`] lists processes of this
//! machine (`pid/<PID>`), [`kube::KubeListing`] the pods and workloads of a
//! namespace, in the same JSON shape ([`TargetEntry`], documented in
//! `docs/ide.md`).

use crate::args::LsArgs;
use crate::error::{Error, Result};
use crate::procfs::Proc;
use serde_json::{Value, json};

/// One target a user can pick.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetEntry {
    /// What to pass to `--target` (`pid/42`).
    pub target: String,
    /// The platform that lists it (`local`).
    pub platform: String,
    /// A short description (the command line).
    pub description: String,
    /// Platform-specific details (for `pid/`: pid, uid, namespaces, addresses).
    pub details: Value,
}

impl TargetEntry {
    pub fn to_json(&self) -> Value {
        json!({
            "target": self.target,
            "platform": self.platform,
            "description": self.description,
            "details": self.details,
        })
    }
}

mod kube;

/// A source of targets.
pub trait Platform {
    fn name(&self) -> &str;
    /// # Errors
    /// Why the platform could not be asked (a cluster that does not answer).
    fn targets(&self) -> std::result::Result<Vec<TargetEntry>, String>;
}

/// Processes of this machine. Those in another network namespace than
/// remora's ("sandboxed": containers, the test harness's pods) come first,
/// with their namespaces and IPv4 addresses; kernel threads and remora's own
/// processes are left out.
#[derive(Debug, Default)]
pub struct LocalPlatform {
    pub proc: Proc,
    /// The process whose namespaces count as "not sandboxed" (ours).
    pub own_pid: u32,
}

/// Namespaces compared to tell a sandboxed process.
const NAMESPACES: [&str; 3] = ["net", "mnt", "uts"];

impl Platform for LocalPlatform {
    fn name(&self) -> &str {
        "local"
    }

    fn targets(&self) -> std::result::Result<Vec<TargetEntry>, String> {
        let own: Vec<Option<String>> = NAMESPACES
            .iter()
            .map(|ns| self.proc.namespace(self.own_pid, ns))
            .collect();
        let mut entries: Vec<(bool, TargetEntry)> = Vec::new();
        for pid in self.proc.pids() {
            let Some(cmdline) = self.proc.cmdline(pid) else {
                continue;
            };
            let first = cmdline.split(' ').next().unwrap_or_default();
            let is_remora = std::path::Path::new(first)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("remora"));
            if cmdline.is_empty() || pid == self.own_pid || is_remora {
                continue;
            }
            let differs: Vec<&str> = NAMESPACES
                .iter()
                .zip(&own)
                .filter(|(ns, mine)| {
                    let theirs = self.proc.namespace(pid, ns);
                    theirs.is_some() && mine.is_some() && theirs != **mine
                })
                .map(|(ns, _)| *ns)
                .collect();
            let sandboxed = differs.contains(&"net");
            let addresses: Vec<String> = if sandboxed {
                self.proc
                    .addresses(pid)
                    .iter()
                    .map(ToString::to_string)
                    .collect()
            } else {
                Vec::new()
            };
            entries.push((
                sandboxed,
                TargetEntry {
                    target: format!("pid/{pid}"),
                    platform: "local".into(),
                    description: cmdline,
                    details: json!({
                        "pid": pid,
                        "uid": self.proc.uid(pid),
                        "sandboxed": sandboxed,
                        "namespaces": differs,
                        "addresses": addresses,
                    }),
                },
            ));
        }
        // Sandboxed first, then by pid (stable sort keeps pid order).
        entries.sort_by_key(|(sandboxed, _)| !sandboxed);
        Ok(entries.into_iter().map(|(_, e)| e).collect())
    }
}

/// This machine's processes.
pub fn local_platform() -> LocalPlatform {
    LocalPlatform {
        proc: Proc::default(),
        own_pid: std::process::id(),
    }
}

/// The platforms `remora ls` asks, and whether each was asked for
/// explicitly (its failure is then an error, else a warning).
fn platforms(args: &LsArgs) -> Result<Vec<(Box<dyn Platform>, bool)>> {
    let only = args.platform.as_deref();
    let mut out: Vec<(Box<dyn Platform>, bool)> = Vec::new();
    if only != Some("kubernetes") {
        out.push((Box::new(local_platform()), only.is_some()));
    }
    if only != Some("local") {
        let explicit = only.is_some()
            || args.namespace.is_some()
            || args.context.is_some()
            || args.kubeconfig.is_some();
        let listing = kube::KubeListing::from_args(args)?;
        if explicit || listing.cluster_configured() {
            out.push((Box::new(listing), explicit));
        }
    }
    Ok(out)
}

/// The table `remora ls` prints: local processes, then cluster targets.
pub fn table(entries: &[TargetEntry]) -> String {
    let (kube, local): (Vec<&TargetEntry>, Vec<&TargetEntry>) =
        entries.iter().partition(|e| e.platform == kube::PLATFORM);
    let mut out = String::new();
    if !local.is_empty() {
        out.push_str(&local_table(&local));
    }
    if !kube.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&kube::table(&kube));
    }
    out
}

fn local_table(entries: &[&TargetEntry]) -> String {
    let mut out = format!("{:<14} {:<24} {}\n", "TARGET", "SANDBOX", "COMMAND");
    for e in entries {
        let sandbox = if e.details["sandboxed"].as_bool() == Some(true) {
            let addrs: Vec<&str> = e.details["addresses"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if addrs.is_empty() {
                "yes".to_string()
            } else {
                addrs.join(",")
            }
        } else {
            "-".to_string()
        };
        let mut command = e.description.clone();
        if command.len() > 80 {
            let cut = (0..=77)
                .rev()
                .find(|i| command.is_char_boundary(*i))
                .unwrap_or(0);
            command.truncate(cut);
            command.push_str("...");
        }
        out.push_str(&format!("{:<14} {:<24} {}\n", e.target, sandbox, command));
    }
    out
}

pub fn run(args: LsArgs) -> Result<i32> {
    let mut entries: Vec<TargetEntry> = Vec::new();
    for (platform, explicit) in platforms(&args)? {
        match platform.targets() {
            Ok(list) => entries.extend(list),
            Err(reason) if explicit => {
                return Err(Error::List {
                    platform: platform.name().to_owned(),
                    reason,
                });
            }
            Err(reason) => eprintln!(
                "remora: warning: not listing {} targets: {reason}",
                platform.name()
            ),
        }
    }
    if args.json {
        let list: Vec<Value> = entries.iter().map(TargetEntry::to_json).collect();
        println!("{}", Value::Array(list));
    } else {
        print!("{}", table(&entries));
    }
    Ok(0)
}

#[cfg(test)]
mod tests;
