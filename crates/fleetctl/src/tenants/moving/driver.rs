//! The driver lock: a session advisory lock for the tenant on a connection of its own to the
//! control plane, held for the whole run, so that one process drives a move at a time (a second
//! `move` or an `--abort` while one runs is refused). It ends with the process, however that
//! ends.
//!
//! The connection is idle for most of a move (an initial copy, or `--until copied` can take
//! hours), and an idle connection can be cut silently (a load balancer's idle timeout, a pooler,
//! `idle_session_timeout`), which releases the lock without the process noticing. So the
//! session turns off the server's idle timeouts and sends TCP keepalives, and the run checks
//! that the lock is still its own before each step and before the cut-over commits; a lost lock
//! stops the run (a re-run continues where it stopped).

use anyhow::Context as _;
use fleet_shared::secret::ExposeSecret as _;
use fleet_shared::{Code, Settings};
use sqlx::{Connection as _, PgConnection};

/// Advisory-lock class of the driver lock (`"move"`); the second key is `hashtext(code)`.
const DRIVER_LOCK_CLASS: i32 = 0x6d6f_7665;

/// Session settings of the lock's connection: no server-side idle timeout ends it, and TCP
/// keepalives (every 10 s after 30 s idle) keep middleboxes from dropping it as idle and detect
/// a dead peer.
const KEEPALIVE: &str = "SET idle_session_timeout = 0; SET idle_in_transaction_session_timeout = 0;
     SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; SET tcp_keepalives_count = 6";

pub struct Driver {
    con: PgConnection,
    code: Code,
}

impl Driver {
    /// Takes the lock, or refuses when another process holds it.
    pub async fn lock(settings: &Settings, code: &Code) -> anyhow::Result<Driver> {
        let mut con = PgConnection::connect(settings.database_url.expose_secret())
            .await
            .with_context(|| format!("cannot use the database at {}", settings.database_url))?;
        sqlx::raw_sql(KEEPALIVE).execute(&mut con).await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
            .bind(DRIVER_LOCK_CLASS)
            .bind(code.as_str())
            .fetch_one(&mut con)
            .await?;
        anyhow::ensure!(
            got,
            "another fleetctl is running a move of tenant {code} right now; wait for it to end (or stop it: a re-run continues where it stopped)"
        );
        Ok(Driver {
            con,
            code: code.clone(),
        })
    }

    /// Fails unless this process still holds the lock (its connection may have been cut).
    pub async fn check(&mut self) -> anyhow::Result<()> {
        let held: Result<bool, sqlx::Error> = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks
                             WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
                               AND classid = $1::int4::oid AND objid = hashtext($2)::oid
                               AND objsubid = 2)",
        )
        .bind(DRIVER_LOCK_CLASS)
        .bind(self.code.as_str())
        .fetch_one(&mut self.con)
        .await;
        anyhow::ensure!(
            matches!(held, Ok(true)),
            "this fleetctl lost its lock on the move of tenant {} (its control-plane connection was cut{}); stopping so that no other run races it: re-run the move to continue",
            self.code,
            match &held {
                Err(e) => format!(": {}", fleet_shared::errors::one_line(&e.to_string())),
                Ok(_) => String::new(),
            }
        );
        Ok(())
    }
}
