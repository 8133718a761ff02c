//! Operator controls on an existing rollout: pause, resume, cancel, retry.
//!
//! Each is one guarded `UPDATE` (the state it may come from is in its `WHERE`), so a control
//! that does not apply changes nothing and says why. Pausing and cancelling stop new tenants from
//! being claimed; a tenant already in its transaction finishes. `retry` returns only the failed
//! tenants to `pending` and runs the rollout again from its current wave; `resume` (and `retry`)
//! go back through the one-running-rollout rule, naming the other rollout if there is one.

use sqlx::PgPool;
use uuid::Uuid;

use super::create::{locked_tx, refuse_if_active, CreateError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Pause,
    Resume,
    Cancel,
    Retry,
}

impl Control {
    pub fn as_str(self) -> &'static str {
        match self {
            Control::Pause => "pause",
            Control::Resume => "resume",
            Control::Cancel => "cancel",
            Control::Retry => "retry",
        }
    }
}

/// Applies `c` to rollout `id`; returns the new state.
pub async fn control(pg: &PgPool, id: Uuid, c: Control) -> Result<String, CreateError> {
    let mut tx = locked_tx(pg).await?;
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM fleet.rollouts WHERE rollout_id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(CreateError::db("read the rollout"))?;
    let Some(state) = state else {
        return Err(CreateError::Refused(format!("no rollout {id}")));
    };
    let (from, to): (&[&str], &str) = match c {
        Control::Pause => (&["running"], "paused"),
        Control::Resume => (&["paused", "halted"], "running"),
        Control::Cancel => (&["running", "paused", "halted"], "cancelled"),
        Control::Retry => (&["halted", "failed", "cancelled"], "running"),
    };
    if !from.contains(&state.as_str()) {
        return Err(CreateError::Refused(format!(
            "rollout {id} is {state}; {} applies to a rollout that is {}",
            c.as_str(),
            from.join(" or ")
        )));
    }
    if to == "running" && state != "paused" {
        refuse_if_active(&mut tx).await?;
    }
    if c == Control::Retry {
        let n = sqlx::query(
            "UPDATE fleet.rollout_tenants
                SET state = 'pending', error = NULL, finished_at = NULL, duration_ms = NULL
              WHERE rollout_id = $1 AND state = 'failed'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(CreateError::db("return the failed tenants to pending"))?
        .rows_affected();
        if n == 0 {
            return Err(CreateError::Refused(format!(
                "rollout {id} has no failed tenant to retry"
            )));
        }
    }
    sqlx::query(
        "UPDATE fleet.rollouts
            SET state = $2, updated_at = now(),
                reason = CASE WHEN $2 = 'running' THEN NULL ELSE reason END,
                finished_at = CASE WHEN $2 = 'cancelled' THEN now() ELSE NULL END
          WHERE rollout_id = $1",
    )
    .bind(id)
    .bind(to)
    .execute(&mut *tx)
    .await
    .map_err(CreateError::db("update the rollout"))?;
    tx.commit()
        .await
        .map_err(CreateError::db("commit the rollout change"))?;
    tracing::info!(rollout.id = %id, from = %state, to, "rollout {}", c.as_str());
    Ok(to.to_owned())
}
