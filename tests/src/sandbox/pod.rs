//! [`PodSpec`] (what a test asks for) and [`Pod`] (a running pod: netns, veth, pause
//! process with private mounts and hostname, and helpers to run things inside it).

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Output},
    sync::{Mutex, PoisonError},
    thread,
    time::{Duration, Instant},
};

use nix::sched::{CloneFlags, setns};

use super::{
    addr::Lease,
    naming::ObjectName,
    net, pause, pod_state_dir,
    process::{PodCommand, PodProcess},
    teardown::remove_pod_objects,
};
use crate::error::{Error, Result};

/// `PATH` given to pod processes unless the spec sets its own.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Default `/etc/resolv.conf` of a pod: the only nameserver is the pod's own loopback,
/// where nothing listens, so a name missing from the pod's hosts file fails fast and no
/// DNS query ever leaves the machine.
pub const DEFAULT_RESOLV_CONF: &str = "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n";

/// What a test wants in a pod. Build with [`PodSpec::new`] and the chained setters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSpec {
    /// Name hint; becomes the pod's hostname (`[a-z0-9-]`, 1-63 chars; empty = `pod`).
    pub name: String,
    /// Extra `/etc/hosts` entries (name, address).
    pub hosts: Vec<(String, IpAddr)>,
    /// Extra names for the pod's own IP (its hostname always maps to it).
    pub aliases: Vec<String>,
    /// Private files (absolute paths under an existing top-level directory other than
    /// /proc, /sys, /dev and /run). They override the generated /etc/hosts,
    /// /etc/resolv.conf and /etc/hostname if they name one of those.
    pub files: Vec<(PathBuf, Vec<u8>)>,
    /// The pod's environment (`PATH` defaults to [`DEFAULT_PATH`]).
    pub env: Vec<(String, String)>,
    /// `/etc/resolv.conf` contents; `None` means [`DEFAULT_RESOLV_CONF`].
    pub resolv_conf: Option<String>,
}

impl PodSpec {
    /// A spec with only a name hint.
    pub fn new(name: impl Into<String>) -> PodSpec {
        PodSpec {
            name: name.into(),
            ..PodSpec::default()
        }
    }

    /// Adds an `/etc/hosts` entry.
    pub fn host(mut self, name: impl Into<String>, addr: impl Into<IpAddr>) -> PodSpec {
        self.hosts.push((name.into(), addr.into()));
        self
    }

    /// Adds a name for the pod's own IP.
    pub fn alias(mut self, name: impl Into<String>) -> PodSpec {
        self.aliases.push(name.into());
        self
    }

    /// Adds a private file.
    pub fn file(mut self, path: impl Into<PathBuf>, contents: impl Into<Vec<u8>>) -> PodSpec {
        self.files.push((path.into(), contents.into()));
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> PodSpec {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets `/etc/resolv.conf`.
    pub fn resolv_conf(mut self, contents: impl Into<String>) -> PodSpec {
        self.resolv_conf = Some(contents.into());
        self
    }
}

/// A running pod. Cheap accessors, plus ways to run things inside it.
///
/// # Guarantees
/// Dropping the `Pod` (also while unwinding), calling [`teardown`](Pod::teardown), or
/// dropping its [`Sandbox`](super::Sandbox) removes, once: the host veth, every process
/// in the pod's network namespace or in the pause's mount namespace (including ones
/// started with [`spawn`](Pod::spawn) whose handles were leaked, and their children),
/// the netns, the pod's state directory and its address lease. After that the pod's
/// private files and mounts no longer exist anywhere (they only lived in its mount
/// namespace). If the test process dies without unwinding, the next
/// [`Sandbox::new`](super::Sandbox::new) on this machine sweeps all of it.
#[derive(Debug)]
pub struct Pod {
    pub(crate) inner: std::sync::Arc<PodInner>,
}

#[derive(Debug)]
pub(crate) struct PodInner {
    netns: String,
    hostname: String,
    lease: Lease,
    env: Vec<(String, String)>,
    pause_pid: u32,
    /// The pause child while the pod is up; `None` once torn down.
    pause: Mutex<Option<Child>>,
}

impl PodInner {
    /// Builds the whole pod or, on any error, removes whatever was already made.
    pub(crate) fn create(owner: u32, spec: PodSpec) -> Result<PodInner> {
        let hostname = check_hostname(&spec.name)?;
        let env = pod_env(&spec.env)?;
        let object = ObjectName::next(owner)?;
        let name = object.to_string();
        let lease = Lease::acquire(object)?;
        let built = build(&name, &hostname, &lease, &spec, &env);
        match built {
            Ok(pause) => Ok(PodInner {
                netns: name,
                hostname,
                env,
                pause_pid: pause.id(),
                pause: Mutex::new(Some(pause)),
                lease,
            }),
            Err(e) => {
                let removed = remove_pod_objects(&name, None);
                let _ = lease.release();
                for leftover in removed.errors {
                    eprintln!("remora-tests: cleaning up failed pod {name}: {leftover}");
                }
                Err(e)
            }
        }
    }

    /// Idempotent teardown; see [`Pod`]'s guarantees.
    pub(crate) fn teardown(&self) -> Result<()> {
        let mut pause = self.pause.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(mut child) = pause.take() else {
            return Ok(());
        };
        let mut removed = remove_pod_objects(&self.netns, Some(&mut child));
        if let Err(e) = self.lease.release() {
            removed.errors.push(e.to_string());
        }
        if removed.errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Teardown {
                what: format!("pod {}", self.netns),
                details: removed.errors.join("; "),
            })
        }
    }

    pub(crate) fn is_torn_down(&self) -> bool {
        self.pause
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
    }
}

fn build(
    name: &str,
    hostname: &str,
    lease: &Lease,
    spec: &PodSpec,
    env: &[(String, String)],
) -> Result<Child> {
    let state_dir = pod_state_dir(name);
    fs::create_dir_all(&state_dir).map_err(|e| Error::io("creating", &state_dir, e))?;
    fs::set_permissions(&state_dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io("restricting", &state_dir, e))?;
    net::create(name, lease)?;
    let mut files = BTreeMap::new();
    files.insert(
        PathBuf::from("/etc/hosts"),
        hosts_file(name, hostname, lease.pod_ip(), spec)?.into_bytes(),
    );
    files.insert(
        PathBuf::from("/etc/resolv.conf"),
        spec.resolv_conf
            .clone()
            .unwrap_or_else(|| DEFAULT_RESOLV_CONF.to_owned())
            .into_bytes(),
    );
    files.insert(
        PathBuf::from("/etc/hostname"),
        format!("{hostname}\n").into_bytes(),
    );
    for (path, contents) in &spec.files {
        files.insert(path.clone(), contents.clone());
    }
    pause::start(name, hostname, &state_dir, &files, env)
}

fn hosts_file(netns: &str, hostname: &str, pod_ip: Ipv4Addr, spec: &PodSpec) -> Result<String> {
    let mut text = format!(
        "# /etc/hosts of remora-tests pod {hostname} (netns {netns})\n\
         127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         {pod_ip}\t{hostname}"
    );
    for alias in &spec.aliases {
        check_host_name(alias)?;
        text.push(' ');
        text.push_str(alias);
    }
    text.push('\n');
    for (name, addr) in &spec.hosts {
        check_host_name(name)?;
        text.push_str(&format!("{addr}\t{name}\n"));
    }
    Ok(text)
}

fn check_host_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name
            .chars()
            .any(|c| c.is_whitespace() || c == '#' || c == '\0')
    {
        return Err(Error::InvalidSpec(format!(
            "hosts entry name {name:?} is not a host name"
        )));
    }
    Ok(())
}

fn check_hostname(hint: &str) -> Result<String> {
    let name = if hint.is_empty() { "pod" } else { hint };
    let valid = name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(Error::InvalidSpec(format!(
            "pod name {hint:?}: use 1-63 of [a-z0-9-] (it becomes the hostname)"
        )));
    }
    Ok(name.to_owned())
}

/// The spec's environment plus `PATH`, validated so `env -i K=V ...` reproduces it.
fn pod_env(spec_env: &[(String, String)]) -> Result<Vec<(String, String)>> {
    let mut env = Vec::new();
    if !spec_env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".to_owned(), DEFAULT_PATH.to_owned()));
    }
    for (key, value) in spec_env {
        if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
            return Err(Error::InvalidSpec(format!("environment variable {key:?}")));
        }
        env.retain(|(k, _)| k != key);
        env.push((key.clone(), value.clone()));
    }
    Ok(env)
}

impl Pod {
    /// The pod's name (its hostname), from the spec's name hint.
    pub fn name(&self) -> &str {
        &self.inner.hostname
    }

    /// Name of the pod's network namespace (`ip netns`), also the host veth's name.
    pub fn netns_name(&self) -> &str {
        &self.inner.netns
    }

    /// Name of the host side of the pod's veth pair.
    pub fn host_veth(&self) -> &str {
        &self.inner.netns
    }

    /// PID of the pause process: what remora targets (`pid/<pause_pid>`). Its
    /// `/proc/PID/environ` is exactly [`env`](Self::env), `/proc/PID/root` shows the
    /// pod's files, `/proc/PID/ns/*` are the pod's namespaces.
    pub fn pause_pid(&self) -> u32 {
        self.inner.pause_pid
    }

    /// The remora target string for this pod: `pid/<pause_pid>`.
    pub fn target(&self) -> String {
        format!("pid/{}", self.inner.pause_pid)
    }

    /// The pod's IP (pod side of the veth).
    pub fn ip(&self) -> Ipv4Addr {
        self.inner.lease.pod_ip()
    }

    /// The host's IP on the pod's veth (the pod's default gateway).
    pub fn host_ip(&self) -> Ipv4Addr {
        self.inner.lease.host_ip()
    }

    /// The pod's environment, `PATH` included.
    pub fn env(&self) -> &[(String, String)] {
        &self.inner.env
    }

    /// The lease file reserving this pod's /30.
    #[doc(hidden)]
    pub fn lease_file(&self) -> &Path {
        self.inner.lease.path()
    }

    /// A command that runs `program` inside the pod (all its namespaces, its env).
    ///
    /// # Errors
    /// [`Error::TornDown`] once the pod is gone: its pause PID may belong to a stranger.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Result<PodCommand> {
        self.ensure_up()?;
        Ok(PodCommand::new(
            &self.inner.netns,
            self.inner.pause_pid,
            &self.inner.env,
            program.as_ref(),
        ))
    }

    /// Starts `args[0] args[1..]` inside the pod (stdio as [`PodCommand`] defaults).
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] for empty `args`, else as [`PodCommand::spawn`].
    pub fn spawn<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<PodProcess> {
        let (program, rest) = split_args(args)?;
        self.command(program)?.args(rest).spawn()
    }

    /// Runs `args` inside the pod to completion, capturing its output.
    ///
    /// # Errors
    /// Only when it cannot run at all; a non-zero exit is in `Output::status`.
    pub fn exec<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<Output> {
        let (program, rest) = split_args(args)?;
        self.command(program)?.args(rest).output()
    }

    /// Runs `args` inside the pod and returns its stdout, requiring success.
    ///
    /// # Errors
    /// [`Error::CommandFailed`] with stderr on a non-zero exit.
    pub fn exec_ok<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String> {
        let out = self.exec(args)?;
        if !out.status.success() {
            return Err(Error::CommandFailed {
                what: format!("in pod {}", self.inner.netns),
                command: args
                    .iter()
                    .map(|a| a.as_ref().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" "),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `f` on a fresh thread that joined the pod's network namespace (only the
    /// network namespace: files are still the host's). A panic in `f` is re-raised.
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::Sys`] when the namespace cannot be entered.
    pub fn run_in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        self.ensure_up()?;
        let path = net::netns_path(&self.inner.netns);
        let netns = fs::File::open(&path).map_err(|e| Error::io("opening", &path, e))?;
        thread::scope(|scope| {
            let joined = scope.spawn(move || {
                // setns(CLONE_NEWNET) switches only this thread, which ends with `f`.
                setns(&netns, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| Error::sys(format!("entering netns {}", path.display()), e))
                    .map(|()| f())
            });
            joined
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Polls (TCP connects from inside the pod, with backoff) until something accepts on
    /// `port` at the pod's loopback or at its IP.
    ///
    /// # Errors
    /// [`Error::Timeout`] when nothing listens within `timeout`.
    pub fn wait_for_tcp(&self, port: u16, timeout: Duration) -> Result<()> {
        let targets = [
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            SocketAddr::from((self.ip(), port)),
        ];
        let listening = self.run_in_netns(|| {
            let deadline = Instant::now() + timeout;
            let mut delay = Duration::from_millis(5);
            loop {
                let attempt = Duration::from_millis(200);
                if targets
                    .iter()
                    .any(|target| TcpStream::connect_timeout(target, attempt).is_ok())
                {
                    return true;
                }
                if Instant::now() >= deadline {
                    return false;
                }
                thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(100));
            }
        })?;
        if listening {
            Ok(())
        } else {
            Err(Error::Timeout {
                what: format!("a TCP listener on port {port} in pod {}", self.inner.netns),
                after: timeout,
            })
        }
    }

    /// Tears the pod down now, reporting what could not be removed (drop does the same
    /// but can only print). Idempotent.
    ///
    /// # Errors
    /// [`Error::Teardown`] listing leftovers; the next `Sandbox::new` retries them.
    pub fn teardown(&self) -> Result<()> {
        self.inner.teardown()
    }

    /// Leaks the pod without any cleanup, like a crashed test. Only for testing the
    /// sweeper; also abandon its `Sandbox`, which would otherwise tear it down.
    #[doc(hidden)]
    pub fn abandon(self) {
        std::mem::forget(self);
    }

    fn ensure_up(&self) -> Result<()> {
        if self.inner.is_torn_down() {
            return Err(Error::TornDown {
                pod: self.inner.netns.clone(),
            });
        }
        Ok(())
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Err(e) = self.inner.teardown() {
            eprintln!("remora-tests: {e}");
        }
    }
}

fn split_args<S: AsRef<OsStr>>(args: &[S]) -> Result<(&OsStr, &[S])> {
    match args {
        [program, rest @ ..] => Ok((program.as_ref(), rest)),
        [] => Err(Error::InvalidSpec("empty command line".to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_gets_a_default_path_and_keeps_spec_order() {
        let env = pod_env(&[("A".into(), "1".into()), ("B".into(), "2".into())]).unwrap();
        let keys: Vec<_> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["PATH", "A", "B"]);
        let own = pod_env(&[("PATH".into(), "/x".into())]).unwrap();
        assert_eq!(own, [("PATH".to_owned(), "/x".to_owned())]);
    }

    #[test]
    fn env_rejects_what_env_i_cannot_express() {
        assert!(pod_env(&[("A=B".into(), "1".into())]).is_err());
        assert!(pod_env(&[(String::new(), "1".into())]).is_err());
        assert!(pod_env(&[("A".into(), "nul\0".into())]).is_err());
    }

    #[test]
    fn hostnames_are_checked() {
        assert_eq!(check_hostname("").unwrap(), "pod");
        assert_eq!(check_hostname("backend-1").unwrap(), "backend-1");
        for bad in ["Backend", "-a", "a b", "a.b", &"a".repeat(64)] {
            assert!(check_hostname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts_file_maps_localhost_self_aliases_and_extras() {
        let spec = PodSpec::new("api")
            .alias("api.staging.internal")
            .host("backend.staging.internal", Ipv4Addr::new(10, 213, 0, 6));
        let text = hosts_file("rmt1x0", "api", Ipv4Addr::new(10, 213, 0, 2), &spec).unwrap();
        assert!(text.contains("127.0.0.1\tlocalhost\n"), "{text}");
        assert!(
            text.contains("10.213.0.2\tapi api.staging.internal\n"),
            "{text}"
        );
        assert!(
            text.contains("10.213.0.6\tbackend.staging.internal\n"),
            "{text}"
        );
        let bad = PodSpec::new("api").host("two words", Ipv4Addr::LOCALHOST);
        assert!(hosts_file("rmt1x0", "api", Ipv4Addr::LOCALHOST, &bad).is_err());
    }
}
