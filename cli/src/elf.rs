//! Just enough ELF reading to warn about programs `LD_PRELOAD` cannot reach.

use std::io::Read;
use std::path::Path;

/// What kind of executable a file is, as far as the layer is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Dynamically linked against libc: the layer works.
    Dynamic,
    /// No program interpreter: `LD_PRELOAD` is ignored.
    Static,
    /// A Go binary: syscalls bypass libc.
    Go,
}

/// Classify an ELF executable; `None` for scripts and non-ELF files.
pub fn inspect(path: &Path) -> Option<Kind> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut data = Vec::new();
    // Go's build info sits near the start of the data; 32 MiB is plenty.
    file.by_ref().take(32 << 20).read_to_end(&mut data).ok()?;
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        return None; // not a 64-bit little-endian ELF
    }
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    let phoff = u64_at(0x20)? as usize;
    let phentsize = u16_at(0x36)? as usize;
    let phnum = u16_at(0x38)? as usize;
    let has_interp = (0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        data.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            == Some(3)
    });
    let is_go = memfind(&data, b"\xff Go buildinf:").is_some();
    Some(match (is_go, has_interp) {
        (true, _) => Kind::Go,
        (false, false) => Kind::Static,
        (false, true) => Kind::Dynamic,
    })
}

fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_system_binaries() {
        assert_eq!(inspect(Path::new("/bin/sh")), Some(Kind::Dynamic));
        assert_eq!(inspect(Path::new("/etc/hostname")), None);
    }
}
