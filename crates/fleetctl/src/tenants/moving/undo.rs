//! `fleetctl tenants move CODE --abort`: undoes a move whose cut-over has not committed, in the
//! reverse order of the steps, each part skipped when already gone: the guard on the source
//! (present only after a crash inside a cut-over), the subscription, the replication slots, the
//! publication, and the target's copy of the schema (only if this move created it, as its
//! comment says). The registry is never touched: it still names the source. A move whose
//! cut-over committed cannot be aborted (the target is the tenant's database now); re-running it
//! finishes it, and a move back is a new move.

use anyhow::Context as _;

use super::record::MoveRow;
use super::sides::{ownership_comment, schema_comment, Sides};

/// Undoes what `m` did on both databases (the caller then records the move `aborted`).
pub async fn undo(s: &Sides, m: &MoveRow) -> anyhow::Result<()> {
    if super::cutover::guarded(s).await? {
        let mut tx = s.source_pg.begin().await?;
        sqlx::raw_sql("SET LOCAL lock_timeout = '5s'")
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql(&super::cutover::lift_guard_sql(s))
            .execute(&mut *tx)
            .await
            .with_context(|| {
                format!(
                    "Failed to lift the read-only guard on database {}",
                    s.source.name
                )
            })?;
        tx.commit().await?;
    }
    let replication = super::replication::teardown(s, m).await;
    let copy = drop_copy(s, m).await;
    match (replication, copy) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) => Err(e),
        (Ok(()), Err(e)) => Err(e),
        (Err(e), Err(c)) => Err(e.context(format!(
            "the copy of {} is left on database {} too ({})",
            s.schema,
            s.target.name,
            fleet_shared::errors::one_line(&format!("{c:#}"))
        ))),
    }
    .map_err(|e| {
        e.context("--abort is not complete; run it again when both databases can be reached")
    })
}

/// Drops the target's copy of the schema, only if this move created it (as its comment says).
async fn drop_copy(s: &Sides, m: &MoveRow) -> anyhow::Result<()> {
    let comment = schema_comment(&s.target_pg, &s.schema)
        .await
        .with_context(|| format!("cannot reach database {} (the target)", s.target.name))?;
    if let Some(Some(c)) = comment {
        if c == ownership_comment(m.move_id) {
            sqlx::raw_sql(&format!("DROP SCHEMA {} CASCADE", s.quoted_schema()))
                .execute(&s.target_pg)
                .await
                .with_context(|| {
                    format!("Failed to drop the copy on database {}", s.target.name)
                })?;
        }
    }
    Ok(())
}
