//! The container side of volumes: in a container's own mount namespace (unshared by its init,
//! everything made private first, so nothing propagates to this machine), each volume's host
//! directory is bind-mounted at its `mountPath`. The namespace dies with the container's last
//! process, and its mounts with it: nothing to clean up.
//!
//! The containers share this machine's root filesystem, so a `mountPath` that does not exist
//! cannot simply be created. Instead its deepest existing ancestor is **shadowed** inside the
//! container: a tmpfs gets a placeholder plus a recursive bind mount for every entry of the
//! ancestor, the missing directories are created in the tmpfs, and the tmpfs is moved over
//! the ancestor. The container sees the ancestor as before plus the new mount point; this
//! machine sees nothing. `/` itself cannot be shadowed that way: a missing top-level
//! `mountPath` (`/data`) is refused.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use nix::mount::{MsFlags, mount};

/// One bind mount: `source` on this machine at `target` in the container.
#[derive(Debug, Clone)]
pub struct MountSpec {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

impl MountSpec {
    /// The `--mount` argument: `ro|rw<TAB>source<TAB>target`.
    pub fn to_arg(&self) -> String {
        format!(
            "{}\t{}\t{}",
            if self.read_only { "ro" } else { "rw" },
            self.source.display(),
            self.target.display()
        )
    }

    pub fn parse(arg: &str) -> io::Result<Self> {
        let mut parts = arg.split('\t');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(mode), Some(source), Some(target)) => Ok(Self {
                source: source.into(),
                target: target.into(),
                read_only: mode == "ro",
            }),
            _ => Err(io::Error::other(format!("malformed --mount {arg:?}"))),
        }
    }
}

fn err(what: String) -> impl FnOnce(nix::Error) -> io::Error {
    move |e| io::Error::other(format!("{what}: {e}"))
}

/// Enters a private mount namespace and performs `mounts`; `scratch` is a directory of the
/// simulator's where shadow tmpfs are staged.
pub fn apply(mounts: &[MountSpec], scratch: &Path) -> io::Result<()> {
    if mounts.is_empty() {
        return Ok(());
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(err("unsharing the mount namespace".into()))?;
    mount::<str, str, str, str>(None, "/", None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None)
        .map_err(err("making / private".into()))?;
    for (n, m) in mounts.iter().enumerate() {
        let is_dir = m.source.is_dir();
        ensure_mount_point(&m.target, is_dir, &scratch.join(format!("shadow-{n}")))?;
        mount::<Path, Path, str, str>(
            Some(&m.source),
            &m.target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )
        .map_err(err(format!(
            "mounting {} at {}",
            m.source.display(),
            m.target.display()
        )))?;
        if m.read_only {
            mount::<str, Path, str, str>(
                None,
                &m.target,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None,
            )
            .map_err(err(format!("making {} read-only", m.target.display())))?;
        }
    }
    Ok(())
}

/// Makes `target` exist in this mount namespace only.
fn ensure_mount_point(target: &Path, is_dir: bool, staging: &Path) -> io::Result<()> {
    if target.exists() {
        return Ok(());
    }
    let ancestor = target
        .ancestors()
        .skip(1)
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    let real = fs::canonicalize(ancestor)?;
    if real == Path::new("/") {
        return Err(io::Error::other(format!(
            "mountPath {} is missing and directly under /, which cannot be shadowed: use a path under an existing directory (see docs/kube-sim.md)",
            target.display()
        )));
    }
    shadow(&real, staging)?;
    if is_dir {
        fs::create_dir_all(target)
    } else {
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(target, b"")
    }
}

/// Replaces `dir` (in this mount namespace) by a tmpfs holding a bind mount of each entry.
fn shadow(dir: &Path, staging: &Path) -> io::Result<()> {
    fs::create_dir_all(staging)?;
    mount::<str, Path, str, str>(
        Some("tmpfs"),
        staging,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=755"),
    )
    .map_err(err(format!("mounting a tmpfs at {}", staging.display())))?;
    for entry in fs::read_dir(dir)?.flatten() {
        let from = entry.path();
        let to = staging.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
            continue;
        }
        if kind.is_dir() {
            fs::create_dir(&to)?;
        } else {
            fs::write(&to, b"")?;
        }
        mount::<Path, Path, str, str>(
            Some(&from),
            &to,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )
        .map_err(err(format!("binding {}", from.display())))?;
    }
    mount::<Path, Path, str, str>(Some(staging), dir, None, MsFlags::MS_MOVE, None).map_err(err(
        format!("moving the shadow of {} in place", dir.display()),
    ))
}
