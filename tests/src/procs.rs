//! Finding remora's background processes (intproxy, agent) that serve a
//! target, by their command line: tests use it to kill an agent, to check
//! nothing is left running, and to read memory peaks.

/// PIDs whose arguments contain `--target <target>` and whose executable name
/// (`/proc/PID/comm`) is `comm` (`remora` for the intproxy, `remora-agent`).
pub fn serving(target: &str, comm: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // Processes vanish while we look: an unreadable one is not ours.
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let serves = args
            .windows(2)
            .any(|w| w[0] == b"--target" && w[1] == target.as_bytes());
        let named =
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm);
        if serves && named {
            found.push(pid);
        }
    }
    found
}

/// The agent serving `target`, if one runs.
pub fn agent_of(target: &str) -> Option<u32> {
    serving(target, "remora-agent").into_iter().next()
}

/// Whether an intproxy or agent still serves `target`.
pub fn any_serving(target: &str) -> bool {
    !serving(target, "remora-agent").is_empty() || !serving(target, "remora").is_empty()
}

/// Peak resident memory (`VmHWM`, KiB) of process `pid`.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time (user + system, seconds) process `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: the fields start after its `)`.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    Some(ticks as f64 / per_second as f64)
}
