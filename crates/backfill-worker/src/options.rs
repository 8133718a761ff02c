//! The options every job kind takes (chunking, pacing, timeouts, throttle thresholds, dry run):
//! their wire form in a spec, their checks, and the `[backfill]` defaults they fall back to.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::BackfillConfig;
use crate::error::SpecError;

/// The fields of a spec that are not the kind's own (see docs/backfill.md#job-specs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommonSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// A `[databases.<name>]` entry the job's statements run on (default: the control plane).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_chunk: Option<serde_json::Value>,
    /// Deprecated spelling of `target_chunk` in milliseconds; read for one more release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_chunk_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rows_per_sec: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement_timeout: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    // throttle thresholds (see fleet_shared::health)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replica_lag: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lock_waiters: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_on_vacuum: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_transaction_age: Option<serde_json::Value>,
}

/// The names of [`CommonSpec`]'s fields (a spec's other fields belong to its kind).
pub const COMMON_FIELDS: &[&str] = &[
    "job_id",
    "schema",
    "database",
    "chunk_size",
    "target_chunk",
    "target_chunk_ms",
    "max_rows_per_sec",
    "parallelism",
    "lock_timeout",
    "statement_timeout",
    "dry_run",
    "max_replica_lag",
    "max_lock_waiters",
    "throttle_on_vacuum",
    "max_transaction_age",
];

/// Where a spec comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappingSource {
    /// At submit: a `tenant_codes` mapping (inline or a file) is required.
    Required,
    /// From the database: the spec no longer carries its mapping, and may hold the previous
    /// release's millisecond numbers.
    Stored,
}

/// Options as given (unset ones take the `[backfill]` defaults when the job runs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options {
    pub chunk_size: Option<i64>,
    pub target_chunk: Option<Duration>,
    pub max_rows_per_sec: Option<f64>,
    pub parallelism: Option<usize>,
    pub lock_timeout: Option<Duration>,
    pub statement_timeout: Option<Duration>,
    pub dry_run: bool,
    pub max_replica_lag: Option<Duration>,
    pub max_lock_waiters: Option<u32>,
    pub throttle_on_vacuum: Option<bool>,
    pub max_transaction_age: Option<Duration>,
}

/// Options with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Effective {
    pub chunk_size: i64,
    pub target_chunk: Duration,
    pub min_chunk_size: i64,
    pub max_chunk_size: i64,
    pub max_rows_per_sec: Option<f64>,
    pub parallelism: usize,
    pub lock_timeout: Option<Duration>,
    pub statement_timeout: Option<Duration>,
    pub dry_run: bool,
    /// When the lanes wait for the target database.
    pub health: fleet_shared::health::HealthLimits,
}

const DAY: Duration = Duration::from_secs(24 * 3600);
const TEN_MINUTES: Duration = Duration::from_secs(600);

impl Options {
    /// Checks the options of a spec (durations in the fleet's one syntax, ranges).
    pub fn parse(raw: &CommonSpec, source: MappingSource) -> Result<Options, SpecError> {
        let options = Options {
            chunk_size: raw.chunk_size,
            target_chunk: fleet_shared::duration::renamed(
                "backfill spec",
                "target_chunk",
                duration_opt("target_chunk", &raw.target_chunk, TEN_MINUTES, source)?,
                "target_chunk_ms",
                raw.target_chunk_ms,
                Duration::from_millis(1),
            )
            .map_err(SpecError::Option)?,
            max_rows_per_sec: raw.max_rows_per_sec,
            parallelism: raw.parallelism,
            lock_timeout: duration_opt("lock_timeout", &raw.lock_timeout, DAY, source)?,
            statement_timeout: duration_opt(
                "statement_timeout",
                &raw.statement_timeout,
                DAY,
                source,
            )?,
            dry_run: raw.dry_run,
            max_replica_lag: duration_opt("max_replica_lag", &raw.max_replica_lag, DAY, source)?,
            max_lock_waiters: raw.max_lock_waiters,
            throttle_on_vacuum: raw.throttle_on_vacuum,
            max_transaction_age: duration_opt(
                "max_transaction_age",
                &raw.max_transaction_age,
                7 * DAY,
                source,
            )?,
        };
        if options.max_lock_waiters.is_some_and(|n| n > 10_000) {
            return Err(SpecError::Option(
                "max_lock_waiters: must be between 0 and 10000".into(),
            ));
        }
        if options
            .chunk_size
            .is_some_and(|c| !(1..=10_000_000).contains(&c))
        {
            return Err(SpecError::Option(
                "chunk_size: must be between 1 and 10000000".into(),
            ));
        }
        if options
            .target_chunk
            .is_some_and(|t| t.is_zero() || t > TEN_MINUTES)
        {
            return Err(SpecError::Option(
                "target_chunk: must be between 1ms and 10m".into(),
            ));
        }
        if options.parallelism.is_some_and(|p| !(1..=64).contains(&p)) {
            return Err(SpecError::Option(
                "parallelism: must be between 1 and 64".into(),
            ));
        }
        if options
            .max_rows_per_sec
            .is_some_and(|r| !(r.is_finite() && r > 0.0))
        {
            return Err(SpecError::Option(
                "max_rows_per_sec: must be a positive number".into(),
            ));
        }
        Ok(options)
    }

    pub fn effective(&self, cfg: &BackfillConfig) -> Effective {
        Effective {
            chunk_size: self
                .chunk_size
                .unwrap_or(cfg.chunk_size)
                .clamp(cfg.min_chunk_size, cfg.max_chunk_size),
            target_chunk: self.target_chunk.unwrap_or(cfg.target_chunk),
            min_chunk_size: cfg.min_chunk_size,
            max_chunk_size: cfg.max_chunk_size,
            max_rows_per_sec: self.max_rows_per_sec.or(cfg.max_rows_per_sec),
            parallelism: self.parallelism.unwrap_or(cfg.parallelism),
            lock_timeout: self.lock_timeout.or(cfg.lock_timeout),
            statement_timeout: self.statement_timeout.or(cfg.statement_timeout),
            dry_run: self.dry_run,
            health: fleet_shared::health::HealthLimits {
                max_replica_lag: self.max_replica_lag.or(cfg.health.max_replica_lag),
                max_lock_waiters: self.max_lock_waiters.or(cfg.health.max_lock_waiters),
                throttle_on_vacuum: self
                    .throttle_on_vacuum
                    .unwrap_or(cfg.health.throttle_on_vacuum),
                max_transaction_age: self.max_transaction_age.or(cfg.health.max_transaction_age),
            },
        }
    }
}

/// Parses a duration option written in the fleet's one syntax (`"500ms"`, `"2s"`, `"5m"`), at
/// most `max`. A bare number is refused at submit; a stored spec from the previous release may
/// still hold one (milliseconds then), so `source` [`MappingSource::Stored`] reads it that way.
fn duration_opt(
    name: &str,
    v: &Option<serde_json::Value>,
    max: Duration,
    source: MappingSource,
) -> Result<Option<Duration>, SpecError> {
    let Some(v) = v else { return Ok(None) };
    let d = match (v, source) {
        (serde_json::Value::String(s), _) => fleet_shared::duration::parse(s),
        (serde_json::Value::Number(n), MappingSource::Stored) if n.is_u64() => {
            Ok(Duration::from_millis(n.as_u64().unwrap_or_default()))
        }
        (other, _) => fleet_shared::duration::parse(&other.to_string()),
    }
    .map_err(|e| SpecError::Option(format!("{name}: {e}")))?;
    if d.is_zero() || d > max {
        return Err(SpecError::Option(format!(
            "{name}: must be between 1ms and {}",
            fleet_shared::duration::format(max)
        )));
    }
    Ok(Some(d))
}
