//! A private PostgreSQL server (`initdb` + `postgres`) on a free loopback port, for tests that
//! need a second database server: tenants placed on several servers, a server that goes down,
//! logical replication between two servers (`wal_level = logical` is set).
//!
//! PostgreSQL refuses to run as root; as root the server runs as the `postgres` system user
//! (which the Debian package creates), its directory handed to that user.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

use crate::servers::{free_port, wait_for_port};

/// `initdb`, `postgres`: on `PATH` or in Debian's versioned directory.
fn pg_binary(name: &str) -> anyhow::Result<PathBuf> {
    if let Ok(p) = crate::servers::find_binary(name) {
        return Ok(p);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("{name} is not installed (run deploy/local/stack.sh deps)"))
}

/// The uid/gid to run the server as: ours, or `postgres`'s when we are root.
fn server_user() -> anyhow::Result<Option<(u32, u32)>> {
    let me = Command::new("id").arg("-u").output()?;
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        return Ok(None);
    }
    let id = |flag: &str| -> anyhow::Result<u32> {
        let o = Command::new("id").args([flag, "postgres"]).output()?;
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .context("running as root and there is no postgres user to run PostgreSQL as")
    };
    Ok(Some((id("-u")?, id("-g")?)))
}

/// A directory for a private server's data: in memory (`/dev/shm`) where the machine has it,
/// so that initdb, base backups and the many files of a test's schemas cost no disk writes.
pub(crate) fn data_tempdir() -> std::io::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::Builder::new().prefix("fleet-pg-").tempdir_in(shm) {
            return Ok(dir);
        }
    }
    tempfile::tempdir()
}

/// A private server; stopped (fast shutdown) when dropped.
pub struct PgServer {
    pub port: u16,
    dir: tempfile::TempDir,
    user: Option<(u32, u32)>,
    child: Option<Child>,
}

impl PgServer {
    /// `initdb` (trust auth, superuser `postgres`, `wal_level = logical`) and start.
    pub fn start() -> anyhow::Result<PgServer> {
        let dir = data_tempdir()?;
        let user = server_user()?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data)?;
        if let Some((uid, gid)) = user {
            chown(dir.path(), uid, gid)?;
            chown(&data, uid, gid)?;
        }
        let mut initdb = Command::new(pg_binary("initdb")?);
        initdb
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-N", "--no-instructions"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_user(&mut initdb, user);
        let out = initdb.output().context("run initdb")?;
        anyhow::ensure!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let mut s = PgServer {
            port: free_port(),
            dir,
            user,
            child: None,
        };
        s.restart()?;
        Ok(s)
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates `name` (an identifier the test chose).
    pub async fn create_database(&self, name: &str) -> anyhow::Result<String> {
        use sqlx::Connection as _;
        let mut con = sqlx::PgConnection::connect(&self.url("postgres")).await?;
        sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut con)
            .await?;
        con.close().await?;
        Ok(self.url(name))
    }

    /// What the server has written to its log since it (re)started.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Fast shutdown: clients see their connections closed, then nothing answers on the port.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// Starts (again) on the same port with the same data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let data = self.dir.path().join("data");
        let log = std::fs::File::create(self.dir.path().join("postgres.log"))?;
        let mut cmd = Command::new(pg_binary("postgres")?);
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .args(["-c", "wal_level=logical", "-c", "fsync=off"])
            .args(["-c", "max_connections=100", "-c", "shared_buffers=32MB"])
            .stdout(Stdio::null())
            .stderr(log);
        as_user(&mut cmd, self.user);
        self.child = Some(cmd.spawn().context("start postgres")?);
        wait_for_port(self.port, Duration::from_secs(30))?;
        // The port opens before the server accepts logins; wait for a real connection.
        let url = self.url("postgres");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ok = std::thread::spawn({
                let url = url.clone();
                move || {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .ok()?
                        .block_on(async {
                            use sqlx::Connection as _;
                            sqlx::PgConnection::connect(&url).await.ok()
                        })
                        .map(|_| ())
                }
            })
            .join()
            .ok()
            .flatten()
            .is_some();
            if ok {
                return Ok(());
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "postgres on {} did not accept connections",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn chown(p: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::chown(p, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", p.display()))
}

fn as_user(cmd: &mut Command, user: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt as _;
    if let Some((uid, gid)) = user {
        cmd.gid(gid).uid(uid);
    }
}
