//! `fleetctl tenants usage [CODE] [--json]`: what each tenant takes up.
//!
//! Schema size is `pg_total_relation_size` over the schema's tables (heap, indexes, TOAST). Row
//! counts are the statistics collector's live-tuple estimates (`pg_stat_user_tables`), so the
//! command stays cheap on large tenants; they lag behind recent writes until autovacuum or
//! `ANALYZE` runs. The last lifecycle event comes from the audit trail (`fleet.tenant_events`)
//! where the control plane has one.
//!
//! The registry (`fleet.tenants`, configs, audit trail) is read on the control plane; sizes and
//! row counts on the database the registry names for each tenant (`fleet.tenants.database`).

use anyhow::Context as _;
use fleet_shared::databases::DatabasePools;
use fleet_shared::Code;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct TableRows {
    pub table: String,
    pub rows: i64,
}

#[derive(Debug, Serialize)]
pub struct LastEvent {
    pub event: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Serialize)]
pub struct Usage {
    pub code: String,
    pub status: String,
    /// The `[databases.<name>]` holding the schema.
    pub database: String,
    /// The tenant's own database on that server (`isolation = "database"`), if any.
    pub own_database: Option<String>,
    pub schema: String,
    pub schema_bytes: i64,
    pub rows: i64,
    pub tables: Vec<TableRows>,
    pub configs: i64,
    pub last_event: Option<LastEvent>,
}

pub async fn usage(pools: &DatabasePools, code: Option<&Code>) -> anyhow::Result<Vec<Usage>> {
    let pg = pools.control();
    type Row = (uuid::Uuid, String, String, String, String, Option<String>);
    let tenants: Vec<Row> = sqlx::query_as(
        "SELECT tenant_id, code, status, schema_name, database, own_database FROM fleet.tenants
          WHERE status <> 'deleted' AND ($1::text IS NULL OR code = $1) ORDER BY code",
    )
    .bind(code.map(Code::as_str))
    .fetch_all(pg)
    .await
    .context("Failed to read fleet.tenants")?;
    if let Some(c) = code {
        anyhow::ensure!(!tenants.is_empty(), "no tenant with code {c}");
    }
    let has_trail: bool =
        sqlx::query_scalar("SELECT to_regclass('fleet.tenant_events') IS NOT NULL")
            .fetch_one(pg)
            .await?;
    let mut out = Vec::new();
    for (tenant_id, code, status, schema, database, own) in tenants {
        let home = pools
            .tenant(&database, own.as_deref())
            .map_err(|e| anyhow::anyhow!("tenant {code}: {e}"))?;
        let schema_bytes: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relkind IN ('r', 'm')",
        )
        .bind(&schema)
        .fetch_one(&home)
        .await
        .with_context(|| format!("tenant {code}: cannot read database {database}"))?;
        let tables: Vec<TableRows> = sqlx::query_as::<_, (String, i64)>(
            "SELECT relname::text, n_live_tup FROM pg_stat_user_tables
              WHERE schemaname = $1 ORDER BY relname",
        )
        .bind(&schema)
        .fetch_all(&home)
        .await
        .with_context(|| format!("tenant {code}: cannot read database {database}"))?
        .into_iter()
        .map(|(table, rows)| TableRows { table, rows })
        .collect();
        let configs: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM fleet.tenant_configurations WHERE tenant_id = $1",
        )
        .bind(tenant_id)
        .fetch_one(pg)
        .await?;
        let last_event = if has_trail {
            sqlx::query_as::<_, (String, chrono::DateTime<chrono::Utc>)>(
                "SELECT event, at FROM fleet.tenant_events WHERE tenant_id = $1
                  ORDER BY id DESC LIMIT 1",
            )
            .bind(tenant_id)
            .fetch_optional(pg)
            .await
            .context("Failed to read fleet.tenant_events")?
            .map(|(event, at)| LastEvent { event, at })
        } else {
            None
        };
        out.push(Usage {
            code,
            status,
            database,
            own_database: own,
            schema,
            schema_bytes,
            rows: tables.iter().map(|t| t.rows).sum(),
            tables,
            configs,
            last_event,
        });
    }
    Ok(out)
}

/// `1.5 MiB`-style sizes.
pub fn human_bytes(b: i64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}
