//! `fleetctl tenants update | config set | config unset | suspend | resume | delete`: each
//! publishes its event (the provisioner decides, in one transaction) and waits for the outcome
//! (see `wait.rs`).
//!
//! Before publishing, the command checks what it can without deciding anything itself
//! (`provisioner::lifecycle::request`, which the console's tenant actions use too): the code, the
//! key, the plan (against the same `[plans]` the provisioner loads), and whether a live tenant
//! with the code exists in a status the change allows. A refusal there is exit 1 with the same
//! one-line reason the provisioner would dead-letter, and nothing is published. The provisioner
//! still checks everything again under the tenant's lock.

use std::io::Read as _;

use anyhow::Context as _;
use clap::Subcommand;
use fleet_shared::events::DeleteMode;
use provisioner::lifecycle::request;

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

/// VALUE as typed, or stdin for `-` (without its final newline), as [`request::config_value`].
fn read_value(raw: &str, as_string: bool) -> anyhow::Result<serde_json::Value> {
    if raw != "-" {
        return Ok(request::config_value(raw, as_string));
    }
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .context("cannot read the value from stdin")?;
    Ok(request::config_value(
        s.trim_end_matches(['\n', '\r']),
        as_string,
    ))
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
    let plans = provisioner::plans::Plans::from_settings(&settings)?;
    let req = request::update(&pg, &plans, &code, name, org_code.as_deref(), plan).await?;
    publish_and_wait(&settings, &pg, &req, &wait).await
}

pub async fn config(cmd: ConfigCmd) -> anyhow::Result<()> {
    let settings = output::settings()?;
    let pg = output::pg(&settings).await?;
    let (req, wait) = match cmd {
        ConfigCmd::Set {
            code,
            key,
            value,
            encrypted,
            string,
            wait,
        } => {
            let value = read_value(&value, string)?;
            (
                request::config_set(&pg, &code, key, value, encrypted).await?,
                wait,
            )
        }
        ConfigCmd::Unset { code, key, wait } => {
            (request::config_unset(&pg, &code, key).await?, wait)
        }
    };
    publish_and_wait(&settings, &pg, &req, &wait).await
}

pub async fn suspend(code: String, reason: Option<String>, wait: Wait) -> anyhow::Result<()> {
    let settings = output::settings()?;
    let pg = output::pg(&settings).await?;
    let req = request::suspend(&pg, &code, reason).await?;
    publish_and_wait(&settings, &pg, &req, &wait).await
}

pub async fn resume(code: String, wait: Wait) -> anyhow::Result<()> {
    let settings = output::settings()?;
    let pg = output::pg(&settings).await?;
    let req = request::resume(&pg, &code).await?;
    publish_and_wait(&settings, &pg, &req, &wait).await
}

pub async fn delete(
    code: String,
    mode: Mode,
    tenant_id: Option<uuid::Uuid>,
    wait: Wait,
) -> anyhow::Result<()> {
    let settings = output::settings()?;
    let pg = output::pg(&settings).await?;
    let mode = match mode {
        Mode::Archive => DeleteMode::Archive,
        Mode::Purge => DeleteMode::Purge,
    };
    let req = request::delete(&pg, &code, mode, tenant_id).await?;
    publish_and_wait(&settings, &pg, &req, &wait).await
}
