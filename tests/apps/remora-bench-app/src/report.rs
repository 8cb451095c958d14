//! What a measured loop prints: one line of `key=value` pairs.

use std::fmt;
use std::time::{Duration, Instant};

const MIB: f64 = 1024.0 * 1024.0;

/// The result of one timed loop.
#[derive(Debug)]
pub struct Report {
    /// Operations in the timed loop (warm-up excluded).
    pub ops: u64,
    /// Wall-clock time of the timed loop.
    pub elapsed: Duration,
    /// Payload bytes moved by the timed loop, when it moves any.
    pub bytes: Option<u64>,
    /// CPU time this thread spent in the timed loop (user and system), when the
    /// kernel reports it: on a loaded machine it moves far less than wall-clock
    /// time, which also counts the waits for a CPU.
    pub cpu: Option<Duration>,
}

impl Report {
    /// Times `ops` calls of `op`, after `warmup(ops)` untimed ones (first calls pay for
    /// page faults, lazy initialisation and cold caches the steady state does not).
    pub fn measure(
        ops: u64,
        bytes_per_op: Option<u64>,
        mut op: impl FnMut() -> Result<(), String>,
    ) -> Result<Report, String> {
        for _ in 0..warmup(ops) {
            op()?;
        }
        let cpu_start = thread_cpu_time();
        let start = Instant::now();
        for _ in 0..ops {
            op()?;
        }
        let elapsed = start.elapsed();
        let cpu = thread_cpu_time()
            .zip(cpu_start)
            .map(|(end, start)| end.saturating_sub(start));
        Ok(Report {
            ops,
            elapsed,
            bytes: bytes_per_op.map(|b| b * ops),
            cpu,
        })
    }
}

/// The calling thread's CPU time so far (`/proc/thread-self/schedstat`'s first
/// field, in nanoseconds), `None` where the kernel has no schedstat.
pub fn thread_cpu_time() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Untimed iterations before a loop of `ops`: a tenth, at least 1, at most 1000.
pub fn warmup(ops: u64) -> u64 {
    (ops / 10).clamp(1, 1000)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        write!(
            f,
            "ns_per_op={:.1} ops={}",
            secs * 1e9 / self.ops as f64,
            self.ops
        )?;
        if let Some(cpu) = self.cpu {
            write!(
                f,
                " cpu_ns_per_op={:.1}",
                cpu.as_secs_f64() * 1e9 / self.ops as f64
            )?;
        }
        if let Some(bytes) = self.bytes {
            write!(
                f,
                " mib_per_s={:.1} bytes={bytes}",
                bytes as f64 / MIB / secs
            )?;
        }
        Ok(())
    }
}
