//! Deciding whether sandbox tests can run here: skip loudly without root + namespaces,
//! but fail when CI demands the sandbox (`REMORA_REQUIRE_SANDBOX=1`).

use std::{
    env, fs,
    process::{Command, Stdio},
    sync::OnceLock,
};

/// Environment variable that turns a skip into a failure (set it in CI).
pub const REQUIRE_SANDBOX_ENV: &str = "REMORA_REQUIRE_SANDBOX";

/// Why the sandbox cannot run here, or `Ok` if it can. Probed once per process.
pub fn sandbox_unavailable_reason() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE.get_or_init(probe).clone()
}

fn probe() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not running as root".to_owned());
    }
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems.lines().any(|line| line.ends_with("\toverlay")) {
        return Err("the kernel has no overlayfs".to_owned());
    }
    for (tool, version_flag) in [
        ("ip", "-V"),
        ("nsenter", "--version"),
        ("mount", "--version"),
    ] {
        let runs = Command::new(tool)
            .arg(version_flag)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !runs {
            return Err(format!("`{tool}` is not installed (run scripts/setup.sh)"));
        }
    }
    let created = Command::new("unshare")
        .args(["--net", "--mount", "--uts", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match created {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!(
            "cannot create namespaces (`unshare --net` {status})"
        )),
        Err(e) => Err(format!("cannot run `unshare`: {e}")),
    }
}

/// `true` when the calling test must skip because the sandbox cannot run here; prints
/// `SKIPPED (needs root + netns): <test_name>` to stderr in that case.
///
/// # Panics
/// Instead of skipping, when `REMORA_REQUIRE_SANDBOX=1`: CI must never pass silently.
pub fn skip_unless_privileged(test_name: &str) -> bool {
    let Err(reason) = sandbox_unavailable_reason() else {
        return false;
    };
    if env::var(REQUIRE_SANDBOX_ENV).is_ok_and(|v| v == "1") {
        panic!("{REQUIRE_SANDBOX_ENV}=1 but {test_name} cannot run its sandbox: {reason}");
    }
    eprintln!("SKIPPED (needs root + netns): {test_name} ({reason})");
    true
}

/// Returns from the enclosing test (with the given value, default `()`) when the sandbox
/// cannot run here, after printing a loud `SKIPPED` line; fails instead under
/// `REMORA_REQUIRE_SANDBOX=1`. See [`skip_unless_privileged`].
///
/// ```ignore
/// #[test]
/// fn pod_has_its_own_hostname() {
///     remora_tests::require_sandbox!();
///     // ...
/// }
/// ```
#[macro_export]
macro_rules! require_sandbox {
    () => {
        $crate::require_sandbox!(())
    };
    ($ret:expr) => {
        if $crate::sandbox::skip_unless_privileged($crate::__function_name!()) {
            return $ret;
        }
    };
}

/// Path of the enclosing function, e.g. `harness::pod_has_its_own_hostname`.
#[doc(hidden)]
#[macro_export]
macro_rules! __function_name {
    () => {{
        fn f() {}
        let name = ::std::any::type_name_of_val(&f);
        name.strip_suffix("::f").unwrap_or(name)
    }};
}

#[cfg(test)]
mod tests {
    #[test]
    fn function_name_names_the_enclosing_test() {
        let name = crate::__function_name!();
        assert!(
            name.ends_with("::function_name_names_the_enclosing_test"),
            "{name}"
        );
    }
}
