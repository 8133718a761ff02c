//! The `[provisioner]` section of `FLEET_CONFIG`: how many tenants are provisioned at once and
//! how long a delivery may stay unacknowledged. Unknown keys are refused so a typo fails at start
//! instead of being ignored.

use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvisionerConfig {
    /// Messages handled at once (each holds one Postgres connection for its transaction).
    pub concurrency: usize,
    /// Seconds JetStream waits for an ack before redelivering (in-progress acks extend it while
    /// a long migration runs). Only used when the durable consumer is first created.
    pub ack_wait_secs: u64,
    /// Deliveries after which a transient failure is dead-lettered.
    pub max_attempts: i64,
    /// Pre-migrated, unowned schemas kept ready for `tenant.created` (0: none; see `pool.rs`).
    pub warm_pool: usize,
    /// How long an archived tenant is kept before the scheduler's purge task drops it
    /// (e.g. `"30d"`); unset: archived tenants are kept until purged by hand.
    pub purge_after: Option<String>,
}

impl Default for ProvisionerConfig {
    fn default() -> Self {
        ProvisionerConfig {
            concurrency: 4,
            ack_wait_secs: 30,
            max_attempts: 20,
            warm_pool: 0,
            purge_after: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Section(#[from] fleet_shared::config::ConfigError),
    #[error("FLEET_CONFIG [provisioner]: {0}")]
    Invalid(&'static str),
}

/// A duration (`"30d"`, `"12h"`) of at least a minute.
pub fn parse_purge_after(raw: &str) -> Option<Duration> {
    fleet_shared::duration::parse(raw)
        .ok()
        .filter(|d| *d >= Duration::from_secs(60))
}

impl ProvisionerConfig {
    pub fn from_settings(settings: &fleet_shared::Settings) -> Result<Self, ConfigError> {
        let c: ProvisionerConfig = settings.file.section("provisioner")?.unwrap_or_default();
        if !(1..=16).contains(&c.concurrency) {
            return Err(ConfigError::Invalid(
                "concurrency must be 1 to 16 (the Postgres pool holds 16 connections)",
            ));
        }
        if !(1..=3600).contains(&c.ack_wait_secs) {
            return Err(ConfigError::Invalid("ack_wait_secs must be 1 to 3600"));
        }
        if !(1..=1000).contains(&c.max_attempts) {
            return Err(ConfigError::Invalid("max_attempts must be 1 to 1000"));
        }
        if c.warm_pool > 1000 {
            return Err(ConfigError::Invalid("warm_pool must be 0 to 1000"));
        }
        if let Some(raw) = &c.purge_after {
            match parse_purge_after(raw) {
                Some(_) => {}
                None => {
                    return Err(ConfigError::Invalid(
                        "purge_after must be a duration of at least 1m, e.g. \"30d\" or \"12h\"",
                    ))
                }
            }
        }
        Ok(c)
    }

    /// `purge_after` as a duration (checked at start).
    pub fn purge_after(&self) -> Option<Duration> {
        self.purge_after.as_deref().and_then(parse_purge_after)
    }

    pub fn ack_wait(&self) -> Duration {
        Duration::from_secs(self.ack_wait_secs)
    }
}
