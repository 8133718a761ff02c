//! The warm pool: tenant schemas migrated ahead of time, so `tenant.created` only renames one.
//!
//! With `[provisioner] warm_pool = N` the provisioner keeps N schemas `fleet_pool_<32 hex>`, each
//! with the whole tenant migration set and its ledger, listed in `fleet.warm_pool`. Guarantees:
//!
//! - **Never owned and pooled at once.** A row in `fleet.warm_pool` exists exactly while its
//!   schema belongs to nobody. [`claim`] deletes the row (`FOR UPDATE SKIP LOCKED`, so concurrent
//!   claims take different schemas and never wait on each other) and renames the schema to
//!   `tenant_<code>` inside the provisioning transaction that also registers the tenant and writes
//!   its configs. A crash (even `kill -9`) before the commit rolls all of it back: the schema keeps
//!   its pool name and its row, the tenant does not exist, and the redelivery claims again.
//! - **No orphans.** A pool schema is created and listed in one transaction, and dropped and
//!   unlisted in one transaction.
//! - **Only current schemas are claimed.** Each row records a fingerprint of the migration set it
//!   was built with (versions and checksums); a provisioner claims only rows with its own
//!   fingerprint. The refill loop brings every other row up to date with the ordinary migration
//!   runner, or drops it when its ledger cannot become the current set (a changed file, a version
//!   the set no longer has). So a new migration (a release, a rollout) reaches the pool as soon as
//!   a provisioner carrying it runs; nothing else needs to know the pool exists.
//! - **One refiller at a time.** Each refill step is one transaction that first takes
//!   `pg_try_advisory_xact_lock`; a replica that does not get it skips the round. Steps are small
//!   (create one schema, fix one stale one, drop one surplus one), so a claim never waits for a
//!   refill and the lock is never held for long.
//!
//! The loop wakes on `NOTIFY fleet_warm_pool` (sent by every claim, on commit, to every replica)
//! and otherwise every few seconds, so the pool refills right after a claim. Without a pool
//! (`warm_pool = 0`) it still drains rows left by an earlier configuration.

use std::time::Duration;

use fleet_shared::migrate::{self, Migration};
use fleet_shared::retry::RetryPolicy;
use prometheus_client::metrics::gauge::Gauge;
use sha2::{Digest, Sha256};
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::error::ProvisionError;

/// Advisory-lock class of the refill lock (second key 0).
const POOL_LOCK_CLASS: i32 = 0x706f_6f6c; // "pool"
/// The channel every claim notifies.
pub const CHANNEL: &str = "fleet_warm_pool";
/// How often the loop looks at the pool when nothing notifies it.
const IDLE_CHECK: Duration = Duration::from_secs(5);
/// Each step's DDL gives up instead of queueing behind someone else's lock.
const LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '5s'";

/// The fingerprint of a migration set: SHA-256 over its `version:checksum` lines, hex.
pub fn fingerprint<'a>(set: impl IntoIterator<Item = (i64, &'a str)>) -> String {
    let mut h = Sha256::new();
    for (version, checksum) in set {
        h.update(format!("{version}:{checksum}\n").as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn set_fingerprint(migrations: &[Migration]) -> String {
    fingerprint(migrations.iter().map(|m| (m.version, m.checksum.as_str())))
}

/// Claims a pool schema built with `migrations` and renames it to `schema`, on `con` (the
/// provisioning transaction, after the tenant row is written). Returns the schema's version, or
/// `None` when the pool holds no matching schema (the caller provisions cold).
pub async fn claim(
    con: &mut PgConnection,
    schema: &str,
    migrations: &[Migration],
) -> Result<Option<i64>, ProvisionError> {
    let row: Option<(String, i64)> = sqlx::query_as(
        "WITH taken AS (
             DELETE FROM fleet.warm_pool
              WHERE schema_name = (SELECT schema_name FROM fleet.warm_pool
                                    WHERE fingerprint = $1
                                    ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING schema_name, schema_version)
         SELECT schema_name, schema_version FROM taken, pg_notify($2, schema_name)",
    )
    .bind(set_fingerprint(migrations))
    .bind(CHANNEL)
    .fetch_optional(&mut *con)
    .await
    .map_err(ProvisionError::db("claim a warm-pool schema"))?;
    let Some((pooled, version)) = row else {
        return Ok(None);
    };
    // Both names are [a-z0-9_] (the table's CHECK and a validated code), so quoting suffices.
    let rename = format!("ALTER SCHEMA \"{pooled}\" RENAME TO \"{schema}\"");
    match migrate::exec_simple(&mut *con, &rename).await {
        Ok(()) => {
            tracing::debug!(pool.schema = %pooled, schema, "claimed a warm-pool schema");
            Ok(Some(version))
        }
        Err(e) if fleet_shared::errors::sqlstate(&e).as_deref() == Some("42P06") => {
            Err(ProvisionError::OrphanSchema(schema.to_owned()))
        }
        Err(e) => Err(ProvisionError::db("rename the warm-pool schema")(e)),
    }
}

/// What one refill step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Another replica holds the refill lock.
    Busy,
    /// The pool is full and current; `size` current schemas.
    Idle { size: i64 },
    /// Created one schema.
    Created(String),
    /// Brought a stale schema to the current set.
    Upgraded(String),
    /// Dropped a schema beyond the target size.
    Dropped(String),
    /// Dropped a stale schema that cannot be upgraded.
    Discarded(String),
}

/// The refill side of the pool, run by [`run`] in the background of every replica.
#[derive(Clone)]
pub struct Refiller {
    pub pg: PgPool,
    /// For the `LISTEN` connection, which is kept apart from `pg` so it never takes one of the
    /// handlers' connections.
    pub database_url: fleet_shared::secret::SecretUrl,
    pub migrations: std::sync::Arc<Vec<Migration>>,
    /// The target size (`[provisioner] warm_pool`).
    pub target: usize,
    /// `provisioner_warm_pool_schemas`: current, unowned schemas ready to be claimed.
    pub size: Gauge,
}

impl Refiller {
    /// One step, one transaction: fix or drop one stale schema, else create one missing schema,
    /// else drop one surplus schema, else nothing.
    pub async fn step(&self) -> Result<Step, ProvisionError> {
        let current = set_fingerprint(&self.migrations);
        let mut tx = self
            .pg
            .begin()
            .await
            .map_err(ProvisionError::db("begin a warm-pool transaction"))?;
        let size: i64 =
            sqlx::query_scalar("SELECT count(*) FROM fleet.warm_pool WHERE fingerprint = $1")
                .bind(&current)
                .fetch_one(&mut *tx)
                .await
                .map_err(ProvisionError::db("count the warm pool"))?;
        self.size.set(size);
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, 0)")
            .bind(POOL_LOCK_CLASS)
            .fetch_one(&mut *tx)
            .await
            .map_err(ProvisionError::db("take the warm-pool lock"))?;
        if !got {
            return Ok(Step::Busy);
        }
        migrate::exec_simple(&mut tx, LOCK_TIMEOUT)
            .await
            .map_err(ProvisionError::db("set the lock timeout"))?;

        let stale: Option<String> = sqlx::query_scalar(
            "SELECT schema_name FROM fleet.warm_pool WHERE fingerprint <> $1
              ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .bind(&current)
        .fetch_optional(&mut *tx)
        .await
        .map_err(ProvisionError::db("read the warm pool"))?;
        let step = if let Some(schema) = stale {
            self.upgrade_or_drop(&mut tx, &schema, &current).await?
        } else if (size as usize) < self.target {
            let schema = format!("fleet_pool_{}", uuid::Uuid::new_v4().simple());
            let report = migrate::apply(&mut tx, &schema, &self.migrations).await?;
            self.list(&mut tx, &schema, report.version, &current)
                .await?;
            Step::Created(schema)
        } else if size as usize > self.target {
            let surplus: Option<String> = sqlx::query_scalar(
                "SELECT schema_name FROM fleet.warm_pool WHERE fingerprint = $1
                  ORDER BY created_at DESC LIMIT 1 FOR UPDATE SKIP LOCKED",
            )
            .bind(&current)
            .fetch_optional(&mut *tx)
            .await
            .map_err(ProvisionError::db("read the warm pool"))?;
            match surplus {
                Some(schema) => {
                    drop_pooled(&mut tx, &schema).await?;
                    Step::Dropped(schema)
                }
                None => Step::Idle { size },
            }
        } else {
            Step::Idle { size }
        };
        tx.commit()
            .await
            .map_err(ProvisionError::db("commit a warm-pool step"))?;
        match &step {
            Step::Created(_) | Step::Upgraded(_) => self.size.inc(),
            Step::Dropped(_) => self.size.dec(),
            _ => 0,
        };
        Ok(step)
    }

    async fn list(
        &self,
        con: &mut PgConnection,
        schema: &str,
        version: i64,
        fingerprint: &str,
    ) -> Result<(), ProvisionError> {
        sqlx::query(
            "INSERT INTO fleet.warm_pool (schema_name, schema_version, fingerprint)
             VALUES ($1, $2, $3)
             ON CONFLICT (schema_name) DO UPDATE
                SET schema_version = EXCLUDED.schema_version, fingerprint = EXCLUDED.fingerprint",
        )
        .bind(schema)
        .bind(version)
        .bind(fingerprint)
        .execute(&mut *con)
        .await
        .map_err(ProvisionError::db("list a warm-pool schema"))?;
        Ok(())
    }

    /// Applies the pending migrations to a stale pool schema and keeps it when its ledger is then
    /// exactly the current set; otherwise (or when a file changed) drops it.
    async fn upgrade_or_drop(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        schema: &str,
        current: &str,
    ) -> Result<Step, ProvisionError> {
        // A savepoint, so a failed upgrade rolls back to here and the schema can still be dropped.
        migrate::exec_simple(&mut *tx, "SAVEPOINT pool_upgrade")
            .await
            .map_err(ProvisionError::db("set a savepoint"))?;
        let upgraded = match migrate::apply(&mut *tx, schema, &self.migrations).await {
            Ok(report) => {
                let ledger: Vec<(i64, String)> = sqlx::query_as(&format!(
                    "SELECT version, checksum FROM \"{schema}\".schema_migrations ORDER BY version"
                ))
                .fetch_all(&mut **tx)
                .await
                .map_err(ProvisionError::db("read a warm-pool ledger"))?;
                let fp = fingerprint(ledger.iter().map(|(v, c)| (*v, c.as_str())));
                (fp == current).then_some(report.version)
            }
            Err(e) if e.is_transient() => return Err(e.into()),
            Err(e) => {
                tracing::info!(pool.schema = schema, error = %e, "stale warm-pool schema cannot be upgraded; dropping it");
                None
            }
        };
        match upgraded {
            Some(version) => {
                self.list(&mut *tx, schema, version, current).await?;
                Ok(Step::Upgraded(schema.to_owned()))
            }
            None => {
                migrate::exec_simple(&mut *tx, "ROLLBACK TO SAVEPOINT pool_upgrade")
                    .await
                    .map_err(ProvisionError::db("roll back to the savepoint"))?;
                drop_pooled(&mut *tx, schema).await?;
                Ok(Step::Discarded(schema.to_owned()))
            }
        }
    }
}

async fn drop_pooled(con: &mut PgConnection, schema: &str) -> Result<(), ProvisionError> {
    sqlx::query("DELETE FROM fleet.warm_pool WHERE schema_name = $1")
        .bind(schema)
        .execute(&mut *con)
        .await
        .map_err(ProvisionError::db("unlist a warm-pool schema"))?;
    // The name comes from fleet.warm_pool, whose CHECK allows only fleet_pool_<hex>.
    migrate::exec_simple(
        &mut *con,
        &format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"),
    )
    .await
    .map_err(ProvisionError::db("drop a warm-pool schema"))
}

/// Keeps the pool at its target until `shutdown`: steps while there is work, then waits for a
/// claim's notification or the idle interval. Failures are logged and retried with backoff.
pub async fn run(refiller: Refiller, shutdown: CancellationToken) {
    let mut listener = listen(&refiller.database_url).await;
    const REFILL_RETRY: RetryPolicy =
        RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(30)).with_jitter();
    let mut failures: u32 = 0;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let wait = match refiller.step().await {
            Ok(Step::Idle { .. }) | Ok(Step::Busy) => {
                failures = 0;
                None
            }
            Ok(step) => {
                failures = 0;
                tracing::debug!(?step, "warm pool step");
                continue;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = REFILL_RETRY.delay(failures);
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "warm pool refill failed");
                Some(delay)
            }
        };
        let idle = wait.unwrap_or(IDLE_CHECK);
        if listener.is_none() {
            listener = listen(&refiller.database_url).await;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(idle) => {}
            n = recv(&mut listener), if wait.is_none() => {
                if n.is_err() {
                    // The listener reconnects on its next recv; poll meanwhile.
                    listener = listen(&refiller.database_url).await;
                }
            }
        }
    }
}

async fn listen(database_url: &fleet_shared::secret::SecretUrl) -> Option<PgListener> {
    use fleet_shared::secret::ExposeSecret as _;
    let mut l = match PgListener::connect(database_url.expose_secret()).await {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(error = %e, "cannot listen for warm-pool claims; polling");
            return None;
        }
    };
    match l.listen(CHANNEL).await {
        Ok(()) => Some(l),
        Err(e) => {
            tracing::debug!(error = %e, "cannot listen for warm-pool claims; polling");
            None
        }
    }
}

async fn recv(listener: &mut Option<PgListener>) -> Result<(), ()> {
    match listener {
        Some(l) => l.recv().await.map(|_| ()).map_err(|_| ()),
        None => std::future::pending().await,
    }
}
