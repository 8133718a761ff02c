//! The two databases of a move and the schema between them: their configuration, a small pool
//! on each, and the catalog reads both sides need. Identifiers come from the catalog or from a
//! validated [`Code`]; they are spliced only through [`quote_ident`], and the one literal that
//! must be spliced (a subscription's connection string) through [`quote_literal`].

use anyhow::Context as _;
use fleet_shared::databases::DatabaseConfig;
use fleet_shared::secret::SecretUrl;
use fleet_shared::Code;
use sqlx::PgPool;

use super::super::catalog::{qualified, quote_ident};

/// Connections per side: the cut-over holds one on the source and polls with another.
const POOL_CONNECTIONS: u32 = 4;

pub struct Sides {
    pub code: Code,
    /// `tenant_<code>`, the same on both sides.
    pub schema: String,
    pub source: DatabaseConfig,
    pub target: DatabaseConfig,
    pub source_pg: PgPool,
    pub target_pg: PgPool,
}

impl Sides {
    pub fn new(
        code: Code,
        source: DatabaseConfig,
        target: DatabaseConfig,
    ) -> anyhow::Result<Sides> {
        let source_pg = fleet_shared::db::lazy_pool(&source.url, POOL_CONNECTIONS)?;
        let target_pg = fleet_shared::db::lazy_pool(&target.url, POOL_CONNECTIONS)?;
        Ok(Sides {
            schema: code.schema_name(),
            code,
            source,
            target,
            source_pg,
            target_pg,
        })
    }

    pub fn source_url(&self) -> &SecretUrl {
        &self.source.url
    }

    /// `"tenant_<code>"`
    pub fn quoted_schema(&self) -> String {
        quote_ident(&self.schema)
    }

    /// `"tenant_<code>"."<table>"`
    pub fn table(&self, table: &str) -> String {
        qualified(&self.schema, table)
    }
}

/// `'text'` with embedded quotes doubled (standard-conforming strings, the default since 9.1).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The ordinary tables of `schema` on `pg`, by name.
pub async fn tables(pg: &PgPool, schema: &str) -> anyhow::Result<Vec<String>> {
    let mut con = pg.acquire().await.context("Failed to connect")?;
    super::super::catalog::tables(&mut con, schema).await
}

/// Whether `schema` exists on `pg`.
pub async fn schema_exists(pg: &PgPool, schema: &str) -> anyhow::Result<bool> {
    let mut con = pg.acquire().await.context("Failed to connect")?;
    super::super::catalog::schema_exists(&mut con, schema).await
}

/// The comment a move leaves on the schema it creates on the target, so that a re-run or an
/// abort knows the schema is its own (and never drops one it did not create).
pub fn ownership_comment(move_id: uuid::Uuid) -> String {
    format!("created by fleet tenant move {move_id}")
}

/// The comment on `schema`, if the schema exists (`Some(None)`: it exists without one).
pub async fn schema_comment(pg: &PgPool, schema: &str) -> anyhow::Result<Option<Option<String>>> {
    let row: Option<(Option<String>,)> = sqlx::query_as(
        "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = $1",
    )
    .bind(schema)
    .fetch_optional(pg)
    .await
    .context("Failed to read pg_namespace")?;
    Ok(row.map(|(c,)| c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_one_string() {
        assert_eq!(quote_literal("a"), "'a'");
        assert_eq!(
            quote_literal("host=x password='; DROP"),
            "'host=x password=''; DROP'"
        );
    }
}
