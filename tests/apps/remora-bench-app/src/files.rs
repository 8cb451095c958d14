//! `read-file`: whole-file reads, the way most programs read config and data files.

use crate::report::Report;

/// Reads all of `path` `n` times with `std::fs::read`, after untimed warm-up reads, and
/// checks every read returned the whole file.
pub fn read_whole(path: &str, n: u64) -> Result<Report, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("stat {path}: {e}"))?
        .len();
    Report::measure(n, Some(len), || {
        let data = std::fs::read(path).map_err(|e| format!("reading {path}: {e}"))?;
        if data.len() as u64 != len {
            return Err(format!("{path}: read {} bytes, expected {len}", data.len()));
        }
        Ok(())
    })
}
