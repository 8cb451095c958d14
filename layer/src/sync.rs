//! Locks that survive `fork`: every lock a hook can take is a [`ForkMutex`]
//! or [`ForkRwLock`], and [`crate::process`] holds all of them across `fork`.
//!
//! They are plain futex locks with no global parking table (unlike
//! `parking_lot`, whose unlock in a forked child may need a bucket lock that
//! another parent thread held at the fork). The `pthread_atfork` prepare
//! handler takes them in [`LOCK_ORDER`] order, so no thread is inside any of
//! them while the address space is copied; the parent releases them, the
//! child resets them (no other thread exists there to wake).
//!
//! Rule for every user: a lock is a leaf. No code takes a second lock while
//! holding one, and none is held across a round trip to the intproxy
//! (collect under the lock, release, then talk).

use lock_api::{GuardSend, RawMutex, RawRwLock};
use std::sync::atomic::{AtomicU32, Ordering};

/// The order in which the fork handler takes the layer's locks (documentation
/// of [`crate::process`]'s prepare handler; each name is the static's path).
pub const LOCK_ORDER: &[&str] = &[
    "session::POOL",
    "broker::POOL",
    "fd::TABLE",
    "file::dir::DIRS",
    "file::dir::CURSORS",
    "dns::hooks::OURS",
    "dns::HOSTNAMES",
    "socket::UDP_ROUTES",
];

/// Spins before sleeping in the kernel: the layer's critical sections are a
/// few map operations long.
const SPINS: u32 = 64;

/// Sleep until `word` may have changed from `expected` (spurious wake-ups are fine).
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<std::time::Duration>) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // A lock taken inside a hook must not leave its EAGAIN/EINTR/ETIMEDOUT
    // in the application's errno (readdir callers read it on success).
    let saved = crate::error::errno();
    // SAFETY: FUTEX_WAIT on a live, aligned u32; the kernel only reads it.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            ts_ptr,
        )
    };
    crate::error::set_errno(saved);
}

/// Wake up to `n` threads sleeping on `word`.
pub fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: FUTEX_WAKE on a live, aligned u32.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            n,
        )
    };
}

/// Futex mutex: 0 free, 1 locked, 2 locked with sleepers (Drepper's "mutex 2").
#[derive(Debug)]
pub struct RawForkMutex {
    state: AtomicU32,
}

impl RawForkMutex {
    /// Make the lock free again, whoever held it. Only for the `fork` child,
    /// where the holder (the prepare handler) is the only thread left.
    ///
    /// # Safety
    /// No other thread may be using the lock.
    pub unsafe fn reset(&self) {
        self.state.store(0, Ordering::Release);
    }

    #[cold]
    fn lock_slow(&self) {
        for _ in 0..SPINS {
            if self.try_lock() {
                return;
            }
            std::hint::spin_loop();
        }
        let mut c = self.state.swap(2, Ordering::Acquire);
        while c != 0 {
            futex_wait(&self.state, 2, None);
            c = self.state.swap(2, Ordering::Acquire);
        }
    }
}

// SAFETY: a thread owns the lock from a successful 0→1/2 transition until it
// stores 0; the Acquire/Release pairs order the protected data.
unsafe impl RawMutex for RawForkMutex {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = RawForkMutex {
        state: AtomicU32::new(0),
    };
    type GuardMarker = GuardSend;

    #[inline]
    fn lock(&self) {
        if !self.try_lock() {
            self.lock_slow();
        }
    }

    #[inline]
    fn try_lock(&self) -> bool {
        self.state
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    #[inline]
    unsafe fn unlock(&self) {
        if self.state.swap(0, Ordering::Release) == 2 {
            futex_wake(&self.state, 1);
        }
    }
}

/// Futex reader-writer lock: the low bits count readers, [`WRITER`] marks a
/// writer, [`SLEEPERS`] says someone waits (every unlock to idle wakes all).
#[derive(Debug)]
pub struct RawForkRwLock {
    state: AtomicU32,
}

const WRITER: u32 = 1 << 31;
const SLEEPERS: u32 = 1 << 30;
const READERS: u32 = SLEEPERS - 1;

impl RawForkRwLock {
    /// See [`RawForkMutex::reset`].
    ///
    /// # Safety
    /// No other thread may be using the lock.
    pub unsafe fn reset(&self) {
        self.state.store(0, Ordering::Release);
    }

    /// Mark that we sleep, then sleep while the state is what we saw.
    fn sleep(&self, seen: u32) {
        let marked = seen | SLEEPERS;
        if seen & SLEEPERS == 0
            && self
                .state
                .compare_exchange(seen, marked, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        futex_wait(&self.state, marked, None);
    }

    fn release_to(&self, prev: u32, now: u32) {
        // Idle with sleepers: clear the flag and wake them all to retry.
        if now == SLEEPERS
            && self
                .state
                .compare_exchange(SLEEPERS, 0, Ordering::Release, Ordering::Relaxed)
                .is_ok()
        {
            futex_wake(&self.state, i32::MAX);
        }
        let _ = prev;
    }
}

// SAFETY: readers only enter while WRITER is clear, a writer only from a
// state without readers or writer; Acquire/Release order the data.
unsafe impl RawRwLock for RawForkRwLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = RawForkRwLock {
        state: AtomicU32::new(0),
    };
    type GuardMarker = GuardSend;

    fn lock_shared(&self) {
        let mut spins = 0;
        while !self.try_lock_shared() {
            let seen = self.state.load(Ordering::Relaxed);
            if seen & WRITER == 0 {
                continue;
            }
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                self.sleep(seen);
            }
        }
    }

    #[inline]
    fn try_lock_shared(&self) -> bool {
        let s = self.state.load(Ordering::Relaxed);
        s & WRITER == 0
            && s & READERS != READERS
            && self
                .state
                .compare_exchange_weak(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
    }

    #[inline]
    unsafe fn unlock_shared(&self) {
        let prev = self.state.fetch_sub(1, Ordering::Release);
        self.release_to(prev, prev - 1);
    }

    fn lock_exclusive(&self) {
        let mut spins = 0;
        while !self.try_lock_exclusive() {
            let seen = self.state.load(Ordering::Relaxed);
            if seen & !SLEEPERS == 0 {
                continue;
            }
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                self.sleep(seen);
            }
        }
    }

    #[inline]
    fn try_lock_exclusive(&self) -> bool {
        let s = self.state.load(Ordering::Relaxed);
        s & !SLEEPERS == 0
            && self
                .state
                .compare_exchange(s, s | WRITER, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
    }

    #[inline]
    unsafe fn unlock_exclusive(&self) {
        let prev = self.state.fetch_and(!WRITER, Ordering::Release);
        self.release_to(prev, prev & !WRITER);
    }
}

/// A mutex the fork handlers can hold across `fork`.
pub type ForkMutex<T> = lock_api::Mutex<RawForkMutex, T>;
/// A reader-writer lock the fork handlers can hold across `fork`.
pub type ForkRwLock<T> = lock_api::RwLock<RawForkRwLock, T>;

/// Hold `lock` (exclusively) until [`release_mutex`] or [`reset_mutex`].
pub fn hold_mutex<T>(lock: &ForkMutex<T>) {
    // SAFETY: paired with release/reset in the fork handlers.
    unsafe { lock.raw() }.lock();
}

/// Release a lock taken by [`hold_mutex`] on this thread.
///
/// # Safety
/// The caller took it with [`hold_mutex`].
pub unsafe fn release_mutex<T>(lock: &ForkMutex<T>) {
    // SAFETY: the caller holds it.
    unsafe { lock.force_unlock() };
}

/// Free a lock in the forked child.
///
/// # Safety
/// Only in the `fork` child handler.
pub unsafe fn reset_mutex<T>(lock: &ForkMutex<T>) {
    // SAFETY: the child has a single thread.
    unsafe { lock.raw().reset() };
}

/// Hold `lock` for writing until [`release_rwlock`] or [`reset_rwlock`].
pub fn hold_rwlock<T>(lock: &ForkRwLock<T>) {
    // SAFETY: paired with release/reset in the fork handlers.
    unsafe { lock.raw() }.lock_exclusive();
}

/// Release a lock taken by [`hold_rwlock`] on this thread.
///
/// # Safety
/// The caller took it with [`hold_rwlock`].
pub unsafe fn release_rwlock<T>(lock: &ForkRwLock<T>) {
    // SAFETY: the caller holds it exclusively.
    unsafe { lock.force_unlock_write() };
}

/// Free a lock in the forked child.
///
/// # Safety
/// Only in the `fork` child handler.
pub unsafe fn reset_rwlock<T>(lock: &ForkRwLock<T>) {
    // SAFETY: the child has a single thread.
    unsafe { lock.raw().reset() };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_futex_wait_leaves_the_callers_errno_alone() {
        // The word is not the expected value: FUTEX_WAIT fails with EAGAIN
        // at once, which must not reach the application's errno.
        let word = AtomicU32::new(1);
        crate::error::set_errno(0);
        futex_wait(&word, 0, None);
        assert_eq!(crate::error::errno(), 0);
        crate::error::set_errno(libc::ENOENT);
        futex_wait(&word, 0, None);
        assert_eq!(crate::error::errno(), libc::ENOENT);
    }

    #[test]
    fn mutex_counts_under_contention() {
        let m = Arc::new(ForkMutex::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        *m.lock() += 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*m.lock(), 80_000);
    }

    #[test]
    fn rwlock_writers_and_readers_agree() {
        let l = Arc::new(ForkRwLock::new((0u64, 0u64)));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let l = l.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if i % 2 == 0 {
                            let mut g = l.write();
                            g.0 += 1;
                            g.1 += 1;
                        } else {
                            let g = l.read();
                            assert_eq!(g.0, g.1);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(l.read().0, 20_000);
    }

    #[test]
    fn held_lock_is_free_after_reset() {
        let m = ForkMutex::new(());
        hold_mutex(&m);
        assert!(m.try_lock().is_none());
        // SAFETY: single-threaded test standing in for the fork child.
        unsafe { reset_mutex(&m) };
        assert!(m.try_lock().is_some());
        let l = ForkRwLock::new(());
        hold_rwlock(&l);
        assert!(l.try_read().is_none());
        // SAFETY: as above.
        unsafe { reset_rwlock(&l) };
        assert!(l.try_write().is_some());
    }
}
