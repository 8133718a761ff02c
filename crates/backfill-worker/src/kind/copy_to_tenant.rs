//! `copy_to_tenant`: one tenant's rows of a shared table copied into its schema
//! (`tenant_<code>.<table>`), chunk by chunk, optionally deleting the source rows that are
//! settled (docs/backfill.md#copy_to_tenant).

use fleet_shared::Code;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use super::job::{JobKind, PlanCtx};
use crate::catalog;
use crate::error::SpecError;
use crate::ident::{literal, qualified, Ident};
use crate::plan::{count_statement, estimate_rows, key_range, PartPlan, Plan};
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

    async fn validate_inner(
        &self,
        con: &mut PgConnection,
        schema: &Ident,
    ) -> Result<(), ValidateError> {
        validate::require_table(con, schema, &self.table).await?;
        validate::check_key(con, schema, &self.table, &self.key).await?;
        validate::check_column(con, schema, &self.table, &self.tenant_column).await?;
        let target_schema = self.tenant_code.schema_name();
        if !catalog::schema_exists(con, &target_schema).await? {
            return Err(refused(format!(
                "copy_to_tenant job: schema {target_schema} does not exist (provision tenant {} first)",
                self.tenant_code
            )));
        }
        let ts = self.target_schema()?;
        if catalog::table_exists(con, &ts, &self.table).await? {
            if !catalog::unique_on(con, &target_schema, self.table.as_str(), self.key.as_str())
                .await?
            {
                return Err(refused(format!(
                    "copy_to_tenant job: {target_schema}.{} has no unique index on {}; a re-run could not skip copied rows",
                    self.table, self.key
                )));
            }
        } else if !self.create_target {
            return Err(refused(format!(
                "copy_to_tenant job: {target_schema}.{} does not exist and create_target is false",
                self.table
            )));
        }
        Ok(())
    }

    async fn plan_inner(
        &self,
        con: &mut PgConnection,
        ctx: PlanCtx<'_>,
    ) -> Result<Plan, ValidateError> {
        self.validate_inner(con, ctx.schema).await?;
        let schema = ctx.schema;
        let mut plan = Plan::default();
        let src = qualified(schema, &self.table);
        let ts = self.target_schema()?;
        let dst = qualified(&ts, &self.table);
        if !ctx.eff.dry_run
            && self.create_target
            && !catalog::table_exists(con, &ts, &self.table).await?
        {
            sqlx::query(&format!(
                "CREATE TABLE IF NOT EXISTS {dst} (LIKE {src} INCLUDING ALL)"
            ))
            .execute(&mut *con)
            .await?;
        }
        let k = self.key.quoted();
        let filter = format!(
            " AND t.{}::text = {}",
            self.tenant_column.quoted(),
            literal(&self.tenant_value)
        );
        let Some((lo, hi)) = key_range(con, &src, &self.key).await? else {
            return Ok(plan);
        };
        let rows_estimate = estimate_rows(con, &src, &filter).await?;
        if ctx.eff.dry_run {
            plan.parts.push(PartPlan {
                name: self.table.to_string(),
                statement: count_statement(&src, &self.key, &filter),
                then_statement: None,
                mode: "count",
                lo,
                hi,
                rows_estimate,
            });
            return Ok(plan);
        }
        let src_cols =
            catalog::insertable_columns(con, schema.as_str(), self.table.as_str()).await?;
        let dst_cols = catalog::insertable_columns(con, ts.as_str(), self.table.as_str()).await?;
        let cols: Vec<Ident> = src_cols
            .iter()
            .filter(|c| dst_cols.contains(c))
            .map(|c| Ident::parse("column", c))
            .collect::<Result<_, _>>()
            .map_err(|e| {
                refused(format!(
                    "copy_to_tenant job: {e} (rename the column or copy with a sql job)"
                ))
            })?;
        if !cols.iter().any(|x| x == &self.key) {
            return Err(refused(format!(
                "copy_to_tenant job: {dst} has no column {}",
                self.key
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
            &self.key,
            &cols,
            &filter,
            self.delete_source,
        ));
        plan.parts.push(PartPlan {
            name: self.table.to_string(),
            statement,
            then_statement,
            mode: "exec",
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
        schema: &'a Ident,
    ) -> BoxFuture<'a, Result<(), ValidateError>> {
        Box::pin(self.validate_inner(con, schema))
    }

    fn plan<'a>(
        &'a self,
        con: &'a mut PgConnection,
        ctx: PlanCtx<'a>,
    ) -> BoxFuture<'a, Result<Plan, ValidateError>> {
        Box::pin(self.plan_inner(con, ctx))
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
