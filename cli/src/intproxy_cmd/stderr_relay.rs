//! Lets go of the caller's stderr when the run is over.
//!
//! The intproxy (and the agent it starts) inherit the stderr of `remora run`.
//! When that is a pipe (`remora run … 2>&1 | cat`, `$(remora run … 2>&1)`),
//! the reader would wait for the intproxy's linger after the command ended.
//! So the intproxy's stderr becomes a pipe of its own, copied to the caller's
//! by a thread until the last layer session has left; then the caller's end
//! is closed. Later messages (a daemonised child reconnecting during the
//! linger) are dropped.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the copy goes on after the run's last process left, for the
/// lines written just before.
const DRAIN: Duration = Duration::from_millis(100);

/// Relay stderr when it is a pipe; the returned sender is the intproxy's
/// `on_idle`. `None` when stderr is a terminal, a file or closed.
pub fn relay_if_pipe() -> Option<SyncSender<()>> {
    let original = File::from(std::io::stderr().as_fd().try_clone_to_owned().ok()?);
    if !original.metadata().ok()?.file_type().is_fifo() {
        return None;
    }
    let (read, write) = nix::unistd::pipe().ok()?;
    nix::unistd::dup2_stderr(&write).ok()?;
    drop(write);
    // caller's stderr, shared by the copier (writes) and the idle watcher (closes).
    let sink = Arc::new(Mutex::new(Some(original)));
    let copier_sink = sink.clone();
    std::thread::Builder::new()
        .name("stderr-relay".into())
        .spawn(move || {
            let mut read = File::from(read);
            let mut buf = [0u8; 8192];
            while let Ok(n @ 1..) = read.read(&mut buf) {
                if let Some(out) = copier_sink
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_mut()
                {
                    let _ = out.write_all(&buf[..n]);
                }
            }
        })
        .ok()?;
    // intproxy --idle--> watcher
    let (idle_tx, idle_rx) = sync_channel(1);
    std::thread::Builder::new()
        .name("stderr-release".into())
        .spawn(move || {
            if idle_rx.recv().is_ok() {
                std::thread::sleep(DRAIN);
                sink.lock().unwrap_or_else(|e| e.into_inner()).take();
            }
        })
        .ok()?;
    Some(idle_tx)
}
