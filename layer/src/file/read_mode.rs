//! Write-opens in read mode: opening a target file for writing in `read`
//! mode creates or changes a *local* file at that path, by design. When the
//! path exists in the target, the program most likely meant the target's
//! file (an SQLite shell opening the pod's database got an empty local one),
//! so the layer says so once per process, naming the fix.
//!
//! The check costs one remote `stat`, only for a write-open that read mode
//! sent local although reads of that path go to the target, and at most
//! [`MAX_CHECKS`] times per process.

use super::ops::{self, Routed};
use crate::session;
use libc::c_int;
use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Remote `stat`s spent looking before the layer stops looking.
const MAX_CHECKS: usize = 32;

static WARNED: AtomicBool = AtomicBool::new(false);
static CHECKS: AtomicUsize = AtomicUsize::new(0);

/// After `open` flags `flags` on `path` were routed local: warn if that was
/// read mode turning away a write to a file the target has.
pub fn check(dirfd: c_int, path: &CStr, flags: c_int) {
    if !ops::opens_for_write(flags) || WARNED.load(Ordering::Relaxed) {
        return;
    }
    // Where a read of the same path would go (local paths cost nothing more).
    let Ok(Routed::Remote(abs)) = ops::locate(dirfd, path, false) else {
        return;
    };
    if CHECKS.fetch_add(1, Ordering::Relaxed) >= MAX_CHECKS {
        return;
    }
    if ops::stat_remote(&abs, true).is_ok() && !WARNED.swap(true, Ordering::Relaxed) {
        session::warn(&message(&abs));
    }
}

fn message(path: &str) -> String {
    format!(
        "{path} exists in the target, but the file system mode is \"read\": this open \
         writes a local file instead. To write the target's file, run with --fs-mode write \
         (fs.mode = \"write\", or list it in fs.read_write); to keep it local and silence \
         this, list it in fs.local. (said once per process)"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_message_names_the_path_and_both_fixes() {
        let m = super::message("/data/app.db");
        assert!(m.starts_with("/data/app.db exists in the target"), "{m}");
        assert!(
            m.contains("--fs-mode write") && m.contains("fs.local"),
            "{m}"
        );
    }
}
