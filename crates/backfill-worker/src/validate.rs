//! Checks a parsed spec against the target database before a job is created (at submit) and
//! again when it is planned (the schema may have changed in between).
//!
//! A refused spec creates nothing: the reason goes to the submitter (CLI stderr, or the dead
//! letter of a `backfill.submit`). A `sql` statement is checked by asking Postgres to *describe*
//! it (parse and plan, no execution), so a typo or a missing table is refused at submit rather
//! than failing every chunk.

use futures::future::BoxFuture;
use sqlx::{Executor as _, PgConnection};

use crate::catalog;
use crate::ident::Ident;
use crate::spec::{JobSpec, Kind, Link};

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// The spec does not fit the database: never retried.
    #[error("{0}")]
    Refused(String),
    /// The database failed: retry later.
    #[error("Failed to check the spec against the database: {0}")]
    Db(#[from] sqlx::Error),
}

fn refused(s: impl Into<String>) -> ValidateError {
    ValidateError::Refused(fleet_shared::errors::one_line(&s.into()))
}

/// The integer key column must exist.
pub async fn check_key(
    con: &mut PgConnection,
    schema: &Ident,
    table: &Ident,
    key: &Ident,
) -> Result<(), ValidateError> {
    match catalog::column_type(con, schema, table, key).await? {
        None => Err(refused(format!("key column {table}.{key} does not exist"))),
        Some(t) if !catalog::is_integer(&t) => Err(refused(format!(
            "key column {table}.{key} is {t}; keyset chunks need an integer key (smallint, integer, bigint)"
        ))),
        Some(_) => Ok(()),
    }
}

async fn check_column(
    con: &mut PgConnection,
    schema: &Ident,
    table: &Ident,
    col: &Ident,
) -> Result<(), ValidateError> {
    if catalog::column_type(con, schema, table, col)
        .await?
        .is_none()
    {
        return Err(refused(format!("column {table}.{col} does not exist")));
    }
    Ok(())
}

async fn require_table(
    con: &mut PgConnection,
    schema: &Ident,
    table: &Ident,
) -> Result<(), ValidateError> {
    if !catalog::table_exists(con, schema, table).await? {
        return Err(refused(format!("table {schema}.{table} does not exist")));
    }
    Ok(())
}

pub fn users_table() -> Ident {
    Ident::parse("table", "user_extensions").expect("static identifier")
}
pub fn sessions_table() -> Ident {
    Ident::parse("table", "sessions").expect("static identifier")
}
pub fn ident(s: &str) -> Ident {
    Ident::parse("column", s).expect("static identifier")
}

/// Checks `spec` against the database `con` is connected to. Missing `tenant_codes` tables are
/// not an error (they are reported as skipped when the job runs); everything else missing is.
pub fn check<'a>(
    con: &'a mut PgConnection,
    spec: &'a JobSpec,
) -> BoxFuture<'a, Result<(), ValidateError>> {
    Box::pin(check_inner(con, spec))
}

async fn check_inner(con: &mut PgConnection, spec: &JobSpec) -> Result<(), ValidateError> {
    let schema = &spec.schema;
    match &spec.kind {
        Kind::Sql(s) => {
            require_table(con, schema, &s.table).await?;
            check_key(con, schema, &s.table, &s.key).await?;
            let mut tx = sqlx::Connection::begin(&mut *con).await?;
            sqlx::query(&format!(
                "SET LOCAL search_path TO {}, public",
                schema.quoted()
            ))
            .execute(&mut *tx)
            .await?;
            let described = (&mut *tx).describe(&s.statement).await;
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
        }
        Kind::TenantCodes(t) => {
            let users = users_table();
            let needs_users = !t.user_tables.is_empty();
            if needs_users {
                require_table(con, schema, &users).await.map_err(|e| {
                    refused(format!(
                        "tenant_codes job: user_tables are linked through user_extensions: {e}"
                    ))
                })?;
                check_column(con, schema, &users, &ident("user_id")).await?;
                check_column(con, schema, &users, &ident("organization_id")).await?;
            }
            if t.user_tables
                .iter()
                .any(|u| matches!(u.link, Link::Session(_)))
            {
                let sessions = sessions_table();
                require_table(con, schema, &sessions).await?;
                check_column(con, schema, &sessions, &ident("id")).await?;
                check_column(con, schema, &sessions, &ident("created_by")).await?;
            }
            for o in &t.org_tables {
                if catalog::table_exists(con, schema, &o.table).await? {
                    check_key(con, schema, &o.table, &o.key).await?;
                    check_column(con, schema, &o.table, &o.org_column).await?;
                }
            }
            for u in &t.user_tables {
                if catalog::table_exists(con, schema, &u.table).await? {
                    check_key(con, schema, &u.table, &u.key).await?;
                    let col = match &u.link {
                        Link::User(c) | Link::Session(c) => c,
                    };
                    check_column(con, schema, &u.table, col).await?;
                }
            }
        }
        Kind::CopyToTenant(c) => {
            require_table(con, schema, &c.table).await?;
            check_key(con, schema, &c.table, &c.key).await?;
            check_column(con, schema, &c.table, &c.tenant_column).await?;
            let target_schema = c.tenant_code.schema_name();
            if !catalog::schema_exists(con, &target_schema).await? {
                return Err(refused(format!(
                    "copy_to_tenant job: schema {target_schema} does not exist (provision tenant {} first)",
                    c.tenant_code
                )));
            }
            let ts = Ident::parse("schema", &target_schema).map_err(|e| refused(e.to_string()))?;
            if catalog::table_exists(con, &ts, &c.table).await? {
                if !catalog::unique_on(con, &target_schema, c.table.as_str(), c.key.as_str())
                    .await?
                {
                    return Err(refused(format!(
                        "copy_to_tenant job: {target_schema}.{} has no unique index on {}; a re-run could not skip copied rows",
                        c.table, c.key
                    )));
                }
            } else if !c.create_target {
                return Err(refused(format!(
                    "copy_to_tenant job: {target_schema}.{} does not exist and create_target is false",
                    c.table
                )));
            }
        }
    }
    Ok(())
}
