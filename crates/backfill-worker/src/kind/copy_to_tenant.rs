//! `copy_to_tenant`: one tenant's rows of a shared table copied into its schema
//! (`tenant_<code>.<table>`) on the tenant's own database, chunk by chunk, optionally deleting
//! the source rows that are settled (docs/backfill.md#copy_to_tenant).
//!
//! **Where.** The source is the job's `database`; the target is the database the registry
//! (`fleet.tenants.database`) places the tenant on, or the tenant's database of its own on that
//! server (`fleet.tenants.own_database`, `isolation = "database"`). A tenant the registry does
//! not know (a schema made by hand) is looked for on the job's database.
//!
//! **Matching rows.** Rows are matched by a key the target has: its primary key, else its
//! smallest unique index, whose columns the copy provides (composite allowed, e.g. the
//! provisioner's `(tenant_code, id)`). The copy provides the columns both tables have, plus
//! `tenant_code` / `organization_code` filled from the tenant (its code, the registry's
//! `org_code`) when the target has them and the source does not. Identity columns are copied
//! with `OVERRIDING SYSTEM VALUE`, and each sequence the target owns is moved past the copied
//! maximum (see [`bump_sequence`]).
//!
//! **Exactly once, on one or two databases** ([`CopyRunner`]): a chunk reads its rows on the
//! source (`FOR UPDATE` with `delete_source`, so they cannot change until the chunk ends), then
//! on the target, in one transaction, inserts them (`ON CONFLICT DO NOTHING`), checks which are
//! settled, moves the sequences and writes the chunk's marker (`fleet_backfill.chunk_marks`);
//! after that commits, the settled source rows are deleted and the source transaction commits;
//! then the runner records the checkpoint. When source and target are one database all of it
//! is one transaction there. A crash before the target commit loses everything of the chunk; a
//! crash after it leaves the marker: the next claimer inserts nothing (the marker's row count
//! is the chunk's), checks again which source rows are settled and deletes exactly those, so
//! nothing is copied twice and only settled rows are ever deleted.

use std::sync::Arc;

use fleet_shared::databases::DatabasePools;
use fleet_shared::{Code, Name};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool, Row};

use super::job::{CheckCtx, ChunkCall, ChunkOutcome, ChunkRunner, JobKind, PlanCtx};
use crate::catalog;
use crate::error::SpecError;
use crate::ident::{literal, qualified, Ident};
use crate::plan::{count_statement, estimate_rows, key_range, PartMode, PartPlan, Plan};
use crate::target::{self, Target};
use crate::validate::{self, refused, ValidateError};

/// The wire form of a `copy_to_tenant` spec's own fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopySpec {
    pub table: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub tenant_code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_column: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_value: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete_source: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_target: Option<bool>,
}

pub const FIELDS: &[&str] = &[
    "table",
    "key",
    "tenant_code",
    "tenant_column",
    "tenant_value",
    "delete_source",
    "create_target",
];

#[derive(Debug, Clone, PartialEq)]
pub struct CopyJob {
    pub table: Ident,
    pub key: Ident,
    pub tenant_column: Ident,
    pub tenant_code: Code,
    /// What the tenant column holds for this tenant (default: the tenant code).
    pub tenant_value: String,
    pub delete_source: bool,
    pub create_target: bool,
}

impl CopyJob {
    pub fn check(spec: &CopySpec) -> Result<CopyJob, SpecError> {
        let table = Ident::parse("table", &spec.table)?;
        let key = Ident::parse("key", spec.key.as_deref().unwrap_or("id"))?;
        let tenant_column = Ident::parse(
            "tenant_column",
            spec.tenant_column.as_deref().unwrap_or("tenant_code"),
        )?;
        let tenant_code =
            Code::parse(&spec.tenant_code).map_err(|e| SpecError::TenantCode(e.to_string()))?;
        let tenant_value = spec
            .tenant_value
            .clone()
            .unwrap_or_else(|| tenant_code.as_str().to_owned());
        if tenant_value.is_empty() || tenant_value.len() > 200 || tenant_value.contains('\0') {
            return Err(SpecError::Option(
                "tenant_value: must be 1 to 200 characters".into(),
            ));
        }
        Ok(CopyJob {
            table,
            key,
            tenant_column,
            tenant_code,
            tenant_value,
            delete_source: spec.delete_source,
            create_target: spec.create_target.unwrap_or(true),
        })
    }

    fn target_schema(&self) -> Result<Ident, ValidateError> {
        Ident::parse("schema", &self.tenant_code.schema_name()).map_err(|e| refused(e.to_string()))
    }

    /// ` AND t.<tenant_column>::text = '<tenant_value>'`: the tenant's rows of the source.
    fn filter(&self) -> String {
        format!(
            " AND t.{}::text = {}",
            self.tenant_column.quoted(),
            literal(&self.tenant_value)
        )
    }

    /// Source-side checks, the tenant's home, and the target's checks there.
    async fn validate_inner(
        &self,
        con: &mut PgConnection,
        ctx: CheckCtx<'_>,
    ) -> Result<(), ValidateError> {
        let schema = ctx.schema;
        validate::require_table(con, schema, &self.table).await?;
        validate::check_key(con, schema, &self.table, &self.key).await?;
        validate::check_column(con, schema, &self.table, &self.tenant_column).await?;
        let home = Home::find(ctx.pools, &self.tenant_code, ctx.database).await?;
        if home.is_in(ctx.database) {
            return self
                .check_target(con, None, schema, &home)
                .await
                .map(|_| ());
        }
        let pool = home.pool(ctx.pools, &self.tenant_code)?;
        let mut tcon = pool.acquire().await?;
        self.check_target(con, Some(&mut tcon), schema, &home)
            .await
            .map(|_| ())
    }

    /// Checks the target on the tenant's database (`tcon`; `None`: the source's own `con`) and
    /// works out the copy's shape. `Ok(None)`: the target does not exist yet and will be
    /// created from the source.
    async fn check_target(
        &self,
        con: &mut PgConnection,
        mut tcon: Option<&mut PgConnection>,
        schema: &Ident,
        home: &Home,
    ) -> Result<Option<Shape>, ValidateError> {
        let ts = self.target_schema()?;
        let elsewhere = tcon.is_some();
        let on = if elsewhere {
            format!(" on database {}", home.database)
        } else {
            String::new()
        };
        let t: &mut PgConnection = match tcon.as_deref_mut() {
            Some(t) => t,
            None => &mut *con,
        };
        if !catalog::schema_exists(t, ts.as_str()).await? {
            return Err(refused(format!(
                "copy_to_tenant job: schema {ts} does not exist{on} (provision tenant {} first)",
                self.tenant_code
            )));
        }
        if !catalog::table_exists(t, &ts, &self.table).await? {
            if !self.create_target {
                return Err(refused(format!(
                    "copy_to_tenant job: {ts}.{} does not exist{on} and create_target is false",
                    self.table
                )));
            }
            if elsewhere {
                return Err(refused(format!(
                    "copy_to_tenant job: {ts}.{} does not exist{on}, and create_target can only create it from a source on the same database (create the table there first)",
                    self.table
                )));
            }
            return Ok(None);
        }
        let src_cols = source_columns(con, schema, &self.table).await?;
        let t: &mut PgConnection = match tcon {
            Some(t) => t,
            None => con,
        };
        Shape::resolve(t, self, &ts, &src_cols, home)
            .await
            .map(Some)
    }

    async fn plan_inner(
        &self,
        con: &mut PgConnection,
        ctx: PlanCtx<'_>,
    ) -> Result<Plan, ValidateError> {
        let schema = ctx.schema;
        let check = CheckCtx {
            schema,
            database: &ctx.target.name,
            pools: ctx.pools,
        };
        self.validate_inner(con, check).await?;
        let mut plan = Plan::default();
        let src = qualified(schema, &self.table);
        let filter = self.filter();
        let Some((lo, hi)) = key_range(con, &src, &self.key).await? else {
            return Ok(plan);
        };
        let rows_estimate = estimate_rows(con, &src, &filter).await?;
        if ctx.eff.dry_run {
            plan.parts.push(PartPlan {
                name: self.table.to_string(),
                statement: count_statement(&src, &self.key, &filter),
                then_statement: None,
                mode: PartMode::Count,
                lo,
                hi,
                rows_estimate,
            });
            return Ok(plan);
        }
        // Planning writes on the tenant's schema (sequences, `create_target`), which a move
        // in flight would not carry over: refused until the move is done.
        let moving: Option<(String, String, String)> = sqlx::query_as(
            "SELECT source, target, step FROM fleet.tenant_moves WHERE code = $1 AND state = 'running'",
        )
        .bind(self.tenant_code.as_str())
        .fetch_optional(ctx.pools.control())
        .await?;
        if let Some((from, to, step)) = moving {
            return Err(refused(format!(
                "copy_to_tenant job: tenant {} is being moved (from {from} to {to}, step {step}); submit the job again once the move is done",
                self.tenant_code
            )));
        }
        let home = Home::find(ctx.pools, &self.tenant_code, &ctx.target.name).await?;
        let ts = self.target_schema()?;
        let dst = qualified(&ts, &self.table);
        let same = home.is_in(&ctx.target.name);
        let src_cols = source_columns(con, schema, &self.table).await?;
        let (shape, max_keys) = if same {
            if self.create_target && !catalog::table_exists(con, &ts, &self.table).await? {
                sqlx::query(&format!(
                    "CREATE TABLE IF NOT EXISTS {dst} (LIKE {src} INCLUDING ALL)"
                ))
                .execute(&mut *con)
                .await?;
            }
            // The markers live with the target (the runner made them on any other database).
            if ctx.target.is_control {
                target::ensure_schema(con).await?;
            }
            let shape = Shape::resolve(con, self, &ts, &src_cols, &home).await?;
            let max_keys = shape.source_maxima(con, &src, &filter).await?;
            shape.bump_all(con, &max_keys).await?;
            (shape, max_keys)
        } else {
            let pool = home.pool(ctx.pools, &self.tenant_code)?;
            let mut t = pool.begin().await?;
            sqlx::query(&format!(
                "SET LOCAL lock_timeout = {}",
                ctx.eff
                    .lock_timeout
                    .unwrap_or(std::time::Duration::from_secs(5))
                    .as_millis()
            ))
            .execute(&mut *t)
            .await?;
            target::ensure_schema(&mut t).await?;
            let shape = Shape::resolve(&mut t, self, &ts, &src_cols, &home).await?;
            let max_keys = shape.source_maxima(con, &src, &filter).await?;
            shape.bump_all(&mut t, &max_keys).await?;
            t.commit().await?;
            (shape, max_keys)
        };
        tracing::debug!(?max_keys, "copy_to_tenant: sequences moved past the source");
        let statements =
            shape.statements(&home, &src, &dst, &self.key, &filter, self.delete_source);
        plan.parts.push(PartPlan {
            name: self.table.to_string(),
            statement: serde_json::to_string(&statements).map_err(|e| refused(e.to_string()))?,
            then_statement: None,
            mode: PartMode::Copy,
            lo,
            hi,
            rows_estimate,
        });
        Ok(plan)
    }
}

impl JobKind for CopyJob {
    fn name(&self) -> &'static str {
        "copy_to_tenant"
    }

    fn validate<'a>(
        &'a self,
        con: &'a mut PgConnection,
        ctx: CheckCtx<'a>,
    ) -> BoxFuture<'a, Result<(), ValidateError>> {
        Box::pin(self.validate_inner(con, ctx))
    }

    fn plan<'a>(
        &'a self,
        con: &'a mut PgConnection,
        ctx: PlanCtx<'a>,
    ) -> BoxFuture<'a, Result<Plan, ValidateError>> {
        Box::pin(self.plan_inner(con, ctx))
    }

    fn chunk_runner(&self, pools: &DatabasePools, source: &Target) -> Option<Arc<dyn ChunkRunner>> {
        Some(Arc::new(CopyRunner {
            pools: pools.clone(),
            source: source.clone(),
            tenant: self.tenant_code.clone(),
        }))
    }

    fn written_databases<'a>(
        &'a self,
        pools: &'a DatabasePools,
        job_db: &'a Name,
    ) -> BoxFuture<'a, Vec<PgPool>> {
        Box::pin(async move {
            match Home::find(pools, &self.tenant_code, job_db).await {
                Ok(home) if home.database != *job_db => {
                    home.pool(pools, &self.tenant_code).into_iter().collect()
                }
                Ok(_) => Vec::new(),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot find the tenant's database to watch");
                    Vec::new()
                }
            }
        })
    }

    /// The source table and the tenant's copy of it.
    fn watched_tables(&self, schema: &Ident, part: &Ident) -> Vec<String> {
        let mut tables = vec![qualified(schema, part)];
        if let Ok(ts) = Ident::parse("schema", &self.tenant_code.schema_name()) {
            tables.push(qualified(&ts, part));
        }
        tables
    }
}

/// Where the tenant lives, from the registry.
#[derive(Debug, Clone)]
struct Home {
    database: Name,
    /// Its own database on `database`'s server (`isolation = "database"`), if any.
    own_database: Option<String>,
    /// The registry's `org_code` (fills a target's `organization_code`).
    org_code: Option<String>,
}

impl Home {
    /// An unregistered tenant (a schema made by hand) is looked for on the job's database.
    async fn find(
        pools: &DatabasePools,
        code: &Code,
        job_db: &Name,
    ) -> Result<Home, ValidateError> {
        let row: Option<(String, Option<String>, String, Option<String>)> = sqlx::query_as(
            // Codes are unique among live tenants only: a live row wins over deleted ones (a
            // deleted-only code is refused below).
            "SELECT database, org_code, status, own_database FROM fleet.tenants WHERE code = $1
             ORDER BY status = 'deleted', created_at DESC LIMIT 1",
        )
        .bind(code.as_str())
        .fetch_optional(pools.control())
        .await?;
        match row {
            None => Ok(Home {
                database: job_db.clone(),
                own_database: None,
                org_code: None,
            }),
            Some((_, _, status, _)) if status == "deleted" => Err(refused(format!(
                "copy_to_tenant job: tenant {code} is deleted"
            ))),
            Some((db, org_code, _, own_database)) => Ok(Home {
                database: Name::parse(&db).map_err(|e| {
                    refused(format!("copy_to_tenant job: tenant {code}'s database: {e}"))
                })?,
                own_database,
                org_code,
            }),
        }
    }

    /// Whether the tenant's schema is in database `db` itself (not in a database of its own).
    fn is_in(&self, db: &Name) -> bool {
        self.own_database.is_none() && self.database == *db
    }

    fn pool(&self, pools: &DatabasePools, code: &Code) -> Result<PgPool, ValidateError> {
        pools
            .tenant(self.database.as_str(), self.own_database.as_deref())
            .map_err(|e| {
                refused(format!(
                    "copy_to_tenant job: tenant {code} lives on database {}: {e}",
                    self.database
                ))
            })
    }
}

/// A source column: its name and whether its value travels as JSON (`json`/`jsonb`, verbatim)
/// rather than as its text form.
#[derive(Debug, Clone)]
struct SourceColumn {
    name: String,
    json: bool,
}

async fn source_columns(
    con: &mut PgConnection,
    schema: &Ident,
    table: &Ident,
) -> sqlx::Result<Vec<SourceColumn>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text FROM information_schema.columns
         WHERE table_schema = $1 AND table_name = $2 AND is_generated = 'NEVER'
         ORDER BY ordinal_position",
    )
    .bind(schema.as_str())
    .bind(table.as_str())
    .fetch_all(con)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, ty)| SourceColumn {
            json: ty == "json" || ty == "jsonb",
            name,
        })
        .collect())
}

/// A sequence the target owns for one of the copied columns (an identity or serial column).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Sequence {
    column: String,
    /// `"schema"."name"`, from checked identifiers.
    sequence: String,
    increment: i64,
}

/// What one copy moves: columns, the columns filled from the tenant, the target's key.
#[derive(Debug, Clone)]
struct Shape {
    /// Copied columns (both tables have them), with how they travel.
    cols: Vec<(Ident, bool)>,
    /// Target columns set from the tenant: (column, value).
    filled: Vec<(Ident, String)>,
    /// The target's key the rows are matched by.
    key: Vec<Ident>,
    sequences: Vec<Sequence>,
}

impl Shape {
    async fn resolve(
        t: &mut PgConnection,
        job: &CopyJob,
        ts: &Ident,
        src_cols: &[SourceColumn],
        home: &Home,
    ) -> Result<Shape, ValidateError> {
        let dst_name = format!("{ts}.{}", job.table);
        // name, not null, has a default (or identity), generated
        let dst: Vec<(String, bool, bool, bool)> = sqlx::query_as(
            "SELECT a.attname::text, a.attnotnull, a.atthasdef OR a.attidentity <> '', a.attgenerated <> ''
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
        )
        .bind(ts.as_str())
        .bind(job.table.as_str())
        .fetch_all(&mut *t)
        .await?;
        let insertable = |name: &str| dst.iter().any(|(n, _, _, g)| n == name && !g);
        let mut cols = Vec::new();
        for c in src_cols.iter().filter(|c| insertable(&c.name)) {
            let id = Ident::parse("column", &c.name).map_err(|e| {
                refused(format!(
                    "copy_to_tenant job: {e} (rename the column or copy with a sql job)"
                ))
            })?;
            cols.push((id, c.json));
        }
        if !cols.iter().any(|(c, _)| c == &job.key) {
            return Err(refused(format!(
                "copy_to_tenant job: {dst_name} has no column {}",
                job.key
            )));
        }
        let mut filled = Vec::new();
        for (column, value) in [
            ("tenant_code", Some(job.tenant_code.as_str().to_owned())),
            ("organization_code", home.org_code.clone()),
        ] {
            let Some((_, not_null, has_default, _)) =
                dst.iter().find(|(n, _, _, g)| n == column && !g)
            else {
                continue;
            };
            if src_cols.iter().any(|c| c.name == column) {
                continue;
            }
            match value {
                Some(v) => filled.push((Ident::parse("column", column).map_err(|e| refused(e.to_string()))?, v)),
                None if *not_null && !*has_default => {
                    return Err(refused(format!(
                        "copy_to_tenant job: {dst_name}.{column} must be set, and neither the source nor the tenant's registry entry (org_code) has it"
                    )))
                }
                None => {}
            }
        }
        let provided = |c: &str| {
            cols.iter().any(|(x, _)| x.as_str() == c) || filled.iter().any(|(x, _)| x.as_str() == c)
        };
        // Primary key first, then the unique indexes, smallest first.
        let keys: Vec<(bool, Vec<String>)> = sqlx::query_as(
            "SELECT i.indisprimary, array_agg(a.attname::text ORDER BY k.ord)
             FROM pg_index i
             JOIN pg_class c ON c.oid = i.indrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
             WHERE n.nspname = $1 AND c.relname = $2 AND i.indisunique AND i.indisvalid
               AND i.indpred IS NULL AND i.indexprs IS NULL AND k.ord <= i.indnkeyatts
             GROUP BY i.indexrelid, i.indisprimary
             ORDER BY i.indisprimary DESC, count(*), i.indexrelid",
        )
        .bind(ts.as_str())
        .bind(job.table.as_str())
        .fetch_all(&mut *t)
        .await?;
        let Some((_, key)) = keys
            .iter()
            .find(|(_, cols)| cols.iter().all(|c| provided(c)))
        else {
            let shown = if keys.is_empty() {
                "it has none".to_owned()
            } else {
                format!(
                    "its keys ({}) need columns the copy does not provide",
                    keys.iter()
                        .map(|(_, c)| c.join(", "))
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            };
            return Err(refused(format!(
                "copy_to_tenant job: {dst_name} has no primary key or unique index on the copied columns ({shown}); a re-run could not skip copied rows"
            )));
        };
        let key = key
            .iter()
            .map(|c| Ident::parse("column", c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| refused(e.to_string()))?;
        let mut sequences = Vec::new();
        for (c, _) in &cols {
            let seq: Option<(String, String, i64)> = sqlx::query_as(
                "SELECT n.nspname::text, s.relname::text, ps.seqincrement
                 FROM pg_class s JOIN pg_namespace n ON n.oid = s.relnamespace JOIN pg_sequence ps ON ps.seqrelid = s.oid
                 WHERE s.oid = pg_get_serial_sequence($1, $2)::regclass",
            )
            .bind(qualified(ts, &job.table))
            .bind(c.as_str())
            .fetch_optional(&mut *t)
            .await?;
            if let Some((sn, name, increment)) = seq {
                let (sn, name) = (Ident::parse("schema", &sn), Ident::parse("sequence", &name));
                let (Ok(sn), Ok(name)) = (sn, name) else {
                    return Err(refused(format!(
                        "copy_to_tenant job: the sequence of {dst_name}.{c} has a name this job does not quote; rename it"
                    )));
                };
                sequences.push(Sequence {
                    column: c.to_string(),
                    sequence: qualified(&sn, &name),
                    increment,
                });
            }
        }
        Ok(Shape {
            cols,
            filled,
            key,
            sequences,
        })
    }

    /// The largest value of each sequence's column among the tenant's source rows.
    async fn source_maxima(
        &self,
        con: &mut PgConnection,
        src: &str,
        filter: &str,
    ) -> sqlx::Result<Vec<Option<i64>>> {
        let mut out = Vec::new();
        for s in &self.sequences {
            let c = Ident::parse("column", &s.column)
                .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
            out.push(
                sqlx::query_scalar(&format!(
                    "SELECT max(t.{c})::bigint FROM {src} AS t WHERE true{filter}",
                    c = c.quoted()
                ))
                .fetch_one(&mut *con)
                .await?,
            );
        }
        Ok(out)
    }

    async fn bump_all(&self, t: &mut PgConnection, maxima: &[Option<i64>]) -> sqlx::Result<()> {
        for (s, max) in self.sequences.iter().zip(maxima) {
            if let Some(max) = max {
                bump_sequence(t, s, *max).await?;
            }
        }
        Ok(())
    }

    fn statements(
        &self,
        home: &Home,
        src: &str,
        dst: &str,
        key: &Ident,
        filter: &str,
        delete_source: bool,
    ) -> CopyStatements {
        let k = key.quoted();
        let in_chunk = format!("t.{k} > $1 AND t.{k} <= $2{filter}");
        let mut sel: Vec<String> = self
            .cols
            .iter()
            .map(|(c, json)| {
                let c = c.quoted();
                if *json {
                    format!("t.{c}")
                } else {
                    format!("t.{c}::text AS {c}")
                }
            })
            .collect();
        sel.extend(
            self.filled
                .iter()
                .map(|(c, v)| format!("{}::text AS {}", literal(v), c.quoted())),
        );
        let lock = if delete_source {
            " FOR UPDATE OF t"
        } else {
            ""
        };
        let read = format!(
            "SELECT coalesce(json_agg(r), '[]')::text FROM (SELECT {} FROM {src} AS t WHERE {in_chunk}{lock}) AS r",
            sel.join(", ")
        );
        let all: Vec<&Ident> = self
            .cols
            .iter()
            .map(|(c, _)| c)
            .chain(self.filled.iter().map(|(c, _)| c))
            .collect();
        let list = all
            .iter()
            .map(|c| c.quoted())
            .collect::<Vec<_>>()
            .join(", ");
        let from_rows = format!("json_populate_recordset(NULL::{dst}, $1::json) AS r");
        let returning = if self.sequences.is_empty() {
            "1".to_owned()
        } else {
            self.sequences
                .iter()
                .map(|s| format!("\"{}\"", s.column))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let maxima: String = self
            .sequences
            .iter()
            .map(|s| format!(", max(\"{}\")::bigint", s.column))
            .collect();
        let insert = format!(
            "WITH ins AS (INSERT INTO {dst} ({list}) OVERRIDING SYSTEM VALUE SELECT {} FROM {from_rows} \
             ON CONFLICT DO NOTHING RETURNING {returning}) SELECT count(*)::bigint{maxima} FROM ins",
            all.iter()
                .map(|c| format!("r.{}", c.quoted()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let same_key = self
            .key
            .iter()
            .map(|c| format!("d.{c} = r.{c}", c = c.quoted()))
            .collect::<Vec<_>>()
            .join(" AND ");
        let same_data = all
            .iter()
            .map(|c| {
                format!(
                    "d.{c}::text IS NOT DISTINCT FROM r.{c}::text",
                    c = c.quoted()
                )
            })
            .collect::<Vec<_>>()
            .join(" AND ");
        let settle = format!(
            "SELECT r.{k}::bigint, EXISTS (SELECT 1 FROM {dst} AS d WHERE {same_key} AND {same_data}) \
             FROM {from_rows} ORDER BY 1"
        );
        let delete = delete_source.then(|| {
            format!("DELETE FROM {src} AS t WHERE t.{k} = ANY($3::bigint[]) AND {in_chunk}")
        });
        CopyStatements {
            database: home.database.to_string(),
            own_database: home.own_database.clone(),
            read,
            insert,
            settle,
            delete,
            sequences: self.sequences.clone(),
        }
    }
}

/// What a `copy` part's statement holds (JSON), planned once: see the module docs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct CopyStatements {
    /// The tenant's database (where `insert` and `settle` run).
    database: String,
    /// Its own database on that server (`isolation = "database"`), if any.
    #[serde(default)]
    own_database: Option<String>,
    /// On the source: the chunk's rows (`$1`, `$2`) as one JSON array, as text.
    read: String,
    /// On the target: inserts the rows (`$1`); returns how many, and each sequence's maximum.
    insert: String,
    /// On the target: `(key, settled)` for every row of `$1`.
    settle: String,
    /// On the source: deletes the settled keys (`$3`) of the chunk.
    delete: Option<String>,
    sequences: Vec<Sequence>,
}

/// Moves `s` past `max`, never backwards, while the application may be inserting: the
/// `ALTER SEQUENCE` (a no-op change) blocks concurrent `nextval`/`setval` until the caller's
/// transaction ends, so the check and the `setval` cannot race an insert. Nothing is locked when
/// the sequence is already past `max` (the usual case after planning moved it past the source).
async fn bump_sequence(t: &mut PgConnection, s: &Sequence, max: i64) -> sqlx::Result<()> {
    let last: i64 = sqlx::query_scalar(&format!("SELECT last_value FROM {}", s.sequence))
        .fetch_one(&mut *t)
        .await?;
    if last > max {
        return Ok(());
    }
    sqlx::query(&format!(
        "ALTER SEQUENCE {} INCREMENT BY {}",
        s.sequence, s.increment
    ))
    .execute(&mut *t)
    .await?;
    sqlx::query(&format!(
        "SELECT setval($1::regclass, $2) FROM {} WHERE last_value <= $2",
        s.sequence
    ))
    .bind(&s.sequence)
    .bind(max)
    .execute(&mut *t)
    .await?;
    Ok(())
}

/// Runs the chunks of `copy` parts (see the module docs).
struct CopyRunner {
    pools: DatabasePools,
    /// The job's database: the source.
    source: Target,
    tenant: Code,
}

impl ChunkRunner for CopyRunner {
    fn run<'a>(&'a self, call: ChunkCall<'a>) -> BoxFuture<'a, sqlx::Result<ChunkOutcome>> {
        Box::pin(self.run_inner(call))
    }
}

impl CopyRunner {
    /// Whether the tenant is still where the job was planned to write: while a move of it is
    /// in flight the chunk is held (nothing written: the move copies the schema as it is, and
    /// after its cut-over the planned database is no longer the tenant's); once the registry
    /// names another home the job fails and has to be planned again. Read without the tenant
    /// lock, which would serialise the job's lanes with every change of the tenant; a move
    /// itself refuses to start while a copy job of the tenant runs.
    async fn placement(&self, st: &CopyStatements) -> sqlx::Result<Option<ChunkOutcome>> {
        let mut con = self.pools.control().acquire().await?;
        let row: Option<(uuid::Uuid, String, Option<String>)> = sqlx::query_as(
            "SELECT tenant_id, database, own_database FROM fleet.tenants
             WHERE code = $1 AND status <> 'deleted' ORDER BY created_at DESC LIMIT 1",
        )
        .bind(self.tenant.as_str())
        .fetch_optional(&mut *con)
        .await?;
        // A tenant the registry does not know is where the job was planned.
        let Some((tenant_id, database, own_database)) = row else {
            return Ok(None);
        };
        // The running move of the tenant, as the move records it (`fleet.tenant_moves`).
        let moving: Option<(String, String, String)> = sqlx::query_as(
            "SELECT source, target, step FROM fleet.tenant_moves WHERE tenant_id = $1 AND state = 'running'",
        )
        .bind(tenant_id)
        .fetch_optional(&mut *con)
        .await?;
        if let Some((from, to, step)) = moving {
            return Ok(Some(ChunkOutcome::Held {
                reason: format!("tenant is being moved (from {from} to {to}, step {step})"),
            }));
        }
        if database != st.database || own_database != st.own_database {
            let home = |db: &str, own: &Option<String>| match own {
                Some(o) => format!("{o} on {db}"),
                None => db.to_owned(),
            };
            return Ok(Some(ChunkOutcome::Replan {
                reason: format!(
                    "copy_to_tenant job: tenant {} now lives in {} but the job was planned for {}; re-plan: submit the job again",
                    self.tenant,
                    home(&database, &own_database),
                    home(&st.database, &st.own_database)
                ),
            }));
        }
        Ok(None)
    }

    async fn run_inner(&self, call: ChunkCall<'_>) -> sqlx::Result<ChunkOutcome> {
        let st: CopyStatements = serde_json::from_str(call.statement)
            .map_err(|e| sqlx::Error::Protocol(format!("copy part: {e}")))?;
        if let Some(wait) = self.placement(&st).await? {
            return Ok(wait);
        }
        let target_pool = self
            .pools
            .tenant(&st.database, st.own_database.as_deref())
            .map_err(|e| sqlx::Error::Configuration(e.to_string().into()))?;
        let same = st.own_database.is_none() && st.database == self.source.name.as_str();
        let mut s = self.source.pool.begin().await?;
        for set in call.settings {
            sqlx::query(set).persistent(false).execute(&mut *s).await?;
        }
        let rows: String = sqlx::query_scalar(&st.read)
            .bind(call.lo)
            .bind(call.hi)
            .fetch_one(&mut *s)
            .await?;
        let mut other = if same {
            None
        } else {
            let mut t = target_pool.begin().await?;
            for set in call.settings {
                sqlx::query(set).persistent(false).execute(&mut *t).await?;
            }
            Some(t)
        };
        let t: &mut PgConnection = match other.as_mut() {
            Some(t) => t,
            None => &mut s,
        };
        let recorded = target::marker(t, call.job_id, call.chunk_id).await?;
        let inserted = match recorded {
            Some(n) => n,
            None => {
                let row = sqlx::query(&st.insert)
                    .bind(&rows)
                    .fetch_one(&mut *t)
                    .await?;
                for (i, seq) in st.sequences.iter().enumerate() {
                    if let Some(max) = row.try_get::<Option<i64>, _>(i + 1)? {
                        bump_sequence(t, seq, max).await?;
                    }
                }
                row.try_get::<i64, _>(0)?
            }
        };
        let checked: Vec<(i64, bool)> = sqlx::query_as(&st.settle)
            .bind(&rows)
            .fetch_all(&mut *t)
            .await?;
        let unsettled: Vec<i64> = checked
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(k, _)| *k)
            .collect();
        if !unsettled.is_empty() {
            // Roll the whole chunk back: nothing of it is copied or deleted.
            drop(other);
            drop(s);
            return Ok(ChunkOutcome::Unsettled {
                total: unsettled.len() as i64,
                keys: unsettled.into_iter().take(10).collect(),
            });
        }
        if recorded.is_none() {
            target::mark(t, call.job_id, call.chunk_id, call.lo, call.hi, inserted).await?;
        }
        if let Some(t) = other {
            t.commit().await?;
        }
        if let Some(delete) = &st.delete {
            let settled: Vec<i64> = checked.iter().map(|(k, _)| *k).collect();
            sqlx::query(delete)
                .bind(call.lo)
                .bind(call.hi)
                .bind(&settled)
                .execute(&mut *s)
                .await?;
        }
        s.commit().await?;
        Ok(match recorded {
            // Copied before a crash; its settled source rows are deleted now.
            Some(rows) => ChunkOutcome::Recorded { rows },
            None => ChunkOutcome::Done { rows: inserted },
        })
    }
}
