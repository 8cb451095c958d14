//! A container's first process: `remora-kube-sim container-init --cgroup DIR [--sandbox PID]
//! -- ARGV…` moves itself into the container's cgroup, joins the network and UTS namespaces
//! of the pod's sandbox, then execs the container's command (same pid), so every process of
//! the container lives in that cgroup and those namespaces from its first instruction on.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
};

/// The hidden subcommand's name.
pub const SUBCOMMAND: &str = "container-init";

/// Exit code when the command cannot be started after all (as a runtime's start error).
const START_ERROR: u8 = 128;

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The container's cgroup directory.
    #[arg(long)]
    pub cgroup: PathBuf,
    /// The pod's sandbox process, whose network and UTS namespaces the container joins.
    #[arg(long)]
    pub sandbox: Option<u32>,
    /// A volume to bind-mount, `ro|rw<TAB>source<TAB>target` (repeated).
    #[arg(long = "mount")]
    pub mounts: Vec<String>,
    /// Where shadow directories are staged (see mounts.rs).
    #[arg(long)]
    pub scratch: Option<PathBuf>,
    /// The working directory, entered after the mounts.
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// The capabilities to keep (names without `CAP_`, comma-separated); absent keeps all.
    #[arg(long)]
    pub capabilities: Option<String>,
    /// The user to run as.
    #[arg(long)]
    pub user: Option<u32>,
    /// The group to run as.
    #[arg(long)]
    pub group: Option<u32>,
    /// Sets no_new_privs (allowPrivilegeEscalation: false).
    #[arg(long)]
    pub no_new_privs: bool,
    /// `resources.limits.memory` in bytes.
    #[arg(long)]
    pub memory_limit: Option<u64>,
    /// `resources.limits.cpu` in millicores.
    #[arg(long)]
    pub cpu_limit_milli: Option<u64>,
    /// The container's command and arguments.
    #[arg(last = true, required = true)]
    pub argv: Vec<String>,
}

/// Joins the cgroup and execs `argv`; returns only by exiting.
pub fn container_init(args: InitArgs) -> ! {
    if let Err(e) = super::cgroup::join(&args.cgroup) {
        eprintln!(
            "remora-kube-sim: joining the cgroup {}: {e}",
            args.cgroup.display()
        );
        std::process::exit(START_ERROR.into());
    }
    if (args.memory_limit.is_some() || args.cpu_limit_milli.is_some())
        && let Err(e) =
            super::cgroup::set_limits(&args.cgroup, args.memory_limit, args.cpu_limit_milli)
    {
        eprintln!("remora-kube-sim: applying the container's resource limits: {e}");
        std::process::exit(START_ERROR.into());
    }
    if let Some(pid) = args.sandbox
        && let Err(e) = join_namespaces(pid)
    {
        eprintln!("remora-kube-sim: joining the pod's namespaces (sandbox pid {pid}): {e}");
        std::process::exit(START_ERROR.into());
    }
    let mounts = args
        .mounts
        .iter()
        .map(|m| super::mounts::MountSpec::parse(m))
        .collect::<std::io::Result<Vec<_>>>()
        .and_then(|mounts| {
            let scratch = args.scratch.clone().unwrap_or_else(std::env::temp_dir);
            super::mounts::apply(&mounts, &scratch)
        });
    if let Err(e) = mounts {
        eprintln!("remora-kube-sim: mounting the container's volumes: {e}");
        std::process::exit(START_ERROR.into());
    }
    if let Some(dir) = &args.workdir
        && let Err(e) = std::env::set_current_dir(dir)
    {
        eprintln!("remora-kube-sim: workingDir {}: {e}", dir.display());
        std::process::exit(START_ERROR.into());
    }
    if let Err(e) = super::security::apply(
        args.capabilities.as_deref(),
        args.user,
        args.group,
        args.no_new_privs,
    ) {
        eprintln!("remora-kube-sim: applying the securityContext: {e}");
        std::process::exit(START_ERROR.into());
    }
    let err = std::process::Command::new(&args.argv[0])
        .args(&args.argv[1..])
        .exec();
    eprintln!("remora-kube-sim: starting {:?}: {err}", args.argv);
    std::process::exit(START_ERROR.into());
}

/// Joins the network and UTS namespaces of process `pid`.
fn join_namespaces(pid: u32) -> std::io::Result<()> {
    use nix::sched::{CloneFlags, setns};
    for (ns, flag) in [
        ("net", CloneFlags::CLONE_NEWNET),
        ("uts", CloneFlags::CLONE_NEWUTS),
    ] {
        let file = std::fs::File::open(format!("/proc/{pid}/ns/{ns}"))?;
        setns(&file, flag).map_err(std::io::Error::from)?;
    }
    Ok(())
}

/// The simulator's own binary (the container init).
pub fn current_exe() -> std::io::Result<PathBuf> {
    std::env::current_exe()
}

/// Fails as `exec` would if `program` cannot be found or run, so that the kubelet reports a
/// `RunContainerError` instead of starting the init.
pub fn check_program(program: &str, path_var: &str, workdir: Option<&str>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let found = if program.contains('/') {
        let p = Path::new(program);
        let p = match workdir {
            Some(dir) if p.is_relative() => Path::new(dir).join(p),
            _ => p.to_path_buf(),
        };
        executable(&p)
    } else {
        path_var
            .split(':')
            .any(|dir| executable(&Path::new(dir).join(program)))
    };
    if !found {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("executable file {program:?} not found in $PATH or not executable"),
        ));
    }
    Ok(())
}
