//! Shared pieces of the database-branch tests and benchmark: a local
//! process standing in for the workload whose environment names the
//! database, and a content checksum of a database's dump.

use std::process::{Child, Command};

/// A process of this machine standing in for the workload (`sleep`), with
/// `vars` in its environment; killed and reaped on drop.
#[derive(Debug)]
pub struct Workload(Child);

impl Workload {
    /// Start it.
    ///
    /// # Panics
    /// `sleep` cannot be started.
    pub fn start(vars: &[(&str, &str)]) -> Workload {
        let mut cmd = Command::new("sleep");
        cmd.arg("3600");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        Workload(cmd.spawn().expect("starting sleep"))
    }

    /// Its target name, `pid/<PID>`.
    pub fn target(&self) -> String {
        format!("pid/{}", self.0.id())
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A checksum (FNV-1a, 64 bits, hex) of what `pg_dump` (a ready command
/// naming the database) prints, without the random `\restrict` key lines
/// of pg_dump 15.14+ and 18.
///
/// # Panics
/// pg_dump fails.
pub fn dump_checksum(pg_dump: &mut Command) -> String {
    let out = pg_dump.output().expect("running pg_dump");
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let hash = text
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .flat_map(str::bytes)
        .fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
        });
    format!("{hash:x}")
}
