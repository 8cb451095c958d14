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
    classify_at(path, 0)
}

/// How many `#!` interpreters are followed (the kernel follows up to 4).
const SCRIPT_DEPTH: usize = 4;

fn classify_at(path: &Path, depth: usize) -> (Mode, String) {
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
        None if !path.exists() => (Mode::Preload, format!("{shown} does not exist")),
        None => match interpreter(path).filter(|_| depth < SCRIPT_DEPTH) {
            // The interpreter is what runs (under the filter or the layer).
            Some(interp) => {
                let (mode, why) = classify_at(&interp, depth + 1);
                let run_by = interp.display();
                (mode, format!("{shown} is a script run by {run_by}; {why}"))
            }
            None => (
                Mode::Preload,
                format!("{shown} is not an ELF program or a `#!` script"),
            ),
        },
    }
}

/// The interpreter a `#!` line names (the kernel does not search `PATH`).
fn interpreter(path: &Path) -> Option<PathBuf> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(path).ok()?.read(&mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = &line[..line.iter().position(|&b| b == b'\n')?];
    let line = std::str::from_utf8(line).ok()?;
    line.split_whitespace().next().map(PathBuf::from)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_classified_by_their_interpreter() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("s");
        std::fs::write(&script, "#!/bin/sh -e\necho hi\n").unwrap();
        let (_, why) = classify(&script);
        assert!(why.contains("is a script run by /bin/sh"), "{why}");
        let nested = dir.path().join("t");
        std::fs::write(&nested, format!("#! {}\n", script.display())).unwrap();
        let (_, why) = classify(&nested);
        assert!(
            why.contains("is a script run by") && why.contains("/bin/sh"),
            "{why}"
        );
        let (mode, why) = classify(&dir.path().join("missing"));
        assert_eq!(mode, Mode::Preload);
        assert!(why.ends_with("does not exist"), "{why}");
        // A busybox shell script (busybox-static, scripts/setup.sh).
        std::fs::write(&script, "#!/bin/busybox sh\n").unwrap();
        let (mode, why) = classify(&script);
        assert_eq!(mode, Mode::Seccomp, "{why}");
        std::fs::write(&script, "plain text").unwrap();
        assert!(
            classify(&script)
                .1
                .contains("not an ELF program or a `#!` script")
        );
    }
}
