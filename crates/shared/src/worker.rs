//! The worker loop every worker reuses.
//!
//! A worker is a [`Handler`] plus a [`WorkerSpec`]. [`run`] pulls from the worker's durable
//! consumers and decides each message's fate from the handler's result:
//!
//! | handler result | action |
//! |---|---|
//! | `Ok(())` | ack (the handler has committed its effect) |
//! | [`HandleError::Invalid`] (bad input) | dead letter with the reason, then TERM |
//! | [`HandleError::Transient`] | NAK with exponential backoff and jitter; after `max_attempts`, dead letter + TERM |
//! | panic | treated as transient |
//!
//! Guarantees: at most `concurrency` messages are handled at once (a permit is taken before the
//! next message is pulled); a handler that runs long keeps its message with in-progress acks; a
//! message whose deliveries keep dying without a verdict (the process crashed or hung) is
//! dead-lettered once its delivery count passes `max_attempts`. A payload larger than
//! `max_event_bytes` is dead-lettered unread (never parsed). Letters are sized to fit the server
//! (see [`crate::dlq`]); if the dead-letter stream still cannot take one, the message is NAKed
//! (at least [`DLQ_RETRY_MIN`] apart) and, after [`DLQ_GIVE_UP_AFTER`] deliveries, terminated with
//! an error log and `fleet_dlq_publish_failures_total`, so no message can hold a permit forever.
//! A loop that fetches its own messages can use [`Processor::process_deferred`] to send the
//! ack, NAK or TERM ([`Settle`]) later, after its own bookkeeping has committed (the job runtime
//! acks a job only once its outcome is stored).
//! On shutdown the loop stops pulling, NAKs
//! what it had prefetched so other replicas get it within seconds, and lets in-flight handlers finish for
//! `shutdown_timeout`; whatever is still running then is redelivered after its ack wait.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{field::Empty, Instrument};

use crate::dlq;
use crate::events::BadInput;
use crate::metrics::{event_label, EventLabels, Metrics, WorkerLabels};
use crate::publish::{MSG_ID, TRACEPARENT};
use crate::retry::RetryPolicy;
use crate::topology::{ensure_consumer, ConsumerSpec};

/// A delivered message, as a handler sees it.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub subject: String,
    pub payload: Bytes,
    pub headers: Option<HeaderMap>,
    pub stream_seq: u64,
    /// 1 on the first delivery.
    pub delivered: i64,
}

impl Incoming {
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::publish::header_value(self.headers.as_ref()?, name)
    }

    pub fn msg_id(&self) -> Option<&str> {
        self.header(MSG_ID)
    }

    pub fn traceparent(&self) -> Option<&str> {
        self.header(TRACEPARENT)
    }
}

/// Why a handler did not finish. The variant decides retry or dead letter.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The message can never succeed (bad input, a conflict): dead-lettered at once.
    #[error("{0}")]
    Invalid(String),
    /// A dependency failed; retried with backoff.
    #[error("{0:#}")]
    Transient(anyhow::Error),
}

impl HandleError {
    pub fn invalid(reason: impl Into<String>) -> Self {
        HandleError::Invalid(crate::errors::one_line(&reason.into()))
    }
}

impl From<BadInput> for HandleError {
    fn from(b: BadInput) -> Self {
        HandleError::Invalid(b.0)
    }
}

/// What a worker does with one message. Must be idempotent: a message can be delivered again
/// after its effect committed (the ack was lost).
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, msg: &Incoming) -> impl Future<Output = Result<(), HandleError>> + Send;
}

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub name: String,
    pub consumers: Vec<ConsumerSpec>,
    pub concurrency: usize,
    /// Deliveries after which a transient failure is dead-lettered.
    pub max_attempts: i64,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub shutdown_timeout: Duration,
    /// Payloads larger than this are dead-lettered before the handler sees them.
    pub max_event_bytes: usize,
    /// The server's `max_payload`: every dead letter is sized to fit it.
    pub max_payload: usize,
}

/// The default of [`WorkerSpec::max_event_bytes`].
pub const DEFAULT_MAX_EVENT_BYTES: usize = 256 * 1024;
/// Deliveries after which a message whose dead letter cannot be stored is terminated.
pub const DLQ_GIVE_UP_AFTER: i64 = 5;
/// Shortest NAK delay after a failed dead-letter publish.
pub const DLQ_RETRY_MIN: Duration = Duration::from_secs(2);

impl WorkerSpec {
    pub fn new(name: &str, consumers: Vec<ConsumerSpec>) -> Self {
        WorkerSpec {
            name: name.into(),
            consumers,
            concurrency: 8,
            max_attempts: 20,
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(30),
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            max_payload: 1024 * 1024,
        }
    }

    /// The NAK delay after the `delivered`-th failure: from `retry_base` doubling up to
    /// `retry_max`, jittered (see [`RetryPolicy`]).
    pub fn retry_delay(&self, delivered: i64) -> Duration {
        RetryPolicy::new(self.retry_base, self.retry_max)
            .with_jitter()
            .delay(delivered.clamp(1, 30) as u32)
    }
}

/// What became of one message: the verdict acted on (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The handler succeeded; the message was acked.
    Acked,
    /// A transient failure; NAKed, to be redelivered after `retry_in`.
    Retried { retry_in: Duration, reason: String },
    /// Bad input or attempts spent: dead-lettered (or, when even that failed too often,
    /// terminated without a letter) and TERMed.
    DeadLettered { reason: String },
}

/// The verdict half of the worker loop, for loops that fetch their own messages (the job
/// runtime, which fetches for per-tenant fairness): runs the handler with in-progress acks and
/// acts on its result exactly as [`run`] does.
pub struct Processor<H> {
    js: jetstream::Context,
    metrics: Arc<Metrics>,
    spec: WorkerSpec,
    handler: Arc<H>,
}

impl<H: Handler> Processor<H> {
    pub fn new(
        js: jetstream::Context,
        metrics: Arc<Metrics>,
        spec: WorkerSpec,
        handler: Arc<H>,
    ) -> Self {
        Processor {
            js,
            metrics,
            spec,
            handler,
        }
    }

    pub fn spec(&self) -> &WorkerSpec {
        &self.spec
    }

    /// Handles one message and acks, NAKs or dead-letters it; returns what was done.
    pub async fn process(&self, msg: jetstream::Message) -> (Incoming, Outcome) {
        let (incoming, outcome, settle) = process(self, msg).await;
        settle.send().await;
        (incoming, outcome)
    }

    /// As [`Processor::process`] (the handler runs, a dead letter is published), except that
    /// the server is not told yet: the caller sends the returned [`Settle`] (the ack, NAK or
    /// TERM) once its own part is done, e.g. the job runtime once the job's outcome is stored.
    /// Until then the message stays unacknowledged, so a crash redelivers it.
    pub async fn process_deferred(&self, msg: jetstream::Message) -> (Incoming, Outcome, Settle) {
        process(self, msg).await
    }
}

/// The ack, NAK or TERM a verdict decided, not yet sent (see [`Processor::process_deferred`]).
pub struct Settle {
    msg: jetstream::Message,
    kind: SettleKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SettleKind {
    Ack,
    Nak(Duration),
    Term,
}

impl std::fmt::Debug for Settle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settle")
            .field("subject", &self.msg.subject)
            .field("kind", &self.kind)
            .finish()
    }
}

impl Settle {
    /// Tells the server what the verdict decided. A lost ack or NAK only means a redelivery.
    pub async fn send(self) {
        let res = match self.kind {
            SettleKind::Ack => self.msg.ack().await,
            SettleKind::Nak(d) => self.msg.ack_with(AckKind::Nak(Some(d))).await,
            SettleKind::Term => self.msg.ack_with(AckKind::Term).await,
        };
        if let Err(e) = res {
            tracing::warn!(subject = %self.msg.subject, error = %e, kind = ?self.kind, "ack failed; the message will be redelivered after its ack wait");
        }
    }

    /// Tells the server the message is still being worked on (its ack wait starts again); the
    /// verdict is sent later.
    pub async fn progress(&self) {
        if let Err(e) = self.msg.ack_with(AckKind::Progress).await {
            tracing::debug!(subject = %self.msg.subject, error = %e, "in-progress ack failed");
        }
    }

    /// Hands the message back for redelivery after `delay` instead of the verdict's ack (the
    /// caller could not finish its part); the redelivery is handled again.
    pub async fn redeliver(self, delay: Duration) {
        Settle {
            kind: SettleKind::Nak(delay),
            ..self
        }
        .send()
        .await
    }
}

type Ctx<H> = Processor<H>;

/// Runs the worker until `shutdown` is cancelled and in-flight work has drained.
pub async fn run<H: Handler>(
    js: jetstream::Context,
    metrics: Arc<Metrics>,
    spec: WorkerSpec,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !spec.consumers.is_empty(),
        "worker {} has no consumer",
        spec.name
    );
    let sem = Arc::new(Semaphore::new(spec.concurrency.max(1)));
    let tracker = TaskTracker::new();
    let ctx = Arc::new(Processor::new(js, metrics, spec.clone(), handler));
    tracing::info!(worker = %spec.name, concurrency = spec.concurrency, "worker started");

    let fetchers: Vec<_> = spec
        .consumers
        .iter()
        .cloned()
        .map(|c| {
            tokio::spawn(fetch_loop(
                ctx.clone(),
                c,
                sem.clone(),
                tracker.clone(),
                shutdown.clone(),
            ))
        })
        .collect();
    for f in fetchers {
        if let Err(e) = f.await {
            tracing::error!(worker = %spec.name, error = %e, "fetch loop panicked");
        }
    }

    tracker.close();
    let in_flight = tracker.len();
    if in_flight > 0 {
        tracing::info!(worker = %spec.name, in_flight, "waiting for in-flight messages");
    }
    if tokio::time::timeout(spec.shutdown_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            worker = %spec.name,
            left = tracker.len(),
            "shutdown timeout passed; unfinished messages will be redelivered"
        );
    }
    tracing::info!(worker = %spec.name, "worker stopped");
    Ok(())
}

async fn fetch_loop<H: Handler>(
    ctx: Arc<Ctx<H>>,
    consumer: ConsumerSpec,
    sem: Arc<Semaphore>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let mut failures: u32 = 0;
    'outer: while !shutdown.is_cancelled() {
        let pull = match ensure_consumer(&ctx.js, &consumer).await {
            Ok(c) => c,
            Err(e) => {
                failures += 1;
                tracing::warn!(durable = %consumer.durable, error = %format!("{e:#}"), "consumer unavailable; retrying");
                if sleep_or_cancel(reconnect_delay(failures), &shutdown).await {
                    break;
                }
                continue;
            }
        };
        // At least 2: with a batch of 1, async-nats 0.42 can count a pull request's reply after
        // the message it delivered, believe one message is still owed and send no new pull
        // request, stalling the consumer until the missed-heartbeat error (10 s) re-subscribes.
        let batch = ctx.spec.concurrency.clamp(2, 256);
        let mut messages = match pull
            .stream()
            .max_messages_per_batch(batch)
            .heartbeat(PULL_HEARTBEAT)
            .expires(PULL_EXPIRES)
            .messages()
            .await
        {
            Ok(m) => m,
            Err(e) => {
                failures += 1;
                tracing::warn!(durable = %consumer.durable, error = %e, "cannot pull; retrying");
                if sleep_or_cancel(reconnect_delay(failures), &shutdown).await {
                    break;
                }
                continue;
            }
        };
        loop {
            let permit = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    release_prefetched(&mut messages).await;
                    break 'outer;
                }
                p = sem.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break 'outer,
                },
            };
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    release_prefetched(&mut messages).await;
                    break 'outer;
                }
                n = messages.next() => n,
            };
            match next {
                Some(Ok(msg)) => {
                    failures = 0;
                    let ctx = ctx.clone();
                    tracker.spawn(async move {
                        ctx.process(msg).await;
                        drop(permit);
                    });
                }
                Some(Err(e)) => {
                    failures += 1;
                    tracing::warn!(durable = %consumer.durable, error = %e, "pull stream error; re-subscribing");
                    if sleep_or_cancel(reconnect_delay(failures), &shutdown).await {
                        break 'outer;
                    }
                    continue 'outer;
                }
                None => continue 'outer,
            }
        }
    }
}

/// How long a pull request lives on the server. Requests outlive the client's subscription, so
/// this bounds how long a stopped replica's requests can still swallow messages.
const PULL_EXPIRES: Duration = Duration::from_secs(10);
const PULL_HEARTBEAT: Duration = Duration::from_secs(3);

/// NAKs messages that were pulled but not started, so another replica takes them long before
/// their ack wait. The NAK is delayed past [`PULL_EXPIRES`]: an immediate redelivery would go to
/// this replica's own pull requests, still open on the server, and sit there unacked.
async fn release_prefetched(messages: &mut jetstream::consumer::pull::Stream) {
    let deadline = Instant::now() + Duration::from_secs(1);
    let delay = PULL_EXPIRES + Duration::from_secs(1);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(50), messages.next()).await {
            Ok(Some(Ok(m))) => {
                let _ = m.ack_with(AckKind::Nak(Some(delay))).await;
            }
            _ => break,
        }
    }
}

/// Between attempts to re-create a consumer or its pull stream.
const RECONNECT: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(400), Duration::from_secs(10));

fn reconnect_delay(failures: u32) -> Duration {
    RECONNECT.delay(failures)
}

/// Sleeps; returns true if cancelled first.
async fn sleep_or_cancel(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

async fn process<H: Handler>(ctx: &Ctx<H>, msg: jetstream::Message) -> (Incoming, Outcome, Settle) {
    let (stream_seq, delivered) = match msg.info() {
        Ok(i) => (i.stream_sequence, i.delivered),
        Err(_) => (0, 1),
    };
    let incoming = Incoming {
        subject: msg.subject.to_string(),
        payload: msg.payload.clone(),
        headers: msg.headers.clone(),
        stream_seq,
        delivered,
    };
    let span = tracing::info_span!(
        "message",
        worker = %ctx.spec.name,
        subject = %incoming.subject,
        stream.seq = stream_seq,
        delivery = delivered,
        msg.id = incoming.msg_id().unwrap_or(""),
        tenant.code = Empty,
    );
    async {
        let labels = EventLabels {
            worker: ctx.spec.name.clone(),
            event: event_label(&incoming.subject),
        };
        let m = &ctx.metrics.worker;
        m.received.get_or_create(&labels).inc();
        let wl = WorkerLabels {
            worker: ctx.spec.name.clone(),
        };
        m.in_flight.get_or_create(&wl).inc();

        let verdict = if incoming.payload.len() > ctx.spec.max_event_bytes {
            Err(HandleError::Invalid(format!(
                "{}: payload of {} bytes is larger than this worker's limit of {} bytes (FLEET_MAX_EVENT_BYTES); not read",
                event_label(&incoming.subject),
                incoming.payload.len(),
                ctx.spec.max_event_bytes
            )))
        } else if delivered > ctx.spec.max_attempts {
            Err(HandleError::Invalid(format!(
                "gave up: delivered {delivered} times without completing (the worker crashed or exceeded the ack wait each time)"
            )))
        } else {
            let started = Instant::now();
            let res = handle_with_progress(ctx, &msg, &incoming).await;
            m.handler_seconds
                .get_or_create(&wl)
                .observe(started.elapsed().as_secs_f64());
            res
        };
        let (outcome, kind) = decide(ctx, &incoming, &labels, verdict).await;
        m.in_flight.get_or_create(&wl).dec();
        (incoming, outcome, Settle { msg, kind })
    }
    .instrument(span)
    .await
}

/// Runs the handler, sending an in-progress ack every third of the ack wait so a long handler
/// keeps its message, and turning a panic into a transient error.
async fn handle_with_progress<H: Handler>(
    ctx: &Ctx<H>,
    msg: &jetstream::Message,
    incoming: &Incoming,
) -> Result<(), HandleError> {
    let ack_wait = ctx
        .spec
        .consumers
        .iter()
        .map(|c| c.ack_wait)
        .min()
        .unwrap_or(Duration::from_secs(30));
    let fut = AssertUnwindSafe(ctx.handler.handle(incoming)).catch_unwind();
    tokio::pin!(fut);
    // The first in-progress ack is due a third of the ack wait from now. (`interval`'s own
    // first tick is immediate only in name: it waits for the timer's next millisecond, which
    // would add up to 1 ms to every message.)
    let period = ack_wait / 3;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            res = &mut fut => {
                return res.unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    Err(HandleError::Transient(anyhow::anyhow!("handler panicked: {what}")))
                });
            }
            _ = tick.tick() => {
                if let Err(e) = msg.ack_with(AckKind::Progress).await {
                    tracing::debug!(error = %e, "in-progress ack failed");
                }
            }
        }
    }
}

/// Acts on the verdict (publishes the dead letter) and says what the server is to be told.
/// Each branch logs and counts in one place (see module docs of metrics).
async fn decide<H: Handler>(
    ctx: &Ctx<H>,
    incoming: &Incoming,
    labels: &EventLabels,
    verdict: Result<(), HandleError>,
) -> (Outcome, SettleKind) {
    let m = &ctx.metrics.worker;
    let reason = match verdict {
        Ok(()) => {
            // The effect is committed; if this ack is lost the message comes back and the
            // handler finds its record and acks again.
            m.acked.get_or_create(labels).inc();
            tracing::debug!("acked");
            return (Outcome::Acked, SettleKind::Ack);
        }
        Err(HandleError::Transient(e)) if incoming.delivered < ctx.spec.max_attempts => {
            let delay = ctx.spec.retry_delay(incoming.delivered);
            m.retried.get_or_create(labels).inc();
            let reason = crate::errors::one_line(&format!("{e:#}"));
            tracing::warn!(error = %reason, retry_in = ?delay, "transient failure; will retry");
            return (
                Outcome::Retried {
                    retry_in: delay,
                    reason,
                },
                SettleKind::Nak(delay),
            );
        }
        Err(HandleError::Transient(e)) => crate::errors::one_line(&format!(
            "gave up after {} attempts: {e:#}",
            incoming.delivered
        )),
        Err(HandleError::Invalid(reason)) => reason,
    };

    let stored = dlq::dead_letter(
        &ctx.js,
        dlq::Failure {
            worker: &ctx.spec.name,
            subject: &incoming.subject,
            headers: incoming.headers.as_ref(),
            payload: incoming.payload.clone(),
            stream_seq: incoming.stream_seq,
            delivered: incoming.delivered,
            reason: &reason,
            max_payload: ctx.spec.max_payload,
        },
    )
    .await;
    let reason = dlq::bound_reason(&reason);
    match stored {
        Ok(()) => {
            // A TERM that is lost brings the message back: dead-lettered again (deduplicated).
            m.dead_lettered.get_or_create(labels).inc();
            tracing::warn!(reason = %reason, "dead-lettered");
            (Outcome::DeadLettered { reason }, SettleKind::Term)
        }
        Err(e) => {
            let wl = WorkerLabels {
                worker: ctx.spec.name.clone(),
            };
            m.dlq_publish_failures.get_or_create(&wl).inc();
            if incoming.delivered >= DLQ_GIVE_UP_AFTER.min(ctx.spec.max_attempts) {
                // Bounded: a letter the stream keeps refusing must not hold a permit forever.
                tracing::error!(
                    error = %crate::errors::one_line(&format!("{e:#}")),
                    reason = %reason,
                    payload_bytes = incoming.payload.len(),
                    "could not dead-letter after {} deliveries; message terminated without a letter",
                    incoming.delivered
                );
                (Outcome::DeadLettered { reason }, SettleKind::Term)
            } else {
                let delay = ctx.spec.retry_delay(incoming.delivered).max(DLQ_RETRY_MIN);
                m.retried.get_or_create(labels).inc();
                tracing::error!(error = %crate::errors::one_line(&format!("{e:#}")), reason = %reason, retry_in = ?delay, "could not dead-letter; will retry");
                (
                    Outcome::Retried {
                        retry_in: delay,
                        reason: format!("could not dead-letter: {reason}"),
                    },
                    SettleKind::Nak(delay),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_and_is_capped() {
        let spec = WorkerSpec::new("t", vec![]);
        for d in 1..40 {
            let delay = spec.retry_delay(d);
            assert!(delay <= spec.retry_max, "{d}: {delay:?}");
            assert!(delay >= spec.retry_base.min(spec.retry_max) / 2);
        }
        assert!(spec.retry_delay(8) > spec.retry_delay(1));
    }
}
