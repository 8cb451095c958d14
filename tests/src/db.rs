//! Shared pieces of the database-branch tests and benchmark: a local
//! process standing in for the workload whose environment names the
//! database, and a content checksum of a database's dump.

use std::process::{Child, Command};

/// A process of this machine standing in for the workload (`sleep`), with
/// `vars` in its environment; killed and reaped on drop.
#[derive(Debug)]
pub struct Workload(Child);

impl Workload {
    /// Start it.
    ///
    /// # Panics
    /// `sleep` cannot be started.
    pub fn start(vars: &[(&str, &str)]) -> Workload {
        let mut cmd = Command::new("sleep");
        cmd.arg("3600");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        Workload(cmd.spawn().expect("starting sleep"))
    }

    /// Its target name, `pid/<PID>`.
    pub fn target(&self) -> String {
        format!("pid/{}", self.0.id())
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A checksum (FNV-1a, 64 bits, hex) of what `pg_dump` (a ready command
/// naming the database) prints, without the random `\restrict` key lines
/// of pg_dump 15.14+ and 18.
///
/// # Panics
/// pg_dump fails.
pub fn dump_checksum(pg_dump: &mut Command) -> String {
    let out = pg_dump.output().expect("running pg_dump");
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let hash = text
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .flat_map(str::bytes)
        .fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
        });
    format!("{hash:x}")
}

/// A throwaway XFS filesystem with reflinks on a loop device (needs root):
/// unmounted and removed on drop, after stopping any process still using
/// it (servers the test's operator started there, found by their command
/// lines naming the mount).
#[derive(Debug)]
pub struct XfsMount {
    dir: std::path::PathBuf,
    mnt: std::path::PathBuf,
}

impl XfsMount {
    /// Make a `size_mib` image and mount it.
    ///
    /// # Errors
    /// mkfs.xfs or mount failed (what was made is removed).
    pub fn new(tag: &str, size_mib: u64) -> Result<XfsMount, String> {
        let dir = std::env::temp_dir().join(format!("remora-xfs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).map_err(|e| format!("{}: {e}", mnt.display()))?;
        let made = XfsMount { dir, mnt };
        let image = made.dir.join("xfs.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(size_mib << 20))
            .map_err(|e| format!("{}: {e}", image.display()))?;
        let ok = |cmd: &mut Command, what: &str| -> Result<(), String> {
            let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("{what}: {}", String::from_utf8_lossy(&out.stderr)))
            }
        };
        ok(
            Command::new("mkfs.xfs")
                .args(["-q", "-m", "reflink=1"])
                .arg(&image),
            "mkfs.xfs",
        )?;
        ok(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&made.mnt),
            "mount",
        )?;
        Ok(made)
    }

    /// Where it is mounted.
    pub fn path(&self) -> &std::path::Path {
        &self.mnt
    }

    /// Bytes in use (reflinked copies share blocks).
    ///
    /// # Panics
    /// statvfs fails.
    pub fn used_bytes(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(&self.mnt).expect("statvfs");
        (st.blocks() - st.blocks_free()) * st.fragment_size()
    }
}

impl Drop for XfsMount {
    fn drop(&mut self) {
        // Servers started on it (their command lines name it): ours.
        let needle = self.mnt.to_string_lossy().into_owned();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if pid != std::process::id() as i32
                && String::from_utf8_lossy(&cmdline).contains(&needle)
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        for _ in 0..100 {
            let done = Command::new("umount")
                .arg(&self.mnt)
                .output()
                .is_ok_and(|o| o.status.success());
            if done || !self.mounted() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl XfsMount {
    fn mounted(&self) -> bool {
        std::fs::read_to_string("/proc/self/mounts")
            .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(1) == self.mnt.to_str()))
    }
}
