//! What the target database has: tables, columns, their types and unique indexes, read from
//! `information_schema` / `pg_catalog`. Specs name tables; these lookups decide whether the
//! names are real before any SQL that uses them is built.

use sqlx::PgConnection;

use crate::ident::Ident;

pub async fn table_exists(
    con: &mut PgConnection,
    schema: &Ident,
    table: &Ident,
) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.tables
                        WHERE table_schema = $1 AND table_name = $2 AND table_type = 'BASE TABLE')",
    )
    .bind(schema.as_str())
    .bind(table.as_str())
    .fetch_one(con)
    .await
}

pub async fn schema_exists(con: &mut PgConnection, schema: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(con)
        .await
}

/// The column's `data_type`, or `None` when the column does not exist.
pub async fn column_type(
    con: &mut PgConnection,
    schema: &Ident,
    table: &Ident,
    column: &Ident,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "SELECT data_type::text FROM information_schema.columns
         WHERE table_schema = $1 AND table_name = $2 AND column_name = $3",
    )
    .bind(schema.as_str())
    .bind(table.as_str())
    .bind(column.as_str())
    .fetch_optional(con)
    .await
}

/// Insertable columns (not generated), in table order.
pub async fn insertable_columns(
    con: &mut PgConnection,
    schema: &str,
    table: &str,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns
         WHERE table_schema = $1 AND table_name = $2 AND is_generated = 'NEVER'
         ORDER BY ordinal_position",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(con)
    .await
}

/// Whether a unique index (or primary key) covers exactly `column`.
pub async fn unique_on(
    con: &mut PgConnection,
    schema: &str,
    table: &str,
    column: &str,
) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (
            SELECT 1 FROM pg_index i
            JOIN pg_class c ON c.oid = i.indrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
            WHERE n.nspname = $1 AND c.relname = $2 AND i.indisunique
              AND i.indnatts = 1 AND a.attname = $3 AND i.indpred IS NULL)",
    )
    .bind(schema)
    .bind(table)
    .bind(column)
    .fetch_one(con)
    .await
}

pub fn is_integer(data_type: &str) -> bool {
    matches!(data_type, "smallint" | "integer" | "bigint")
}
