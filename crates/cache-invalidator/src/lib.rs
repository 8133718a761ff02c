//! The cache-invalidator worker: clears tenant cache keys when org, session (and configured)
//! events arrive, safely and in bulk.
//!
//! - [`rules`]: subject → key pattern templates; checked at start, values validated as codes
//!   and glob-escaped at run time.
//! - [`handler`]: one message: rules → patterns → wait for a pass → ack (or DLQ / NAK).
//! - [`pass`]: the coalescing pass loop and the ack guarantee (a message is acked only after a
//!   pass that started after its arrival finished).
//! - [`matcher`]: one compiled set of every queued pattern, checked per key with hash lookups.
//! - [`keyspace`]: `SCAN` + pipelined `UNLINK` on every master (single server or Redis Cluster).
//! - [`metrics`]: keys deleted per rule, pass duration, patterns per pass, queue depth.
//! - [`receipt`]: the `cache.invalidated` receipt each pass announces.
//!
//! Never `KEYS`, never `FLUSHDB`. See docs/cache-invalidator.md.

pub mod config;
pub mod glob;
pub mod handler;
pub mod keyspace;
pub mod matcher;
pub mod metrics;
pub mod pass;
pub mod receipt;
pub mod rules;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fleet_shared::config::Settings;
use fleet_shared::topology::{ensure_streams, ConsumerSpec, Topology, EVENTS_STREAM};
use fleet_shared::{Code, Fleet};
use tokio_util::sync::CancellationToken;

use crate::config::{InvalidationConfig, SECTION};
use crate::handler::InvalidateHandler;
use crate::keyspace::Keyspace;
use crate::matcher::MatchSet;
use crate::metrics::CacheMetrics;
use crate::pass::Passes;
use crate::rules::RuleSet;

/// Largest `org.updated`/`session.changed` payload read; larger ones are dead-lettered unread.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
pub const NAME: &str = "cache-invalidator";
/// Whether `/readyz` of this worker's binary checks Redis.
pub const USES_REDIS: bool = true;

/// Reads and checks the `[invalidation]` section; the error is one line naming the problem.
pub fn load(settings: &Settings) -> anyhow::Result<(InvalidationConfig, RuleSet)> {
    let cfg: InvalidationConfig = settings.file.section(SECTION)?.unwrap_or_default();
    let rules = RuleSet::build(&cfg)?;
    Ok((cfg, rules))
}

/// The durable consumer of one subject (nats-server 2.9: one filter per consumer).
pub fn durable_name(subject: &str) -> String {
    format!("{NAME}-{}", subject.replace('.', "_"))
}

/// How a subject's durable consumer describes itself: the names of the rules the running
/// invalidator applies to that subject, so `fleetctl cache preview` can name every one it lacks.
/// (Rule names are [`fleet_shared::Name`]s: no spaces.)
/// NATS refuses a description over 4,096 bytes: a list that would not fit is left out, and
/// preview then treats the subject as a whole, as for an invalidator that listed nothing.
pub fn consumer_description(subject: &str, rule_names: &[&str]) -> String {
    let listed = format!("{RULES_PREFIX}{subject}: {}", rule_names.join(" "));
    if listed.len() <= MAX_DESCRIPTION {
        listed
    } else {
        format!(
            "cache-invalidator consumer for {subject} ({} rules, too many to list)",
            rule_names.len()
        )
    }
}

const RULES_PREFIX: &str = "cache-invalidator rules for ";
/// Below the server's 4,096-byte limit on a consumer's description.
const MAX_DESCRIPTION: usize = 4_000;

/// The rule names a consumer's description lists ([`consumer_description`]); `None` for a
/// consumer made by an invalidator that did not list them (or had too many to list).
pub fn rules_in_description(description: &str) -> Option<Vec<String>> {
    let (_, names) = description.strip_prefix(RULES_PREFIX)?.split_once(": ")?;
    Some(names.split_whitespace().map(str::to_owned).collect())
}

fn consumers(rules: &RuleSet) -> anyhow::Result<Vec<ConsumerSpec>> {
    let mut out: Vec<ConsumerSpec> = Vec::new();
    for s in &rules.subjects {
        let durable = durable_name(&s.subject);
        if let Some(other) = out.iter().find(|c| c.durable == durable) {
            anyhow::bail!(
                "FLEET_CONFIG [invalidation]: subjects {} and {} map to the same consumer name {durable}; rename one",
                other.filter_subject,
                s.subject
            );
        }
        let names: Vec<&str> = s
            .rules
            .iter()
            .map(|&i| rules.rules[i].name.as_str())
            .collect();
        let mut spec = ConsumerSpec::new(EVENTS_STREAM, &durable, &s.subject);
        spec.description = Some(consumer_description(&s.subject, &names));
        out.push(spec);
    }
    // A deleted tenant's cache: every rule keyed by `org_code` alone, for the tenant's org.
    let deleted = fleet_shared::events::TENANT_LIFECYCLE_DELETED;
    if !out.iter().any(|c| c.filter_subject == deleted) {
        out.push(ConsumerSpec::new(
            EVENTS_STREAM,
            &durable_name(deleted),
            deleted,
        ));
    }
    Ok(out)
}

/// Runs the worker until `shutdown` is cancelled.
pub async fn run(fleet: Fleet, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (cfg, rules) = load(&fleet.settings)?;
    let consumers = consumers(&rules)?;
    let extra = rules.extra_subjects();
    if !extra.is_empty() {
        // Configured subjects outside tenant.>/org.>/session.> must be captured by the stream.
        let topology = Topology {
            replicas: fleet.settings.stream_replicas,
            extra_event_subjects: extra,
            ..Topology::default()
        };
        // Waited for like at connect (a NATS cluster electing leaders after a node failure).
        fleet_shared::fleet::retry_until(fleet.settings.connect_timeout, "JetStream", || {
            ensure_streams(&fleet.js, &topology)
        })
        .await?;
    }
    let metrics = CacheMetrics::register(&fleet.metrics);
    let keyspace = Keyspace::new(fleet.redis.clone(), cfg.scan_count(), cfg.unlink_batch());
    let names = rules.rules.iter().map(|r| r.name.clone()).collect();
    let (passes, pass_loop) = Passes::start(keyspace, names, metrics, Some(fleet.nats.clone()));
    tracing::info!(
        rules = rules.rules.len(),
        subjects = ?rules.subjects.iter().map(|s| s.subject.as_str()).collect::<Vec<_>>(),
        "cache invalidation rules loaded"
    );

    let mut spec = fleet.worker_spec(NAME, consumers, MAX_EVENT_BYTES);
    spec.concurrency = cfg.concurrency();
    let handler = InvalidateHandler {
        rules: Arc::new(rules),
        passes,
    };
    let res = fleet_shared::worker::run(
        fleet.js.clone(),
        fleet.metrics.clone(),
        spec,
        Arc::new(handler),
        shutdown,
    )
    .await;
    // The loop ends once the last handler (and with it the last `Passes`) is gone.
    let _ = tokio::time::timeout(Duration::from_secs(5), pass_loop).await;
    res
}

/// What `fleetctl cache preview` shows: per rule, its patterns for one org and how many keys
/// they match now.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PreviewRow {
    pub rule: String,
    pub subject: String,
    pub patterns: Vec<String>,
    pub keys: u64,
}

/// Counts, per rule, the keys an invalidation of `org` would delete; deletes nothing.
pub async fn preview(settings: &Settings, org: &Code) -> anyhow::Result<Vec<PreviewRow>> {
    let (cfg, rules) = load(settings)?;
    let target = settings.redis.clone();
    let patterns = rules.patterns_for_org(org);
    let set = MatchSet::new(&patterns);
    let mut keyspace = Keyspace::new(target, cfg.scan_count(), cfg.unlink_batch());
    let report = keyspace.count(&set).await?;
    let mut rows: BTreeMap<usize, PreviewRow> = BTreeMap::new();
    for p in &patterns {
        let r = &rules.rules[p.rule];
        let row = rows.entry(p.rule).or_insert_with(|| PreviewRow {
            rule: r.name.clone(),
            subject: r.subject.clone(),
            patterns: Vec::new(),
            keys: report.per_rule.get(&p.rule).copied().unwrap_or(0),
        });
        row.patterns.push(p.glob.clone());
    }
    Ok(rows.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_list_too_long_for_a_consumer_description_is_left_out() {
        let names: Vec<String> = (0..80)
            .map(|i| format!("rule_{i:02}_{}", "x".repeat(50)))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let d = consumer_description("org.updated", &names);
        assert!(d.len() <= MAX_DESCRIPTION, "{}", d.len());
        assert_eq!(rules_in_description(&d), None);
        let d = consumer_description("org.updated", &names[..3]);
        assert_eq!(rules_in_description(&d).map(|v| v.len()), Some(3));
    }
}
