//! `fleetctl tenants export | import | verify | usage | health`: moving a tenant, and looking at
//! one. Each command's work lives in its own module; this file parses and prints.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use fleet_shared::databases::DatabasePools;
use fleet_shared::{Code, Settings};
use sqlx::PgPool;

use crate::output;

#[derive(Subcommand)]
pub enum Cmd {
    /// Export a tenant as a bundle: DDL (pg_dump), every table (COPY), registry row, configs,
    /// ledger and a manifest with row counts and SHA-256 checksums
    Export {
        code: String,
        /// Directory to create (must not exist, or be empty)
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore a bundle as a new tenant, all or nothing, after checking every checksum
    Import {
        dir: PathBuf,
        /// Clone under this code (fresh tenant_id; tenant_code columns rewritten). Without it the
        /// tenant keeps its code and tenant_id (a move to another server)
        #[arg(long)]
        code: Option<String>,
        /// Also move the clone to this organisation (org_code and organization_code columns)
        #[arg(long = "org-code")]
        org_code: Option<String>,
        /// The [databases.<name>] (a tenant home) to restore onto; default: where a new tenant
        /// of its plan would be placed
        #[arg(long)]
        database: Option<String>,
    },
    /// Isolation check: every row of the tenant's tables holds the tenant's own tenant_code
    Verify {
        /// The tenant to check
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        code: Option<String>,
        /// Check every live tenant
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Schema size, rows per table (statistics), config count, last lifecycle event
    Usage {
        /// One tenant (default: all live tenants)
        code: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Health of one tenant: {"status", "checks", "lastChecked"}; exit 1 unless healthy
    Health { code: String },
}

pub async fn run(cmd: Cmd, settings: &Settings, pg: &PgPool) -> anyhow::Result<()> {
    // Each tenant's schema is on the database the registry names (`fleet.tenants.database`).
    let pools = DatabasePools::new(settings.databases.clone(), pg.clone(), 2)
        .with_tenant_pools(settings.tenant_pools);
    match cmd {
        Cmd::Export { code, out } => {
            let code = Code::parse(&code)?;
            outln!("exporting {code} to {}", out.display());
            let m = super::export::export(&settings.databases, &code, &out).await?;
            let rows: u64 = m.tables.iter().map(|t| t.rows).sum();
            outln!(
                "exported {code} (schema version {}, {} tables, {rows} rows) to {}",
                m.schema_version,
                m.tables.len(),
                out.display()
            );
            Ok(())
        }
        Cmd::Import {
            dir,
            code,
            org_code,
            database,
        } => {
            let code = code.as_deref().map(Code::parse).transpose()?;
            let org = org_code.as_deref().map(Code::parse).transpose()?;
            anyhow::ensure!(
                org.is_none() || code.is_some(),
                "--org-code needs --code (it applies to a clone)"
            );
            let config = provisioner::config::ProvisionerConfig::from_settings(settings)?;
            let placement =
                provisioner::placement::Placement::new(pools.clone(), &config.plan_databases)
                    .map_err(|e| anyhow::anyhow!(e))?;
            let target = super::import::Target {
                placement: &placement,
                named: database.as_deref(),
            };
            let done = super::import::import(target, &dir, code, org).await?;
            let own = done
                .own_database
                .as_ref()
                .map(|o| format!(", in its own database {o}"))
                .unwrap_or_default();
            outln!(
                "imported {} as tenant {} ({}) on database {} ({}{own}): {} tables, {} rows, {} configs, schema version {}",
                dir.display(),
                done.code,
                done.tenant_id,
                done.database,
                done.placed_by,
                done.tables,
                done.rows,
                done.configs,
                done.schema_version
            );
            let latest =
                fleet_shared::migrate::latest_version(&provisioner::migrations::load(settings)?);
            if done.schema_version < latest {
                outln!(
                    "note: the latest tenant migration is {latest}; publish tenant.migrate {{\"code\": \"{}\"}} to bring it up to date",
                    done.code
                );
            }
            Ok(())
        }
        Cmd::Verify { code, all, json } => {
            let code = code.as_deref().map(Code::parse).transpose()?;
            let targets =
                super::verify::targets(&pools, if all { None } else { code.as_ref() }).await?;
            let report = super::verify::verify(&pools, &targets).await?;
            if json {
                output::print_json(&report)?;
            } else if report.offenders.is_empty() {
                outln!(
                    "isolation ok: {} tenants, {} tables with tenant_code, no foreign rows",
                    report.tenants,
                    report.tables_checked
                );
            } else {
                let rows: Vec<Vec<String>> = report
                    .offenders
                    .iter()
                    .map(|o| {
                        vec![
                            o.code.clone(),
                            o.table.clone(),
                            o.tenant_code.clone().unwrap_or_else(|| "(null)".into()),
                            o.rows.to_string(),
                        ]
                    })
                    .collect();
                output::print_table(&["TENANT", "TABLE", "FOREIGN TENANT_CODE", "ROWS"], &rows)?;
            }
            if report.offenders.is_empty() {
                return Ok(());
            }
            let rows: i64 = report.offenders.iter().map(|o| o.rows).sum();
            let tables: std::collections::BTreeSet<(&str, &str)> = report
                .offenders
                .iter()
                .map(|o| (o.code.as_str(), o.table.as_str()))
                .collect();
            anyhow::bail!(
                "isolation check failed: {rows} foreign rows in {} tables",
                tables.len()
            )
        }
        Cmd::Usage { code, json } => {
            let code = code.as_deref().map(Code::parse).transpose()?;
            let usage = super::usage::usage(&pools, code.as_ref()).await?;
            if json {
                return output::print_json(&usage);
            }
            if usage.is_empty() {
                outln!("no tenants");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = usage
                .iter()
                .map(|u| {
                    vec![
                        u.code.clone(),
                        u.status.clone(),
                        u.database.clone(),
                        super::usage::human_bytes(u.schema_bytes),
                        u.tables.len().to_string(),
                        u.rows.to_string(),
                        u.configs.to_string(),
                        u.last_event
                            .as_ref()
                            .map(|e| format!("{} {}", e.event, e.at.format("%Y-%m-%d %H:%M:%S")))
                            .unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            output::print_table(
                &[
                    "CODE",
                    "STATUS",
                    "DATABASE",
                    "SIZE",
                    "TABLES",
                    "ROWS~",
                    "CONFIGS",
                    "LAST EVENT",
                ],
                &rows,
            )?;
            if let [one] = usage.as_slice() {
                outln!();
                let rows: Vec<Vec<String>> = one
                    .tables
                    .iter()
                    .map(|t| vec![t.table.clone(), t.rows.to_string()])
                    .collect();
                output::print_table(&["TABLE", "ROWS~"], &rows)?;
            }
            Ok(())
        }
        Cmd::Health { code } => {
            let code = Code::parse(&code)?;
            let migrations =
                provisioner::migrations::load(settings).context("Failed to load the migrations")?;
            let h = super::health::health(&pools, &settings.redis, &migrations, &code).await?;
            output::print_json(&h)?;
            if h.status == "healthy" {
                return Ok(());
            }
            let failing: Vec<&str> = h
                .checks
                .iter()
                .filter(|(_, ok)| !**ok)
                .map(|(k, _)| *k)
                .collect();
            anyhow::bail!(
                "tenant {code} is {}: {} failing",
                h.status,
                failing.join(", ")
            )
        }
    }
}
