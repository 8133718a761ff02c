//! The rollout loop every provisioner replica runs beside its message loop.
//!
//! It polls `fleet.rollouts` for the running rollout (at most one exists), works its current
//! wave with up to `concurrency` tenant steps at once (`step.rs`), and when the wave has no
//! pending tenant left, [`advance`]s it: under the rollout row's lock, so replicas agree, it
//! halts the rollout when the canary failed or failures passed `max_failures`, moves to the next
//! wave, or finishes it (`succeeded`, or `failed` when some tenants failed within the threshold).
//! State lives only in Postgres, so a replica that dies loses nothing: its open transaction rolls
//! back and another replica takes the tenant. A replica whose deployed migration set differs from
//! the one the rollout was created with halts it rather than apply different files.

use std::time::Duration;

use fleet_shared::migrate;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::runner::{Active, Runner};
use super::step::{step, Outcome};

/// How often an idle replica looks for a running rollout.
pub const POLL: Duration = Duration::from_millis(250);
/// Tenant steps one replica runs at once at most (each holds a pooled connection).
pub const LOCAL_MAX: u32 = 8;

impl Runner {
    /// Runs until `shutdown`; a tenant step in flight finishes first.
    pub async fn run(self, shutdown: CancellationToken) {
        let digest =
            migrate::set_digest(&self.migrations, migrate::latest_version(&self.migrations));
        loop {
            match self.active().await {
                Ok(Some(a)) if a.set_digest != digest => {
                    let reason = format!(
                        "a provisioner replica deploys a different tenant migration set (digest {digest}, the rollout's is {}); deploy one set everywhere, then resume",
                        a.set_digest
                    );
                    if let Err(e) = halt(&self.pg, a.rollout_id, &reason).await {
                        tracing::warn!(error = %e, "could not halt the rollout");
                    }
                }
                Ok(Some(a)) => self.drive(&a, &shutdown).await,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the running rollout; retrying")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    async fn active(&self) -> Result<Option<Active>, sqlx::Error> {
        let a: Option<(Uuid, i32, i64, String)> = sqlx::query_as(
            "SELECT rollout_id, concurrency, lock_timeout_ms, set_digest
               FROM fleet.rollouts WHERE state = 'running' LIMIT 1",
        )
        .fetch_optional(&self.pg)
        .await?;
        Ok(a.map(|(rollout_id, concurrency, ms, set_digest)| Active {
            rollout_id,
            concurrency,
            lock_timeout: Duration::from_millis(ms.max(0) as u64),
            set_digest,
        }))
    }

    /// Works the current wave until it has nothing left to claim, then advances it.
    async fn drive(&self, a: &Active, shutdown: &CancellationToken) {
        let n = (a.concurrency.max(1) as u32).min(LOCAL_MAX);
        let mut tasks = JoinSet::new();
        for _ in 0..n {
            let runner = self.clone();
            let a = a.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                while !shutdown.is_cancelled() {
                    match step(&runner, &a).await {
                        Ok(Outcome::Done | Outcome::Skipped) => {}
                        Ok(Outcome::Failed) => {
                            if let Err(e) = advance(&runner.pg, a.rollout_id).await {
                                tracing::warn!(error = %e, "could not check the failure threshold");
                            }
                        }
                        Ok(Outcome::Nothing | Outcome::Busy) => break,
                        Err(e) => {
                            tracing::warn!(rollout.id = %a.rollout_id, error = %e, "rollout step failed; the tenant stays pending");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            break;
                        }
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        if let Err(e) = advance(&self.pg, a.rollout_id).await {
            tracing::warn!(error = %e, "could not advance the rollout");
        }
    }
}

/// Sets a running rollout `halted` with `reason`.
pub async fn halt(pg: &PgPool, id: Uuid, reason: &str) -> Result<(), sqlx::Error> {
    let n = sqlx::query(
        "UPDATE fleet.rollouts SET state = 'halted', reason = $2, updated_at = now()
          WHERE rollout_id = $1 AND state = 'running'",
    )
    .bind(id)
    .bind(reason)
    .execute(pg)
    .await?
    .rows_affected();
    if n > 0 {
        tracing::warn!(rollout.id = %id, reason, "rollout halted");
    }
    Ok(())
}

struct Counts {
    pending: i64,
    failed: i64,
    canary_failed: i64,
    first_failure: Option<String>,
}
fleet_shared::from_row!(Counts {
    pending,
    failed,
    canary_failed,
    first_failure
});

/// Decides what the rollout does next (see the module docs). Safe to call from any replica at
/// any time: it only acts on a `running` rollout, under its row lock.
pub async fn advance(pg: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    let mut tx = pg.begin().await?;
    let row: Option<(String, i32, i32, i64)> = sqlx::query_as(
        "SELECT state, current_wave, waves, max_failures FROM fleet.rollouts
          WHERE rollout_id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((state, wave, waves, max_failures)) = row else {
        return Ok(());
    };
    if state != "running" {
        return Ok(());
    }
    let c: Counts = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'pending' AND wave <= $2) AS pending,
                count(*) FILTER (WHERE state = 'failed') AS failed,
                count(*) FILTER (WHERE state = 'failed' AND wave = 0) AS canary_failed,
                (SELECT code || ': ' || error FROM fleet.rollout_tenants
                  WHERE rollout_id = $1 AND state = 'failed' ORDER BY finished_at LIMIT 1)
                  AS first_failure
           FROM fleet.rollout_tenants WHERE rollout_id = $1",
    )
    .bind(id)
    .bind(wave)
    .fetch_one(&mut *tx)
    .await?;
    let first = c.first_failure.unwrap_or_default();
    let (next_state, reason, next_wave) = if c.canary_failed > 0 {
        (
            "halted",
            Some(format!(
                "canary failed ({} of its tenants); first: {first}",
                c.canary_failed
            )),
            wave,
        )
    } else if c.failed > max_failures {
        (
            "halted",
            Some(format!(
                "{} tenants failed, more than --max-failures {max_failures}; first: {first}",
                c.failed
            )),
            wave,
        )
    } else if c.pending > 0 {
        return Ok(());
    } else if wave + 1 < waves {
        ("running", None, wave + 1)
    } else if c.failed > 0 {
        (
            "failed",
            Some(format!(
                "{} tenants failed (within --max-failures {max_failures}); first: {first}",
                c.failed
            )),
            wave,
        )
    } else {
        ("succeeded", None, wave)
    };
    sqlx::query(
        "UPDATE fleet.rollouts
            SET state = $2, reason = $3, current_wave = $4, updated_at = now(),
                finished_at = CASE WHEN $2 IN ('succeeded', 'failed') THEN now() END
          WHERE rollout_id = $1",
    )
    .bind(id)
    .bind(next_state)
    .bind(&reason)
    .bind(next_wave)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    match next_state {
        "running" => tracing::info!(rollout.id = %id, wave = next_wave, "rollout wave started"),
        "halted" => {
            tracing::warn!(rollout.id = %id, reason = reason.as_deref().unwrap_or(""), "rollout halted")
        }
        other => {
            tracing::info!(rollout.id = %id, state = other, reason = reason.as_deref().unwrap_or(""), "rollout finished")
        }
    }
    Ok(())
}
