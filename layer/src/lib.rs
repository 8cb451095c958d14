//! `libremora_layer.so`: loaded into the user's process with `LD_PRELOAD`, it
//! makes the process see the target's files, DNS and network.
//!
//! # Hook mechanism
//! Exported-symbol interposition: every hook is a `#[no_mangle] extern "C"`
//! function with libc's name and signature. The dynamic linker binds the
//! application's (and its libraries') calls to the first definition in link
//! order, and `LD_PRELOAD` puts this library first; the hook reaches the real
//! function with `dlsym(RTLD_NEXT)` ([`real`]). This works on x86_64 and
//! aarch64 glibc alike and needs no code patching. Its limit: calls that libc
//! makes *internally* (e.g. `fopen` → `__open`, `opendir` → `__openat_nocancel`)
//! do not go through the PLT, so the layer hooks those entry points
//! themselves (`fopen`, `opendir`, `realpath`...) rather than their internals.
//! Statically linked programs and Go binaries (which issue syscalls directly)
//! are not affected by any `LD_PRELOAD` layer; `remora run` warns about them.
//!
//! # Structure
//! Organised by libc area: [`socket`], [`dns`], [`file`], [`process`], plus
//! [`fd`] (managed-fd book-keeping and `close`/`dup*`). Each area has `hooks`
//! (tiny `unsafe extern "C"` shims) and `ops` (safe logic returning
//! [`error::HookResult`], whose `Bypass` means "call libc"). Re-entrancy is
//! blocked by [`guard::DetourGuard`]: while layer code runs on a thread, every
//! hook on that thread calls libc directly. No async runtime and no threads:
//! a small pool of blocking connections to the intproxy per process
//! ([`session`]). Every lock is fork-safe ([`sync`], [`process`]).
//!
//! # Safety
//! This crate allows `unsafe` (the rest of the workspace forbids it): it is
//! injected into foreign processes and speaks the C ABI. Every `unsafe` block
//! states why it is sound.

pub mod broker;
pub mod dns;
pub mod error;
pub mod exec;
pub mod fd;
pub mod file;
pub mod guard;
pub mod process;
pub mod real;
pub mod session;
pub mod sockaddr;
pub mod socket;
pub mod state;
pub mod sync;
pub mod syscall;
pub mod uring;

/// Environment variable that makes the layer print why it is inactive.
pub const DEBUG_ENV: &str = "REMORA_LAYER_DEBUG";

#[ctor::ctor(unsafe)]
fn remora_layer_init() {
    let _guard = guard::DetourGuard::enter();
    if let Err(reason) = state::init() {
        if std::env::var_os(DEBUG_ENV).is_some() {
            session::warn(&format!("layer inactive: {reason}"));
        }
    }
}
