//! remora's seccomp supervisor: Go and statically linked programs make
//! system calls without libc, so `LD_PRELOAD` cannot reach them. Instead the
//! program runs under a seccomp filter (installed between `fork` and `exec`,
//! inherited by every child) that sends the few syscalls remora cares about
//! ([`filter::NOTIFIED`]) to this supervisor through a user-notification
//! listener. For each one the supervisor reads the arguments from the
//! program's memory, asks the same policies as the layer, and either answers
//! `CONTINUE` (the local case, the kernel runs the call) or does the work
//! through the intproxy, with the layer's protocol, and answers with a value,
//! an errno or a new fd (`SECCOMP_IOCTL_NOTIF_ADDFD`).
//!
//! See docs/seccomp.md for what is emulated and the honest limits.
//!
//! `unsafe` is allowed in this crate: seccomp, its ioctls, classic BPF and
//! `SCM_RIGHTS` are raw kernel ABIs no safe crate here wraps.

pub mod abi;
pub mod broker;
pub mod client;
pub mod filter;
pub mod fs;
pub mod incoming;
pub mod launch;
pub mod net;
pub mod notify;
pub mod signals;

use client::Client;
use notify::{Listener, Memory, Verdict};
use remora_config::{Config, IncomingConfig, Policies, RESOLVED_CONFIG_ENV};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::process::{Command, ExitStatus};
use std::sync::{Arc, Mutex, MutexGuard};

pub use launch::probe;

/// Variable naming the intproxy's address (as for the layer).
pub const INTPROXY_ADDR_ENV: &str = "REMORA_INTPROXY_ADDR";
/// Variable carrying the intproxy's per-run secret (as for the layer).
pub const LAYER_TOKEN_ENV: &str = "REMORA_LAYER_TOKEN";

/// Errors starting the supervised program.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the session environment lacks {0}")]
    MissingEnv(&'static str),
    #[error("invalid session setting {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("connecting the supervisor to the intproxy: {0}")]
    Client(#[from] client::ClientError),
    #[error("starting {program} under the seccomp filter: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("creating the shadow directory: {0}")]
    Shadow(#[source] std::io::Error),
}

/// One notified call in flight.
#[derive(Debug)]
pub struct Call {
    pub id: u64,
    pub tid: u32,
}

impl Call {
    /// The thread group (process) of the calling thread, for its fd table.
    pub fn tgid(&self) -> Option<u32> {
        tgid_of(self.tid)
    }

    /// Whether the call still waits (checked after reading its memory and
    /// before acting on it: a dead thread's pid may be reused).
    pub fn still_valid(&self, sup: &Supervisor) -> bool {
        sup.listener.id_valid(self.id)
    }
}

/// The supervisor's state.
#[derive(Debug)]
pub struct Supervisor {
    /// Shared with the threads that wait for blocking accepts.
    listener: Arc<Listener>,
    client: Arc<Mutex<Client>>,
    policies: Policies,
    intproxy: SocketAddr,
    dns_remote: bool,
    shadow: fs::Shadow,
    /// The agent's fd broker (the local fast path), when offered.
    broker: broker::Broker,
    /// Sockets connected to an interceptor or accepted for the program
    /// (`getpeername`, `getsockname`); shared with accept waiters.
    redirected: Arc<Mutex<net::Redirected>>,
    /// Unconnected UDP sockets with destinations in the target; shared
    /// with receive waiters.
    udp: Arc<Mutex<net::udp::UdpRoutes>>,
    /// Virtual working directories in the target (`chdir`).
    cwds: fs::cwd::Cwds,
    warned: HashSet<String>,
    /// `network.incoming` of the config: which listeners subscribe.
    incoming: IncomingConfig,
    /// Subscribed listeners, by socket inode: who subscribed, which port.
    listeners: HashMap<u64, incoming::Subscribed>,
    /// When the subscribed listeners were last checked for being closed.
    swept: std::time::Instant,
    /// The working directory every supervised process started in, while
    /// none has called `chdir`/`fchdir` (both notified): relative paths
    /// then resolve against it without asking `/proc`.
    start_cwd: Option<String>,
    /// Read-write opens of the target's files (fs mode `write`).
    mirrors: fs::mirror::Mirrors,
}

/// What a supervisor needs from the session's environment.
struct Setup {
    intproxy: SocketAddr,
    token: String,
    config: Config,
    policies: Policies,
    dns_remote: bool,
    broker: broker::Broker,
}

impl Setup {
    fn from_env(program: &str, env: &BTreeMap<String, String>) -> Result<Setup, Error> {
        let addr = env
            .get(INTPROXY_ADDR_ENV)
            .ok_or(Error::MissingEnv(INTPROXY_ADDR_ENV))?;
        let intproxy: SocketAddr =
            addr.parse()
                .map_err(|e: std::net::AddrParseError| Error::Invalid {
                    what: INTPROXY_ADDR_ENV,
                    reason: e.to_string(),
                })?;
        let token = env.get(LAYER_TOKEN_ENV).cloned().unwrap_or_default();
        let config: Config = match env.get(RESOLVED_CONFIG_ENV) {
            Some(json) => serde_json::from_str(json).map_err(|e| Error::Invalid {
                what: RESOLVED_CONFIG_ENV,
                reason: e.to_string(),
            })?,
            None => Config::default(),
        };
        let mut policies = config.policies().map_err(|e| Error::Invalid {
            what: RESOLVED_CONFIG_ENV,
            reason: e.to_string(),
        })?;
        policies.fs = policies.fs.with_local_prefixes(local_prefixes(program));
        let dns_remote = policies.dns.decide("remora.invalid") == remora_config::Route::Remote;
        let broker = broker::Broker::from_env(env, &token);
        Ok(Setup {
            broker,
            intproxy,
            token,
            config,
            policies,
            dns_remote,
        })
    }

    /// A new intproxy connection for `program`.
    fn connect(&self, program: &str) -> Result<Client, Error> {
        Ok(Client::connect(
            self.intproxy,
            &self.token,
            std::process::id(),
            program,
        )?)
    }

    /// The supervisor of `listener`, with its own intproxy connection.
    fn supervisor(
        self,
        program: &str,
        listener: std::os::fd::OwnedFd,
        fds: filter::FdRange,
    ) -> Result<Supervisor, Error> {
        let client = self.connect(program)?;
        self.supervisor_with(client, listener, fds)
    }

    fn supervisor_with(
        self,
        client: Client,
        listener: std::os::fd::OwnedFd,
        fds: filter::FdRange,
    ) -> Result<Supervisor, Error> {
        let shadow = fs::Shadow::new().map_err(Error::Shadow)?;
        let listener = Listener::new(listener);
        listener.sync_wake_up();
        Ok(Supervisor {
            listener: Arc::new(listener),
            client: Arc::new(Mutex::new(client)),
            policies: self.policies,
            intproxy: self.intproxy,
            dns_remote: self.dns_remote,
            shadow,
            broker: self.broker,
            cwds: fs::cwd::Cwds::default(),
            redirected: Arc::default(),
            udp: Arc::default(),
            warned: HashSet::new(),
            incoming: self.config.network.incoming.clone(),
            listeners: HashMap::new(),
            swept: std::time::Instant::now(),
            start_cwd: std::env::current_dir()
                .ok()
                .and_then(|d| d.into_os_string().into_string().ok()),
            mirrors: fs::mirror::Mirrors::new(fds),
        })
    }
}

/// Run `program args` with `env` under the filter and supervise it until it
/// exits; returns its exit status. `on_spawn` gets its pid once it runs (to
/// forward signals to it: the supervisor must outlive it).
pub fn run(
    program: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    on_spawn: impl FnOnce(u32),
) -> Result<ExitStatus, Error> {
    let setup = Setup::from_env(program, env)?;
    let mut command = Command::new(program);
    command.args(args).env_clear().envs(env);
    let fds = filter::FdRange::for_soft_limit(soft_nofile());
    let (mut child, listener) =
        launch::spawn(command, &notified(&setup.config), fds).map_err(|source| Error::Spawn {
            program: program.to_owned(),
            source,
        })?;
    on_spawn(child.id());
    let mut sup = setup.supervisor(program, listener, fds)?;
    // The loop ends when the listener fails (every filtered process is gone);
    // the main thread returns as soon as the direct child exits, and the
    // process with it: the thread is never joined, so the shadow
    // directories go with this guard (on every return from here).
    let _shadow = sup.shadow.cleanup();
    let _ = std::thread::Builder::new()
        .name("remora-supervisor".into())
        .spawn(move || sup.serve());
    let status = child.wait().map_err(|source| Error::Spawn {
        program: program.to_owned(),
        source,
    })?;
    Ok(status)
}

/// Become `program args` (same pid: its parent, a debugger or a tracer see
/// the program itself) under the filter, supervised by a detached process
/// of its own that ends when the last filtered process has. Returns only
/// on failure, before anything was changed in this process when possible.
/// This process must be single-threaded (it forks).
pub fn exec_in_place(
    program: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
) -> Result<std::convert::Infallible, Error> {
    let spawn_err = |source: std::io::Error| Error::Spawn {
        program: program.to_owned(),
        source,
    };
    if !single_threaded() {
        return Err(Error::Invalid {
            what: "exec in place",
            reason: "the process runs threads (it must fork)".into(),
        });
    }
    let setup = Setup::from_env(program, env)?;
    let fds = filter::FdRange::for_soft_limit(soft_nofile());
    let prog = filter::program(&notified(&setup.config), fds);
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(spawn_err)?;
    // Connected before anything else, so the session always has a process
    // (the supervisor takes this connection over); then a lifeline kept
    // across a re-exec (see [`lifeline`]) can go.
    let client = setup.connect(program)?;
    let mut env = env.clone();
    if let Some(fd) = env.remove(LIFELINE_ENV).and_then(|v| v.parse::<i32>().ok()) {
        if fd > 2 {
            // SAFETY: the fd number this process was given for its lifeline.
            unsafe { libc::close(fd) };
        }
    }
    use std::os::fd::AsRawFd;
    let keep = [client.raw_fd()];
    launch::fork_supervisor(ours, theirs.as_raw_fd(), &keep, move |listener| {
        // In the detached supervisor process: serve until the filter has
        // no process left.
        // Blocked before any thread starts (they inherit the mask): a
        // terminating signal is taken by the thread below, which removes
        // the shadow directories before the process ends as it would have.
        let terminating = terminating_signals();
        let Ok(mut sup) = setup.supervisor_with(client, listener, fds) else {
            return;
        };
        let on_signal = sup.shadow.cleanup();
        let _ = std::thread::Builder::new()
            .name("remora-supervisor-signals".into())
            .spawn(move || {
                let signal = wait_signal(&terminating);
                drop(on_signal);
                // SAFETY: back to the default action and raised again: the
                // process ends by the signal it was sent.
                unsafe {
                    libc::signal(signal, libc::SIG_DFL);
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, signal);
                    libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                    libc::raise(signal);
                }
                std::process::exit(128 + signal);
            });
        let watched = Arc::clone(&sup.listener);
        let shadow = sup.shadow.cleanup();
        let _ = std::thread::Builder::new()
            .name("remora-supervisor-hup".into())
            .spawn(move || {
                watched.wait_hangup();
                drop(shadow);
                std::process::exit(0);
            });
        sup.serve();
    })
    .map_err(spawn_err)?;
    let argv0 = env.remove(ARGV0_ENV);
    let err = launch::install_and_exec(&prog, theirs, program, argv0, args, &env);
    Err(spawn_err(err))
}

/// The `argv[0]` the program gets in [`exec_in_place`] (default: its
/// path): a program handed over by the layer keeps the one its parent gave
/// (busybox picks its applet by it).
pub const ARGV0_ENV: &str = "REMORA_HANDOFF_ARGV0";

/// Names the fd of a [`lifeline`] across a re-exec.
pub const LIFELINE_ENV: &str = "REMORA_SUPERVISE_LIFELINE";

/// A connection to the session's intproxy that survives `exec` (not
/// close-on-exec): it keeps the session up while this process re-executes
/// itself (an `ext` session ends when its last process leaves).
/// [`exec_in_place`] closes the fd that [`LIFELINE_ENV`] names once its own
/// connection is up. Returns the fd number.
pub fn lifeline(program: &str, env: &BTreeMap<String, String>) -> Result<i32, Error> {
    use std::os::fd::IntoRawFd;
    let setup = Setup::from_env(program, env)?;
    let fd = setup.connect(program)?.into_fd().into_raw_fd();
    // SAFETY: clearing FD_CLOEXEC on our own fd.
    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    Ok(fd)
}

/// The syscalls this session's filter notifies: the fs writes and the
/// incoming calls only when the config can route them to the target.
fn notified(config: &Config) -> Vec<(libc::c_long, filter::When)> {
    let mut out = filter::NOTIFIED.to_vec();
    if config.network.outgoing.udp {
        out.extend_from_slice(filter::DATAGRAMS);
    }
    if config.network.incoming.mode != remora_config::IncomingMode::Off {
        out.extend_from_slice(filter::INCOMING);
    }
    if config.fs.mode == remora_config::FsMode::Write || !config.fs.read_write.is_empty() {
        out.extend_from_slice(filter::FS_WRITES);
    }
    out
}

/// Block SIGTERM, SIGINT and SIGHUP in this thread (and the threads it
/// starts from now on); the set, for [`wait_signal`].
fn terminating_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, filled by sigemptyset/sigaddset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Wait for one of the blocked signals of `set`; its number.
fn wait_signal(set: &libc::sigset_t) -> i32 {
    loop {
        let mut signal = 0;
        // SAFETY: a valid set and an int to fill.
        if unsafe { libc::sigwait(set, &mut signal) } == 0 {
            return signal;
        }
    }
}

/// Whether this process runs one thread only (it may fork and go on).
fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .is_some_and(|n| n.trim() == "1")
    })
}

/// This process's soft `RLIMIT_NOFILE`, which the program inherits.
fn soft_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    }
}

/// The directory of the program and the working directory stay local (as
/// the layer's runtime prefixes).
fn local_prefixes(program: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        if cwd.as_os_str() != "/" {
            out.push(cwd.to_string_lossy().into_owned());
        }
    }
    let path = std::path::Path::new(program);
    if let Some(dir) = path
        .parent()
        .filter(|d| d.is_absolute() && d.as_os_str() != "/")
    {
        out.push(dir.to_string_lossy().into_owned());
    }
    out
}

impl Supervisor {
    /// Answer notifications until the listener fails.
    pub fn serve(&mut self) {
        loop {
            // With subscribed listeners, wake up now and then to notice
            // closed ones (`close` is not notified).
            if !self.listeners.is_empty() {
                let waiting = self.listener.readable(incoming::SWEEP_EVERY);
                if self.swept.elapsed() >= incoming::SWEEP_EVERY {
                    self.sweep_listeners();
                }
                if !waiting {
                    continue;
                }
            }
            let notif = match self.listener.recv() {
                Ok(Some(n)) => n,
                Ok(None) => continue,
                Err(_) => return,
            };
            let call = Call {
                id: notif.id,
                tid: notif.pid,
            };
            let verdict = match Memory::open(call.tid) {
                Ok(mem) => self
                    .handle(&call, &mem, &notif.data)
                    .unwrap_or_else(|e| Verdict::Errno(e.raw_os_error().unwrap_or(libc::EFAULT))),
                // The thread is gone, or we may not look: let the kernel decide.
                Err(_) => Verdict::Continue,
            };
            self.listener.answer(notif.id, verdict);
        }
    }

    fn handle(
        &mut self,
        call: &Call,
        mem: &Memory,
        data: &abi::SeccompData,
    ) -> std::io::Result<Verdict> {
        let a = data.args;
        let at_fdcwd = libc::AT_FDCWD as i64;
        match i64::from(data.nr) {
            libc::SYS_open => self.open(call, mem, at_fdcwd, a[0], a[1] as i32, a[2] as u32),
            libc::SYS_openat => self.open(
                call,
                mem,
                a[0] as i32 as i64,
                a[1],
                a[2] as i32,
                a[3] as u32,
            ),
            libc::SYS_stat => self.stat(call, mem, at_fdcwd, a[0], a[1], true),
            libc::SYS_lstat => self.stat(call, mem, at_fdcwd, a[0], a[1], false),
            libc::SYS_newfstatat => {
                let flags = a[3] as i32;
                self.stat(
                    call,
                    mem,
                    a[0] as i32 as i64,
                    a[1],
                    a[2],
                    flags & libc::AT_SYMLINK_NOFOLLOW == 0,
                )
            }
            libc::SYS_statx => self.statx(call, mem, a[0] as i32 as i64, a[1], a[2] as i32, a[4]),
            libc::SYS_readlink => self.readlink(call, mem, at_fdcwd, a[0], a[1], a[2]),
            libc::SYS_readlinkat => self.readlink(call, mem, a[0] as i32 as i64, a[1], a[2], a[3]),
            libc::SYS_access => self.access(call, mem, at_fdcwd, a[0], a[1] as u32),
            libc::SYS_faccessat | libc::SYS_faccessat2 => {
                self.access(call, mem, a[0] as i32 as i64, a[1], a[2] as u32)
            }
            libc::SYS_connect => self.connect(call, mem, a[0] as i32, a[1], a[2]),
            libc::SYS_io_uring_setup => {
                self.warn_once(
                    "io_uring is not available under seccomp interception (its operations would \
                     bypass remora); the program gets ENOSYS, as on a kernel without io_uring",
                );
                Ok(Verdict::Errno(libc::ENOSYS))
            }
            libc::SYS_getpeername => self.sock_name(call, mem, a[0] as i32, a[1], a[2], true),
            nr @ (libc::SYS_sendto | libc::SYS_sendmsg | libc::SYS_sendmmsg) => {
                self.send_dgram(call, mem, nr, &a)
            }
            nr @ (libc::SYS_recvfrom | libc::SYS_recvmsg | libc::SYS_recvmmsg) => {
                self.recv_dgram(call, mem, nr, &a)
            }
            libc::SYS_getsockname => self.sock_name(call, mem, a[0] as i32, a[1], a[2], false),
            libc::SYS_chdir => {
                let verdict = self.chdir(call, mem, a[0]);
                self.start_cwd = None;
                verdict
            }
            libc::SYS_fchdir => {
                self.start_cwd = None;
                Ok(self.fchdir(call))
            }
            libc::SYS_getcwd => self.getcwd(call, mem, a[0], a[1]),
            libc::SYS_mkdir => self.mkdir(call, mem, at_fdcwd, a[0], a[1] as u32),
            libc::SYS_mkdirat => self.mkdir(call, mem, a[0] as i32 as i64, a[1], a[2] as u32),
            libc::SYS_unlink => self.unlink(call, mem, at_fdcwd, a[0], false),
            libc::SYS_rmdir => self.unlink(call, mem, at_fdcwd, a[0], true),
            libc::SYS_unlinkat => {
                let dir = a[2] as i32 & libc::AT_REMOVEDIR != 0;
                self.unlink(call, mem, a[0] as i32 as i64, a[1], dir)
            }
            libc::SYS_rename => self.rename(call, mem, at_fdcwd, a[0], at_fdcwd, a[1], 0),
            libc::SYS_renameat => self.rename(
                call,
                mem,
                a[0] as i32 as i64,
                a[1],
                a[2] as i32 as i64,
                a[3],
                0,
            ),
            libc::SYS_renameat2 => self.rename(
                call,
                mem,
                a[0] as i32 as i64,
                a[1],
                a[2] as i32 as i64,
                a[3],
                a[4] as u32,
            ),
            libc::SYS_truncate => self.truncate(call, mem, a[0], a[1] as i64),
            libc::SYS_chmod => self.chmod(call, mem, at_fdcwd, a[0], a[1] as u32, 0),
            libc::SYS_fchmodat => self.chmod(call, mem, a[0] as i32 as i64, a[1], a[2] as u32, 0),
            filter::SYS_FCHMODAT2 => self.chmod(
                call,
                mem,
                a[0] as i32 as i64,
                a[1],
                a[2] as u32,
                a[3] as i32,
            ),
            libc::SYS_chown => self.chown(call, mem, at_fdcwd, a[0], [a[1], a[2]], 0),
            libc::SYS_lchown => self.chown(
                call,
                mem,
                at_fdcwd,
                a[0],
                [a[1], a[2]],
                libc::AT_SYMLINK_NOFOLLOW,
            ),
            libc::SYS_fchownat => self.chown(
                call,
                mem,
                a[0] as i32 as i64,
                a[1],
                [a[2], a[3]],
                a[4] as i32,
            ),
            libc::SYS_link => {
                self.link(call, mem, [at_fdcwd, a[0] as i64], [at_fdcwd, a[1] as i64])
            }
            libc::SYS_linkat => self.link(
                call,
                mem,
                [a[0] as i32 as i64, a[1] as i64],
                [a[2] as i32 as i64, a[3] as i64],
            ),
            libc::SYS_utimensat => {
                self.utimensat(call, mem, a[0] as i32 as i64, a[1], a[2], a[3] as i32)
            }
            libc::SYS_symlink => self.symlink(call, mem, a[0], at_fdcwd, a[1]),
            libc::SYS_symlinkat => self.symlink(call, mem, a[0], a[1] as i32 as i64, a[2]),
            nr if fs::mirror::CALLS.contains(&nr) => self.on_mirror(call, mem, nr, &a),
            libc::SYS_listen => Ok(self.listen(call, a[0] as i32, a[1] as i32)),
            libc::SYS_accept => Ok(self.accept(call, a[0] as i32, a[1], a[2], 0)),
            libc::SYS_accept4 => Ok(self.accept(call, a[0] as i32, a[1], a[2], a[3] as i32)),
            _ => Ok(Verdict::Continue),
        }
    }

    /// The intproxy connection (shared with accept waiters).
    pub(crate) fn client(&self) -> MutexGuard<'_, Client> {
        lock(&self.client)
    }

    /// Print a warning once per distinct message.
    pub(crate) fn warn_once(&mut self, message: &str) {
        if self.warned.insert(message.to_owned()) {
            eprintln!("remora: warning: {message}");
        }
    }

    /// The intproxy answered with the wrong kind of reply: warn, `EIO`.
    pub(crate) fn unexpected(&mut self, got: &dyn std::fmt::Debug) -> i32 {
        self.warn_once(&format!("unexpected reply from the intproxy: {got:?}"));
        libc::EIO
    }
}

/// Lock `client`, poisoned or not (a panicking waiter leaves it usable:
/// every request is one write and its reply).
pub(crate) fn lock(client: &Mutex<Client>) -> MutexGuard<'_, Client> {
    client.lock().unwrap_or_else(|e| e.into_inner())
}

/// The thread-group id of thread `tid`.
fn tgid_of(tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}
