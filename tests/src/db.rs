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

/// `psql -At` as `postgres` on this machine's PostgreSQL (127.0.0.1:5432)
/// in database `db`: its trimmed output.
///
/// # Panics
/// psql fails.
pub fn psql(db: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
        ])
        .args(["-At", "-d", db, "-c", sql])
        .output()
        .expect("running psql");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Wait until the operator whose `--state-dir` is `state_dir` has a golden
/// copy ready (it makes one in the background after the first `all` branch
/// of a source; later `all` branches clone it).
///
/// # Errors
/// None became ready within `within`.
pub fn wait_golden_ready(
    state_dir: &std::path::Path,
    within: std::time::Duration,
) -> Result<(), String> {
    let file = state_dir.join("db-branches.json");
    let deadline = std::time::Instant::now() + within;
    loop {
        let state: serde_json::Value = std::fs::read(&file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let ready = state["entries"].as_array().is_some_and(|entries| {
            entries
                .iter()
                .any(|e| e["golden"] == true && e["ready"] == true)
        });
        if ready {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "no golden copy ready in {} after {within:?}: {state}",
                file.display()
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
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

/// A MariaDB server of this machine's version on a fresh data directory
/// under the temp dir (`mariadb-install-db`), listening on a free port of
/// 127.0.0.1, root without a password: a branch server for tests. Stopped
/// and removed on drop.
#[derive(Debug)]
pub struct MariaServer {
    child: Child,
    dir: std::path::PathBuf,
    port: u16,
}

impl MariaServer {
    /// Install and start it; returns once it answers.
    ///
    /// # Errors
    /// Installing or starting fails, or it does not answer within 60 s.
    pub fn start(tag: &str) -> Result<MariaServer, String> {
        Self::start_with(tag, &[])
    }

    /// [`MariaServer::start`] with more `mariadbd` options (e.g.
    /// `--version=11.4.2-MariaDB`: the version string it reports).
    ///
    /// # Errors
    /// Installing or starting fails, or it does not answer within 60 s.
    pub fn start_with(tag: &str, extra: &[&str]) -> Result<MariaServer, String> {
        let dir = std::env::temp_dir().join(format!("remora-maria-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let data = dir.join("data");
        std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
        let install = Command::new("mariadb-install-db")
            .args(["--no-defaults", "--skip-test-db", "--user=mysql"])
            .arg("--auth-root-authentication-method=normal")
            .arg(format!("--datadir={}", data.display()))
            .output()
            .map_err(|e| format!("mariadb-install-db: {e}"))?;
        let chown = Command::new("chown")
            .args(["-R", "mysql:mysql"])
            .arg(&dir)
            .status()
            .map_err(|e| format!("chown: {e}"))?;
        if !install.status.success() || !chown.success() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!(
                "mariadb-install-db: {}",
                String::from_utf8_lossy(&install.stderr)
            ));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let d = dir.display();
        let child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={d}/mariadbd.sock"))
            .arg(format!("--pid-file={d}/mariadbd.pid"))
            .arg(format!("--log-error={d}/mariadbd.err"))
            .args(["--user=mysql", "--skip-log-bin", "--skip-name-resolve"])
            .args(["--innodb-buffer-pool-size=32M", "--innodb-log-file-size=8M"])
            .args(extra)
            .spawn()
            .map_err(|e| format!("mariadbd: {e}"))?;
        let server = MariaServer { child, dir, port };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while server.sql("SELECT 1").is_err() {
            if std::time::Instant::now() >= deadline {
                return Err(format!(
                    "mariadbd on port {port} did not answer: {}",
                    std::fs::read_to_string(server.dir.join("mariadbd.err")).unwrap_or_default()
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Ok(server)
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Run `sql` as root; its output (`-N --batch`), trimmed.
    ///
    /// # Errors
    /// The client fails.
    pub fn sql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("mariadb")
            .args(["-h127.0.0.1", "-uroot", "--protocol=tcp", "-N", "--batch"])
            .arg(format!("-P{}", self.port))
            .args(["-e", sql])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for MariaServer {
    fn drop(&mut self) {
        // SIGTERM: a clean shutdown; then the directory goes.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
