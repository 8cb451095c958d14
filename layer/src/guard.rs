//! Re-entrancy protection: while the layer itself runs (talking to the
//! intproxy, allocating, logging), every hooked call goes straight to libc.

use std::cell::Cell;

thread_local! {
    // `const` + `Cell<bool>`: no destructor, so it stays usable while a thread
    // is being torn down (hooks can run from TLS destructors of other code).
    static IN_LAYER: Cell<bool> = const { Cell::new(false) };
}

/// Held while layer code runs on this thread. Creating a second one on the
/// same thread fails, which is how a hook knows it was called from the layer.
#[derive(Debug)]
pub struct DetourGuard(());

impl DetourGuard {
    /// `None` when this thread is already inside the layer (or its TLS is gone).
    pub fn enter() -> Option<Self> {
        IN_LAYER
            .try_with(|flag| {
                if flag.get() {
                    None
                } else {
                    flag.set(true);
                    Some(DetourGuard(()))
                }
            })
            .ok()
            .flatten()
    }
}

impl Drop for DetourGuard {
    fn drop(&mut self) {
        let _ = IN_LAYER.try_with(|flag| flag.set(false));
    }
}
