//! Schedules managed at run time (migration `0651_dynamic_schedules.sql`): their definitions in
//! `fleet.schedule_definitions` and every change in `fleet.schedule_changes`.
//!
//! A definition is the JSON form of a `[[schedules]]` entry, stored only after it validated
//! ([`crate::config::parse_json`]); the leader reloads definitions every pass of its loop (once a
//! second, or at once when [`crate::WAKE_SUBJECT`] nudges it). A change and its record commit in
//! one transaction. Creating a schedule (or re-creating a deleted one) starts its evaluation at
//! "now", so it never fires its past; deleting one removes its state row (pause flag,
//! watermark) but keeps its runs, outcomes and change log for `schedule history`; its last
//! change, the deletion, is its tombstone ([`deleted`]).

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

#[derive(Debug, Clone, Serialize)]
pub struct DefRow {
    pub name: String,
    pub spec: serde_json::Value,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub updated_by: Option<String>,
}
fleet_shared::from_row!(DefRow {
    name,
    spec,
    version,
    created_at,
    updated_at,
    updated_by
});

#[derive(Debug, Clone, Serialize)]
pub struct ChangeRow {
    pub change_id: i64,
    pub name: String,
    pub action: String,
    pub old: Option<serde_json::Value>,
    pub new: Option<serde_json::Value>,
    pub changed_by: Option<String>,
    pub changed_at: DateTime<Utc>,
}
fleet_shared::from_row!(ChangeRow {
    change_id,
    name,
    action,
    old,
    new,
    changed_by,
    changed_at
});

pub async fn load(pg: &PgPool) -> anyhow::Result<Vec<DefRow>> {
    sqlx::query_as("SELECT name, spec, version, created_at, updated_at, updated_by FROM fleet.schedule_definitions ORDER BY name")
        .fetch_all(pg)
        .await
        .context("Failed to read fleet.schedule_definitions")
}

pub async fn get(pg: &PgPool, name: &str) -> anyhow::Result<Option<DefRow>> {
    sqlx::query_as("SELECT name, spec, version, created_at, updated_at, updated_by FROM fleet.schedule_definitions WHERE name = $1")
        .bind(name)
        .fetch_optional(pg)
        .await
        .context("Failed to read fleet.schedule_definitions")
}

/// Stores validated definitions (name, canonical JSON) in one transaction; returns the action
/// taken for each (`create`, `update`, or `unchanged`).
pub async fn put_all(
    pg: &PgPool,
    specs: &[(String, serde_json::Value)],
    by: &str,
) -> anyhow::Result<Vec<&'static str>> {
    let mut tx = pg.begin().await?;
    let mut actions = Vec::new();
    for (name, spec) in specs {
        let old: Option<serde_json::Value> = sqlx::query_scalar(
            "SELECT spec FROM fleet.schedule_definitions WHERE name = $1 FOR UPDATE",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let action = match &old {
            Some(o) if o == spec => {
                actions.push("unchanged");
                continue;
            }
            Some(_) => "update",
            None => "create",
        };
        sqlx::query(
            "INSERT INTO fleet.schedule_definitions (name, spec, updated_by) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET spec = EXCLUDED.spec, version = schedule_definitions.version + 1,
                 updated_at = now(), updated_by = EXCLUDED.updated_by",
        )
        .bind(name)
        .bind(spec)
        .bind(by)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO fleet.schedule_changes (name, action, old, new, changed_by) VALUES ($1, $2, $3, $4, $5)")
            .bind(name)
            .bind(action)
            .bind(&old)
            .bind(spec)
            .bind(by)
            .execute(&mut *tx)
            .await?;
        if action == "create" {
            sqlx::query(
                "INSERT INTO fleet.schedules (name, evaluated_until) VALUES ($1, now())
                 ON CONFLICT (name) DO UPDATE SET evaluated_until = now(), updated_at = now()",
            )
            .bind(name)
            .execute(&mut *tx)
            .await?;
        }
        actions.push(action);
    }
    tx.commit().await.context("Failed to store the schedules")?;
    Ok(actions)
}

/// Deletes a definition and its state row; returns whether it existed.
pub async fn delete(pg: &PgPool, name: &str, by: &str) -> anyhow::Result<bool> {
    let mut tx = pg.begin().await?;
    let old: Option<serde_json::Value> =
        sqlx::query_scalar("DELETE FROM fleet.schedule_definitions WHERE name = $1 RETURNING spec")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(old) = old else {
        return Ok(false);
    };
    sqlx::query("INSERT INTO fleet.schedule_changes (name, action, old, new, changed_by) VALUES ($1, 'delete', $2, NULL, $3)")
        .bind(name)
        .bind(&old)
        .bind(by)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM fleet.schedules WHERE name = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await.context("Failed to delete the schedule")?;
    Ok(true)
}

/// The tombstones: the last change of every name whose last change is a deletion (a deleted
/// schedule keeps its change log, runs and outcomes, so `schedule show|history` still find it).
pub async fn deleted(pg: &PgPool) -> anyhow::Result<Vec<ChangeRow>> {
    sqlx::query_as(
        "SELECT * FROM (SELECT DISTINCT ON (name) change_id, name, action, old, new, changed_by, changed_at
                        FROM fleet.schedule_changes ORDER BY name, change_id DESC) last
         WHERE action = 'delete' ORDER BY name",
    )
    .fetch_all(pg)
    .await
    .context("Failed to read fleet.schedule_changes")
}

/// A schedule's changes, newest first.
pub async fn changes(pg: &PgPool, name: &str, limit: i64) -> anyhow::Result<Vec<ChangeRow>> {
    sqlx::query_as(
        "SELECT change_id, name, action, old, new, changed_by, changed_at FROM fleet.schedule_changes
         WHERE name = $1 ORDER BY change_id DESC LIMIT $2",
    )
    .bind(name)
    .bind(limit)
    .fetch_all(pg)
    .await
    .context("Failed to read fleet.schedule_changes")
}
