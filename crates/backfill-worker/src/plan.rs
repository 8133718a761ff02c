//! What planning a job produces, and the pieces every kind plans with.
//!
//! Planning is the one-time step between `pending` and `running` (the runner holds the job row
//! `FOR UPDATE` meanwhile, so exactly one replica plans a job, and a failed plan leaves nothing
//! behind: Postgres DDL is transactional). Each kind (its `JobKind::plan`) re-checks
//! its spec, does its own preparation (a `tenant_codes` integrity check and columns, a
//! `copy_to_tenant` target) and turns the job into parts: one per table, each a key range
//! `(min-1, max]` and the per-chunk statement with `$1`/`$2` bounds, built only from checked,
//! quoted identifiers.

use futures::future::BoxFuture;
use sqlx::PgConnection;

use crate::ident::{literal, Ident};

/// How a part's chunks run (`fleet.backfill_parts.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartMode {
    /// The statement writes; its rows affected are the chunk's rows.
    Exec,
    /// A dry run: the statement counts rows.
    Count,
    /// The kind runs the chunk itself from what it planned into the statement
    /// (`crate::kind::ChunkRunner`).
    Copy,
}

impl PartMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PartMode::Exec => "exec",
            PartMode::Count => "count",
            PartMode::Copy => "copy",
        }
    }

    pub fn parse(s: &str) -> PartMode {
        match s {
            "count" => PartMode::Count,
            "copy" => PartMode::Copy,
            _ => PartMode::Exec,
        }
    }
}

/// One table's worth of chunks.
#[derive(Debug, Clone)]
pub struct PartPlan {
    pub name: String,
    pub statement: String,
    /// Run after `statement` in the chunk transaction; returns `(key, total)` rows naming rows
    /// the chunk could not settle (`copy_to_tenant`), which fail the chunk.
    pub then_statement: Option<String>,
    pub mode: PartMode,
    pub lo: i64,
    pub hi: i64,
    /// Rows the part is expected to go over (percent = rows done / rows estimated).
    pub rows_estimate: i64,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub parts: Vec<PartPlan>,
    /// The job's report as planned (`tenant_codes`: one entry per table), if the kind has one.
    pub report: Option<serde_json::Value>,
}

/// `(min(key) - 1, max(key)]`, or `None` for an empty table.
pub fn key_range<'a>(
    con: &'a mut PgConnection,
    table_sql: &'a str,
    key: &'a Ident,
) -> BoxFuture<'a, sqlx::Result<Option<(i64, i64)>>> {
    let sql = format!(
        "SELECT min({k})::bigint, max({k})::bigint FROM {table_sql}",
        k = key.quoted()
    );
    Box::pin(async move {
        let (lo, hi): (Option<i64>, Option<i64>) = sqlx::query_as(&sql).fetch_one(con).await?;
        Ok(match (lo, hi) {
            (Some(lo), Some(hi)) => Some((lo.saturating_sub(1), hi)),
            _ => None,
        })
    })
}

/// Rows of `table_sql` matching `filter` (the planner's estimate when the table has statistics
/// and no filter applies, else an exact count).
pub fn estimate_rows<'a>(
    con: &'a mut PgConnection,
    table_sql: &'a str,
    filter: &'a str,
) -> BoxFuture<'a, sqlx::Result<i64>> {
    Box::pin(async move {
        if filter.is_empty() {
            let est: Option<f64> = sqlx::query_scalar(&format!(
                "SELECT reltuples::float8 FROM pg_class WHERE oid = {}::regclass",
                literal(table_sql)
            ))
            .fetch_optional(&mut *con)
            .await?;
            if let Some(e) = est.filter(|e| *e > 0.0) {
                return Ok(e.round() as i64);
            }
        }
        sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table_sql} AS t WHERE true{filter}"
        ))
        .fetch_one(&mut *con)
        .await
    })
}

/// A dry run's chunk statement: the rows of `(lo, hi]` (matching `extra`), counted.
pub fn count_statement(table_sql: &str, key: &Ident, extra: &str) -> String {
    format!(
        "SELECT count(*) FROM {table_sql} AS t WHERE t.{k} > $1 AND t.{k} <= $2{extra}",
        k = key.quoted()
    )
}
