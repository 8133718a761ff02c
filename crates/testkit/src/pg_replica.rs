//! A private Postgres primary with one streaming replica, each on its own loopback port, for
//! tests of replica lag: `initdb` + `pg_ctl` for the primary, `pg_basebackup -R` for the replica.
//! Replay on the replica can be paused (`pg_wal_replay_pause()`) to make it lag.
//!
//! Postgres refuses to run as root: as root, the servers run as the `postgres` system user
//! (created by the distribution's package, or by `deploy/local/stack.sh`), as the stack script
//! does.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::servers::{free_port, wait_for_port};

/// The directory holding `initdb`, `pg_ctl` and `pg_basebackup`: on `PATH`, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
fn pg_bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(p) = crate::find_binary("pg_basebackup") {
        if p.with_file_name("initdb").is_file() {
            return Ok(p.parent().map(Path::to_path_buf).unwrap_or_default());
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .find(|d| d.join("initdb").is_file() && d.join("pg_basebackup").is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "initdb/pg_basebackup are not installed (run deploy/local/stack.sh deps)"
            )
        })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command, run as `postgres` when we are root.
fn pg_command(bin: &Path, root: bool) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn run(mut c: Command, what: &str) -> anyhow::Result<()> {
    let out = c.output()?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// A primary and its streaming replica; both are stopped (immediately) when dropped.
pub struct PgReplicaPair {
    pub primary_port: u16,
    pub replica_port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    root: bool,
}

impl PgReplicaPair {
    pub fn start() -> anyhow::Result<PgReplicaPair> {
        let bin = pg_bin_dir()?;
        let root = is_root();
        let dir = crate::postgres::data_tempdir()?;
        if root {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres").arg(dir.path());
                    c
                },
                "chown",
            )?;
        }
        let pair = PgReplicaPair {
            primary_port: free_port(),
            replica_port: free_port(),
            dir,
            bin,
            root,
        };
        let primary = pair.dir.path().join("primary");
        let replica = pair.dir.path().join("replica");
        let mut initdb = pg_command(&pair.bin.join("initdb"), root);
        initdb
            .arg("-D")
            .arg(&primary)
            .args(["-U", "postgres", "-A", "trust"]);
        run(initdb, "initdb")?;
        pair.pg_ctl_start(
            &primary,
            pair.primary_port,
            "-c wal_level=replica -c max_wal_senders=4 -c fsync=off",
        )?;
        let mut bb = pg_command(&pair.bin.join("pg_basebackup"), root);
        bb.args([
            "-h",
            "127.0.0.1",
            "-p",
            &pair.primary_port.to_string(),
            "-U",
            "postgres",
            "-R",
            "-X",
            "stream",
            "-D",
        ])
        .arg(&replica);
        run(bb, "pg_basebackup")?;
        pair.pg_ctl_start(&replica, pair.replica_port, "-c fsync=off")?;
        Ok(pair)
    }

    fn pg_ctl_start(&self, data: &Path, port: u16, extra: &str) -> anyhow::Result<()> {
        let mut c = pg_command(&self.bin.join("pg_ctl"), self.root);
        c.arg("-D")
            .arg(data)
            .arg("-l")
            .arg(data.with_extension("log"))
            .args([
                "-w",
                "-o",
                &format!(
                    "-p {port} -c listen_addresses=127.0.0.1 -k {} {extra}",
                    self.dir.path().display()
                ),
                "start",
            ]);
        run(c, "pg_ctl start")?;
        wait_for_port(port, Duration::from_secs(30))
    }

    /// URL of the primary's `postgres` database.
    pub fn primary_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            self.primary_port
        )
    }

    pub fn replica_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            self.replica_port
        )
    }
}

impl Drop for PgReplicaPair {
    fn drop(&mut self) {
        for data in ["replica", "primary"] {
            let mut c = pg_command(&self.bin.join("pg_ctl"), self.root);
            c.arg("-D")
                .arg(self.dir.path().join(data))
                .args(["-m", "immediate", "stop"]);
            let _ = c.output();
        }
    }
}
