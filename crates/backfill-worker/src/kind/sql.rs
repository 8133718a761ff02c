//! `sql`: an operator-written statement run over every chunk of one table's integer key
//! (docs/backfill.md#sql). Refused unless `FLEET_BACKFILL_ALLOW_SQL=1`. The statement is checked
//! by asking Postgres to *describe* it (parse and plan, no execution), so a typo or a missing
//! table is refused at submit rather than failing every chunk.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::{Executor as _, PgConnection};

use super::job::{CheckCtx, JobKind, PlanCtx};
use crate::error::SpecError;
use crate::ident::{qualified, Ident};
use crate::plan::{count_statement, estimate_rows, key_range, PartMode, PartPlan, Plan};
use crate::validate::{self, refused, ValidateError};

/// The wire form of a `sql` spec's own fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlSpec {
    pub table: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub statement: String,
}

pub const FIELDS: &[&str] = &["table", "key", "statement"];

#[derive(Debug, Clone, PartialEq)]
pub struct SqlJob {
    pub table: Ident,
    pub key: Ident,
    pub statement: String,
}

impl SqlJob {
    pub fn check(spec: &SqlSpec, allow_sql: bool) -> Result<SqlJob, SpecError> {
        let table = Ident::parse("table", &spec.table)?;
        let key = Ident::parse("key", spec.key.as_deref().unwrap_or("id"))?;
        check_bounds(&spec.statement)?;
        if !allow_sql {
            return Err(SpecError::SqlNotAllowed);
        }
        Ok(SqlJob {
            table,
            key,
            statement: spec.statement.clone(),
        })
    }

    async fn validate_inner(
        &self,
        con: &mut PgConnection,
        schema: &Ident,
    ) -> Result<(), ValidateError> {
        validate::require_table(con, schema, &self.table).await?;
        validate::check_key(con, schema, &self.table, &self.key).await?;
        let mut tx = sqlx::Connection::begin(&mut *con).await?;
        sqlx::query(&format!(
            "SET LOCAL search_path TO {}, public",
            schema.quoted()
        ))
        .execute(&mut *tx)
        .await?;
        let described = (&mut *tx).describe(&self.statement).await;
        tx.rollback().await?;
        if let Err(e) = described {
            return Err(match e {
                sqlx::Error::Database(db) => refused(format!(
                    "sql job: the statement does not compile: {}",
                    db.message()
                )),
                other => ValidateError::Db(other),
            });
        }
        Ok(())
    }

    async fn plan_inner(
        &self,
        con: &mut PgConnection,
        ctx: PlanCtx<'_>,
    ) -> Result<Plan, ValidateError> {
        self.validate_inner(con, ctx.schema).await?;
        let mut plan = Plan::default();
        let t = qualified(ctx.schema, &self.table);
        if let Some((lo, hi)) = key_range(con, &t, &self.key).await? {
            let (statement, mode) = if ctx.eff.dry_run {
                (count_statement(&t, &self.key, ""), PartMode::Count)
            } else {
                (self.statement.clone(), PartMode::Exec)
            };
            let rows_estimate = estimate_rows(con, &t, "").await?;
            plan.parts.push(PartPlan {
                name: self.table.to_string(),
                statement,
                then_statement: None,
                mode,
                lo,
                hi,
                rows_estimate,
            });
        }
        Ok(plan)
    }
}

impl JobKind for SqlJob {
    fn name(&self) -> &'static str {
        "sql"
    }

    fn runs_operator_sql(&self) -> bool {
        true
    }

    fn validate<'a>(
        &'a self,
        con: &'a mut PgConnection,
        ctx: CheckCtx<'a>,
    ) -> BoxFuture<'a, Result<(), ValidateError>> {
        Box::pin(self.validate_inner(con, ctx.schema))
    }

    fn plan<'a>(
        &'a self,
        con: &'a mut PgConnection,
        ctx: PlanCtx<'a>,
    ) -> BoxFuture<'a, Result<Plan, ValidateError>> {
        Box::pin(self.plan_inner(con, ctx))
    }

    /// The statement names its tables unqualified: the job's schema, then `public`.
    fn search_path(&self, schema: &Ident) -> Option<String> {
        Some(format!("{}, public", schema.quoted()))
    }
}

/// Checks that `statement` uses `$1` and `$2` and no other parameter.
pub fn check_bounds(statement: &str) -> Result<(), SpecError> {
    let b = statement.as_bytes();
    let (mut one, mut two) = (false, false);
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            let start = i + 1;
            let mut j = start;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            if j > start {
                match &statement[start..j] {
                    "1" => one = true,
                    "2" => two = true,
                    other => {
                        return Err(SpecError::Bounds(format!(
                            "${other} is not allowed (only $1 and $2)"
                        )))
                    }
                }
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    match (one, two) {
        (true, true) => Ok(()),
        (false, _) => Err(SpecError::Bounds("$1 is missing".into())),
        (_, false) => Err(SpecError::Bounds("$2 is missing".into())),
    }
}
