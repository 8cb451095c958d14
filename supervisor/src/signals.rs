//! Signals for a notified call that a thread of the supervisor waits on.
//!
//! The filter is installed with `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV`
//! (Linux 5.19) where the kernel has it: once the supervisor has received a
//! notification, only a fatal signal ends the program's wait for the
//! answer. Without it a signal could end the wait in the instant after the
//! supervisor's answer was accepted (`SECCOMP_IOCTL_NOTIF_SEND` returns 0)
//! but before the woken thread looked at it: the kernel then drops the
//! answer and restarts the call, and whatever the answer carried (a
//! datagram, an accepted connection) was lost.
//!
//! The price is that a non-fatal signal waits for the answer. For the calls
//! answered at once that is microseconds; for the calls a waiter thread
//! holds (a blocking UDP receive or `accept` with nothing pending) it
//! could be for ever, so the waiters look at the thread's pending signals
//! between short waits ([`Watch`]) and end the call as the kernel would:
//! `ERESTARTSYS`, which the kernel turns into `EINTR`, or a restart of the
//! call under `SA_RESTART`, once it has run the handler.

/// How often a waiter looks at its thread's signals (and whether its call
/// still waits): the delay a signal handler can see.
pub const CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// `ERESTARTSYS` (kernel-internal, never seen by a program): the answer that
/// makes the kernel restart the call, or fail it with `EINTR` when the
/// signal's handler lacks `SA_RESTART`. Only valid when a signal is
/// pending for the thread (else the program would see errno 512).
pub const ERESTARTSYS: i32 = 512;

/// The signal masks of `/proc/TID/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Masks {
    /// Pending for this thread (`SigPnd`).
    pub thread: u64,
    /// Pending for the whole process (`ShdPnd`).
    pub shared: u64,
    /// Blocked by this thread (`SigBlk`).
    pub blocked: u64,
    /// Threads of the process (`Threads`).
    pub threads: u32,
}

impl Masks {
    /// The masks in the text of `/proc/TID/status`.
    pub fn parse(status: &str) -> Option<Masks> {
        let mut masks = Masks::default();
        let mut seen = 0;
        for line in status.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            let hex = || u64::from_str_radix(value, 16).ok();
            match key {
                "SigPnd" => masks.thread = hex()?,
                "ShdPnd" => masks.shared = hex()?,
                "SigBlk" => masks.blocked = hex()?,
                "Threads" => masks.threads = value.parse().ok()?,
                _ => continue,
            }
            seen += 1;
        }
        (seen == 4).then_some(masks)
    }

    /// Those of thread `tid` now.
    pub fn of(tid: u32) -> Option<Masks> {
        Masks::parse(&std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?)
    }
}

/// What a waiter does about signals, checked between its waits.
#[derive(Debug, Default)]
pub struct Watch {
    /// A signal for the whole process was pending at the last check.
    shared_before: bool,
}

impl Watch {
    /// The errno to end the call with, if a signal waits for thread `tid`:
    /// - one sent to the thread itself, or to a process of one thread: the
    ///   kernel flagged this thread, so `ERESTARTSYS` (restart or `EINTR`,
    ///   as the handler says);
    /// - one sent to a process of several threads, still pending at two
    ///   checks in a row: no other thread took it, so it most likely waits
    ///   for this one; `EINTR` (not `ERESTARTSYS`, which a thread the
    ///   kernel did not flag would return as errno 512).
    pub fn check(&mut self, tid: u32) -> Option<i32> {
        let masks = Masks::of(tid)?;
        self.decide(masks)
    }

    fn decide(&mut self, m: Masks) -> Option<i32> {
        let own = m.thread & !m.blocked != 0;
        let shared = m.shared & !m.blocked != 0;
        if own || (shared && m.threads <= 1) {
            return Some(ERESTARTSYS);
        }
        let persists = shared && self.shared_before;
        self.shared_before = shared;
        persists.then_some(libc::EINTR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tudp_recv\nThreads:\t2\nSigQ:\t0/95581\n\
        SigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\n\
        SigBlk:\t0000000000000000\nSigIgn:\t0000000000001000\nSigCgt:\t0000000000000200\n";

    fn masks(thread: u64, shared: u64, blocked: u64, threads: u32) -> Masks {
        Masks {
            thread,
            shared,
            blocked,
            threads,
        }
    }

    #[test]
    fn parses_the_masks_of_a_status_file() {
        assert_eq!(Masks::parse(STATUS), Some(masks(0, 0, 0, 2)));
        let pending = STATUS.replace("SigPnd:\t0000000000000000", "SigPnd:\t0000000000000200");
        assert_eq!(Masks::parse(&pending).unwrap().thread, 0x200);
        assert_eq!(Masks::parse("Name:\tx\nSigPnd:\t0\n"), None);
    }

    #[test]
    fn the_status_of_this_thread_parses() {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        let m = Masks::of(tid).expect("own status");
        assert!(m.threads >= 1);
    }

    #[test]
    fn a_signal_for_the_thread_restarts_the_call_unless_blocked() {
        let usr1 = 1 << (libc::SIGUSR1 - 1);
        let mut w = Watch::default();
        assert_eq!(w.decide(masks(0, 0, 0, 4)), None);
        assert_eq!(w.decide(masks(usr1, 0, 0, 4)), Some(ERESTARTSYS));
        assert_eq!(w.decide(masks(usr1, 0, usr1, 4)), None);
        assert_eq!(w.decide(masks(0, usr1, 0, 1)), Some(ERESTARTSYS));
    }

    #[test]
    fn a_process_signal_with_several_threads_ends_the_call_when_it_stays() {
        let int = 1 << (libc::SIGINT - 1);
        let mut w = Watch::default();
        assert_eq!(w.decide(masks(0, int, 0, 3)), None);
        assert_eq!(w.decide(masks(0, int, 0, 3)), Some(libc::EINTR));
        // Taken by another thread meanwhile: nothing to do.
        let mut w = Watch::default();
        assert_eq!(w.decide(masks(0, int, 0, 3)), None);
        assert_eq!(w.decide(masks(0, 0, 0, 3)), None);
        assert_eq!(w.decide(masks(0, int, 0, 3)), None);
    }
}
