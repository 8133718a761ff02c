//! One tick's fan-out: one job per matching tenant, in `tenant_id` order, pipelined, spread, and
//! resumable.
//!
//! Tenants are read a page at a time after the run's cursor. Each job is published with
//! `Nats-Msg-Id = <schedule>:<tick unix seconds>:<tenant_id>` without waiting for its ack; up to
//! [`WINDOW`] acks are outstanding, and they are consumed in publication order so the cursor
//! always names the last tenant whose job *and every earlier one* the stream has stored. The
//! cursor and the count are committed every [`COMMIT_EVERY`] jobs or [`COMMIT_INTERVAL`]. A fan-out
//! that stops (shutdown, lost leadership, pause, crash) resumes after the committed cursor: the
//! at most [`UNCERTAIN`] (`WINDOW + COMMIT_EVERY`) jobs published but not yet committed are
//! published again and dropped by the stream's duplicate window, so no tenant is skipped or
//! doubled — **provided** the run resumes within the window
//! ([`crate::config::SchedulerConfig::safe_resume_within`], from `[scheduler] dedupe_window`) of
//! its last progress. A run resumed later than that (a single replica down for longer) still
//! resumes after its cursor, so no tenant is skipped, but up to [`UNCERTAIN`] tenants right after
//! the cursor may receive their job twice; the resume says so in a warning and in the run's
//! `reason`, so the operator knows. A fan-out that stopped *cleanly* (shutdown, lost leadership
//! or pause, after draining its acks and committing) has nothing in doubt and resumes safely
//! however late.
//!
//! Spread: job `i` of `n` is not published before `tick + spread * i / n`, so a tick's jobs are
//! delivered evenly over the window; jobs whose slot has passed (a resumed run) go at once. A
//! catch-up or backfill run counts from when it started (`paced_from`) instead of its past tick.
//! A `timezone = "tenant"` run fans out only to the tenants of the zones whose tick it is.
//! A failed ack is retried with backoff (same Msg-Id); if NATS stays unreachable the run is left
//! `running` and the leader resumes it later.

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishError, publish::PublishAck};
use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use fleet_shared::publish::{child_traceparent, new_traceparent, MSG_ID, TRACEPARENT};
use fleet_shared::Code;

use crate::metrics::SchedulerMetrics;
use crate::schedule::{Schedule, Target};
use crate::store::{self, RunRow};

/// Most acks outstanding at once.
pub const WINDOW: usize = 1024;
/// Tenants read per query.
pub const PAGE: i64 = 1000;
pub const COMMIT_EVERY: u64 = 1000;
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(250);
/// The most jobs a stopped fan-out can have published after its last committed cursor: a full
/// ack window plus the acks consumed since the last commit.
pub const UNCERTAIN: u64 = WINDOW as u64 + COMMIT_EVERY;

/// How a fan-out ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Every matching tenant's job is stored; the run is `done`.
    Done,
    /// Stopped by shutdown or lost leadership; the run stays `running` for the next leader.
    Interrupted,
    /// The schedule was paused; the run stays `running` and continues on resume.
    Paused,
}

/// The `Nats-Msg-Id` of a `tenant.rollout` tick's one request: the same for every replica and
/// every retry of the tick, so a failover or a second leader cannot start two rollouts (the stream
/// drops the copy within its window; after it, the provisioner finds the rollout by this id).
pub fn rollout_msg_id(schedule: &str, tick: DateTime<Utc>) -> String {
    format!("{schedule}:{}:rollout", tick.timestamp())
}

/// The body of a `tenant.rollout` tick: the payload's rollout fields, `plan` from the single
/// `tenants.plans` entry and `codes` from `tenants.codes`, when set.
pub fn rollout_body(schedule: &Schedule) -> Vec<u8> {
    let mut m = schedule.payload.clone();
    if let Some([plan]) = schedule.selector.plans.as_deref() {
        m.insert("plan".into(), plan.clone().into());
    }
    if let Some(codes) = &schedule.selector.codes {
        m.insert(
            "codes".into(),
            codes.iter().map(|c| c.as_str().to_owned()).collect(),
        );
    }
    serde_json::to_vec(&serde_json::Value::Object(m)).unwrap_or_default()
}

/// The `Nats-Msg-Id` of one job.
pub fn msg_id(schedule: &str, tick: DateTime<Utc>, tenant_id: Uuid) -> String {
    format!("{schedule}:{}:{tenant_id}", tick.timestamp())
}

/// The JSON body of one job: the configured payload plus `tenant_id`, `tenant_code`, `schedule`
/// and `tick` (RFC 3339, UTC); the built-in `tenant.migrate` target sends `{"code"}` only.
pub fn body(schedule: &Schedule, tick: &str, tenant_id: Uuid, code: &Code) -> Vec<u8> {
    let value = match schedule.target {
        Target::TenantMigrate => serde_json::json!({ "code": code }),
        Target::TenantRollout => return rollout_body(schedule),
        Target::Jobs { .. } => {
            let mut m = schedule.payload.clone();
            m.insert("tenant_id".into(), tenant_id.to_string().into());
            m.insert("tenant_code".into(), code.as_str().into());
            m.insert("schedule".into(), schedule.name.clone().into());
            m.insert("tick".into(), tick.into());
            serde_json::Value::Object(m)
        }
    };
    // Serializing a JSON value built from strings and TOML values cannot fail.
    serde_json::to_vec(&value).unwrap_or_default()
}

struct Job {
    tenant_id: Uuid,
    subject: String,
    msg_id: String,
    headers: HeaderMap,
    payload: Bytes,
}

type AckFuture = BoxFuture<'static, Result<PublishAck, PublishError>>;

/// Runs (or resumes) `run` until it is done, `stop` is cancelled, or the schedule is paused.
#[tracing::instrument(skip_all, fields(schedule = %run.schedule, run.id = run.run_id, run.tick = %run.tick))]
pub async fn fan_out(
    js: &jetstream::Context,
    pg: &PgPool,
    schedule: &Schedule,
    run: &RunRow,
    safe_resume_within: Duration,
    stop: &CancellationToken,
    metrics: &SchedulerMetrics,
) -> anyhow::Result<End> {
    if schedule.target == Target::TenantRollout {
        return start_rollout(js, pg, schedule, run, metrics).await;
    }
    let note = stale_resume(run, safe_resume_within, Utc::now());
    if let Some(note) = &note {
        tracing::warn!(stopped_since = %run.updated_at, "{note}");
    }
    store::start_publishing(pg, run.run_id, note.as_deref()).await?;
    let tick_text = run.tick.to_rfc3339_opts(SecondsFormat::Secs, true);
    let trace = new_traceparent();
    let total = run.tenants_matched.max(1) as u64;
    let spread = Duration::from_millis(run.spread_ms.max(0) as u64);
    // A catch-up or backfill run's tick is in the past: its spread counts from its start.
    let base = run.paced_from.unwrap_or(run.tick);
    let slot = |i: u64| {
        let offset = spread.mul_f64(i.min(total) as f64 / total as f64);
        base + chrono::Duration::from_std(offset).unwrap_or_default()
    };

    let mut page: VecDeque<(Uuid, String)> = VecDeque::new();
    let mut fetch_cursor = run.cursor;
    let mut exhausted = false;
    let mut inflight: FuturesOrdered<BoxFuture<'static, (Job, Result<PublishAck, PublishError>)>> =
        FuturesOrdered::new();
    let mut sent = run.published.max(0) as u64;
    let mut acked = sent;
    let mut committed = sent;
    let mut cursor = run.cursor;
    let mut last_commit = Instant::now();
    let mut stopping: Option<End> = None;
    if sent > 0 {
        tracing::info!(published = sent, "resuming fan-out after its cursor");
    }

    loop {
        if stopping.is_none() && stop.is_cancelled() {
            stopping = Some(End::Interrupted);
        }
        if stopping.is_none() && inflight.len() < WINDOW {
            if page.is_empty() && !exhausted {
                let rows =
                    store::tenant_page(pg, &store::Filter::of_run(run), fetch_cursor, PAGE).await?;
                exhausted = (rows.len() as i64) < PAGE;
                if let Some((id, _)) = rows.last() {
                    fetch_cursor = Some(*id);
                }
                page.extend(rows);
            }
            match page.front() {
                Some((tenant_id, code)) => {
                    let due = slot(sent);
                    let now = Utc::now();
                    if due <= now {
                        let (tenant_id, code) = (*tenant_id, code.clone());
                        page.pop_front();
                        let Ok(code) = Code::parse(&code) else {
                            // fleet.tenants has a CHECK on code; this only guards a hand-edited row.
                            tracing::error!(tenant.id = %tenant_id, "tenant code is invalid; no job");
                            continue;
                        };
                        let job = Job {
                            tenant_id,
                            subject: schedule.target.subject(&code),
                            msg_id: msg_id(&run.schedule, run.tick, tenant_id),
                            headers: HeaderMap::new(),
                            payload: body(schedule, &tick_text, tenant_id, &code).into(),
                        };
                        inflight.push_back(send(js, job, &trace).await);
                        sent += 1;
                        continue;
                    }
                    if inflight.is_empty() {
                        if committed < acked {
                            if let Some(c) = cursor {
                                commit(pg, run, acked, c, &mut committed, metrics, &mut stopping)
                                    .await?;
                                last_commit = Instant::now();
                            }
                        }
                        let wait = (due - now).to_std().unwrap_or_default();
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = tokio::time::sleep(wait) => {}
                        }
                        continue;
                    }
                }
                None if inflight.is_empty() => {
                    if let Some(c) = cursor {
                        if committed < acked {
                            commit(pg, run, acked, c, &mut committed, metrics, &mut stopping)
                                .await?;
                        }
                    }
                    store::finish_run(pg, run.run_id, "done", None).await?;
                    metrics.run_finished(&run.schedule, "done");
                    tracing::info!(published = acked, "fan-out done");
                    return Ok(End::Done);
                }
                None => {}
            }
        }
        if let (Some(end), true) = (stopping, inflight.is_empty()) {
            if let Some(c) = cursor {
                if committed < acked {
                    let mut ignore = None;
                    commit(pg, run, acked, c, &mut committed, metrics, &mut ignore).await?;
                }
            }
            // Every job handed to NATS is acknowledged and committed: nothing is in doubt.
            store::stopped_cleanly(pg, run.run_id).await?;
            tracing::info!(published = acked, end = ?end, "fan-out stopped; it resumes from its cursor");
            return Ok(end);
        }
        let Some((job, result)) = inflight.next().await else {
            continue;
        };
        match result {
            Ok(ack) => {
                if ack.duplicate {
                    metrics.deduplicated(&run.schedule);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, subject = %job.subject, "job not acknowledged; retrying");
                if let Err(e) = fleet_shared::publish::publish(
                    js,
                    &job.subject,
                    &job.msg_id,
                    Some(job.headers),
                    job.payload,
                )
                .await
                {
                    if let Some(c) = cursor {
                        let mut ignore = None;
                        commit(pg, run, acked, c, &mut committed, metrics, &mut ignore).await?;
                    }
                    return Err(e);
                }
            }
        }
        acked += 1;
        cursor = Some(job.tenant_id);
        if acked - committed >= COMMIT_EVERY || last_commit.elapsed() >= COMMIT_INTERVAL {
            commit(
                pg,
                run,
                acked,
                job.tenant_id,
                &mut committed,
                metrics,
                &mut stopping,
            )
            .await?;
            last_commit = Instant::now();
        }
    }
}

/// A `tenant.rollout` tick: one request, published with the tick's fixed Msg-Id (retried with
/// backoff), then the run is `done` with `published = 1`. A resumed run publishes the same id
/// again, which the stream or the provisioner's request key turns into no second rollout. Whether
/// the provisioner accepts the request (or refuses it, e.g. because a rollout is still running)
/// is its decision, recorded on the rollout or in the dead-letter stream, not on this run.
async fn start_rollout(
    js: &jetstream::Context,
    pg: &PgPool,
    schedule: &Schedule,
    run: &RunRow,
    metrics: &SchedulerMetrics,
) -> anyhow::Result<End> {
    store::start_publishing(pg, run.run_id, None).await?;
    let msg_id = rollout_msg_id(&run.schedule, run.tick);
    let mut headers = HeaderMap::new();
    headers.insert(TRACEPARENT, new_traceparent().as_str());
    let ack = fleet_shared::publish::publish(
        js,
        crate::schedule::ROLLOUT_SUBJECT,
        &msg_id,
        Some(headers),
        rollout_body(schedule).into(),
    )
    .await?;
    if ack.duplicate {
        metrics.deduplicated(&run.schedule);
    }
    store::finish_single(pg, run.run_id).await?;
    metrics.published(&run.schedule, 1);
    metrics.run_finished(&run.schedule, "done");
    tracing::info!(msg_id = %msg_id, duplicate = ack.duplicate, "tenant.rollout requested");
    Ok(End::Done)
}

/// Why resuming `run` now may store some jobs twice, if it may: it did not stop cleanly (a
/// crash), and its last progress is older than the duplicate window allows (see [`UNCERTAIN`]).
/// A fresh run's last progress is its creation.
pub fn stale_resume(
    run: &RunRow,
    safe_resume_within: Duration,
    now: DateTime<Utc>,
) -> Option<String> {
    if run.clean_stop {
        return None;
    }
    let stopped = (now - run.updated_at).to_std().unwrap_or_default();
    (stopped > safe_resume_within).then(|| {
        format!(
            "resumed {}s after its last progress, beyond the {}s the duplicate window covers: up to {UNCERTAIN} jobs of the tenants right after the cursor may have been sent twice",
            stopped.as_secs(),
            safe_resume_within.as_secs()
        )
    })
}

/// Publishes one job without waiting for its ack (the send itself is awaited, so the client's
/// buffer bounds memory); the returned future yields the job back with the ack.
async fn send(
    js: &jetstream::Context,
    mut job: Job,
    trace: &str,
) -> BoxFuture<'static, (Job, Result<PublishAck, PublishError>)> {
    job.headers.insert(MSG_ID, job.msg_id.as_str());
    job.headers
        .insert(TRACEPARENT, child_traceparent(Some(trace)).as_str());
    let ack: AckFuture = match js
        .publish_with_headers(
            job.subject.clone(),
            job.headers.clone(),
            job.payload.clone(),
        )
        .await
    {
        Ok(f) => f.into_future(),
        Err(e) => Box::pin(async move { Err(e) }),
    };
    Box::pin(async move {
        let r = ack.await;
        (job, r)
    })
}

async fn commit(
    pg: &PgPool,
    run: &RunRow,
    acked: u64,
    cursor: Uuid,
    committed: &mut u64,
    metrics: &SchedulerMetrics,
    stopping: &mut Option<End>,
) -> anyhow::Result<()> {
    let paused = store::commit_progress(pg, run.run_id, acked as i64, cursor).await?;
    metrics.published(&run.schedule, acked - *committed);
    *committed = acked;
    if paused && stopping.is_none() {
        *stopping = Some(End::Paused);
    }
    Ok(())
}
