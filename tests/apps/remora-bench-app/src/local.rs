//! `files-local` and `sock-local`: calls on local paths that the layer must recognise
//! as local and hand straight to libc. Their cost under `remora run` minus their cost
//! without it is the layer's per-call overhead on programs that never touch the target.

use crate::report::Report;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Size of the local file read by each `files-local` iteration.
const LOCAL_FILE_LEN: usize = 4096;
/// A file under /usr/lib (a default-local tree) that Debian always has.
const LOCAL_STAT_PATH: &str = "/usr/lib/os-release";

/// `n` times: open a 4 KiB file under /tmp, read it, close it, and stat a file under
/// /usr/lib.
pub fn files(n: u64) -> Result<Report, String> {
    let scratch = Scratch::create()?;
    let path = scratch.path("local.bin");
    fs::write(&path, [0x5a; LOCAL_FILE_LEN])
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    let mut buf = [0u8; LOCAL_FILE_LEN];
    Report::measure(n, None, || {
        let mut file = File::open(&path).map_err(|e| format!("opening {}: {e}", path.display()))?;
        file.read_exact(&mut buf)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        drop(file);
        fs::metadata(LOCAL_STAT_PATH).map_err(|e| format!("stat {LOCAL_STAT_PATH}: {e}"))?;
        Ok(())
    })
}

/// `n` times: connect to a unix-domain listener under /tmp (served by a thread of this
/// process that accepts and drops every connection) and close.
pub fn sockets(n: u64) -> Result<Report, String> {
    let scratch = Scratch::create()?;
    let path = scratch.path("listener.sock");
    let listener =
        UnixListener::bind(&path).map_err(|e| format!("binding {}: {e}", path.display()))?;
    // Detached: it blocks in accept until the process exits.
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    Report::measure(n, None, || {
        let conn = UnixStream::connect(&path)
            .map_err(|e| format!("connecting {}: {e}", path.display()))?;
        drop(conn);
        Ok(())
    })
}

/// A private directory under /tmp, removed on drop.
#[derive(Debug)]
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn create() -> Result<Scratch, String> {
        let dir = Path::new("/tmp").join(format!("remora-bench-app-{}", std::process::id()));
        fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        Ok(Scratch { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Best effort: a leftover directory under /tmp is harmless.
        let _ = fs::remove_dir_all(&self.dir);
    }
}
