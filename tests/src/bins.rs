//! Locating binaries and libraries that cargo built for the workspace (`remora`,
//! `remora-agent`, `libremora_layer.so`, test apps) from inside a test executable.

use std::{
    env,
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

/// Environment variable that overrides where built artifacts are looked up first.
pub const BIN_DIR_ENV: &str = "REMORA_BIN_DIR";

/// Directories searched, in order: `$REMORA_BIN_DIR`, then the cargo profile directory
/// of the running test executable (`target/<profile>/deps/harness-..` gives
/// `target/<profile>`), then the executable's own directory.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = env::var_os(BIN_DIR_ENV) {
        dirs.push(PathBuf::from(dir));
    }
    if let Ok(exe) = env::current_exe()
        && let Some(exe_dir) = exe.parent()
    {
        if exe_dir.file_name().is_some_and(|name| name == "deps")
            && let Some(profile_dir) = exe_dir.parent()
        {
            dirs.push(profile_dir.to_path_buf());
        }
        dirs.push(exe_dir.to_path_buf());
    }
    dirs
}

/// Path of the workspace binary `name` (e.g. `"remora"`, `"remora-agent"`).
///
/// # Errors
/// [`Error::BinaryNotFound`] naming every directory searched when it was not built.
pub fn bin_path(name: &str) -> Result<PathBuf> {
    artifact_path(name)
}

/// Path of any build artifact by file name (e.g. `"libremora_layer.so"`).
///
/// # Errors
/// [`Error::BinaryNotFound`] naming every directory searched when it is missing.
pub fn artifact_path(file_name: &str) -> Result<PathBuf> {
    find_in(&search_dirs(), file_name)
}

fn find_in(dirs: &[PathBuf], file_name: &str) -> Result<PathBuf> {
    dirs.iter()
        .map(|dir| dir.join(file_name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| Error::BinaryNotFound {
            name: file_name.to_owned(),
            searched: dirs
                .iter()
                .map(|dir| dir.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The cargo profile directory (`target/debug`) the running test was built into, if
/// the executable sits in the usual `target/<profile>/deps/`.
pub fn profile_dir() -> Option<PathBuf> {
    let exe = env::current_exe().ok()?;
    let deps = exe.parent()?;
    (deps.file_name()? == "deps")
        .then(|| deps.parent().map(Path::to_path_buf))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_artifact_names_every_searched_dir() {
        let dirs = vec![
            PathBuf::from("/nonexistent/a"),
            PathBuf::from("/nonexistent/b"),
        ];
        let err = find_in(&dirs, "remora-nope").unwrap_err().to_string();
        assert!(err.contains("remora-nope"), "{err}");
        assert!(err.contains("/nonexistent/a, /nonexistent/b"), "{err}");
    }

    #[test]
    fn finds_artifact_in_first_dir_that_has_it() {
        let exe = env::current_exe().unwrap();
        let dir = exe.parent().unwrap().to_path_buf();
        let name = exe.file_name().unwrap().to_str().unwrap();
        let found = find_in(&[PathBuf::from("/nonexistent"), dir.clone()], name).unwrap();
        assert_eq!(found, dir.join(name));
    }

    #[test]
    fn test_exe_lives_in_a_profile_dir() {
        let profile = profile_dir().expect("test exe should be in target/<profile>/deps");
        assert!(search_dirs().contains(&profile));
    }
}
