//! The kernel ABI of seccomp user notification (x86_64), written out here:
//! the `libc` crate has the syscall numbers but not these structs and ioctls.

/// `seccomp(2)` operation installing a filter.
pub const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
/// Filter flag: return a listener fd for `SECCOMP_RET_USER_NOTIF`.
pub const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_uint = 1 << 3;
/// Filter flag (Linux 5.19, with `NEW_LISTENER` only): once the supervisor
/// has received a notification, only a fatal signal ends the wait for its
/// answer (see [`crate::signals`]).
pub const SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: libc::c_uint = 1 << 5;
/// Filter verdict: run the syscall.
pub const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
/// Filter verdict: ask the supervisor.
pub const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
/// `AUDIT_ARCH_X86_64`.
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// Syscall numbers with this bit set are x32 calls.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Response flag: let the kernel run the syscall as the program asked.
pub const SECCOMP_USER_NOTIF_FLAG_CONTINUE: u32 = 1;
/// `ADDFD` flag: install at exactly `newfd` (like `dup2`).
pub const SECCOMP_ADDFD_FLAG_SETFD: u32 = 1;
/// `ADDFD` flag: install and answer the syscall with the new fd, atomically.
pub const SECCOMP_ADDFD_FLAG_SEND: u32 = 2;

/// `_IOWR('!', 0, struct seccomp_notif)`.
pub const SECCOMP_IOCTL_NOTIF_RECV: libc::c_ulong = 0xc050_2100;
/// `_IOWR('!', 1, struct seccomp_notif_resp)`.
pub const SECCOMP_IOCTL_NOTIF_SEND: libc::c_ulong = 0xc018_2101;
/// `_IOW('!', 2, __u64)`.
pub const SECCOMP_IOCTL_NOTIF_ID_VALID: libc::c_ulong = 0x4008_2102;
/// `_IOW('!', 3, struct seccomp_notif_addfd)`.
pub const SECCOMP_IOCTL_NOTIF_ADDFD: libc::c_ulong = 0x4018_2103;

/// `_IOW('!', 4, __u64)` (Linux 6.6).
pub const SECCOMP_IOCTL_NOTIF_SET_FLAGS: libc::c_ulong = 0x4008_2104;
/// `SET_FLAGS` flag: wake the supervisor synchronously, on the notifying
/// thread's CPU (a direct hand-off instead of a scheduler wake-up).
pub const SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: u64 = 1;

/// `struct seccomp_data`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SeccompData {
    pub nr: i32,
    pub arch: u32,
    pub instruction_pointer: u64,
    pub args: [u64; 6],
}

/// `struct seccomp_notif`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SeccompNotif {
    pub id: u64,
    pub pid: u32,
    pub flags: u32,
    pub data: SeccompData,
}

/// `struct seccomp_notif_resp`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SeccompNotifResp {
    pub id: u64,
    pub val: i64,
    pub error: i32,
    pub flags: u32,
}

/// `struct seccomp_notif_addfd`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SeccompNotifAddfd {
    pub id: u64,
    pub flags: u32,
    pub srcfd: u32,
    pub newfd: u32,
    pub newfd_flags: u32,
}

const _: () = assert!(std::mem::size_of::<SeccompNotif>() == 80);
const _: () = assert!(std::mem::size_of::<SeccompNotifResp>() == 24);
const _: () = assert!(std::mem::size_of::<SeccompNotifAddfd>() == 24);
