//! `fleetctl migrate verify`: drift across the fleet. Reports, never repairs.
//!
//! For every tenant that is not deleted it reads the schema's ledger and compares it with the
//! deployed files: an applied checksum that differs from its file, a version the set does not
//! have (migrated by newer code), a version missing below the highest applied one, a registry
//! `schema_version` that differs from the ledger, and tables that a `CREATE TABLE` in an applied
//! file made (and no later applied file dropped) but that are not in the schema. The findings
//! replace `fleet.tenant_drift`, which `migrate status` summarizes without reading schemas.
//! Each schema is read on the database the registry names for its tenant.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use fleet_shared::databases::DatabasePools;
use fleet_shared::migrate::Migration;
use serde::Serialize;
use uuid::Uuid;

use crate::output;

#[derive(Serialize)]
struct Finding {
    code: String,
    problems: Vec<String>,
}

/// Table names a file creates and drops (`CREATE TABLE [IF NOT EXISTS] x`, `DROP TABLE x, y`).
fn tables_of(sql: &str) -> (Vec<String>, Vec<String>) {
    let lower = sql.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| c.is_whitespace() || c == '(' || c == ';' || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    let mut created = Vec::new();
    let mut dropped = Vec::new();
    let mut i = 0;
    while i + 2 < words.len() {
        if words[i + 1] == "table" && (words[i] == "create" || words[i] == "drop") {
            let mut j = i + 2;
            while j < words.len() && ["if", "not", "exists"].contains(&words[j]) {
                j += 1;
            }
            if let Some(name) = words.get(j) {
                let name = name
                    .trim_matches('"')
                    .rsplit('.')
                    .next()
                    .unwrap_or("")
                    .to_owned();
                if words[i] == "create" {
                    created.push(name);
                } else {
                    dropped.push(name);
                }
            }
            i = j;
        }
        i += 1;
    }
    (created, dropped)
}

pub async fn run(pools: &DatabasePools, set: &[Migration], json: bool) -> anyhow::Result<()> {
    let pg = pools.control();
    let by_version: BTreeMap<i64, &Migration> = set.iter().map(|m| (m.version, m)).collect();
    type Row = (Uuid, String, String, i64, String, Option<String>);
    let tenants: Vec<Row> = sqlx::query_as(
        "SELECT tenant_id, code, schema_name, schema_version, database, own_database FROM fleet.tenants
          WHERE status <> 'deleted' ORDER BY code",
    )
    .fetch_all(pg)
    .await
    .context("Failed to read fleet.tenants")?;
    let mut findings = Vec::new();
    for (_, code, schema, registry, database, own) in &tenants {
        let mut problems = Vec::new();
        // The schema is on the database the registry names for the tenant.
        let pg = &pools
            .tenant(database, own.as_deref())
            .map_err(|e| anyhow::anyhow!("tenant {code}: {e}"))?;
        // The schema name is the one the provisioner wrote from a validated code.
        let ledger: Result<Vec<(i64, String)>, _> = sqlx::query_as(&format!(
            "SELECT version, checksum FROM \"{}\".schema_migrations ORDER BY version",
            schema.replace('"', "")
        ))
        .fetch_all(pg)
        .await;
        let ledger = match ledger {
            Ok(l) => l,
            Err(e) => {
                problems.push(format!(
                    "ledger unreadable: {}",
                    fleet_shared::errors::one_line(&e.to_string())
                ));
                findings.push(Finding {
                    code: code.clone(),
                    problems,
                });
                continue;
            }
        };
        let top = ledger.last().map(|r| r.0).unwrap_or(0);
        if top != *registry {
            problems.push(format!(
                "registry says version {registry}, ledger says {top}"
            ));
        }
        let applied: BTreeSet<i64> = ledger.iter().map(|r| r.0).collect();
        for m in set
            .iter()
            .filter(|m| m.version < top && !applied.contains(&m.version))
        {
            problems.push(format!(
                "{} missing from the ledger below version {top}",
                m.file
            ));
        }
        let mut expect: BTreeSet<String> = BTreeSet::new();
        for (v, sum) in &ledger {
            match by_version.get(v) {
                None => problems.push(format!(
                    "version {v} is not in the deployed set (migrated by newer code?)"
                )),
                Some(m) => {
                    if m.checksum != *sum {
                        problems.push(format!(
                            "{} checksum {} applied, {} deployed",
                            m.file,
                            &sum[..12.min(sum.len())],
                            &m.checksum[..12]
                        ));
                    }
                    let (created, dropped) = tables_of(&m.sql);
                    expect.extend(created);
                    for d in dropped {
                        expect.remove(&d);
                    }
                }
            }
        }
        let have: BTreeSet<String> =
            sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = $1")
                .bind(schema)
                .fetch_all(pg)
                .await
                .context("Failed to read the tenant tables")?
                .into_iter()
                .collect();
        let missing: Vec<&String> = expect.iter().filter(|t| !have.contains(*t)).collect();
        if !missing.is_empty() {
            problems.push(format!(
                "tables the ledger says exist are missing: {}",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if !problems.is_empty() {
            findings.push(Finding {
                code: code.clone(),
                problems,
            });
        }
    }
    // Record the report (replacing the last one) for `migrate status`.
    let mut tx = pg.begin().await?;
    sqlx::query("DELETE FROM fleet.tenant_drift")
        .execute(&mut *tx)
        .await?;
    let ids: BTreeMap<&str, Uuid> = tenants.iter().map(|t| (t.1.as_str(), t.0)).collect();
    for f in &findings {
        sqlx::query(
            "INSERT INTO fleet.tenant_drift (tenant_id, code, problems) VALUES ($1, $2, $3)",
        )
        .bind(ids[f.code.as_str()])
        .bind(&f.code)
        .bind(f.problems.join("; "))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit()
        .await
        .context("Failed to record the verify report")?;
    if json {
        return output::print_json(&serde_json::json!({
            "tenants_checked": tenants.len(), "drift": findings,
        }));
    }
    outln!(
        "verified {} tenants against {} deployed files: {}",
        tenants.len(),
        set.len(),
        if findings.is_empty() {
            "no drift".to_owned()
        } else {
            format!("{} with drift", findings.len())
        }
    );
    for f in &findings {
        for p in &f.problems {
            outln!("  {}: {p}", f.code);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_created_and_dropped_tables() {
        let (c, d) = super::tables_of(
            "CREATE TABLE IF NOT EXISTS a (id int); create table \"b\"(x int);\nDROP TABLE c, d;",
        );
        assert_eq!(c, ["a", "b"]);
        assert_eq!(d, ["c"]);
    }
}
