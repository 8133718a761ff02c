//! `fleetctl tenants health CODE`: the tenant service's health answer,
//! `{"status", "checks", "lastChecked"}`, for one tenant.
//!
//! Checks (each `true` when fine): `schema` (the tenant's schema exists), `version` (the
//! registry's schema version is the latest of this fleet's migration set, and the ledger agrees),
//! `drift` (every applied migration's checksum matches its file, and the ledger holds no version
//! the set lacks), `redis` (`REDIS_URL` answers `PING` within 2 s). `status` is `healthy` when
//! all pass, `degraded` when only Redis fails, else `unhealthy`; `details` says why for each
//! failing check.
//!
//! The registry row is read on the control plane, the schema and its ledger on the database the
//! registry names (`fleet.tenants.database`); a tenant database that cannot be reached fails the
//! `schema` check with the reason instead of failing the command.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_shared::databases::DatabasePools;
use fleet_shared::migrate::{latest_version, Migration};
use fleet_shared::redis_target::RedisTarget;
use fleet_shared::Code;
use serde::Serialize;

use super::catalog::qualified;

#[derive(Debug, Serialize)]
pub struct Health {
    pub tenant: String,
    pub status: &'static str,
    pub checks: BTreeMap<&'static str, bool>,
    pub details: BTreeMap<&'static str, String>,
    #[serde(rename = "lastChecked")]
    pub last_checked: chrono::DateTime<chrono::Utc>,
}

pub async fn health(
    pools: &DatabasePools,
    redis: &RedisTarget,
    migrations: &[Migration],
    code: &Code,
) -> anyhow::Result<Health> {
    let row: Option<(String, i64, String, Option<String>)> = sqlx::query_as(
        "SELECT schema_name, schema_version, database, own_database FROM fleet.tenants WHERE code = $1 AND status <> 'deleted'",
    )
    .bind(code.as_str())
    .fetch_optional(pools.control())
    .await?;
    let (schema, version, database, own) =
        row.ok_or_else(|| anyhow::anyhow!("no tenant with code {code}"))?;
    let pg = pools
        .tenant(&database, own.as_deref())
        .map_err(|e| anyhow::anyhow!("tenant {code}: {e}"))?;
    let pg = &pg;
    let mut checks = BTreeMap::new();
    let mut details = BTreeMap::new();

    let exists = sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
    )
    .bind(&schema)
    .fetch_one(pg)
    .await;
    let exists = match exists {
        Ok(e) => {
            if !e {
                details.insert(
                    "schema",
                    format!("schema {schema} does not exist on database {database}"),
                );
            }
            e
        }
        Err(e) => {
            details.insert(
                "schema",
                fleet_shared::errors::one_line(&format!("database {database} unavailable: {e}")),
            );
            false
        }
    };
    checks.insert("schema", exists);

    let ledger: Vec<(i64, String)> = if exists {
        sqlx::query_as(&format!(
            "SELECT version, checksum FROM {} ORDER BY version",
            qualified(&schema, "schema_migrations")
        ))
        .fetch_all(pg)
        .await
        .unwrap_or_default()
    } else {
        Vec::new()
    };
    let latest = latest_version(migrations);
    let applied = ledger.iter().map(|(v, _)| *v).max().unwrap_or(0);
    let version_ok = exists && version == latest && applied == version;
    checks.insert("version", version_ok);
    if !version_ok && exists {
        details.insert(
            "version",
            format!("registry says {version}, ledger {applied}, latest migration {latest}"),
        );
    }

    let by_version: BTreeMap<i64, &Migration> = migrations.iter().map(|m| (m.version, m)).collect();
    let mut drift = Vec::new();
    for (v, sum) in &ledger {
        match by_version.get(v) {
            Some(m) if m.checksum == *sum => {}
            Some(m) => drift.push(format!("{} changed after it was applied", m.file)),
            None => drift.push(format!(
                "version {v} is applied but not in the migration set"
            )),
        }
    }
    checks.insert("drift", exists && drift.is_empty());
    if !drift.is_empty() {
        details.insert("drift", drift.join("; "));
    }

    let redis = redis.ping(Duration::from_secs(2)).await;
    checks.insert("redis", redis.is_ok());
    if let Err(e) = redis {
        details.insert("redis", fleet_shared::errors::one_line(&format!("{e:#}")));
    }

    let status = if checks.values().all(|ok| *ok) {
        "healthy"
    } else if checks.iter().all(|(k, ok)| *ok || *k == "redis") {
        "degraded"
    } else {
        "unhealthy"
    };
    Ok(Health {
        tenant: code.to_string(),
        status,
        checks,
        details,
        last_checked: chrono::Utc::now(),
    })
}
