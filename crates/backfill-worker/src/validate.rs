//! The catalog checks every kind's validation (`JobKind::validate`) is made of:
//! a spec is checked against the target database before a job is created (at submit) and again
//! when it is planned (the schema may have changed in between).
//!
//! A refused spec creates nothing: the reason goes to the submitter (CLI stderr, or the dead
//! letter of a `backfill.submit`).

use sqlx::PgConnection;

use crate::catalog;
use crate::ident::Ident;

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// The spec does not fit the database: never retried.
    #[error("{0}")]
    Refused(String),
    /// The database failed: retry later.
    #[error("Failed to check the spec against the database: {0}")]
    Db(#[from] sqlx::Error),
}

pub fn refused(s: impl Into<String>) -> ValidateError {
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

pub async fn check_column(
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

pub async fn require_table(
    con: &mut PgConnection,
    schema: &Ident,
    table: &Ident,
) -> Result<(), ValidateError> {
    if !catalog::table_exists(con, schema, table).await? {
        return Err(refused(format!("table {schema}.{table} does not exist")));
    }
    Ok(())
}

/// A column name known at compile time.
pub fn ident(s: &str) -> Ident {
    Ident::parse("column", s).expect("static identifier")
}
