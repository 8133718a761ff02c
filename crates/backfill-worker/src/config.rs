//! The `[backfill]` section of `FLEET_CONFIG`: defaults for job options and the worker's own
//! limits. A job's spec overrides the option defaults; the limits bound every job.
//!
//! ```toml
//! [backfill]
//! chunk_size = 10000          # initial keys per chunk
//! target_chunk_ms = 500       # chunk size adapts toward this duration
//! parallelism = 2             # chunk transactions at once per job, per replica
//! statement_timeout_ms = 30000
//! lock_timeout_ms = 5000
//! ```

use serde::Deserialize;

/// The section (all keys optional).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackfillConfig {
    pub chunk_size: i64,
    pub target_chunk_ms: u64,
    pub min_chunk_size: i64,
    pub max_chunk_size: i64,
    pub parallelism: usize,
    pub max_rows_per_sec: Option<f64>,
    pub statement_timeout_ms: Option<u64>,
    pub lock_timeout_ms: Option<u64>,
    /// How often a replica looks for runnable jobs (a local submit wakes it at once).
    pub poll_interval_ms: u64,
    /// At most one progress snapshot per job per this interval, per replica.
    pub progress_interval_ms: u64,
    /// Jobs one replica runs at once.
    pub max_jobs: usize,
}

impl Default for BackfillConfig {
    fn default() -> Self {
        BackfillConfig {
            chunk_size: 10_000,
            target_chunk_ms: 500,
            min_chunk_size: 1,
            max_chunk_size: 1_000_000,
            parallelism: 2,
            max_rows_per_sec: None,
            statement_timeout_ms: Some(30_000),
            lock_timeout_ms: Some(5_000),
            poll_interval_ms: 500,
            progress_interval_ms: 1_000,
            max_jobs: 4,
        }
    }
}

impl BackfillConfig {
    /// Reads `[backfill]`; a bad section fails with one line naming it.
    pub fn from_settings(settings: &fleet_shared::Settings) -> anyhow::Result<Self> {
        let cfg: BackfillConfig = settings.file.section("backfill")?.unwrap_or_default();
        anyhow::ensure!(
            cfg.chunk_size >= 1
                && cfg.min_chunk_size >= 1
                && cfg.max_chunk_size >= cfg.min_chunk_size
                && cfg.target_chunk_ms >= 1
                && cfg.parallelism >= 1
                && cfg.max_jobs >= 1
                && cfg.poll_interval_ms >= 10,
            "FLEET_CONFIG: [backfill]: sizes, target_chunk_ms, parallelism, max_jobs must be >= 1, max_chunk_size >= min_chunk_size, poll_interval_ms >= 10"
        );
        Ok(cfg)
    }
}
