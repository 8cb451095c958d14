//! Choosing how a program's calls are intercepted: the `LD_PRELOAD` layer
//! for dynamically linked programs, the seccomp supervisor for Go and
//! statically linked ones (which make syscalls without libc).

use crate::elf::{self, Kind};
use std::path::{Path, PathBuf};

/// The interception mode asked for (`--interception`, config `interception`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    Auto,
    Seccomp,
    Preload,
}

impl Asked {
    /// Parse a flag or config value; unknown values mean `auto`.
    pub fn parse(value: Option<&str>) -> Asked {
        match value {
            Some("seccomp") => Asked::Seccomp,
            Some("preload") => Asked::Preload,
            _ => Asked::Auto,
        }
    }
}

/// The mode a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Preload,
    Seccomp,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Preload => "LD_PRELOAD layer",
            Mode::Seccomp => "seccomp supervisor",
        })
    }
}

/// `program` as found on `PATH` (or as given when it has a slash).
pub fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The mode for `program` and why.
pub fn choose(asked: Asked, program: &str) -> (Mode, String) {
    match asked {
        Asked::Seccomp => return (Mode::Seccomp, "forced with --interception seccomp".into()),
        Asked::Preload => return (Mode::Preload, "forced with --interception preload".into()),
        Asked::Auto => {}
    }
    let Some(path) = find_program(program) else {
        return (Mode::Preload, format!("{program} not found on PATH"));
    };
    classify(&path)
}

fn classify(path: &Path) -> (Mode, String) {
    let shown = path.display();
    match elf::inspect(path) {
        Some(Kind::Go) => (
            Mode::Seccomp,
            format!("{shown} is a Go program (its syscalls bypass libc)"),
        ),
        Some(Kind::Static) => (
            Mode::Seccomp,
            format!("{shown} is statically linked (LD_PRELOAD is ignored)"),
        ),
        Some(Kind::Dynamic) => (Mode::Preload, format!("{shown} is dynamically linked")),
        None => (
            Mode::Preload,
            format!("{shown} is not an ELF program (a script runs its interpreter with the layer)"),
        ),
    }
}

/// The `interception` key of the config the session flags point at, if set.
pub fn config_value(args: &crate::args::SessionArgs) -> Option<String> {
    let loaded = remora_config::Config::from_env_and_overrides(
        args.config.clone(),
        crate::session::overrides(args),
    )
    .ok()?;
    loaded.config.interception.map(|i| i.to_string())
}
