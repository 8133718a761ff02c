//! One tenant of a rollout: claimed, moved and recorded in one transaction.
//!
//! The transaction takes a concurrency slot (`pg_try_advisory_xact_lock` on one of the rollout's
//! `concurrency` keys, so the bound holds across every replica), claims one pending row of the
//! current wave with `FOR UPDATE SKIP LOCKED`, takes the tenant's advisory lock (the one
//! provisioning and `tenant.migrate` take) and its registry row, runs the plan through
//! [`crate::migrate_tenant::move_tenant`] (ledger and `schema_version` together) and marks the
//! row `done`, then commits. A crash anywhere before the commit rolls all of it back and frees
//! the row for another replica; after it, the row is `done` and never claimed again: each tenant
//! is moved exactly once.
//!
//! The transaction runs under `SET LOCAL lock_timeout`. A migration that times out waiting for a
//! lock (application traffic on the table) is rolled back to a savepoint, which releases what it
//! had taken, and tried again after a backoff; only when the attempts are spent is the tenant
//! `failed`. Any other migration error rolls the tenant back whole and marks it `failed` with the
//! reason. A tenant that is no longer `active` (suspended, deleted) is `skipped`, saying why.

use std::time::{Duration, Instant};

use fleet_shared::events::{TenantProvisioned, TENANT_PROVISIONED};
use fleet_shared::migrate::ApplyReport;
use fleet_shared::retry::RetryPolicy;
use sqlx::PgConnection;
use uuid::Uuid;

use super::runner::{Active, Runner};
use crate::error::ProvisionError;
use crate::migrate_tenant::{lock_row, move_tenant, set_lock_timeout};
use crate::provision::TenantRow;
use crate::tenant_lock::lock_tenant;

/// Advisory-lock class of the concurrency slots (the second key is the slot number).
const SLOT_CLASS: i32 = 0x726f_6c6c; // "roll"
const SAVEPOINT: &str = "fleet_rollout_tenant";
/// Attempts of a tenant whose migration keeps hitting `lock_timeout`.
pub const LOCK_ATTEMPTS: usize = 8;

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Failed,
    Skipped,
    /// No pending tenant in the current wave (or the rollout is no longer running).
    Nothing,
    /// Every concurrency slot is taken (by other replicas).
    Busy,
}

struct Claimed {
    tenant_id: Uuid,
    code: String,
    target_version: i64,
}
fleet_shared::from_row!(Claimed {
    tenant_id,
    code,
    target_version
});

enum Attempt {
    Moved(Box<(TenantRow, ApplyReport)>),
    NotActive(String),
}

async fn attempt(
    con: &mut PgConnection,
    runner: &Runner,
    c: &Claimed,
    lock_timeout: std::time::Duration,
) -> Result<Attempt, ProvisionError> {
    lock_tenant(con, &c.code).await?;
    let Some(row) = lock_row(con, &c.code).await? else {
        return Ok(Attempt::NotActive("tenant no longer exists".into()));
    };
    if row.tenant_id != c.tenant_id {
        return Ok(Attempt::NotActive(
            "the code now belongs to another tenant".into(),
        ));
    }
    if row.status != "active" {
        return Ok(Attempt::NotActive(format!("tenant is {}", row.status)));
    }
    if let Some(moving) = crate::moves::in_flight(con, row.tenant_id)
        .await
        .map_err(ProvisionError::db("read the tenant's moves"))?
    {
        return Ok(Attempt::NotActive(format!("tenant is {moving}")));
    }
    let report = move_tenant(
        con,
        &runner.pools,
        &row,
        &runner.migrations,
        c.target_version,
        lock_timeout,
    )
    .await?;
    Ok(Attempt::Moved(Box::new((row, report))))
}

async fn exec(con: &mut PgConnection, sql: &str) -> Result<(), ProvisionError> {
    fleet_shared::migrate::exec_simple(con, sql)
        .await
        .map_err(ProvisionError::db("manage the tenant savepoint"))
}

/// Runs one tenant of `a` (see the module docs).
pub async fn step(runner: &Runner, a: &Active) -> Result<Outcome, ProvisionError> {
    let mut tx = runner
        .pg
        .begin()
        .await
        .map_err(ProvisionError::db("begin a transaction"))?;
    set_lock_timeout(&mut tx, a.lock_timeout).await?;
    let slot: Option<i32> = sqlx::query_scalar(
        "SELECT s FROM generate_series(0, $2 - 1) AS s WHERE pg_try_advisory_xact_lock($1, s) LIMIT 1",
    )
    .bind(SLOT_CLASS)
    .bind(a.concurrency)
    .fetch_optional(&mut *tx)
    .await
    .map_err(ProvisionError::db("take a rollout slot"))?;
    if slot.is_none() {
        return Ok(Outcome::Busy);
    }
    let claimed: Option<Claimed> = sqlx::query_as(
        "SELECT rt.tenant_id, rt.code, rt.target_version
           FROM fleet.rollout_tenants rt JOIN fleet.rollouts r ON r.rollout_id = rt.rollout_id
          WHERE rt.rollout_id = $1 AND r.state = 'running' AND rt.state = 'pending'
            AND rt.wave <= r.current_wave
          ORDER BY rt.wave, rt.code
          LIMIT 1
          FOR UPDATE OF rt SKIP LOCKED",
    )
    .bind(a.rollout_id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(ProvisionError::db("claim a tenant"))?;
    let Some(c) = claimed else {
        return Ok(Outcome::Nothing);
    };
    let started = Instant::now();
    runner.metrics.in_flight.inc();
    let _gauge = scopeguard(&runner.metrics.in_flight);
    let mut delays = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(5))
        .with_max_times(LOCK_ATTEMPTS - 1)
        .with_jitter()
        .delays();
    let mut attempts = 0i32;
    let result = loop {
        attempts += 1;
        exec(&mut tx, &format!("SAVEPOINT {SAVEPOINT}")).await?;
        match attempt(&mut tx, runner, &c, a.lock_timeout).await {
            Ok(r) => {
                exec(&mut tx, &format!("RELEASE SAVEPOINT {SAVEPOINT}")).await?;
                break Ok(r);
            }
            Err(e) if is_lock_timeout(&e) => {
                exec(&mut tx, &format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}")).await?;
                runner.metrics.lock_timeouts.inc();
                match delays.next() {
                    Some(d) => {
                        tracing::info!(
                            tenant.code = %c.code, attempt = attempts, retry_in_ms = d.as_millis() as u64,
                            "tenant migration hit lock_timeout; retrying"
                        );
                        tokio::time::sleep(d).await;
                    }
                    None => {
                        break Err(format!(
                            "lock_timeout {}ms hit on all {attempts} attempts: {e}",
                            a.lock_timeout.as_millis()
                        ))
                    }
                }
            }
            // The connection or the server failed: give the tenant back (the transaction rolls
            // back with the connection) for a later step to take.
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => {
                exec(&mut tx, &format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}")).await?;
                break Err(e.to_string());
            }
        }
    };
    let took = started.elapsed();
    let (state, after, error, outcome, announce) = match result {
        Ok(Attempt::Moved(moved)) => {
            let (row, report) = *moved;
            let version = report.version;
            (
                "done",
                Some(version),
                None,
                Outcome::Done,
                Some((row, report)),
            )
        }
        Ok(Attempt::NotActive(why)) => ("skipped", None, Some(why), Outcome::Skipped, None),
        Err(why) => (
            "failed",
            None,
            Some(fleet_shared::errors::one_line(&why)),
            Outcome::Failed,
            None,
        ),
    };
    sqlx::query(
        "UPDATE fleet.rollout_tenants
            SET state = $3, version_after = $4, error = $5, attempts = attempts + $6,
                duration_ms = $7, finished_at = now()
          WHERE rollout_id = $1 AND tenant_id = $2",
    )
    .bind(a.rollout_id)
    .bind(c.tenant_id)
    .bind(state)
    .bind(after)
    .bind(&error)
    .bind(attempts)
    .bind(took.as_millis() as i64)
    .execute(&mut *tx)
    .await
    .map_err(ProvisionError::db("record the tenant's outcome"))?;
    tx.commit()
        .await
        .map_err(ProvisionError::db("commit the tenant's rollout step"))?;

    runner.metrics.outcome(state);
    runner.metrics.duration.observe(took.as_secs_f64());
    match (&announce, &error) {
        (Some((_, report)), _) => tracing::info!(
            rollout.id = %a.rollout_id, tenant.code = %c.code, outcome = state,
            version.before = report.before, version.after = report.version,
            applied = ?report.applied, reverted = ?report.reverted, attempts,
            duration_ms = took.as_millis() as u64, "rollout tenant done"
        ),
        (None, Some(why)) => tracing::warn!(
            rollout.id = %a.rollout_id, tenant.code = %c.code, outcome = state, attempts,
            duration_ms = took.as_millis() as u64, error = %why, "rollout tenant {state}"
        ),
        (None, None) => {}
    }
    if let Some((row, report)) = announce {
        announce_version(runner, &row, report.version).await;
    }
    Ok(outcome)
}

fn is_lock_timeout(e: &ProvisionError) -> bool {
    match e {
        ProvisionError::Migration(m) => m.is_lock_timeout(),
        ProvisionError::Db { source, .. } => {
            fleet_shared::errors::sqlstate(source).as_deref() == Some("55P03")
        }
        _ => false,
    }
}

/// Decrements the in-flight gauge when the step ends, however it ends.
fn scopeguard(g: &prometheus_client::metrics::gauge::Gauge) -> impl Drop + '_ {
    struct Dec<'a>(&'a prometheus_client::metrics::gauge::Gauge);
    impl Drop for Dec<'_> {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    Dec(g)
}

/// `tenant.provisioned` with the tenant's new version, under the id `tenant.migrate` uses. The
/// committed row is the record; a lost announcement is logged, not retried forever.
async fn announce_version(runner: &Runner, row: &TenantRow, version: i64) {
    let Ok(code) = fleet_shared::Code::parse(&row.code) else {
        return;
    };
    let body = TenantProvisioned {
        tenant_id: row.tenant_id,
        code,
        schema: row.schema_name.clone(),
        schema_version: version,
        plan: row.plan.clone(),
        database: row.database.clone(),
    };
    let id = format!("{TENANT_PROVISIONED}:{}:{version}", row.tenant_id);
    if let Err(e) =
        fleet_shared::publish::publish_json(&runner.js, TENANT_PROVISIONED, &id, &body, None).await
    {
        tracing::warn!(tenant.code = %row.code, error = %format!("{e:#}"), "could not announce the tenant's new version");
    }
}
