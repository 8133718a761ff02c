//! `fleetctl tenants update | config set | config unset | suspend | resume | delete`: each
//! publishes its event (the provisioner decides, in one transaction) and waits for the outcome
//! (see `wait.rs`).
//!
//! Before publishing, the command checks what it can without deciding anything itself: the
//! code, the key, the plan (against the same `[plans]` the provisioner loads), and whether a live
//! tenant with the code exists in a status the change allows. A refusal there is exit 1 with the
//! same one-line reason the provisioner would dead-letter, and nothing is published. The
//! provisioner still checks everything again under the tenant's lock.

use std::io::Read as _;

use anyhow::Context as _;
use clap::Subcommand;
use fleet_shared::events::{
    DeleteMode, TenantConfigSet, TenantConfigUnset, TenantDeleted, TenantResumed, TenantSuspended,
    TenantUpdated, TENANT_CONFIG_SET, TENANT_CONFIG_UNSET, TENANT_DELETED, TENANT_RESUMED,
    TENANT_SUSPENDED, TENANT_UPDATED,
};
use fleet_shared::Code;
use sqlx::PgPool;

use super::wait::{publish_and_wait, Wait};
use crate::output;

#[derive(Subcommand)]
pub enum ConfigCmd {
    /// Set a config override (publishes tenant.config.set)
    Set {
        code: String,
        key: String,
        /// JSON (5000, true, {"a":1}) or, if it does not parse as JSON, a string; `-` reads stdin
        value: String,
        /// Store it encrypted under the newest key of the provisioner's FLEET_CONFIG_KEYS
        #[arg(long)]
        encrypted: bool,
        /// Take VALUE as a string even if it parses as JSON
        #[arg(long)]
        string: bool,
        #[command(flatten)]
        wait: Wait,
    },
    /// Remove an override: back to the plan's default, or gone if the plan has none
    /// (publishes tenant.config.unset)
    Unset {
        code: String,
        key: String,
        #[command(flatten)]
        wait: Wait,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Mode {
    Archive,
    Purge,
}

/// Checks `code` and finds its live tenant's status, refusing unless it is in `allowed`.
async fn precheck(
    pg: &PgPool,
    event: &str,
    code: &str,
    allowed: &[&str],
    doing: &str,
) -> anyhow::Result<Code> {
    let code = Code::parse(code)?;
    let status: Option<String> = sqlx::query_scalar(
        "SELECT status FROM fleet.tenants WHERE code = $1 AND status <> 'deleted'",
    )
    .bind(code.as_str())
    .fetch_optional(pg)
    .await
    .context("Failed to read fleet.tenants")?;
    match status {
        None => {
            anyhow::bail!("{event}: no tenant with code {code} (deleted tenants cannot be changed)")
        }
        Some(s) if !allowed.contains(&s.as_str()) => anyhow::bail!(
            "{event}: tenant {code} is {s}; only a tenant that is {} can be {doing}",
            allowed.join(" or ")
        ),
        Some(_) => Ok(code),
    }
}

fn check_key(event: &str, key: &str) -> anyhow::Result<()> {
    fleet_shared::names::check_config_key(key).map_err(|e| anyhow::anyhow!("{event}: {e}"))
}

fn parse_value(raw: &str, as_string: bool) -> anyhow::Result<serde_json::Value> {
    let text = if raw == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the value from stdin")?;
        s.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        raw.to_owned()
    };
    if as_string {
        return Ok(serde_json::Value::String(text));
    }
    Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

pub async fn update(
    code: String,
    name: Option<String>,
    org_code: Option<String>,
    plan: Option<String>,
    wait: Wait,
) -> anyhow::Result<()> {
    let settings = output::settings()?;
    let pg = output::pg(&settings).await?;
    let code = precheck(
        &pg,
        TENANT_UPDATED,
        &code,
        &["active", "suspended"],
        "updated",
    )
    .await?;
    if let Some(p) = &plan {
        let plans = provisioner::plans::Plans::from_settings(&settings)?;
        anyhow::ensure!(
            plans.get(p).is_some(),
            "{TENANT_UPDATED}: unknown plan {p:?} (known plans: {})",
            plans.names().collect::<Vec<_>>().join(", ")
        );
    }
    let body = TenantUpdated {
        code,
        name,
        org_code: org_code.as_deref().map(Code::parse).transpose()?,
        plan,
    };
    body.validate()?;
    publish_and_wait(&settings, &pg, TENANT_UPDATED, &body, &wait).await
}

pub async fn config(cmd: ConfigCmd) -> anyhow::Result<()> {
    let settings = output::settings()?;
    let pg = output::pg(&settings).await?;
    match cmd {
        ConfigCmd::Set {
            code,
            key,
            value,
            encrypted,
            string,
            wait,
        } => {
            check_key(TENANT_CONFIG_SET, &key)?;
            let code = precheck(
                &pg,
                TENANT_CONFIG_SET,
                &code,
                &["active", "suspended"],
                "configured",
            )
            .await?;
            let body = TenantConfigSet {
                code,
                key,
                value: parse_value(&value, string)?,
                encrypted,
            };
            publish_and_wait(&settings, &pg, TENANT_CONFIG_SET, &body, &wait).await
        }
        ConfigCmd::Unset { code, key, wait } => {
            check_key(TENANT_CONFIG_UNSET, &key)?;
            let code = precheck(
                &pg,
                TENANT_CONFIG_UNSET,
                &code,
                &["active", "suspended"],
                "configured",
            )
            .await?;
            let body = TenantConfigUnset { code, key };
            publish_and_wait(&settings, &pg, TENANT_CONFIG_UNSET, &body, &wait).await
        }
    }
}

pub async fn suspend(code: String, reason: Option<String>, wait: Wait) -> anyhow::Result<()> {
    let settings = output::settings()?;
    let pg = output::pg(&settings).await?;
    let code = precheck(&pg, TENANT_SUSPENDED, &code, &["active"], "suspended").await?;
    let body = TenantSuspended { code, reason };
    publish_and_wait(&settings, &pg, TENANT_SUSPENDED, &body, &wait).await
}

pub async fn resume(code: String, wait: Wait) -> anyhow::Result<()> {
    let settings = output::settings()?;
    let pg = output::pg(&settings).await?;
    let code = precheck(&pg, TENANT_RESUMED, &code, &["suspended"], "resumed").await?;
    let body = TenantResumed { code };
    publish_and_wait(&settings, &pg, TENANT_RESUMED, &body, &wait).await
}

pub async fn delete(
    code: String,
    mode: Mode,
    tenant_id: Option<uuid::Uuid>,
    wait: Wait,
) -> anyhow::Result<()> {
    let settings = output::settings()?;
    let pg = output::pg(&settings).await?;
    let code = match tenant_id {
        // An archived tenant, named exactly: the provisioner checks it.
        Some(_) => Code::parse(&code)?,
        None => {
            precheck(
                &pg,
                TENANT_DELETED,
                &code,
                &["provisioning", "active", "suspended", "failed"],
                "deleted",
            )
            .await?
        }
    };
    let body = TenantDeleted {
        code,
        mode: match mode {
            Mode::Archive => DeleteMode::Archive,
            Mode::Purge => DeleteMode::Purge,
        },
        tenant_id,
    };
    publish_and_wait(&settings, &pg, TENANT_DELETED, &body, &wait).await
}
