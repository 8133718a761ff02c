//! What a tenant schema holds, read from the Postgres catalog, and identifier quoting.
//!
//! Table and column names come from `pg_class`/`pg_attribute`, never from user input, and are
//! always spliced through [`quote_ident`], so an odd name (a quote, a space, upper case) is an
//! identifier and never SQL.

use anyhow::Context as _;
use sqlx::PgConnection;

/// `"name"` with embedded quotes doubled: always a single identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"schema"."name"`.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// Whether the schema exists.
pub async fn schema_exists(con: &mut PgConnection, schema: &str) -> anyhow::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(&mut *con)
        .await
        .context("Failed to read pg_namespace")
}

/// The ordinary tables (partitions included, partitioned parents excluded: their rows live in
/// the partitions) of `schema`, by name.
pub async fn tables(con: &mut PgConnection, schema: &str) -> anyhow::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY c.relname",
    )
    .bind(schema)
    .fetch_all(&mut *con)
    .await
    .context("Failed to list the schema's tables")
}

/// The stored (not generated, not dropped) columns of a table, in order.
pub async fn columns(
    con: &mut PgConnection,
    schema: &str,
    table: &str,
) -> anyhow::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_attribute a
           JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
            AND a.attgenerated = ''
          ORDER BY a.attnum",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(&mut *con)
    .await
    .with_context(|| format!("Failed to list the columns of {schema}.{table}"))
}

/// The tables of `schema` that have a column named `column`.
pub async fn tables_with_column(
    con: &mut PgConnection,
    schema: &str,
    column: &str,
) -> anyhow::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_attribute a
           JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = $1 AND c.relkind = 'r' AND a.attname = $2 AND a.attnum > 0
            AND NOT a.attisdropped
          ORDER BY c.relname",
    )
    .bind(schema)
    .bind(column)
    .fetch_all(&mut *con)
    .await
    .with_context(|| format!("Failed to find the tables of {schema} with {column}"))
}

/// The sequences of `schema`, by name.
pub async fn sequences(con: &mut PgConnection, schema: &str) -> anyhow::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = $1 AND c.relkind = 'S' ORDER BY c.relname",
    )
    .bind(schema)
    .fetch_all(&mut *con)
    .await
    .context("Failed to list the schema's sequences")
}

/// The columns of a control-plane table (`fleet.<table>`), to insert a bundle's JSON rows by
/// name whatever columns either side has grown.
pub async fn fleet_columns(con: &mut PgConnection, table: &str) -> anyhow::Result<Vec<String>> {
    columns(con, "fleet", table).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_makes_one_identifier() {
        assert_eq!(quote_ident("a"), "\"a\"");
        assert_eq!(quote_ident("a\"; DROP"), "\"a\"\"; DROP\"");
        assert_eq!(qualified("s", "t"), "\"s\".\"t\"");
    }
}
