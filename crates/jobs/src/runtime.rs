//! The job runtime's loop: fetch into a bounded local buffer, hand out fairly, act on verdicts,
//! record outcomes, shut down gracefully.
//!
//! One durable pull consumer per task (`jobs-<task>` on `FLEET_JOBS`, filter `jobs.<task>.*`),
//! shared by every replica. The loop keeps at most `prefetch` messages (buffered plus in flight)
//! and fills the buffer with **no-wait fetches**: one request returns every message the consumer
//! has, up to the room left, and the whole batch is admitted to the [`FairQueue`] at once. That
//! is what makes the fairness independent of timing: a batch holding one tenant's 10,000 jobs and
//! 50 other tenants' single jobs hands out one job per tenant in turn, so each of the 50 is
//! handed out within the first 51 (with `per_tenant` = 1), however fast handlers are. When the
//! consumer has nothing, one long poll waits for the next message (at most [`IDLE_POLL`]), and
//! the rest that arrived with it are drained the same way.
//!
//! **The bound.** A job is handed out at most `T × per_tenant` hand-outs after it is admitted,
//! `T` being the tenants with buffered work. It is admitted with the first fetch that reaches
//! it: immediately if fewer than `prefetch` messages are ahead of it in the consumer, otherwise
//! after `ahead − prefetch` messages have been handled. So a tenant with a backlog of `B` jobs
//! delays another tenant's job by at most `max(0, B − prefetch) + T × per_tenant` messages.
//!
//! Buffered messages are unacknowledged on the server, so every `ack_wait / 3` the loop sends an
//! in-progress ack for those buffered longer than that (handlers' own messages get theirs from
//! the worker loop). The consumer's `max_ack_pending` is `prefetch + concurrency`.
//!
//! **Outcomes.** With a pool (and `record_outcomes`), a handled scheduled job's ack, NAK or TERM
//! is not sent by the handler task: its outcome goes to the [`Writer`], which stores a batch
//! with one statement and then settles the batch's messages. Those messages count against
//! `prefetch` until then. Jobs without a schedule (and every job without a pool) are settled
//! at once.
//!
//! Shutdown: stop fetching (an outstanding long poll is awaited and NAKed), NAK the buffer so
//! another replica takes it at once, let in-flight handlers finish for `shutdown_timeout`, then
//! let the writer store and ack their outcomes; what is still running then is redelivered after
//! its ack wait. A crash (kill -9) leaves every
//! message it held unacked: redelivered after `ack_wait`.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use fleet_shared::metrics::{Metrics, WorkerLabels};
use fleet_shared::retry::RetryPolicy;
use fleet_shared::topology::{ensure_consumer, ConsumerSpec, JOBS_STREAM};
use fleet_shared::worker::{HandleError, Incoming, Outcome, Processor, WorkerSpec};
use fleet_shared::{Fleet, Name};

use crate::fair::FairQueue;
use crate::job::{Job, JobHandler};
use crate::outcomes::{self, Record};
use crate::writer::Writer;

/// How long a fetch waits for the next message when the consumer has none.
pub const IDLE_POLL: Duration = Duration::from_secs(1);
pub const DEFAULT_PREFETCH: usize = 16_384;
pub const DEFAULT_PER_TENANT: usize = 1;

/// How a job consumer runs.
#[derive(Debug, Clone)]
pub struct RuntimeSpec {
    /// The verdict loop's settings (name, concurrency, attempts, backoff, shutdown timeout,
    /// size limits). Its one consumer is this task's.
    pub worker: WorkerSpec,
    /// The task (`jobs.<task>.<tenant_code>`).
    pub task: String,
    /// At most this many of one tenant's jobs are handled at once.
    pub per_tenant: usize,
    /// Most messages held at once (buffered + in flight).
    pub prefetch: usize,
    /// Record each scheduled job's outcome in `fleet.job_outcomes`.
    pub record_outcomes: bool,
}

impl RuntimeSpec {
    /// A spec for `task` with the defaults: concurrency 8, one job per tenant at a time,
    /// prefetch 16,384, ack wait 30 s, 20 attempts, outcomes recorded. The durable consumer is
    /// `jobs-<task>`, filtered to `jobs.<task>.*`.
    pub fn new(name: &str, task: &str) -> anyhow::Result<RuntimeSpec> {
        Name::parse(task).map_err(|e| anyhow::anyhow!("job task: {e}"))?;
        let consumer = ConsumerSpec::new(
            JOBS_STREAM,
            &format!("jobs-{task}"),
            &format!("jobs.{task}.*"),
        );
        Ok(RuntimeSpec {
            worker: WorkerSpec::new(name, vec![consumer]),
            task: task.to_owned(),
            per_tenant: DEFAULT_PER_TENANT,
            prefetch: DEFAULT_PREFETCH,
            record_outcomes: true,
        })
    }

    /// As [`RuntimeSpec::new`], with what the fleet's settings and server decide (shutdown
    /// timeout, `max_payload`, `FLEET_MAX_EVENT_BYTES`).
    pub fn for_fleet(fleet: &Fleet, name: &str, task: &str) -> anyhow::Result<RuntimeSpec> {
        let mut spec = RuntimeSpec::new(name, task)?;
        let consumers = spec.worker.consumers.clone();
        spec.worker = fleet.worker_spec(name, consumers, 1024 * 1024);
        Ok(spec)
    }

    pub fn consumer(&self) -> ConsumerSpec {
        let mut c = self.worker.consumers[0].clone();
        c.max_ack_pending = (self.prefetch + self.worker.concurrency) as i64;
        c
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    worker: String,
    task: String,
    outcome: String,
}

#[derive(Clone, Default)]
struct JobMetrics {
    buffered: Family<WorkerLabels, Gauge>,
    tenants_waiting: Family<WorkerLabels, Gauge>,
    unrecorded: Family<WorkerLabels, Gauge>,
    outcomes: Family<OutcomeLabels, Counter>,
}

type Registered = Vec<(Weak<Metrics>, JobMetrics)>;

/// Registers the runtime's families once per metrics registry (several runtimes may share one).
fn job_metrics(metrics: &Arc<Metrics>) -> JobMetrics {
    static REGISTERED: OnceLock<Mutex<Registered>> = OnceLock::new();
    let mut all = REGISTERED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    all.retain(|(w, _)| w.strong_count() > 0);
    if let Some((_, m)) = all
        .iter()
        .find(|(w, _)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(metrics)))
    {
        return m.clone();
    }
    let m = JobMetrics::default();
    metrics.register(|r| {
        r.register(
            "jobs_buffered",
            "Jobs fetched and waiting for their tenant's turn",
            m.buffered.clone(),
        );
        r.register(
            "jobs_tenants_waiting",
            "Tenants with buffered jobs",
            m.tenants_waiting.clone(),
        );
        r.register(
            "jobs_unrecorded",
            "Jobs handled whose outcome is not stored yet (so not acked yet)",
            m.unrecorded.clone(),
        );
        r.register(
            "job_outcomes",
            "Jobs handled by outcome (done, failed, dead_lettered)",
            m.outcomes.clone(),
        );
    });
    all.push((Arc::downgrade(metrics), m.clone()));
    m
}

struct Buffered {
    msg: jetstream::Message,
    since: Instant,
}

type Fetch = BoxFuture<'static, Vec<jetstream::Message>>;

/// Runs a job consumer on a connected fleet until `shutdown` is cancelled and in-flight jobs
/// have drained.
pub async fn run_fleet<J: JobHandler>(
    fleet: &Fleet,
    spec: RuntimeSpec,
    handler: Arc<J>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run(
        fleet.js.clone(),
        Some(fleet.pg.clone()),
        fleet.metrics.clone(),
        spec,
        handler,
        shutdown,
    )
    .await
}

/// Runs a job consumer until `shutdown` is cancelled and in-flight jobs have drained. Without
/// `pg`, outcomes are not recorded.
pub async fn run<J: JobHandler>(
    js: jetstream::Context,
    pg: Option<PgPool>,
    metrics: Arc<Metrics>,
    spec: RuntimeSpec,
    handler: Arc<J>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let jm = job_metrics(&metrics);
    let wl = WorkerLabels {
        worker: spec.worker.name.clone(),
    };
    let consumer_spec = spec.consumer();
    let ack_wait = consumer_spec.ack_wait;
    let pg = pg.filter(|_| spec.record_outcomes);
    let processor = Arc::new(Processor::new(
        js.clone(),
        metrics.clone(),
        spec.worker.clone(),
        Arc::new(Adapter { handler }),
    ));
    let Some(consumer) = open(&js, &consumer_spec, &shutdown).await else {
        return Ok(());
    };
    let (writer, writing) = match pg {
        Some(pg) => {
            let (w, task) = Writer::spawn(pg, ack_wait, spec.worker.retry_base);
            (Some(w), Some(task))
        }
        None => (None, None),
    };
    tracing::info!(
        worker = %spec.worker.name,
        task = %spec.task,
        durable = %consumer_spec.durable,
        concurrency = spec.worker.concurrency,
        per_tenant = spec.per_tenant,
        prefetch = spec.prefetch,
        "job runtime started"
    );

    let concurrency = spec.worker.concurrency.max(1);
    let mut fq: FairQueue<Buffered> = FairQueue::new(spec.per_tenant);
    // Handlers run as futures of this task, started in the order the fair queue hands them
    // out (spawned tasks would start in whatever order the scheduler picks, which on a busy
    // machine let one tenant's fast jobs run ahead of others handed out earlier).
    let mut tasks: FuturesUnordered<BoxFuture<'static, (String, Outcome)>> =
        FuturesUnordered::new();
    let mut fetching: Option<Fetch> = None;
    let mut progress = tokio::time::interval((ack_wait / 3).max(Duration::from_millis(100)));
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u32;

    loop {
        if fetching.is_none() {
            let held = fq.len() + tasks.len() + writer.as_ref().map_or(0, Writer::unsettled);
            let room = spec.prefetch.saturating_sub(held);
            if room > 0 {
                fetching = Some(fetch(consumer.clone(), room, failures).boxed());
            }
        }
        while tasks.len() < concurrency {
            let Some((tenant, b)) = fq.pop() else { break };
            let processor = processor.clone();
            let writer = writer.clone();
            let worker = spec.worker.name.clone();
            tasks.push(Box::pin(async move {
                let work = async {
                    let (incoming, outcome, settle) = processor.process_deferred(b.msg).await;
                    // A scheduled job is acked once its outcome is stored (the writer's
                    // batch); anything else at once.
                    let record = writer.as_ref().and_then(|_| {
                        let job = Job::parse(&incoming).ok()?;
                        Record::of(&worker, &job, incoming.delivered, &outcome)
                    });
                    match (&writer, record) {
                        (Some(w), Some(r)) => w.submit(r, settle).await,
                        _ => settle.send().await,
                    }
                    outcome
                };
                let outcome = AssertUnwindSafe(work)
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| Outcome::Retried {
                        retry_in: Duration::ZERO,
                        reason: "job runtime panicked".into(),
                    });
                (tenant, outcome)
            }));
        }
        jm.buffered.get_or_create(&wl).set(fq.len() as i64);
        jm.tenants_waiting
            .get_or_create(&wl)
            .set(fq.tenants_waiting() as i64);
        jm.unrecorded
            .get_or_create(&wl)
            .set(writer.as_ref().map_or(0, Writer::unsettled) as i64);

        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some((tenant, outcome)) = tasks.next(), if !tasks.is_empty() => {
                fq.done(&tenant);
                jm.outcomes.get_or_create(&OutcomeLabels {
                    worker: spec.worker.name.clone(),
                    task: spec.task.clone(),
                    outcome: outcomes::status(&outcome).to_owned(),
                }).inc();
            }
            _ = async { writer.as_ref().expect("guarded").settled().await }, if writer.is_some() => {}
            batch = async { fetching.as_mut().expect("guarded").await }, if fetching.is_some() => {
                fetching = None;
                failures = if batch.is_empty() { failures } else { 0 };
                admit(&mut fq, batch);
            }
            _ = progress.tick() => {
                let stale = Instant::now() - ack_wait / 3;
                for b in fq.iter_mut().filter(|b| b.since < stale) {
                    let _ = b.msg.ack_with(AckKind::Progress).await;
                    b.since = Instant::now();
                }
            }
        }
    }

    // Shutdown: stop fetching, hand the buffer back, let in-flight jobs finish.
    if let Some(f) = fetching.take() {
        if let Ok(batch) = tokio::time::timeout(IDLE_POLL * 2, f).await {
            for m in batch {
                let _ = m.ack_with(AckKind::Nak(None)).await;
            }
        }
    }
    let buffered = fq.drain();
    let handed_back = buffered.len();
    for b in buffered {
        let _ = b.msg.ack_with(AckKind::Nak(None)).await;
    }
    if !tasks.is_empty() || handed_back > 0 {
        tracing::info!(worker = %spec.worker.name, in_flight = tasks.len(), handed_back, "job runtime stopping; waiting for in-flight jobs");
    }
    let drained = tokio::time::timeout(spec.worker.shutdown_timeout, async {
        while tasks.next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(worker = %spec.worker.name, left = tasks.len(), "shutdown timeout passed; unfinished jobs will be redelivered");
    }
    // Unfinished handlers are dropped (their messages come back after the ack wait); the writer
    // stores and acks what finished, then stops.
    drop(tasks);
    drop(writer);
    if let Some(mut w) = writing {
        if tokio::time::timeout(WRITER_FLUSH, &mut w).await.is_err() {
            // Still retrying (the database is away): stop it; its jobs stay unacked.
            w.abort();
            tracing::warn!(worker = %spec.worker.name, "job outcomes still not stored; their jobs will be redelivered");
        }
    }
    jm.buffered.get_or_create(&wl).set(0);
    jm.tenants_waiting.get_or_create(&wl).set(0);
    jm.unrecorded.get_or_create(&wl).set(0);
    tracing::info!(worker = %spec.worker.name, "job runtime stopped");
    Ok(())
}

/// How long shutdown waits for the outcome writer's last batches (its retries included).
const WRITER_FLUSH: Duration = Duration::from_secs(10);

const RECONNECT: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(400), Duration::from_secs(10));

async fn open(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    shutdown: &CancellationToken,
) -> Option<PullConsumer> {
    let mut failures = 0;
    loop {
        match ensure_consumer(js, spec).await {
            Ok(c) => return Some(c),
            Err(e) => {
                failures += 1;
                tracing::warn!(durable = %spec.durable, error = %fleet_shared::errors::one_line(&format!("{e:#}")), "job consumer unavailable; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(RECONNECT.delay(failures)) => {}
                }
            }
        }
    }
}

/// Admits one fetched batch; the tenant is the subject's last token.
fn admit(fq: &mut FairQueue<Buffered>, batch: Vec<jetstream::Message>) {
    let now = Instant::now();
    for msg in batch {
        let tenant = msg
            .subject
            .as_str()
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_owned();
        fq.push(&tenant, Buffered { msg, since: now });
    }
}

/// Everything the consumer has now, up to `room`; if it has nothing, waits up to [`IDLE_POLL`]
/// for the next message and drains what came with it. Errors are logged and retried after a
/// backoff (an empty batch).
async fn fetch(consumer: PullConsumer, room: usize, failures: u32) -> Vec<jetstream::Message> {
    let mut out = Vec::new();
    let res: anyhow::Result<()> = async {
        collect(
            &mut out,
            consumer.fetch().max_messages(room).messages().await?,
        )
        .await;
        if out.is_empty() {
            collect(
                &mut out,
                consumer
                    .batch()
                    .max_messages(1)
                    .expires(IDLE_POLL)
                    .messages()
                    .await?,
            )
            .await;
            if !out.is_empty() && room > 1 {
                collect(
                    &mut out,
                    consumer.fetch().max_messages(room - 1).messages().await?,
                )
                .await;
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = res {
        tracing::warn!(error = %fleet_shared::errors::one_line(&format!("{e:#}")), "job fetch failed; retrying");
        tokio::time::sleep(RECONNECT.delay(failures + 1)).await;
    }
    out
}

async fn collect(out: &mut Vec<jetstream::Message>, mut batch: jetstream::consumer::pull::Batch) {
    while let Some(m) = batch.next().await {
        match m {
            Ok(m) => out.push(m),
            Err(e) => {
                tracing::debug!(error = %e, "fetch ended");
                break;
            }
        }
    }
}

/// Adapts a [`JobHandler`] to the shared worker loop's handler: parses the job (bad input is
/// dead-lettered before the handler sees it).
pub(crate) struct Adapter<J> {
    pub handler: std::sync::Arc<J>,
}

impl<J: JobHandler> fleet_shared::worker::Handler for Adapter<J> {
    async fn handle(&self, msg: &Incoming) -> Result<(), HandleError> {
        let job = Job::parse(msg)?;
        tracing::Span::current().record("tenant.code", job.tenant_code.as_str());
        self.handler.handle(&job).await
    }
}
