//! `fleetctl tenants verify CODE|--all`: the isolation check.
//!
//! Every table of a tenant's schema that has a `tenant_code` column must hold only rows whose
//! `tenant_code` is that tenant's code; a row with another code or with none (NULL) is an
//! offender. Tables and schemas come from the catalog and are quoted; the code is a bound value.
//! Each check is one `GROUP BY` per table, so a report names every foreign code with its count.
//! Each tenant's tables are read on the database the registry names (`fleet.tenants.database`).

use anyhow::Context as _;
use fleet_shared::databases::DatabasePools;
use fleet_shared::Code;
use serde::Serialize;

use super::catalog::{self, qualified};

#[derive(Debug, Serialize)]
pub struct Offender {
    pub code: String,
    pub schema: String,
    pub table: String,
    /// The foreign `tenant_code` (`null` when the column is NULL).
    pub tenant_code: Option<String>,
    pub rows: i64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub tenants: usize,
    pub tables_checked: usize,
    pub offenders: Vec<Offender>,
}

/// A tenant to check: its code, schema and the database holding it.
#[derive(Debug, Clone)]
pub struct Target {
    pub code: Code,
    pub schema: String,
    pub database: String,
    /// Its own database on that server (`isolation = "database"`), if any.
    pub own_database: Option<String>,
}

/// Checks `tenants` and returns every offending (table, code) pair.
pub async fn verify(pools: &DatabasePools, tenants: &[Target]) -> anyhow::Result<Report> {
    let mut report = Report {
        tenants: tenants.len(),
        tables_checked: 0,
        offenders: Vec::new(),
    };
    for Target {
        code,
        schema,
        database,
        own_database,
    } in tenants
    {
        let pg = pools
            .tenant(database, own_database.as_deref())
            .map_err(|e| anyhow::anyhow!("tenant {code}: {e}"))?;
        let mut con = pg
            .acquire()
            .await
            .with_context(|| format!("tenant {code}: cannot connect to database {database}"))?;
        for table in catalog::tables_with_column(&mut con, schema, "tenant_code").await? {
            report.tables_checked += 1;
            let rows: Vec<(Option<String>, i64)> = sqlx::query_as(&format!(
                "SELECT tenant_code::text, count(*) FROM {} WHERE tenant_code IS DISTINCT FROM $1
                  GROUP BY 1 ORDER BY 2 DESC, 1",
                qualified(schema, &table)
            ))
            .bind(code.as_str())
            .fetch_all(&mut *con)
            .await
            .with_context(|| format!("Failed to check {schema}.{table}"))?;
            for (tenant_code, n) in rows {
                report.offenders.push(Offender {
                    code: code.to_string(),
                    schema: schema.clone(),
                    table: table.clone(),
                    tenant_code,
                    rows: n,
                });
            }
        }
    }
    Ok(report)
}

/// The tenants to check: one code, or every live tenant whose schema exists on its database.
pub async fn targets(pools: &DatabasePools, code: Option<&Code>) -> anyhow::Result<Vec<Target>> {
    let rows: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT t.code, t.schema_name, t.database, t.own_database FROM fleet.tenants t
          WHERE t.status <> 'deleted' AND ($1::text IS NULL OR t.code = $1)
          ORDER BY t.code",
    )
    .bind(code.map(Code::as_str))
    .fetch_all(pools.control())
    .await
    .context("Failed to read fleet.tenants")?;
    let mut out = Vec::new();
    for (c, schema, database, own_database) in rows {
        let code = Code::parse(&c)?;
        let pg = pools
            .tenant(&database, own_database.as_deref())
            .map_err(|e| anyhow::anyhow!("tenant {code}: {e}"))?;
        let mut con = pg
            .acquire()
            .await
            .with_context(|| format!("tenant {code}: cannot connect to database {database}"))?;
        if catalog::schema_exists(&mut con, &schema).await? {
            out.push(Target {
                code,
                schema,
                database,
                own_database,
            });
        }
    }
    if let Some(c) = code {
        anyhow::ensure!(
            !out.is_empty(),
            "no tenant with code {c} (or its schema is missing)"
        );
    }
    Ok(out)
}
