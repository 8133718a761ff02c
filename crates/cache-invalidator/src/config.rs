//! The `[invalidation]` section of `FLEET_CONFIG`, as written by operators.
//!
//! Unknown keys are rejected (`deny_unknown_fields`) so a typo fails at start instead of silently
//! leaving a cache stale. Validation of what the values mean (templates, subjects, placeholders)
//! is in [`crate::rules`].

use serde::Deserialize;

pub const SECTION: &str = "invalidation";

/// Default handler concurrency: many events can wait on one pass, so this is high on purpose;
/// a waiting handler costs a few hundred bytes, not a Redis connection.
pub const DEFAULT_CONCURRENCY: usize = 1024;
/// `SCAN ... COUNT`: large, so a pass over a million keys is ~100 round trips, not 100,000.
pub const DEFAULT_SCAN_COUNT: usize = 10_000;
/// Keys per `UNLINK` command in a pipelined batch.
pub const DEFAULT_UNLINK_BATCH: usize = 1_000;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvalidationConfig {
    /// Keep the built-in rules (`org.updated` → `org:{org_code}:*`, `session.changed` →
    /// `sessions:{org_code}:*`). Default true.
    #[serde(default)]
    pub builtin_rules: Option<bool>,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    pub concurrency: Option<usize>,
    pub scan_count: Option<usize>,
    pub unlink_batch: Option<usize>,
}

/// One configured rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Names the rule in metrics, logs and errors (a `fleet_shared::Name`: `^[a-z0-9][a-z0-9_-]{0,63}$`).
    pub name: String,
    /// The event subject, e.g. `profile.updated` (no wildcards).
    pub subject: String,
    /// The code fields events on a *new* subject always carry (default `["org_code"]`). The
    /// built-in subjects' fields are fixed by the contract and cannot be declared.
    pub fields: Option<Vec<String>>,
    /// Key pattern templates, e.g. `mentors:{org_code}:*`.
    pub patterns: Vec<String>,
}

impl InvalidationConfig {
    pub fn concurrency(&self) -> usize {
        self.concurrency.unwrap_or(DEFAULT_CONCURRENCY).max(1)
    }

    pub fn scan_count(&self) -> usize {
        self.scan_count.unwrap_or(DEFAULT_SCAN_COUNT).max(1)
    }

    pub fn unlink_batch(&self) -> usize {
        self.unlink_batch.unwrap_or(DEFAULT_UNLINK_BATCH).max(1)
    }
}
