//! `remora doctor [-- PROGRAM]`: whether seccomp user notification works on
//! this machine, and which interception mode a program would get and why.

use crate::args::DoctorArgs;
use crate::interception::{self, Asked, Mode};

pub fn run(args: DoctorArgs) -> i32 {
    let seccomp = remora_supervisor::probe();
    match &seccomp {
        Ok(()) => println!(
            "seccomp user notification: works (with SECCOMP_IOCTL_NOTIF_ADDFD + \
             SECCOMP_ADDFD_FLAG_SEND and pidfd_getfd)"
        ),
        Err(reason) => println!("seccomp user notification: unavailable: {reason}"),
    }
    match remora_supervisor::launch::sync_wake_up_probed() {
        Some(true) => println!(
            "seccomp synchronous wake-ups (SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP): yes (a notified \
             call hands its CPU straight to the supervisor)"
        ),
        Some(false) => println!(
            "seccomp synchronous wake-ups (SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP): no (Linux 6.6 \
             or later; without them each notified call waits for a scheduler wake-up)"
        ),
        None => {}
    }
    match remora_supervisor::launch::wait_killable_probed() {
        Some(true) => println!(
            "seccomp answers kept from signals (SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV): yes"
        ),
        Some(false) => println!(
            "seccomp answers kept from signals (SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV): no \
             (Linux 5.19 or later; without it a signal in the instant the supervisor answers \
             can lose a received datagram or an accepted connection)"
        ),
        None => {}
    }
    let Some(program) = args.command.first() else {
        return i32::from(seccomp.is_err());
    };
    let (mode, why) = interception::choose(Asked::parse(args.interception.as_deref()), program);
    println!("{program}: {mode} ({why})");
    if mode == Mode::Seccomp && seccomp.is_err() {
        println!(
            "{program}: cannot run under the seccomp supervisor here; remora would fall back \
             to the LD_PRELOAD layer, which does not see this program's calls"
        );
        return 1;
    }
    0
}
