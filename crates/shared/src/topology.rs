//! JetStream topology: the three streams and the workers' durable pull consumers.
//!
//! [`ensure_streams`] is idempotent and safe to run from every process at start: a missing stream
//! is created; an existing one keeps its configuration (an operator's retention changes survive
//! upgrades) and only gains subjects it lacks, a duplicate window it needs, and replicas up to
//! `FLEET_STREAM_REPLICAS`.
//!
//! Replicas are only ever raised, never lowered: a fleet started with `FLEET_STREAM_REPLICAS=3`
//! on a cluster whose streams are R1 (they were created by a single-server fleet, or before the
//! variable was set) turns them into R3 streams at start. The server then copies every stored
//! message to the new replicas in the background (a catch-up the size of the stream; durable
//! consumers, which inherit the stream's replica count, follow). A process started with a lower
//! count (an old deployment still running) leaves a raised stream alone. See docs/SCALING.md.
//!
//! nats-server 2.9 allows one filter subject per consumer, so a worker that consumes several
//! subjects ([`ConsumerSpec`]) gets one durable per filter; replicas of the worker share them.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};

pub const EVENTS_STREAM: &str = "FLEET_EVENTS";
pub const JOBS_STREAM: &str = "FLEET_JOBS";
pub const DLQ_STREAM: &str = "FLEET_DLQ";

pub const EVENT_SUBJECTS: &[&str] = &["tenant.>", "org.>", "session.>"];
/// `backfill.progress.*` is deliberately not stored: snapshots are core-NATS messages (the
/// durable record is in Postgres), so a work-queue stream never fills with them.
pub const JOB_SUBJECTS: &[&str] = &[
    "backfill.submit",
    "backfill.control",
    "backfill.chunk.>",
    "jobs.>",
];
pub const DLQ_SUBJECTS: &[&str] = &["dlq.>"];

/// What the streams must provide beyond their defaults.
#[derive(Debug, Clone)]
pub struct Topology {
    pub replicas: usize,
    /// Subjects added to `FLEET_EVENTS` (from invalidation rules in `FLEET_CONFIG`).
    pub extra_event_subjects: Vec<String>,
    /// The least duplicate window `FLEET_JOBS` must have (the scheduler's largest spread).
    pub jobs_duplicate_window: Duration,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            replicas: 1,
            extra_event_subjects: Vec::new(),
            jobs_duplicate_window: Duration::from_secs(120),
        }
    }
}

fn stream_configs(t: &Topology) -> Vec<stream::Config> {
    let mut events: Vec<String> = EVENT_SUBJECTS.iter().map(|s| s.to_string()).collect();
    for s in &t.extra_event_subjects {
        if !events.contains(s) {
            events.push(s.clone());
        }
    }
    vec![
        stream::Config {
            name: EVENTS_STREAM.into(),
            description: Some("Domain events the fleet reacts to".into()),
            subjects: events,
            retention: stream::RetentionPolicy::Limits,
            max_age: Duration::from_secs(7 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            storage: stream::StorageType::File,
            num_replicas: t.replicas,
            ..Default::default()
        },
        stream::Config {
            name: JOBS_STREAM.into(),
            description: Some("Work items: backfill control and scheduled per-tenant jobs".into()),
            subjects: JOB_SUBJECTS.iter().map(|s| s.to_string()).collect(),
            retention: stream::RetentionPolicy::WorkQueue,
            max_age: Duration::from_secs(14 * 24 * 3600),
            duplicate_window: t.jobs_duplicate_window.max(Duration::from_secs(120)),
            storage: stream::StorageType::File,
            num_replicas: t.replicas,
            ..Default::default()
        },
        stream::Config {
            name: DLQ_STREAM.into(),
            description: Some(
                "Dead letters: original subject, payload and headers plus the reason".into(),
            ),
            subjects: DLQ_SUBJECTS.iter().map(|s| s.to_string()).collect(),
            retention: stream::RetentionPolicy::Limits,
            max_age: Duration::from_secs(30 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            storage: stream::StorageType::File,
            num_replicas: t.replicas,
            ..Default::default()
        },
    ]
}

/// Creates missing streams and widens existing ones where the fleet needs it.
pub async fn ensure_streams(js: &jetstream::Context, t: &Topology) -> anyhow::Result<()> {
    for wanted in stream_configs(t) {
        ensure_stream(js, wanted).await?;
    }
    Ok(())
}

async fn ensure_stream(js: &jetstream::Context, wanted: stream::Config) -> anyhow::Result<()> {
    let name = wanted.name.clone();
    match js.get_stream(&name).await {
        Ok(mut existing) => {
            let mut cfg = existing
                .info()
                .await
                .with_context(|| format!("Failed to read stream {name}"))?
                .config
                .clone();
            let mut changed = false;
            for s in &wanted.subjects {
                if !cfg.subjects.contains(s) {
                    cfg.subjects.push(s.clone());
                    changed = true;
                }
            }
            if cfg.duplicate_window < wanted.duplicate_window {
                cfg.duplicate_window = wanted.duplicate_window;
                changed = true;
            }
            if cfg.num_replicas < wanted.num_replicas {
                tracing::info!(stream = %name, from = cfg.num_replicas, to = wanted.num_replicas, "raising stream replicas");
                cfg.num_replicas = wanted.num_replicas;
                changed = true;
            }
            if changed {
                js.update_stream(&cfg)
                    .await
                    .with_context(|| format!("Failed to update stream {name}"))?;
                tracing::info!(stream = %name, replicas = cfg.num_replicas, "updated stream subjects/duplicate window/replicas");
            }
        }
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref js_err)
                    if js_err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            match js.create_stream(wanted).await {
                Ok(_) => tracing::info!(stream = %name, "created stream"),
                // Another process created it between our get and create.
                Err(_) if js.get_stream(&name).await.is_ok() => {}
                Err(e) => return Err(e).with_context(|| format!("Failed to create stream {name}")),
            }
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!("Failed to look up stream {name} (is JetStream enabled?)")
            })
        }
    }
    Ok(())
}

/// A durable pull consumer a worker reads from.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub stream: String,
    pub durable: String,
    pub filter_subject: String,
    pub ack_wait: Duration,
    /// The server-side bound. The worker dead-letters at its own, lower bound; this one only
    /// stops a poison message if every worker dies on it.
    pub max_deliver: i64,
    pub max_ack_pending: i64,
    /// The consumer's description (default: the subject it serves). When set, an existing
    /// consumer whose description differs is updated to it (the cache-invalidator lists its
    /// rules there for `fleetctl cache preview`).
    pub description: Option<String>,
}

impl ConsumerSpec {
    pub fn new(stream: &str, durable: &str, filter_subject: &str) -> Self {
        ConsumerSpec {
            stream: stream.into(),
            durable: durable.into(),
            filter_subject: filter_subject.into(),
            ack_wait: Duration::from_secs(30),
            max_deliver: 50,
            max_ack_pending: 10_000,
            description: None,
        }
    }
}

/// Creates the durable consumer if missing; an existing one is used as it is, but for its
/// description when the spec sets one.
pub async fn ensure_consumer(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
) -> anyhow::Result<consumer::PullConsumer> {
    let stream = js
        .get_stream(&spec.stream)
        .await
        .with_context(|| format!("Failed to look up stream {}", spec.stream))?;
    let cfg = consumer::pull::Config {
        durable_name: Some(spec.durable.clone()),
        description: Some(
            spec.description
                .clone()
                .unwrap_or_else(|| format!("fleet worker consumer for {}", spec.filter_subject)),
        ),
        filter_subject: spec.filter_subject.clone(),
        ack_policy: consumer::AckPolicy::Explicit,
        deliver_policy: consumer::DeliverPolicy::All,
        ack_wait: spec.ack_wait,
        max_deliver: spec.max_deliver,
        max_ack_pending: spec.max_ack_pending,
        ..Default::default()
    };
    let what = || {
        format!(
            "Failed to ensure consumer {} on {}",
            spec.durable, spec.stream
        )
    };
    let mut consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(&spec.durable, cfg.clone())
        .await
        .with_context(what)?;
    if spec.description.is_some() && consumer.cached_info().config.description != cfg.description {
        // The description is editable: a create with the same durable name updates it.
        use consumer::FromConsumer as _;
        let mut update =
            consumer::pull::Config::try_from_consumer_config(consumer.cached_info().config.clone())
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(what)?;
        update.description = cfg.description.clone();
        consumer = stream.create_consumer(update).await.with_context(what)?;
    }
    Ok(consumer)
}

/// Every durable consumer of the work streams (`FLEET_EVENTS`, `FLEET_JOBS`) with its stream's
/// name, as JetStream reports them now. A stream that does not exist yet has none.
pub async fn durable_consumers(
    js: &jetstream::Context,
) -> anyhow::Result<Vec<(&'static str, consumer::Info)>> {
    use futures::StreamExt as _;
    let mut out = Vec::new();
    for stream_name in [EVENTS_STREAM, JOBS_STREAM] {
        let Ok(stream) = js.get_stream(stream_name).await else {
            continue;
        };
        let mut infos = stream.consumers();
        while let Some(info) = infos.next().await {
            let info = info?;
            if info.config.durable_name.is_some() {
                out.push((stream_name, info));
            }
        }
    }
    Ok(out)
}
