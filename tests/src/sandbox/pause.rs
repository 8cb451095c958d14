//! The pod's pause process: a `sleep infinity` in the pod's netns and in its own mount
//! and UTS namespaces, set up by a small shell script before it execs.
//!
//! Mount design: the script mounts a tmpfs on `STATE/mnt` (private to the pod's mount
//! namespace, so the host only ever sees an empty directory), then for every top-level
//! directory that receives pod files (`/etc` always, `/srv`, ...) mounts an overlayfs on
//! it whose lower layer is the host's directory and whose upper layer lives in that
//! tmpfs, copies the staged files in, and lazily unmounts the tmpfs (the overlays keep
//! it alive). The staged copies are deleted as soon as the pause reports ready, so the
//! private files then exist only inside the pod's mount namespace and vanish with it.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Read},
    os::unix::process::CommandExt,
    path::{Component, Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use super::pod::DEFAULT_PATH;
use crate::error::{Error, Result};

/// How long the setup script may take before the pod is declared failed.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Top-level directories that cannot be overlaid (kernel file systems, or the
/// harness's own state under /run).
const FORBIDDEN_TOPS: &[&str] = &["proc", "sys", "dev", "run"];

/// Positional parameters: STATE NAME HOSTNAME NTOPS TOP... KEY=VALUE...
/// No user-provided string is ever spliced into the script text.
const SETUP_SCRIPT: &str = r#"set -eu
state=$1 name=$2 host=$3 ntops=$4
shift 4
mount -t tmpfs -o mode=0700 "$name" "$state/mnt"
while [ "$ntops" -gt 0 ]; do
  top=$1
  shift
  ntops=$((ntops - 1))
  mkdir -p "$state/mnt/upper/$top" "$state/mnt/work/$top"
  mount -t overlay "$name" \
    -o "lowerdir=/$top,upperdir=$state/mnt/upper/$top,workdir=$state/mnt/work/$top" "/$top"
  cp -R "$state/stage/$top/." "/$top/"
done
umount -l "$state/mnt"
hostname "$host"
echo ready
exec env -i "$@" sleep infinity </dev/null >/dev/null 2>&1
"#;

/// Checks that `path` can be placed in a pod; returns its top-level directory name.
pub(crate) fn check_pod_path(path: &Path) -> Result<String> {
    let invalid = |why: &str| Error::InvalidSpec(format!("file {}: {why}", path.display()));
    if !path.is_absolute() {
        return Err(invalid("path must be absolute"));
    }
    let normal: Vec<&str> = path
        .components()
        .skip(1)
        .map(|c| match c {
            Component::Normal(part) => part.to_str().ok_or_else(|| invalid("not UTF-8")),
            _ => Err(invalid("`.`/`..` components are not allowed")),
        })
        .collect::<Result<_>>()?;
    let [top, _, ..] = normal.as_slice() else {
        return Err(invalid("must be inside a top-level directory, e.g. /etc/x"));
    };
    let valid = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    if !top.chars().all(valid) || FORBIDDEN_TOPS.contains(top) {
        return Err(invalid("this top-level directory cannot be overlaid"));
    }
    if !Path::new("/").join(top).is_dir() {
        return Err(invalid(
            "its top-level directory must already exist on the host (it is overlaid, \
             never created on the host)",
        ));
    }
    Ok((*top).to_owned())
}

/// Stages `files`, starts the pause process and waits until its namespaces are set up.
///
/// The returned child *is* the pause process (every step execs the next one).
pub(crate) fn start(
    name: &str,
    hostname: &str,
    state_dir: &Path,
    files: &BTreeMap<PathBuf, Vec<u8>>,
    env: &[(String, String)],
) -> Result<Child> {
    let stage = state_dir.join("stage");
    let result = stage_files(&stage, files).and_then(|tops| {
        let mnt = state_dir.join("mnt");
        fs::create_dir_all(&mnt).map_err(|e| Error::io("creating", &mnt, e))?;
        spawn_and_wait(name, hostname, state_dir, &tops, env)
    });
    // Success or not, the private contents must not stay readable from the host.
    let _ = fs::remove_dir_all(&stage);
    result
}

fn stage_files(stage: &Path, files: &BTreeMap<PathBuf, Vec<u8>>) -> Result<Vec<String>> {
    let mut tops = Vec::new();
    for (path, contents) in files {
        let top = check_pod_path(path)?;
        // check_pod_path proved the path absolute, so the prefix is there.
        let target = stage.join(path.strip_prefix("/").unwrap_or(path));
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io("creating", parent, e))?;
        }
        fs::write(&target, contents).map_err(|e| Error::io("staging", &target, e))?;
        if !tops.contains(&top) {
            tops.push(top);
        }
    }
    Ok(tops)
}

fn spawn_and_wait(
    name: &str,
    hostname: &str,
    state_dir: &Path,
    tops: &[String],
    env: &[(String, String)],
) -> Result<Child> {
    let failed = |detail: String| Error::PauseFailed {
        pod: name.to_owned(),
        detail,
    };
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", name, "unshare", "--mount", "--uts"])
        .args([
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            SETUP_SCRIPT,
            "sh",
        ])
        .arg(state_dir)
        .args([name, hostname, &tops.len().to_string()])
        .args(tops)
        .args(env.iter().map(|(k, v)| format!("{k}={v}")))
        // Nothing of the test's environment reaches the pod, not even transiently.
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Keep the pause out of the test's process group (no terminal signals).
        .process_group(0);
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        what: format!("starting the pause process of pod {name}"),
        program: "ip".to_owned(),
        source,
    })?;
    let (ready_tx, ready_rx) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        // Reader thread --first stdout line--> this thread, so a hung setup cannot
        // block the test past READY_TIMEOUT.
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = ready_tx.send(line);
        });
    }
    match ready_rx.recv_timeout(READY_TIMEOUT) {
        Ok(line) if line.trim() == "ready" => {
            drop(child.stderr.take());
            // "ready" comes from the shell just before its final exec: until `sleep`
            // runs, /proc/PID/environ and cmdline are still the shell's.
            if wait_for_exec(child.id()) {
                return Ok(child);
            }
            let _ = child.kill();
            let _ = child.wait();
            Err(failed(format!(
                "did not exec `{PAUSE_CMDLINE}` within {READY_TIMEOUT:?}"
            )))
        }
        outcome => {
            let _ = child.kill();
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            let why = if outcome.is_err() {
                format!("not ready after {READY_TIMEOUT:?}")
            } else {
                format!("setup exited ({status})")
            };
            Err(failed(format!("{why}: {}", stderr.trim())))
        }
    }
}

/// What the pause process runs once set up (`/proc/PID/cmdline`, NUL-separated).
const PAUSE_CMDLINE: &str = "sleep\0infinity\0";

/// Polls until `pid` runs the final `sleep infinity` (or is gone, or time is up).
fn wait_for_exec(pid: u32) -> bool {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut delay = Duration::from_millis(1);
    loop {
        match fs::read(format!("/proc/{pid}/cmdline")) {
            Ok(cmdline) if cmdline == PAUSE_CMDLINE.as_bytes() => return true,
            Ok(_) if Instant::now() < deadline => {}
            _ => return false,
        }
        thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_files_under_existing_top_level_dirs() {
        assert_eq!(
            check_pod_path(Path::new("/etc/remora-demo/secret.txt")).unwrap(),
            "etc"
        );
        assert_eq!(check_pod_path(Path::new("/etc/hosts")).unwrap(), "etc");
    }

    #[test]
    fn rejects_paths_that_cannot_be_overlaid() {
        for bad in [
            "etc/hosts",
            "/hosts",
            "/etc/../root/x",
            "/proc/x",
            "/run/x",
            "/dev/x",
            "/remora-no-such-top-level-dir/x",
        ] {
            assert!(check_pod_path(Path::new(bad)).is_err(), "{bad} accepted");
        }
    }
}
