//! `fleetctl tenants list | show <code>`: the registry, each tenant's configs (with their source,
//! encrypted values masked unless `--reveal`) and its schema's migration ledger; and the
//! lifecycle commands (`tenants/lifecycle.rs` publish events, `tenants/admin.rs` acts directly,
//! `tenants/history.rs` reads the audit trail).

mod admin;
mod history;
mod lifecycle;
mod moving;
mod wait;

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
        /// Only tenants with this status (provisioning, active, suspended, failed, deleted)
        #[arg(long)]
        status: Option<String>,
        /// Only tenants on this plan
        #[arg(long)]
        plan: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show a tenant: registry row, configs (with their source), applied migrations
    Show {
        code: String,
        #[arg(long)]
        json: bool,
        /// Decrypt encrypted configs (needs FLEET_CONFIG_KEYS)
        #[arg(long)]
        reveal: bool,
    },
    /// Change name, org code and/or plan (publishes tenant.updated; a plan re-merges defaults)
    Update {
        code: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        org_code: Option<String>,
        #[arg(long)]
        plan: Option<String>,
        #[command(flatten)]
        wait: wait::Wait,
    },
    /// Config overrides: set (optionally encrypted) and unset
    #[command(subcommand)]
    Config(lifecycle::ConfigCmd),
    /// Suspend an active tenant (publishes tenant.suspended)
    Suspend {
        code: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        wait: wait::Wait,
    },
    /// Resume a suspended tenant (publishes tenant.resumed)
    Resume {
        code: String,
        #[command(flatten)]
        wait: wait::Wait,
    },
    /// Delete a tenant: archive (default; frees the code) or purge (publishes tenant.deleted)
    Delete {
        code: String,
        #[arg(long, value_enum, default_value = "archive")]
        mode: lifecycle::Mode,
        /// Name one tenant exactly (to purge an archived tenant whose code was reused)
        #[arg(long)]
        tenant_id: Option<uuid::Uuid>,
        #[command(flatten)]
        wait: wait::Wait,
    },
    /// Purge archived tenants older than a duration, directly (no provisioner needed)
    Purge {
        /// e.g. 30d; default: [provisioner] purge_after
        #[arg(long, value_parser = fleet_shared::duration::parse)]
        older_than: Option<std::time::Duration>,
        /// List what would be purged, purge nothing
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Move a tenant's schema to another tenant home while it stays in use (logical
    /// replication; resumable; --abort undoes it before the cut-over)
    Move(moving::Args),
    /// The audit trail of a code: every lifecycle change, who and when, old -> new
    History {
        code: String,
        #[arg(long)]
        json: bool,
    },
    /// Re-encrypt every encrypted config under the newest key of FLEET_CONFIG_KEYS, directly
    RotateKeys {
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    Portable(commands::Cmd),
}

#[derive(Serialize)]
struct TenantRow {
    tenant_id: uuid::Uuid,
    code: String,
    name: String,
    plan: String,
    org_code: Option<String>,
    status: String,
    schema_name: String,
    schema_version: i64,
    /// The `[databases.<name>]` holding the schema.
    database: String,
    /// The tenant's own database on that server (`isolation = "database"`), if any.
    own_database: Option<String>,
    created_at: chrono::DateTime<chrono::Utc>,
    provisioned_at: Option<chrono::DateTime<chrono::Utc>>,
    suspend_reason: Option<String>,
    deleted_at: Option<chrono::DateTime<chrono::Utc>>,
}
fleet_shared::from_row!(TenantRow {
    tenant_id,
    code,
    name,
    plan,
    org_code,
    status,
    schema_name,
    schema_version,
    database,
    created_at,
    provisioned_at,
    suspend_reason,
    deleted_at,
    own_database
});

#[derive(Serialize)]
struct ConfigRow {
    key: String,
    value: serde_json::Value,
    is_encrypted: bool,
    source: String,
}

#[derive(Serialize)]
struct MigrationRow {
    version: i64,
    name: String,
    checksum: String,
    applied_at: chrono::DateTime<chrono::Utc>,
}

const SELECT: &str = "SELECT tenant_id, code, name, plan, org_code, status, schema_name, schema_version, database, own_database, created_at, provisioned_at, suspend_reason, deleted_at FROM fleet.tenants";

pub async fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Update {
            code,
            name,
            org_code,
            plan,
            wait,
        } => return lifecycle::update(code, name, org_code, plan, wait).await,
        Cmd::Config(c) => return lifecycle::config(c).await,
        Cmd::Suspend { code, reason, wait } => return lifecycle::suspend(code, reason, wait).await,
        Cmd::Resume { code, wait } => return lifecycle::resume(code, wait).await,
        Cmd::Delete {
            code,
            mode,
            tenant_id,
            wait,
        } => return lifecycle::delete(code, mode, tenant_id, wait).await,
        Cmd::Purge {
            older_than,
            dry_run,
            json,
        } => return admin::purge(older_than, dry_run, json).await,
        Cmd::History { code, json } => return history::run(code, json).await,
        Cmd::Move(a) => return moving::run(a).await,
        Cmd::RotateKeys { json } => return admin::rotate_keys(json).await,
        _ => {}
    }
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
            output::list(
                json,
                &rows,
                "no tenants",
                &[
                    "CODE", "STATUS", "PLAN", "DATABASE", "SCHEMA", "VERSION", "ORG", "NAME",
                ],
                |t| {
                    vec![
                        t.code.clone(),
                        t.status.clone(),
                        t.plan.clone(),
                        t.database.clone(),
                        t.schema_name.clone(),
                        t.schema_version.to_string(),
                        t.org_code.clone().unwrap_or_default(),
                        t.name.clone(),
                    ]
                },
            )
        }
        Cmd::Show { code, json, reveal } => {
            let code = Code::parse(&code)?;
            if reveal && settings.config_keys.is_none() {
                anyhow::bail!(
                    "--reveal needs FLEET_CONFIG_KEYS (the keys the values were encrypted with)"
                );
            }
            // The live tenant of the code, else the latest archived one.
            let tenant: TenantRow = sqlx::query_as(&format!(
                "{SELECT} WHERE code = $1 ORDER BY status = 'deleted', created_at DESC LIMIT 1"
            ))
            .bind(code.as_str())
            .fetch_optional(&pg)
            .await?
            .with_context(|| format!("no tenant with code {code}"))?;
            let configs: Vec<ConfigRow> = sqlx::query(
                "SELECT config_key, config_value, is_encrypted, source FROM fleet.tenant_configurations WHERE tenant_id = $1 ORDER BY config_key",
            )
            .bind(tenant.tenant_id)
            .fetch_all(&pg)
            .await?
            .into_iter()
            .map(|r| ConfigRow {
                key: r.get(0),
                value: r.get(1),
                is_encrypted: r.get(2),
                source: r.get(3),
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|mut c| {
                if c.is_encrypted {
                    c.value = if reveal {
                        fleet_shared::config_keys::open_with(
                            settings.config_keys.as_ref(),
                            &c.key,
                            &c.value,
                        )
                        .map_err(|e| anyhow::anyhow!("config {}: {e}", c.key))?
                    } else {
                        serde_json::Value::String(provisioner::lifecycle::audit::MASK.into())
                    };
                }
                Ok(c)
            })
            .collect::<anyhow::Result<_>>()?;
            // Only a plain identifier (what the provisioner writes) is spliced into the query.
            let plain = tenant
                .schema_name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            let schema = if plain {
                tenant.schema_name.as_str()
            } else {
                ""
            };
            // The ledger is in the tenant's schema, on the database the registry names.
            let pools = fleet_shared::databases::DatabasePools::new(
                settings.databases.clone(),
                pg.clone(),
                1,
            )
            .with_tenant_pools(settings.tenant_pools);
            let tenant_pg = pools.tenant(&tenant.database, tenant.own_database.as_deref())?;
            let migrations: Vec<MigrationRow> = sqlx::query(&format!(
                "SELECT version, name, checksum, applied_at FROM \"{schema}\".schema_migrations ORDER BY version"
            ))
            .fetch_all(&tenant_pg)
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
            outln!("code:           {}", tenant.code);
            outln!("tenant_id:      {}", tenant.tenant_id);
            outln!("name:           {}", tenant.name);
            outln!("plan:           {}", tenant.plan);
            outln!("org_code:       {}", tenant.org_code.unwrap_or_default());
            outln!("status:         {}", tenant.status);
            if let Some(r) = &tenant.suspend_reason {
                outln!("suspended for:  {r}");
            }
            if let Some(d) = &tenant.deleted_at {
                outln!("deleted_at:     {d}");
            }
            outln!("database:       {}", tenant.database);
            if let Some(own) = &tenant.own_database {
                outln!("own database:   {own}");
            }
            outln!("schema:         {}", tenant.schema_name);
            outln!("schema_version: {}", tenant.schema_version);
            outln!("created_at:     {}", tenant.created_at);
            outln!(
                "provisioned_at: {}",
                tenant
                    .provisioned_at
                    .map(|t| t.to_string())
                    .unwrap_or_default()
            );
            outln!("\nconfigs:");
            let rows: Vec<Vec<String>> = configs
                .iter()
                .map(|c| {
                    let value = match (&c.value, c.is_encrypted) {
                        (serde_json::Value::String(s), true) => s.clone(),
                        (v, _) => v.to_string(),
                    };
                    let enc = if c.is_encrypted { "encrypted" } else { "" };
                    vec![format!("  {}", c.key), value, c.source.clone(), enc.into()]
                })
                .collect();
            output::print_table(&["  KEY", "VALUE", "SOURCE", ""], &rows)?;
            outln!("\nmigrations:");
            for m in &migrations {
                outln!(
                    "  {:>4} {:<32} {} {}",
                    m.version,
                    m.name,
                    &m.checksum[..12.min(m.checksum.len())],
                    m.applied_at
                );
            }
            Ok(())
        }
        _ => unreachable!("lifecycle commands return above"),
    }
}
