//! The `[backfill]` section of `FLEET_CONFIG`: defaults for job options and the worker's own
//! limits. A job's spec overrides the option defaults; the limits bound every job.
//!
//! ```toml
//! [backfill]
//! chunk_size = 10000          # initial keys per chunk
//! target_chunk = "500ms"      # chunk size adapts toward this duration
//! parallelism = 2             # chunk transactions at once per job, per replica
//! statement_timeout = "30s"   # "0s": none
//! lock_timeout = "5s"
//! mapping_dir = "/srv/mappings"   # mapping_path files are read only here (default: never)
//! mapping_max_bytes = 16777216
//! ```
//!
//! Durations use the fleet's one syntax (`500ms`, `2s`, `5m`). The integer keys of the previous
//! release (`target_chunk_ms`, `statement_timeout_ms`, `lock_timeout_ms`, `poll_interval_ms`,
//! `progress_interval_ms`) are still read, with a warning naming the new key.

use std::time::Duration;

use fleet_shared::duration;
use serde::Deserialize;

/// The section with every default filled in.
#[derive(Debug, Clone)]
pub struct BackfillConfig {
    pub chunk_size: i64,
    pub target_chunk: Duration,
    pub min_chunk_size: i64,
    pub max_chunk_size: i64,
    pub parallelism: usize,
    pub max_rows_per_sec: Option<f64>,
    /// `None`: no statement timeout.
    pub statement_timeout: Option<Duration>,
    /// `None`: no lock timeout.
    pub lock_timeout: Option<Duration>,
    /// How often a replica looks for runnable jobs (a local submit wakes it at once).
    pub poll_interval: Duration,
    /// At most one progress snapshot per job per this interval, per replica.
    pub progress_interval: Duration,
    /// Jobs one replica runs at once.
    pub max_jobs: usize,
    /// The only directory a `mapping_path` in a spec received over NATS may name a file in
    /// (unset: such specs are refused; see `mapping_file`).
    pub mapping_dir: Option<std::path::PathBuf>,
    /// Largest mapping file read.
    pub mapping_max_bytes: u64,
    /// When a job's lanes wait for the target database (see `fleet_shared::health`); a job's
    /// spec may override each threshold.
    pub health: fleet_shared::health::HealthLimits,
    /// How often each job's target is checked.
    pub health_interval: Duration,
}

impl Default for BackfillConfig {
    fn default() -> Self {
        BackfillConfig {
            chunk_size: 10_000,
            target_chunk: Duration::from_millis(500),
            min_chunk_size: 1,
            max_chunk_size: 1_000_000,
            parallelism: 2,
            max_rows_per_sec: None,
            statement_timeout: Some(Duration::from_secs(30)),
            lock_timeout: Some(Duration::from_secs(5)),
            poll_interval: Duration::from_millis(500),
            progress_interval: Duration::from_secs(1),
            max_jobs: 4,
            mapping_dir: None,
            mapping_max_bytes: crate::mapping_file::DEFAULT_MAX_BYTES,
            health: fleet_shared::health::HealthLimits::default(),
            health_interval: Duration::from_secs(1),
        }
    }
}

/// The section as written (all keys optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    chunk_size: Option<i64>,
    #[serde(default, with = "duration::serde::option")]
    target_chunk: Option<Duration>,
    target_chunk_ms: Option<u64>,
    min_chunk_size: Option<i64>,
    max_chunk_size: Option<i64>,
    parallelism: Option<usize>,
    max_rows_per_sec: Option<f64>,
    #[serde(default, with = "duration::serde::option")]
    statement_timeout: Option<Duration>,
    statement_timeout_ms: Option<u64>,
    #[serde(default, with = "duration::serde::option")]
    lock_timeout: Option<Duration>,
    lock_timeout_ms: Option<u64>,
    #[serde(default, with = "duration::serde::option")]
    poll_interval: Option<Duration>,
    poll_interval_ms: Option<u64>,
    #[serde(default, with = "duration::serde::option")]
    progress_interval: Option<Duration>,
    progress_interval_ms: Option<u64>,
    max_jobs: Option<usize>,
    mapping_dir: Option<std::path::PathBuf>,
    mapping_max_bytes: Option<u64>,
    #[serde(default, with = "duration::serde::option")]
    max_replica_lag: Option<Duration>,
    max_lock_waiters: Option<i64>,
    throttle_on_vacuum: Option<bool>,
    #[serde(default, with = "duration::serde::option")]
    max_transaction_age: Option<Duration>,
    #[serde(default, with = "duration::serde::option")]
    health_interval: Option<Duration>,
}

impl BackfillConfig {
    /// Reads `[backfill]`; a bad section fails with one line naming it.
    pub fn from_settings(settings: &fleet_shared::Settings) -> anyhow::Result<Self> {
        let raw: Raw = settings.file.section("backfill")?.unwrap_or_default();
        let d = BackfillConfig::default();
        let ms = Duration::from_millis(1);
        let renamed = |new_key, new, old_key, old| {
            duration::renamed("FLEET_CONFIG: [backfill]", new_key, new, old_key, old, ms)
                .map_err(anyhow::Error::msg)
        };
        // A zero timeout means none, as Postgres reads `SET statement_timeout = 0`.
        let timeout = |v: Option<Duration>| v.filter(|t| !t.is_zero());
        let cfg = BackfillConfig {
            chunk_size: raw.chunk_size.unwrap_or(d.chunk_size),
            target_chunk: renamed(
                "target_chunk",
                raw.target_chunk,
                "target_chunk_ms",
                raw.target_chunk_ms,
            )?
            .unwrap_or(d.target_chunk),
            min_chunk_size: raw.min_chunk_size.unwrap_or(d.min_chunk_size),
            max_chunk_size: raw.max_chunk_size.unwrap_or(d.max_chunk_size),
            parallelism: raw.parallelism.unwrap_or(d.parallelism),
            max_rows_per_sec: raw.max_rows_per_sec,
            statement_timeout: match renamed(
                "statement_timeout",
                raw.statement_timeout,
                "statement_timeout_ms",
                raw.statement_timeout_ms,
            )? {
                Some(t) => timeout(Some(t)),
                None => d.statement_timeout,
            },
            lock_timeout: match renamed(
                "lock_timeout",
                raw.lock_timeout,
                "lock_timeout_ms",
                raw.lock_timeout_ms,
            )? {
                Some(t) => timeout(Some(t)),
                None => d.lock_timeout,
            },
            poll_interval: renamed(
                "poll_interval",
                raw.poll_interval,
                "poll_interval_ms",
                raw.poll_interval_ms,
            )?
            .unwrap_or(d.poll_interval),
            progress_interval: renamed(
                "progress_interval",
                raw.progress_interval,
                "progress_interval_ms",
                raw.progress_interval_ms,
            )?
            .unwrap_or(d.progress_interval),
            max_jobs: raw.max_jobs.unwrap_or(d.max_jobs),
            mapping_dir: raw.mapping_dir,
            mapping_max_bytes: raw.mapping_max_bytes.unwrap_or(d.mapping_max_bytes),
            health: fleet_shared::health::HealthLimits {
                // "0s" (or a negative waiter count) turns a check off.
                max_replica_lag: match raw.max_replica_lag {
                    Some(t) => timeout(Some(t)),
                    None => d.health.max_replica_lag,
                },
                max_lock_waiters: match raw.max_lock_waiters {
                    Some(n) if n < 0 => None,
                    Some(n) => Some(u32::try_from(n).map_err(|_| {
                        anyhow::anyhow!("FLEET_CONFIG: [backfill]: max_lock_waiters = {n} is out of range (-1 to 4294967295; -1: not checked)")
                    })?),
                    None => d.health.max_lock_waiters,
                },
                throttle_on_vacuum: raw.throttle_on_vacuum.unwrap_or(d.health.throttle_on_vacuum),
                max_transaction_age: match raw.max_transaction_age {
                    Some(t) => timeout(Some(t)),
                    None => d.health.max_transaction_age,
                },
            },
            health_interval: raw.health_interval.unwrap_or(d.health_interval),
        };
        anyhow::ensure!(
            cfg.chunk_size >= 1
                && cfg.min_chunk_size >= 1
                && cfg.max_chunk_size >= cfg.min_chunk_size
                && cfg.target_chunk >= ms
                && cfg.parallelism >= 1
                && cfg.max_jobs >= 1
                && cfg.poll_interval >= Duration::from_millis(10)
                && (Duration::from_millis(100)..=Duration::from_secs(60)).contains(&cfg.health_interval),
            "FLEET_CONFIG: [backfill]: sizes, parallelism, max_jobs must be >= 1, max_chunk_size >= min_chunk_size, target_chunk >= 1ms, poll_interval >= 10ms, health_interval 100ms to 60s"
        );
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_shared::config::FileConfig;

    fn parse(toml: &str) -> anyhow::Result<BackfillConfig> {
        let mut s = fleet_shared::Settings::from_lookup("127.0.0.1:0", |_| None).unwrap();
        s.file = FileConfig::parse(toml, None).unwrap();
        BackfillConfig::from_settings(&s)
    }

    #[test]
    fn durations_and_the_deprecated_integer_keys() {
        let c = parse("").unwrap();
        assert_eq!(c.statement_timeout, Some(Duration::from_secs(30)));
        let c = parse(
            "[backfill]\ntarget_chunk = \"2s\"\nlock_timeout = \"0s\"\nstatement_timeout = \"1m\"",
        )
        .unwrap();
        assert_eq!(c.target_chunk, Duration::from_secs(2));
        assert_eq!(c.lock_timeout, None);
        assert_eq!(c.statement_timeout, Some(Duration::from_secs(60)));
        let c = parse("[backfill]\ntarget_chunk_ms = 250\npoll_interval_ms = 50").unwrap();
        assert_eq!(c.target_chunk, Duration::from_millis(250));
        assert_eq!(c.poll_interval, Duration::from_millis(50));
        let err = parse("[backfill]\nlock_timeout = \"1s\"\nlock_timeout_ms = 1000")
            .unwrap_err()
            .to_string();
        assert!(err.contains("keep only lock_timeout"), "{err}");
        let err = parse("[backfill]\ntarget_chunk = 500")
            .unwrap_err()
            .to_string();
        assert!(err.contains("[backfill]") && err.contains("500ms"), "{err}");
    }

    #[test]
    fn the_example_config_parses() {
        let c = parse(include_str!("../../../deploy/local/fleet.toml")).unwrap();
        assert_eq!(c.lock_timeout, Some(Duration::from_secs(5)));
    }
}
