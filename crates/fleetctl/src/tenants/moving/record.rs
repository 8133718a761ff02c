//! The record of a move in the control plane (`fleet.tenant_moves`): its step, times and last
//! error, so that a re-run continues where the last one stopped and `--abort` knows what to undo.
//! This is the bottom module of the move: everything else reads and writes the move through it.
//!
//! Every write is guarded: it changes the row only while the move is `running` (a step only
//! from the step before it), and a write that finds nothing to change is an error, so a run
//! that lost the race to an `--abort` (or to another run) stops instead of writing over it.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// The steps of a move, in order. A row's `step` is the last one completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Step {
    /// Checked and recorded; nothing done on either database yet.
    Started,
    /// The schema (tables, sequences, indexes, constraints; no rows) exists on the target.
    Schema,
    /// The publication and its replication slot exist on the source.
    Published,
    /// The subscription on the target is copying and streaming.
    Subscribed,
    /// Every table is copied and the subscription has caught up.
    Copied,
    /// `tenant.moving` announced; the cut-over is under way (writes may wait).
    Cutover,
    /// The registry names the target (committed with the source frozen read-only).
    Switched,
    /// `tenant.moved` announced.
    Announced,
    /// Subscription, replication slots and publication dropped.
    Unsubscribed,
    /// The old copy renamed to its archive name.
    Archived,
    /// Finished.
    Done,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Started => "started",
            Step::Schema => "schema",
            Step::Published => "published",
            Step::Subscribed => "subscribed",
            Step::Copied => "copied",
            Step::Cutover => "cutover",
            Step::Switched => "switched",
            Step::Announced => "announced",
            Step::Unsubscribed => "unsubscribed",
            Step::Archived => "archived",
            Step::Done => "done",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Step> {
        use clap::ValueEnum as _;
        Step::value_variants()
            .iter()
            .copied()
            .find(|v| v.as_str() == s)
            .with_context(|| format!("fleet.tenant_moves holds an unknown step {s:?}"))
    }

    /// Whether the registry already names the target (the move can only be finished, not
    /// aborted).
    pub fn switched(self) -> bool {
        self >= Step::Switched
    }
}

/// A row of `fleet.tenant_moves`.
#[derive(Clone, Debug, Serialize)]
pub struct MoveRow {
    pub move_id: Uuid,
    pub tenant_id: Uuid,
    pub code: String,
    pub source: String,
    pub target: String,
    pub step: String,
    pub state: String,
    pub sub_oid: Option<i64>,
    pub row_counts: Option<serde_json::Value>,
    pub cutover_ms: Option<i64>,
    pub archive_name: Option<String>,
    pub last_error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub switched_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}
fleet_shared::from_row!(MoveRow {
    move_id,
    tenant_id,
    code,
    source,
    target,
    step,
    state,
    sub_oid,
    row_counts,
    cutover_ms,
    archive_name,
    last_error,
    started_at,
    switched_at,
    finished_at
});

const COLUMNS: &str = "move_id, tenant_id, code, source, target, step, state, sub_oid, row_counts, cutover_ms, archive_name, last_error, started_at, switched_at, finished_at";

impl MoveRow {
    pub fn step(&self) -> anyhow::Result<Step> {
        Step::parse(&self.step)
    }

    /// Publication, replication slot and subscription share one name derived from the move:
    /// `fleet_move_<16 hex of move_id>`.
    pub fn replication_name(&self) -> String {
        format!("fleet_move_{}", &self.move_id.simple().to_string()[..16])
    }
}

/// The running move of `tenant_id`.
pub async fn running(pg: &PgPool, tenant_id: Uuid) -> anyhow::Result<Option<MoveRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM fleet.tenant_moves WHERE tenant_id = $1 AND state = 'running'"
    ))
    .bind(tenant_id)
    .fetch_optional(pg)
    .await
    .context("Failed to read fleet.tenant_moves")
}

/// The running move of the live tenant with `code`, its row locked until `con`'s transaction
/// ends (call with the tenant's lock held).
pub async fn running_for_update(
    con: &mut sqlx::PgConnection,
    code: &str,
) -> anyhow::Result<Option<MoveRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM fleet.tenant_moves WHERE code = $1 AND state = 'running' FOR UPDATE"
    ))
    .bind(code)
    .fetch_optional(&mut *con)
    .await
    .context("Failed to read fleet.tenant_moves")
}

/// The error of a guarded write that found the move no longer where this run left it.
fn not_ours(m: &MoveRow) -> anyhow::Error {
    anyhow::anyhow!(
        "move {} is no longer running at step {} (another fleetctl aborted or continued it); this run stops (fleet.tenant_moves holds its state for tenant {})",
        m.move_id,
        m.step,
        m.code
    )
}

/// Inserts a new move (call in the transaction that holds the tenant's lock).
pub async fn insert(
    con: &mut sqlx::PgConnection,
    tenant_id: Uuid,
    code: &str,
    source: &str,
    target: &str,
    actor: &str,
) -> anyhow::Result<MoveRow> {
    sqlx::query_as(&format!(
        "INSERT INTO fleet.tenant_moves (move_id, tenant_id, code, source, target, step, actor)
         VALUES ($1, $2, $3, $4, $5, 'started', $6) RETURNING {COLUMNS}"
    ))
    .bind(Uuid::new_v4())
    .bind(tenant_id)
    .bind(code)
    .bind(source)
    .bind(target)
    .bind(actor)
    .fetch_one(&mut *con)
    .await
    .context("Failed to record the move in fleet.tenant_moves")
}

/// Records that `step` is done (and clears the last error).
pub async fn set_step(pg: &PgPool, m: &mut MoveRow, step: Step) -> anyhow::Result<()> {
    let done = sqlx::query(
        "UPDATE fleet.tenant_moves SET step = $2, last_error = NULL, step_at = now()
          WHERE move_id = $1 AND state = 'running' AND step = $3",
    )
    .bind(m.move_id)
    .bind(step.as_str())
    .bind(&m.step)
    .execute(pg)
    .await
    .context("Failed to record the move's step")?;
    if done.rows_affected() != 1 {
        return Err(not_ours(m));
    }
    m.step = step.as_str().to_owned();
    m.last_error = None;
    Ok(())
}

/// Records why the last run stopped (best effort: the error itself is what the caller reports).
pub async fn set_error(pg: &PgPool, move_id: Uuid, error: &str) {
    let _ = sqlx::query("UPDATE fleet.tenant_moves SET last_error = $2 WHERE move_id = $1")
        .bind(move_id)
        .bind(fleet_shared::errors::one_line(error))
        .execute(pg)
        .await;
}

/// Sets one more column of the move (its name is one of ours, never input).
pub async fn set_field<T>(pg: &PgPool, move_id: Uuid, column: &str, value: T) -> anyhow::Result<()>
where
    T: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send,
{
    debug_assert!(matches!(column, "sub_oid" | "archive_name" | "cutover_ms"));
    let done = sqlx::query(&format!(
        "UPDATE fleet.tenant_moves SET {column} = $2 WHERE move_id = $1 AND state = 'running'"
    ))
    .bind(move_id)
    .bind(value)
    .execute(pg)
    .await
    .with_context(|| format!("Failed to record the move's {column}"))?;
    anyhow::ensure!(
        done.rows_affected() == 1,
        "move {move_id} is no longer running (another fleetctl aborted or finished it); this run stops"
    );
    Ok(())
}

/// Ends the move as `done` or `aborted` (only a running move at the step `m` holds).
pub async fn finish<'e>(
    con: impl sqlx::PgExecutor<'e>,
    m: &mut MoveRow,
    state: &str,
) -> anyhow::Result<()> {
    let step = if state == "done" {
        Step::Done.as_str()
    } else {
        m.step.as_str()
    };
    let row: Option<MoveRow> = sqlx::query_as(&format!(
        "UPDATE fleet.tenant_moves
            SET state = $2, step = $3, last_error = NULL, finished_at = now(), step_at = now()
          WHERE move_id = $1 AND state = 'running' AND step = $4 RETURNING {COLUMNS}"
    ))
    .bind(m.move_id)
    .bind(state)
    .bind(step)
    .bind(&m.step)
    .fetch_optional(con)
    .await
    .context("Failed to record the end of the move")?;
    let row = row.ok_or_else(|| not_ours(m))?;
    *m = row;
    Ok(())
}

/// Re-reads the row.
pub async fn reload(pg: &PgPool, move_id: Uuid) -> anyhow::Result<MoveRow> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM fleet.tenant_moves WHERE move_id = $1"
    ))
    .bind(move_id)
    .fetch_one(pg)
    .await
    .context("Failed to read fleet.tenant_moves")
}
