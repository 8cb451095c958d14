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
        let start = Instant::now();
        for _ in 0..ops {
            op()?;
        }
        Ok(Report {
            ops,
            elapsed: start.elapsed(),
            bytes: bytes_per_op.map(|b| b * ops),
        })
    }
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
