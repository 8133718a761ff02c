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
    /// How long JetStream waits for an ack before redelivering (in-progress acks extend it while
    /// a long migration runs), e.g. `"30s"`. Only used when the durable consumer is first created.
    #[serde(with = "fleet_shared::duration::serde::option")]
    pub ack_wait: Option<Duration>,
    /// Deprecated spelling of `ack_wait` in whole seconds; read for one more release.
    pub ack_wait_secs: Option<u64>,
    /// Deliveries after which a transient failure is dead-lettered.
    pub max_attempts: i64,
    /// Pre-migrated, unowned schemas kept ready for `tenant.created` (0: none; see `pool.rs`).
    pub warm_pool: usize,
    /// How long an archived tenant is kept before the scheduler's purge task drops it
    /// (e.g. `"30d"`); unset: archived tenants are kept until purged by hand.
    pub purge_after: Option<String>,
    /// Per-plan placement: plan → `[databases.<name>]` (a tenant home) for its new tenants.
    pub plan_databases: std::collections::BTreeMap<String, String>,
}

impl Default for ProvisionerConfig {
    fn default() -> Self {
        ProvisionerConfig {
            concurrency: 4,
            ack_wait: None,
            ack_wait_secs: None,
            max_attempts: 20,
            warm_pool: 0,
            purge_after: None,
            plan_databases: Default::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Section(#[from] fleet_shared::config::ConfigError),
    #[error("FLEET_CONFIG [provisioner]: {0}")]
    Invalid(&'static str),
    #[error("FLEET_CONFIG {0}")]
    Renamed(String),
}

/// A duration (`"30d"`, `"12h"`) of at least a minute.
pub fn parse_purge_after(raw: &str) -> Option<Duration> {
    fleet_shared::duration::parse(raw)
        .ok()
        .filter(|d| *d >= Duration::from_secs(60))
}

impl ProvisionerConfig {
    pub fn from_settings(settings: &fleet_shared::Settings) -> Result<Self, ConfigError> {
        let mut c: ProvisionerConfig = settings.file.section("provisioner")?.unwrap_or_default();
        c.ack_wait = fleet_shared::duration::renamed(
            "[provisioner]",
            "ack_wait",
            c.ack_wait,
            "ack_wait_secs",
            c.ack_wait_secs.take(),
            Duration::from_secs(1),
        )
        .map_err(ConfigError::Renamed)?;
        if !(1..=16).contains(&c.concurrency) {
            return Err(ConfigError::Invalid(
                "concurrency must be 1 to 16 (the Postgres pool holds 16 connections)",
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&c.ack_wait()) {
            return Err(ConfigError::Invalid("ack_wait must be 1s to 1h"));
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

    /// `ack_wait`, 30s unless set.
    pub fn ack_wait(&self) -> Duration {
        self.ack_wait.unwrap_or(Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_shared::config::FileConfig;

    fn parse(toml: &str) -> Result<ProvisionerConfig, ConfigError> {
        let mut s = fleet_shared::Settings::from_lookup("127.0.0.1:0", |_| None).unwrap();
        s.file = FileConfig::parse(toml, None).unwrap();
        ProvisionerConfig::from_settings(&s)
    }

    #[test]
    fn ack_wait_is_a_duration_and_the_old_key_still_works() {
        assert_eq!(parse("").unwrap().ack_wait(), Duration::from_secs(30));
        let c = parse("[provisioner]\nack_wait = \"2m\"").unwrap();
        assert_eq!(c.ack_wait(), Duration::from_secs(120));
        let c = parse("[provisioner]\nack_wait_secs = 45").unwrap();
        assert_eq!(c.ack_wait(), Duration::from_secs(45));
        let err = parse("[provisioner]\nack_wait = \"2s\"\nack_wait_secs = 2")
            .unwrap_err()
            .to_string();
        assert!(err.contains("keep only ack_wait"), "{err}");
        let err = parse("[provisioner]\nack_wait = 30")
            .unwrap_err()
            .to_string();
        assert!(err.contains("write e.g. 30s"), "{err}");
        assert!(parse("[provisioner]\nack_wait = \"2h\"").is_err());
    }
}
