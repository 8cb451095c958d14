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
