//! `remora run --target T -- COMMAND`: resolve config, start the intproxy
//! (which starts the agent), fetch the target's environment, then exec the
//! command in place with the layer preloaded.

use crate::args::RunArgs;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::session::{self, Lifetime};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::Command;

pub fn run(args: RunArgs) -> Result<i32> {
    let program = args.command[0].clone();
    let asked = crate::interception::Asked::parse(
        args.interception
            .as_deref()
            .or(crate::interception::config_value(&args.session).as_deref()),
    );
    let (mode, why) = crate::interception::choose(asked, &program);
    let handoff = asked == crate::interception::Asked::Auto;
    if mode == crate::interception::Mode::Seccomp {
        if let Err(reason) = remora_supervisor::probe() {
            eprintln!(
                "remora: warning: {program} needs the seccomp supervisor ({why}), but seccomp \
                 user notification does not work here: {reason}; falling back to the LD_PRELOAD \
                 layer, which does not see its calls"
            );
            warn_if_unhookable(&program);
            return run_preloaded(args, program, false);
        }
        return run_supervised(args, program, &why);
    }
    warn_if_unhookable(&program);
    run_preloaded(args, program, handoff)
}

/// The seccomp path: the CLI stays as the supervisor of the command.
fn run_supervised(args: RunArgs, program: String, why: &str) -> Result<i32> {
    let mut progress = Progress::new();
    let prepared = session::prepare(&args.session, &program, &Lifetime::default(), &mut progress)?;
    progress.finish();
    let code = supervise(&program, &args.command[1..], &prepared.env, why)?;
    drop(prepared.lifeline);
    Ok(code)
}

/// Run `program args` with the session's `env` under the seccomp supervisor
/// (saying so on stderr) until it exits; its exit code (128 + signal when
/// killed). Also used by `remora test` for Go and static test programs.
pub fn supervise(
    program: &str,
    args: &[String],
    env: &std::collections::BTreeMap<String, String>,
    why: &str,
) -> Result<i32> {
    eprintln!("remora: {program} runs under the seccomp supervisor ({why})");
    supervise_quiet(program, args, env)
}

/// [`supervise`] without the startup line.
fn supervise_quiet(
    program: &str,
    args: &[String],
    env: &std::collections::BTreeMap<String, String>,
) -> Result<i32> {
    let mut env = env.clone();
    env.remove("LD_PRELOAD");
    // Ctrl-C, SIGTERM...: the program gets them (the terminal's go to it
    // too) and ends as it likes, while the supervisor still serves it.
    let child = crate::test_cmd::forward_signals();
    let status = remora_supervisor::run(program, args, &env, |pid| {
        if let Some(child) = &child {
            let _ = child.set(pid);
        }
    })
    .map_err(|e| Error::Exec {
        program: program.to_owned(),
        source: std::io::Error::other(e.to_string()),
    })?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// `remora supervise PROGRAM ARGS…`: `program` with this process's
/// environment under the seccomp supervisor. This process *becomes* the
/// program (same pid: its parent, `remora ci stop`, a debugger following
/// the exec see the program itself) and a detached supervisor process
/// serves it until its last process is gone.
///
/// Who starts it: `remora ci start` for Go and static apps; the layer's
/// exec hooks for Go and static children of a program that has the layer
/// (with its `LD_PRELOAD` moved to [`HANDOFF_PRELOAD_ENV`]); an IDE, with
/// `remora ext`'s environment, for a Go or static debuggee. With
/// `LD_PRELOAD` in its environment (the IDE case) it first re-executes
/// itself without it, so the layer is not in the supervisor. When seccomp
/// does not work here, a program that would have had the layer is started
/// with it.
pub fn supervise_cmd(args: crate::args::RunnerArgs) -> Result<i32> {
    let mut env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    let program = &args.command[0];
    if let Some(preload) = env.remove("LD_PRELOAD") {
        env.insert(SUPERVISE_PRELOAD_ENV.into(), preload);
        // The layer's connection closes at the exec: hold the session
        // meanwhile (an `ext` session ends when its last process leaves).
        if let Ok(fd) = remora_supervisor::lifeline(program, &env) {
            env.insert(remora_supervisor::LIFELINE_ENV.into(), fd.to_string());
        }
        return Err(reexec_without_layer(&env));
    }
    let handed_off = env.remove(HANDOFF_PRELOAD_ENV);
    if let Some(fd) = env.remove(HANDOFF_CLOEXEC_FD_ENV) {
        close_on_exec(&fd);
    }
    let from_ide = env.remove(SUPERVISE_PRELOAD_ENV);
    env.remove(SUPERVISE_EXE_ENV);
    let why = match wants_supervisor(program, &env) {
        Some(why) if handed_off.is_some() => {
            format!("{why}; started by a program with the LD_PRELOAD layer")
        }
        Some(why) => why,
        None => match handed_off.or(from_ide) {
            Some(preload) => {
                env.insert("LD_PRELOAD".into(), preload);
                let mut command = Command::new(program);
                if let Some(argv0) = env.remove(remora_supervisor::ARGV0_ENV) {
                    command.arg0(argv0);
                }
                let err = command
                    .args(&args.command[1..])
                    .env_clear()
                    .envs(&env)
                    .exec();
                return Err(Error::Exec {
                    program: program.clone(),
                    source: err,
                });
            }
            None => "asked for with remora supervise".to_owned(),
        },
    };
    eprintln!("remora: {program} runs under the seccomp supervisor ({why})");
    match remora_supervisor::exec_in_place(program, &args.command[1..], &env) {
        Ok(never) => match never {},
        // Nothing changed yet when this process cannot fork safely:
        // supervise it as a child instead.
        Err(remora_supervisor::Error::Invalid { .. }) => {
            supervise_quiet(program, &args.command[1..], &env)
        }
        Err(e) => Err(Error::Exec {
            program: program.clone(),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

/// Run this `remora` again with `env` (no `LD_PRELOAD`) and the same
/// arguments (see [`remora_supervisor::launch::reexec_self`]).
fn reexec_without_layer(env: &std::collections::BTreeMap<String, String>) -> Error {
    Error::Exec {
        program: "remora supervise".into(),
        source: remora_supervisor::launch::reexec_self(env),
    }
}

/// Where `remora supervise` keeps the `LD_PRELOAD` it was given directly
/// (an IDE with `remora ext`'s environment) while it re-executes itself.
pub const SUPERVISE_PRELOAD_ENV: &str = "REMORA_SUPERVISE_PRELOAD";

/// Set for the layer when `remora run` chose the interception
/// automatically: the `remora` that supervises Go and static children.
pub const SUPERVISE_EXE_ENV: &str = "REMORA_SUPERVISE_EXE";
/// Where the layer's exec hooks put a handed-off child's `LD_PRELOAD`.
pub const HANDOFF_PRELOAD_ENV: &str = "REMORA_HANDOFF_PRELOAD";
/// Names the fd a hand-off by fd (`fexecve`, `execveat`) kept open for this
/// exec only: the program is `/proc/self/fd/N…`, and fd `N` had
/// close-on-exec set in the program that exec'd it.
pub const HANDOFF_CLOEXEC_FD_ENV: &str = "REMORA_HANDOFF_CLOEXEC_FD";

/// Set close-on-exec again on the fd named `fd` (see
/// [`HANDOFF_CLOEXEC_FD_ENV`]): exec still opens the program by its
/// `/proc/self/fd` path, and the program does not inherit the fd.
fn close_on_exec(fd: &str) {
    if let Ok(fd) = fd.parse::<i32>() {
        remora_supervisor::launch::close_on_exec(fd);
    }
}

/// Whether the session's config leaves the interception automatic, so the
/// layer may hand Go and static children to `remora supervise`.
pub fn handoff_allowed(env: &std::collections::BTreeMap<String, String>) -> bool {
    let configured = env
        .get(remora_config::RESOLVED_CONFIG_ENV)
        .and_then(|json| serde_json::from_str::<remora_config::Config>(json).ok())
        .and_then(|c| c.interception);
    matches!(configured, None | Some(remora_config::Interception::Auto))
}

/// Whether the session's `program` should run under the supervisor: the
/// config's `interception` (from the session environment) and the ELF
/// decide, as for `remora run`; `Some(why)` when it should and seccomp
/// works here. When it does not work, a warning says so (the caller falls
/// back to the layer).
pub fn wants_supervisor(
    program: &str,
    env: &std::collections::BTreeMap<String, String>,
) -> Option<String> {
    let configured = env
        .get(remora_config::RESOLVED_CONFIG_ENV)
        .and_then(|json| serde_json::from_str::<remora_config::Config>(json).ok())
        .and_then(|c| c.interception)
        .map(|i| i.to_string());
    let asked = crate::interception::Asked::parse(configured.as_deref());
    let (mode, why) = crate::interception::choose(asked, program);
    if mode != crate::interception::Mode::Seccomp {
        return None;
    }
    match remora_supervisor::probe() {
        Ok(()) => Some(why),
        Err(reason) => {
            eprintln!(
                "remora: warning: {program} needs the seccomp supervisor ({why}), but seccomp \
                 user notification does not work here: {reason}; falling back to the \
                 LD_PRELOAD layer, which does not see its calls"
            );
            None
        }
    }
}

/// With `handoff` (automatic interception), a Go or static program the
/// command starts later goes to `remora supervise` (the layer's exec hooks
/// see [`SUPERVISE_EXE_ENV`]).
fn run_preloaded(args: RunArgs, program: String, handoff: bool) -> Result<i32> {
    let mut progress = Progress::new();
    let mut prepared =
        session::prepare(&args.session, &program, &Lifetime::default(), &mut progress)?;
    progress.finish();
    if handoff {
        if let Ok(exe) = std::env::current_exe() {
            prepared
                .env
                .insert(SUPERVISE_EXE_ENV.into(), exe.display().to_string());
        }
    }

    // The lifeline session stays open in the command (and whatever inherits
    // it), keeping the intproxy alive even for programs the layer cannot load
    // into. It is not close-on-exec on purpose.
    let _lifeline = keep_across_exec(prepared.lifeline);
    let err = Command::new(&program)
        .args(&args.command[1..])
        .env_clear()
        .envs(&prepared.env)
        .exec();
    Err(Error::Exec {
        program,
        source: err,
    })
}

/// Let the lifeline survive `exec` (std opens sockets close-on-exec).
pub fn keep_across_exec(stream: TcpStream) -> Option<std::os::fd::OwnedFd> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    let fd = std::os::fd::OwnedFd::from(stream);
    fcntl(&fd, FcntlArg::F_SETFD(FdFlag::empty())).ok()?;
    Some(fd)
}

/// Statically linked and Go programs bypass libc: remora cannot see their calls.
pub fn warn_if_unhookable(program: &str) {
    let path = if program.contains('/') {
        Some(std::path::PathBuf::from(program))
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
    };
    let Some(path) = path else { return };
    match crate::elf::inspect(&path) {
        Some(crate::elf::Kind::Static) => eprintln!(
            "remora: warning: {} is statically linked; remora cannot intercept its calls \
             (only dynamically linked programs see the target)",
            path.display()
        ),
        Some(crate::elf::Kind::Go) => eprintln!(
            "remora: warning: {} is a Go program, which makes system calls directly; \
             remora cannot intercept them",
            path.display()
        ),
        _ => {}
    }
}
