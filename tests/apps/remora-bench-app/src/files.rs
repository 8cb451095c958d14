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

/// Opens `path` and reads it one byte per `read(2)` call to the end, `n` times (after
/// untimed warm-up passes), checking every pass read the whole file: the way naive
/// programs (and some parsers) read small files.
pub fn read_bytes(path: &str, n: u64) -> Result<Report, String> {
    use std::io::Read;
    let len = std::fs::metadata(path)
        .map_err(|e| format!("stat {path}: {e}"))?
        .len();
    Report::measure(n, Some(len), || {
        let mut file = std::fs::File::open(path).map_err(|e| format!("opening {path}: {e}"))?;
        let mut byte = [0u8; 1];
        let mut got = 0u64;
        loop {
            match file.read(&mut byte) {
                Ok(0) => break,
                Ok(_) => got += 1,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading {path}: {e}")),
            }
        }
        if got != len {
            return Err(format!("{path}: read {got} bytes, expected {len}"));
        }
        Ok(())
    })
}
