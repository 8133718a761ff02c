//! What a table on the target looks like to finalize: its code columns, primary key, foreign
//! keys and indexes, read from `pg_catalog`. Every step looks here before it acts, which is what
//! makes a step idempotent: run twice (or again after a crash) it finds its work done, or half
//! done, and carries on from there.

use sqlx::PgConnection;

use crate::ident::{literal, qualified, Ident};

/// A foreign key, as the catalog has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    pub name: String,
    pub child_schema: String,
    pub child: String,
    pub child_columns: Vec<String>,
    pub parent_schema: String,
    pub parent: String,
    pub parent_columns: Vec<String>,
    /// `pg_constraint.confupdtype` / `confdeltype`: a, r, c, n, d.
    pub on_update: String,
    pub on_delete: String,
    /// `pg_constraint.confmatchtype`: f (full), s (simple).
    pub match_type: String,
    pub deferrable: bool,
    pub deferred: bool,
    pub validated: bool,
}

/// `'"schema"."table"'::regclass`, from checked identifiers only.
pub fn regclass(schema: &Ident, table: &Ident) -> String {
    format!("{}::regclass", literal(&qualified(schema, table)))
}

/// Whether the column exists, and whether it is `NOT NULL`.
pub async fn column_not_null(
    con: &mut PgConnection,
    schema: &Ident,
    table: &Ident,
    column: &str,
) -> sqlx::Result<Option<bool>> {
    sqlx::query_scalar(&format!(
        "SELECT attnotnull FROM pg_attribute WHERE attrelid = {} AND attname = $1 AND NOT attisdropped AND attnum > 0",
        regclass(schema, table)
    ))
    .bind(column)
    .fetch_optional(con)
    .await
}

/// The primary key's name and columns (in key order).
pub async fn primary_key(
    con: &mut PgConnection,
    schema: &Ident,
    table: &Ident,
) -> sqlx::Result<Option<(String, Vec<String>)>> {
    sqlx::query_as(&format!(
        "SELECT c.conname::text,
                ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, o)
                      JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.o)
         FROM pg_constraint c WHERE c.conrelid = {} AND c.contype = 'p'",
        regclass(schema, table)
    ))
    .fetch_optional(con)
    .await
}

/// Whether the table has a constraint of that name.
pub async fn has_constraint(
    con: &mut PgConnection,
    schema: &Ident,
    table: &Ident,
    name: &Ident,
) -> sqlx::Result<bool> {
    sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = {} AND conname = $1)",
        regclass(schema, table)
    ))
    .bind(name.as_str())
    .fetch_one(con)
    .await
}

/// The backend still building the index of that name (`pg_stat_progress_create_index`), if any:
/// an INVALID index is a leftover only once nobody builds it.
pub async fn index_builder(
    con: &mut PgConnection,
    schema: &Ident,
    name: &Ident,
) -> sqlx::Result<Option<i32>> {
    sqlx::query_scalar(
        "SELECT p.pid FROM pg_stat_progress_create_index p JOIN pg_class c ON c.oid = p.index_relid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relname = $2 AND p.pid <> pg_backend_pid() LIMIT 1",
    )
    .bind(schema.as_str())
    .bind(name.as_str())
    .fetch_optional(con)
    .await
}

/// `Some(valid)` when an index of that name exists in the schema (an invalid one is what a
/// `CREATE INDEX CONCURRENTLY` leaves behind when it is interrupted).
pub async fn index_valid(
    con: &mut PgConnection,
    schema: &Ident,
    name: &Ident,
) -> sqlx::Result<Option<bool>> {
    sqlx::query_scalar(
        "SELECT i.indisvalid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
    )
    .bind(schema.as_str())
    .bind(name.as_str())
    .fetch_optional(con)
    .await
}

/// A valid, non-partial index whose first column is `column`, if any (its name).
pub async fn index_leading_with(
    con: &mut PgConnection,
    schema: &Ident,
    table: &Ident,
    column: &str,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(&format!(
        "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
         WHERE i.indrelid = {} AND i.indisvalid AND i.indpred IS NULL AND a.attname = $1
         ORDER BY i.indisprimary DESC, c.relname LIMIT 1",
        regclass(schema, table)
    ))
    .bind(column)
    .fetch_optional(con)
    .await
}

const FK_SELECT: &str = "SELECT c.conname::text, cn.nspname::text, cl.relname::text,
        ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, o)
              JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.o),
        pn.nspname::text, pl.relname::text,
        ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(n, o)
              JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.o),
        c.confupdtype::text, c.confdeltype::text, c.confmatchtype::text,
        c.condeferrable, c.condeferred, c.convalidated
    FROM pg_constraint c
    JOIN pg_class cl ON cl.oid = c.conrelid JOIN pg_namespace cn ON cn.oid = cl.relnamespace
    JOIN pg_class pl ON pl.oid = c.confrelid JOIN pg_namespace pn ON pn.oid = pl.relnamespace
    WHERE c.contype = 'f'";

type FkRow = (
    String,
    String,
    String,
    Vec<String>,
    String,
    String,
    Vec<String>,
    String,
    String,
    String,
    bool,
    bool,
    bool,
);

fn fk(r: FkRow) -> ForeignKey {
    ForeignKey {
        name: r.0,
        child_schema: r.1,
        child: r.2,
        child_columns: r.3,
        parent_schema: r.4,
        parent: r.5,
        parent_columns: r.6,
        on_update: r.7,
        on_delete: r.8,
        match_type: r.9,
        deferrable: r.10,
        deferred: r.11,
        validated: r.12,
    }
}

/// Foreign keys that reference the table.
pub async fn referencing(
    con: &mut PgConnection,
    schema: &Ident,
    table: &Ident,
) -> sqlx::Result<Vec<ForeignKey>> {
    let rows: Vec<FkRow> = sqlx::query_as(&format!(
        "{FK_SELECT} AND c.confrelid = {} ORDER BY c.conname",
        regclass(schema, table)
    ))
    .fetch_all(con)
    .await?;
    Ok(rows.into_iter().map(fk).collect())
}

/// The table's own foreign keys.
pub async fn foreign_keys_of(
    con: &mut PgConnection,
    schema: &Ident,
    table: &Ident,
) -> sqlx::Result<Vec<ForeignKey>> {
    let rows: Vec<FkRow> = sqlx::query_as(&format!(
        "{FK_SELECT} AND c.conrelid = {} ORDER BY c.conname",
        regclass(schema, table)
    ))
    .fetch_all(con)
    .await?;
    Ok(rows.into_iter().map(fk).collect())
}

/// Rows with a NULL in `column`.
pub async fn nulls(
    con: &mut PgConnection,
    schema: &Ident,
    table: &Ident,
    column: &str,
) -> sqlx::Result<i64> {
    let col = Ident::parse("column", column).map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {} WHERE {} IS NULL",
        qualified(schema, table),
        col.quoted()
    ))
    .fetch_one(con)
    .await
}

pub async fn citus_installed(con: &mut PgConnection) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')")
        .fetch_one(con)
        .await
}

pub async fn citus_distributed(
    con: &mut PgConnection,
    schema: &Ident,
    table: &Ident,
) -> sqlx::Result<bool> {
    sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = {})",
        regclass(schema, table)
    ))
    .fetch_one(con)
    .await
}
