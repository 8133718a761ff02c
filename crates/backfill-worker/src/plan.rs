//! Planning a job: the one-time step between `pending` and `running`.
//!
//! Runs inside the transaction that holds the job row (`FOR UPDATE`), so exactly one replica
//! plans a job and a failed plan leaves nothing behind (Postgres DDL is transactional). It
//! re-checks the spec ([`crate::validate`]), runs the `tenant_codes` integrity check (every
//! `organization_id` in the data is mapped, else the job fails before touching a row), adds the
//! `tenant_code`/`organization_code` columns where missing, creates a `copy_to_tenant` target,
//! and turns the job into parts: one per table, each a key range `(min-1, max]` and the
//! per-chunk statement with `$1`/`$2` bounds, built only from checked, quoted identifiers.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::catalog;
use crate::ident::{literal, qualified, Ident};
use crate::spec::{Effective, JobSpec, Kind, Link, OrgTable, UserTable};
use crate::validate::{self, ident, sessions_table, users_table, ValidateError};

/// One table's worth of chunks.
#[derive(Debug, Clone)]
pub struct PartPlan {
    pub name: String,
    pub statement: String,
    /// Run after `statement` in the chunk transaction; returns `(key, total)` rows naming rows
    /// the chunk could not settle (see [`settle_statement`]), which fail the chunk.
    pub then_statement: Option<String>,
    /// `exec` or `count` (dry run).
    pub mode: &'static str,
    pub lo: i64,
    pub hi: i64,
    /// Rows the part is expected to go over (percent = rows done / rows estimated).
    pub rows_estimate: i64,
}

/// Per-table entry of a `tenant_codes` report.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct TableReport {
    pub table: String,
    /// `organization_id`, `user:<column>` or `session:<column>`.
    pub via: String,
    /// `filled`, `counted` (dry run), `skipped` (table missing, see `reason`), `empty`, or after
    /// verification `verified` / `nulls_left`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub rows_updated: i64,
    #[serde(default)]
    pub total_rows: i64,
    #[serde(default)]
    pub null_tenant_code: i64,
    #[serde(default)]
    pub null_organization_code: i64,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub parts: Vec<PartPlan>,
    pub tables: Vec<TableReport>,
}

fn refused(s: String) -> ValidateError {
    ValidateError::Refused(fleet_shared::errors::one_line(&s))
}

/// `(min(key) - 1, max(key)]`, or `None` for an empty table.
fn key_range<'a>(
    con: &'a mut PgConnection,
    table_sql: &'a str,
    key: &'a Ident,
) -> futures::future::BoxFuture<'a, sqlx::Result<Option<(i64, i64)>>> {
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
fn estimate_rows<'a>(
    con: &'a mut PgConnection,
    table_sql: &'a str,
    filter: &'a str,
) -> futures::future::BoxFuture<'a, sqlx::Result<i64>> {
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

fn count_statement(table_sql: &str, key: &Ident, extra: &str) -> String {
    format!(
        "SELECT count(*) FROM {table_sql} AS t WHERE t.{k} > $1 AND t.{k} <= $2{extra}",
        k = key.quoted()
    )
}

/// The `tenant_codes` fill statement of one table (see the module docs of [`crate::runner`]
/// for why the "already right" rows are skipped).
pub fn fill_statement(
    schema: &Ident,
    job_id: Uuid,
    table: &Ident,
    key: &Ident,
    via: &Via,
    map_table: &str,
) -> String {
    let t = qualified(schema, table);
    let k = key.quoted();
    let map = format!(
        "{map_table} AS m ON m.job_id = {}::uuid",
        literal(&job_id.to_string())
    );
    let set = "SET \"tenant_code\" = m.tenant_code, \"organization_code\" = m.organization_code";
    let changed = "(t.\"tenant_code\" IS DISTINCT FROM m.tenant_code OR t.\"organization_code\" IS DISTINCT FROM m.organization_code)";
    let users = qualified(schema, &users_table());
    match via {
        Via::Org(col) => format!(
            "UPDATE {t} AS t {set} FROM {map_table} AS m WHERE m.job_id = {}::uuid \
             AND m.organization_id = t.{}::text AND t.{k} > $1 AND t.{k} <= $2 AND {changed}",
            literal(&job_id.to_string()),
            col.quoted()
        ),
        Via::User(col) => format!(
            "UPDATE {t} AS t {set} FROM {users} AS u JOIN {map} AND m.organization_id = u.\"organization_id\"::text \
             WHERE u.\"user_id\" = t.{} AND t.{k} > $1 AND t.{k} <= $2 AND {changed}",
            col.quoted()
        ),
        Via::Session(col) => format!(
            "UPDATE {t} AS t {set} FROM {} AS s JOIN {users} AS u ON u.\"user_id\" = s.\"created_by\" \
             JOIN {map} AND m.organization_id = u.\"organization_id\"::text \
             WHERE s.\"id\" = t.{} AND t.{k} > $1 AND t.{k} <= $2 AND {changed}",
            qualified(schema, &sessions_table()),
            col.quoted()
        ),
    }
}

/// How a table reaches its organization.
#[derive(Debug, Clone)]
pub enum Via {
    Org(Ident),
    User(Ident),
    Session(Ident),
}

impl Via {
    fn label(&self) -> String {
        match self {
            Via::Org(c) => c.to_string(),
            Via::User(c) => format!("user:{c}"),
            Via::Session(c) => format!("session:{c}"),
        }
    }
}

/// Builds the plan (see the module docs). `Refused` fails the job with its reason.
/// `map_table` is where the target database holds a `tenant_codes` job's mapping.
pub fn plan<'a>(
    con: &'a mut PgConnection,
    job_id: Uuid,
    spec: &'a JobSpec,
    eff: &'a Effective,
    map_table: &'a str,
) -> futures::future::BoxFuture<'a, Result<Plan, ValidateError>> {
    Box::pin(plan_inner(con, job_id, spec, eff, map_table))
}

async fn plan_inner(
    con: &mut PgConnection,
    job_id: Uuid,
    spec: &JobSpec,
    eff: &Effective,
    map_table: &str,
) -> Result<Plan, ValidateError> {
    validate::check(con, spec).await?;
    let schema = &spec.schema;
    let mut plan = Plan::default();
    match &spec.kind {
        Kind::Sql(s) => {
            let t = qualified(schema, &s.table);
            if let Some((lo, hi)) = key_range(con, &t, &s.key).await? {
                let (statement, mode) = if eff.dry_run {
                    (count_statement(&t, &s.key, ""), "count")
                } else {
                    (s.statement.clone(), "exec")
                };
                let rows_estimate = estimate_rows(con, &t, "").await?;
                plan.parts.push(PartPlan {
                    name: s.table.to_string(),
                    statement,
                    then_statement: None,
                    mode,
                    lo,
                    hi,
                    rows_estimate,
                });
            }
        }
        Kind::TenantCodes(tc) => {
            let mut tables: Vec<(Ident, Ident, Via)> = Vec::new();
            for OrgTable {
                table,
                key,
                org_column,
            } in &tc.org_tables
            {
                tables.push((table.clone(), key.clone(), Via::Org(org_column.clone())));
            }
            for UserTable { table, key, link } in &tc.user_tables {
                let via = match link {
                    Link::User(c) => Via::User(c.clone()),
                    Link::Session(c) => Via::Session(c.clone()),
                };
                tables.push((table.clone(), key.clone(), via));
            }
            let mut present = Vec::new();
            for (table, key, via) in tables {
                if catalog::table_exists(con, schema, &table).await? {
                    present.push((table, key, via));
                } else {
                    plan.tables.push(TableReport {
                        table: table.to_string(),
                        via: via.label(),
                        status: "skipped".into(),
                        reason: Some(format!("table {schema}.{table} does not exist")),
                        rows_updated: 0,
                        total_rows: 0,
                        null_tenant_code: 0,
                        null_organization_code: 0,
                    });
                }
            }
            integrity_check(
                con,
                job_id,
                schema,
                &present,
                !tc.user_tables.is_empty(),
                map_table,
            )
            .await?;
            for (table, key, via) in &present {
                let t = qualified(schema, table);
                if !eff.dry_run {
                    sqlx::query(&format!(
                        "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS \"tenant_code\" text, ADD COLUMN IF NOT EXISTS \"organization_code\" text"
                    ))
                    .execute(&mut *con)
                    .await?;
                }
                let range = key_range(con, &t, key).await?;
                plan.tables.push(TableReport {
                    table: table.to_string(),
                    via: via.label(),
                    status: match (range.is_some(), eff.dry_run) {
                        (false, _) => "empty",
                        (true, true) => "counted",
                        (true, false) => "filled",
                    }
                    .into(),
                    reason: None,
                    rows_updated: 0,
                    total_rows: 0,
                    null_tenant_code: 0,
                    null_organization_code: 0,
                });
                if let Some((lo, hi)) = range {
                    let (statement, mode) = if eff.dry_run {
                        (count_statement(&t, key, ""), "count")
                    } else {
                        (
                            fill_statement(schema, job_id, table, key, via, map_table),
                            "exec",
                        )
                    };
                    let rows_estimate = estimate_rows(con, &t, "").await?;
                    plan.parts.push(PartPlan {
                        name: table.to_string(),
                        statement,
                        then_statement: None,
                        mode,
                        lo,
                        hi,
                        rows_estimate,
                    });
                }
            }
        }
        Kind::CopyToTenant(c) => {
            let src = qualified(schema, &c.table);
            let target_schema = c.tenant_code.schema_name();
            let ts = Ident::parse("schema", &target_schema).map_err(|e| refused(e.to_string()))?;
            let dst = qualified(&ts, &c.table);
            if !eff.dry_run && c.create_target && !catalog::table_exists(con, &ts, &c.table).await?
            {
                sqlx::query(&format!(
                    "CREATE TABLE IF NOT EXISTS {dst} (LIKE {src} INCLUDING ALL)"
                ))
                .execute(&mut *con)
                .await?;
            }
            let k = c.key.quoted();
            let filter = format!(
                " AND t.{}::text = {}",
                c.tenant_column.quoted(),
                literal(&c.tenant_value)
            );
            if let Some((lo, hi)) = key_range(con, &src, &c.key).await? {
                let rows_estimate = estimate_rows(con, &src, &filter).await?;
                if eff.dry_run {
                    plan.parts.push(PartPlan {
                        name: c.table.to_string(),
                        statement: count_statement(&src, &c.key, &filter),
                        then_statement: None,
                        mode: "count",
                        lo,
                        hi,
                        rows_estimate,
                    });
                } else {
                    let src_cols =
                        catalog::insertable_columns(con, schema.as_str(), c.table.as_str()).await?;
                    let dst_cols =
                        catalog::insertable_columns(con, &target_schema, c.table.as_str()).await?;
                    let cols: Vec<Ident> = src_cols
                        .iter()
                        .filter(|c| dst_cols.contains(c))
                        .map(|c| Ident::parse("column", c))
                        .collect::<Result<_, _>>()
                        .map_err(|e| refused(format!("copy_to_tenant job: {e} (rename the column or copy with a sql job)")))?;
                    if !cols.iter().any(|x| x == &c.key) {
                        return Err(refused(format!(
                            "copy_to_tenant job: {dst} has no column {}",
                            c.key
                        )));
                    }
                    let list = cols
                        .iter()
                        .map(Ident::quoted)
                        .collect::<Vec<_>>()
                        .join(", ");
                    let sel = cols
                        .iter()
                        .map(|x| format!("t.{}", x.quoted()))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let statement = format!(
                        "INSERT INTO {dst} ({list}) OVERRIDING SYSTEM VALUE SELECT {sel} FROM {src} AS t \
                         WHERE t.{k} > $1 AND t.{k} <= $2{filter} ON CONFLICT DO NOTHING"
                    );
                    let then_statement = Some(settle_statement(
                        &src,
                        &dst,
                        &c.key,
                        &cols,
                        &filter,
                        c.delete_source,
                    ));
                    plan.parts.push(PartPlan {
                        name: c.table.to_string(),
                        statement,
                        then_statement,
                        mode: "exec",
                        lo,
                        hi,
                        rows_estimate,
                    });
                }
            }
        }
    }
    Ok(plan)
}

/// The `copy_to_tenant` statement run after the chunk's `INSERT ... ON CONFLICT DO NOTHING`, in
/// the same transaction. A source row counts as *settled* only when the target holds a row with
/// the same key **and the same data** in every copied column (compared as text, so types
/// without an equality operator such as `json` work; a type change between the tables can only
/// make rows look different, never equal, which errs on the safe side). `ON CONFLICT DO
/// NOTHING` skips a row whose key (or any other unique value) the target already holds, so
/// "the key exists in the target" says nothing about whether *this* row's data got there:
/// deleting on the key alone lost the source row whenever the application had written a
/// different row under that key.
///
/// With `delete_source` the statement deletes the settled source rows of the chunk (a re-run
/// after an earlier copy, with or without delete, deletes them too: equality is checked, not
/// who copied). Either way it returns up to 10 keys of the chunk's *unsettled* rows with their
/// total count (`key, total`); the runner fails the chunk on any, rolling it back, so a
/// colliding row is never deleted and the error names the keys.
pub fn settle_statement(
    src: &str,
    dst: &str,
    key: &Ident,
    cols: &[Ident],
    filter: &str,
    delete_source: bool,
) -> String {
    let k = key.quoted();
    let same = cols
        .iter()
        .map(|c| {
            let c = c.quoted();
            format!("d.{c}::text IS NOT DISTINCT FROM t.{c}::text")
        })
        .collect::<Vec<_>>()
        .join(" AND ");
    let settled = format!("EXISTS (SELECT 1 FROM {dst} AS d WHERE d.{k} = t.{k} AND {same})");
    let in_chunk = format!("t.{k} > $1 AND t.{k} <= $2{filter}");
    // A data-modifying CTE runs exactly once whether or not it is referenced; the SELECT sees
    // the snapshot from before the DELETE, which does not matter: it only reads unsettled rows,
    // and the DELETE only touches settled ones.
    let delete = if delete_source {
        format!("WITH settled AS (DELETE FROM {src} AS t WHERE {in_chunk} AND {settled}) ")
    } else {
        String::new()
    };
    format!(
        "{delete}SELECT t.{k}::bigint, count(*) OVER ()::bigint FROM {src} AS t \
         WHERE {in_chunk} AND NOT {settled} ORDER BY t.{k} LIMIT 10"
    )
}

/// The integrity check before any row is touched: every `organization_id` in the org-direct tables and in
/// `user_extensions` must be in the mapping. Fails listing (up to 20 of) the unmapped ids.
async fn integrity_check(
    con: &mut PgConnection,
    job_id: Uuid,
    schema: &Ident,
    present: &[(Ident, Ident, Via)],
    via_users: bool,
    map_table: &str,
) -> Result<(), ValidateError> {
    let mut sources: Vec<(Ident, Ident)> = present
        .iter()
        .filter_map(|(t, _, via)| match via {
            Via::Org(c) => Some((t.clone(), c.clone())),
            _ => None,
        })
        .collect();
    if via_users {
        sources.push((users_table(), ident("organization_id")));
    }
    let mut unmapped: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (table, col) in sources {
        let ids: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT DISTINCT t.{c}::text FROM {t} AS t WHERE t.{c} IS NOT NULL AND NOT EXISTS \
             (SELECT 1 FROM {map_table} m WHERE m.job_id = $1 AND m.organization_id = t.{c}::text) LIMIT 1000",
            c = col.quoted(),
            t = qualified(schema, &table)
        ))
        .bind(job_id)
        .fetch_all(&mut *con)
        .await?;
        for id in ids {
            unmapped.entry(id).or_default().push(table.to_string());
        }
    }
    if unmapped.is_empty() {
        return Ok(());
    }
    let mut ids: Vec<&String> = unmapped.keys().collect();
    ids.sort_by_key(|s| (s.len(), s.to_string()));
    let shown: Vec<String> = ids
        .iter()
        .take(20)
        .map(|id| format!("{id} ({})", unmapped[*id].join(", ")))
        .collect();
    Err(refused(format!(
        "integrity check failed before any row was changed: {} organization_id(s) in the data are not in the mapping: {}{}",
        unmapped.len(),
        shown.join("; "),
        if unmapped.len() > 20 { "; ..." } else { "" }
    )))
}

/// The verification after the fill, per filled table: rows left without codes.
pub fn verify<'a>(
    con: &'a mut PgConnection,
    schema: &'a Ident,
    tables: &'a mut [TableReport],
) -> futures::future::BoxFuture<'a, sqlx::Result<()>> {
    Box::pin(verify_inner(con, schema, tables))
}

async fn verify_inner(
    con: &mut PgConnection,
    schema: &Ident,
    tables: &mut [TableReport],
) -> sqlx::Result<()> {
    for r in tables
        .iter_mut()
        .filter(|r| r.status == "filled" || r.status == "empty")
    {
        let Ok(table) = Ident::parse("table", &r.table) else {
            continue;
        };
        let (total, nt, no): (i64, i64, i64) = sqlx::query_as(&format!(
            "SELECT count(*), count(*) - count(\"tenant_code\"), count(*) - count(\"organization_code\") FROM {}",
            qualified(schema, &table)
        ))
        .fetch_one(&mut *con)
        .await?;
        r.total_rows = total;
        r.null_tenant_code = nt;
        r.null_organization_code = no;
        r.status = if nt == 0 && no == 0 {
            "verified"
        } else {
            "nulls_left"
        }
        .into();
    }
    Ok(())
}
