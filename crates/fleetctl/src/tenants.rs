//! `fleetctl tenants list | show <code>`: the registry, each tenant's configs and its schema's
//! migration ledger.

use anyhow::Context as _;
use clap::Subcommand;
use fleet_shared::Code;
use serde::Serialize;
use sqlx::Row;

use crate::output;

mod bundle;
mod catalog;
mod commands;
mod ddl;
mod export;
mod health;
mod import;
mod usage;
mod verify;

#[derive(Subcommand)]
pub enum Cmd {
    /// List tenants
    List {
        /// Only tenants with this status (provisioning, active, failed, deleted)
        #[arg(long)]
        status: Option<String>,
        /// Only tenants on this plan
        #[arg(long)]
        plan: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show a tenant: registry row, configs, applied migrations
    Show {
        code: String,
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    Portable(commands::Cmd),
}

#[derive(Serialize, sqlx::FromRow)]
struct TenantRow {
    tenant_id: uuid::Uuid,
    code: String,
    name: String,
    plan: String,
    org_code: Option<String>,
    status: String,
    schema_name: String,
    schema_version: i64,
    created_at: chrono::DateTime<chrono::Utc>,
    provisioned_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Serialize)]
struct ConfigRow {
    key: String,
    value: serde_json::Value,
    is_encrypted: bool,
}

#[derive(Serialize)]
struct MigrationRow {
    version: i64,
    name: String,
    checksum: String,
    applied_at: chrono::DateTime<chrono::Utc>,
}

const SELECT: &str = "SELECT tenant_id, code, name, plan, org_code, status, schema_name, schema_version, created_at, provisioned_at FROM fleet.tenants";

pub async fn run(cmd: Cmd) -> anyhow::Result<()> {
    let settings = output::settings()?;
    let pg = output::pg(&settings).await?;
    match cmd {
        Cmd::Portable(c) => commands::run(c, &settings, &pg).await,
        Cmd::List { status, plan, json } => {
            let rows: Vec<TenantRow> = sqlx::query_as(&format!(
                "{SELECT} WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR plan = $2) ORDER BY code"
            ))
            .bind(status)
            .bind(plan)
            .fetch_all(&pg)
            .await
            .context("Failed to read fleet.tenants")?;
            if json {
                return output::print_json(&rows);
            }
            if rows.is_empty() {
                println!("no tenants");
                return Ok(());
            }
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|t| {
                    vec![
                        t.code.clone(),
                        t.status.clone(),
                        t.plan.clone(),
                        t.schema_name.clone(),
                        t.schema_version.to_string(),
                        t.org_code.clone().unwrap_or_default(),
                        t.name.clone(),
                    ]
                })
                .collect();
            output::print_table(
                &["CODE", "STATUS", "PLAN", "SCHEMA", "VERSION", "ORG", "NAME"],
                &table,
            );
            Ok(())
        }
        Cmd::Show { code, json } => {
            let code = Code::parse(&code)?;
            let tenant: TenantRow = sqlx::query_as(&format!("{SELECT} WHERE code = $1"))
                .bind(code.as_str())
                .fetch_optional(&pg)
                .await?
                .with_context(|| format!("no tenant with code {code}"))?;
            let configs: Vec<ConfigRow> = sqlx::query(
                "SELECT config_key, config_value, is_encrypted FROM fleet.tenant_configurations WHERE tenant_id = $1 ORDER BY config_key",
            )
            .bind(tenant.tenant_id)
            .fetch_all(&pg)
            .await?
            .into_iter()
            .map(|r| ConfigRow {
                key: r.get(0),
                value: r.get(1),
                is_encrypted: r.get(2),
            })
            .collect();
            // The schema name comes from a validated code, so it is safe to splice.
            let migrations: Vec<MigrationRow> = sqlx::query(&format!(
                "SELECT version, name, checksum, applied_at FROM \"{}\".schema_migrations ORDER BY version",
                code.schema_name()
            ))
            .fetch_all(&pg)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|r| MigrationRow {
                version: r.get(0),
                name: r.get(1),
                checksum: r.get(2),
                applied_at: r.get(3),
            })
            .collect();
            if json {
                return output::print_json(&serde_json::json!({
                    "tenant": tenant, "configs": configs, "migrations": migrations,
                }));
            }
            println!("code:           {}", tenant.code);
            println!("tenant_id:      {}", tenant.tenant_id);
            println!("name:           {}", tenant.name);
            println!("plan:           {}", tenant.plan);
            println!("org_code:       {}", tenant.org_code.unwrap_or_default());
            println!("status:         {}", tenant.status);
            println!("schema:         {}", tenant.schema_name);
            println!("schema_version: {}", tenant.schema_version);
            println!("created_at:     {}", tenant.created_at);
            println!(
                "provisioned_at: {}",
                tenant
                    .provisioned_at
                    .map(|t| t.to_string())
                    .unwrap_or_default()
            );
            println!("\nconfigs:");
            for c in &configs {
                let enc = if c.is_encrypted { " (encrypted)" } else { "" };
                println!("  {} = {}{enc}", c.key, c.value);
            }
            println!("\nmigrations:");
            for m in &migrations {
                println!(
                    "  {:>4} {:<32} {} {}",
                    m.version,
                    m.name,
                    &m.checksum[..12.min(m.checksum.len())],
                    m.applied_at
                );
            }
            Ok(())
        }
    }
}
