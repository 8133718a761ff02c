//! What the leader does, once a second or when nudged: pick up manual triggers, decide each
//! schedule's due ticks (missed, overlap and pause policies), start their fan-outs, and resume
//! runs left `running` (by a dead leader, a shutdown, a pause, or a failed publish).
//!
//! Only the leader runs this, and every decision is a Postgres transaction keyed by
//! `(schedule, tick)`, so even two processes that both believe they lead (a stalled leader waking
//! up) create a tick's run once; their jobs then meet the stream's `Nats-Msg-Id` window.
//! Fan-outs run as tasks in a `JoinSet` owned by this loop: dropping or aborting the loop aborts
//! them too, like a crash, and their runs stay `running` for the next leader.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream::LastRawMessageErrorKind};
use chrono::{DateTime, SubsecRound, Utc};
use futures::{FutureExt, StreamExt};
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use fleet_shared::topology::JOBS_STREAM;

use crate::config::SchedulerConfig;
use crate::elector::worst_takeover;
use crate::fanout::{fan_out, End};
use crate::metrics::SchedulerMetrics;
use crate::schedule::{Overlap, Schedule, Target};
use crate::store::{self, NewRun, RunRow};
use crate::ticks::{due_ticks, on_time_grace};

/// How often the leader looks at triggers, pause flags and interrupted runs without a nudge.
pub const POLL: Duration = Duration::from_secs(1);
/// A fan-out that failed (NATS or Postgres unreachable) is retried after this.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// What the leader works with. Cheap to clone into fan-out tasks.
#[derive(Clone)]
pub struct Ctx {
    pub js: jetstream::Context,
    pub pg: PgPool,
    pub config: Arc<SchedulerConfig>,
    pub metrics: SchedulerMetrics,
    pub leader_id: Arc<str>,
}

type Joined = (i64, String, anyhow::Result<End>);

struct Term {
    tasks: JoinSet<Joined>,
    active: HashSet<i64>,
    retry_at: HashMap<i64, Instant>,
    fanouts: CancellationToken,
}

/// Leads until `term` is cancelled (shutdown or lost lease), then stops the fan-outs, which
/// commit their progress, and returns.
pub async fn run(
    ctx: &Ctx,
    term: &CancellationToken,
    wake: &mut async_nats::Subscriber,
) -> anyhow::Result<()> {
    let names: Vec<String> = ctx
        .config
        .schedules
        .iter()
        .map(|s| s.name.clone())
        .collect();
    store::ensure_states(&ctx.pg, &names, Utc::now()).await?;
    let mut t = Term {
        tasks: JoinSet::new(),
        active: HashSet::new(),
        retry_at: HashMap::new(),
        fanouts: term.child_token(),
    };
    let mut next_purge = Instant::now();
    let result = loop {
        if term.is_cancelled() {
            break Ok(());
        }
        if let Some(after) = ctx
            .config
            .purge_after
            .filter(|_| Instant::now() >= next_purge)
        {
            next_purge = Instant::now() + crate::purge::EVERY;
            if let Err(e) = crate::purge::publish_due(&ctx.js, &ctx.pg, after).await {
                // Not worth stepping down for: the next look retries.
                tracing::warn!(error = %fleet_shared::errors::one_line(&format!("{e:#}")), "purge task failed; retrying later");
            }
        }
        let next = match step(ctx, &mut t).await {
            Ok(next) => next,
            Err(e) => break Err(e),
        };
        let sleep = (next - Utc::now()).to_std().unwrap_or_default().min(POLL);
        tokio::select! {
            _ = term.cancelled() => {}
            _ = tokio::time::sleep(sleep) => {}
            // A closed subscription (client drained) disables this branch instead of spinning.
            Some(_) = wake.next() => {}
            Some(joined) = t.tasks.join_next(), if !t.tasks.is_empty() => reap(ctx, &mut t, joined),
        }
    };
    t.fanouts.cancel();
    while let Some(joined) = t.tasks.join_next().await {
        reap(ctx, &mut t, joined);
    }
    result
}

fn reap(ctx: &Ctx, t: &mut Term, joined: Result<Joined, tokio::task::JoinError>) {
    let Ok((run_id, schedule, res)) = joined else {
        // Tasks catch their own panics, so this is an abort during shutdown.
        return;
    };
    t.active.remove(&run_id);
    if let Err(e) = res {
        tracing::error!(schedule = %schedule, run.id = run_id, error = %fleet_shared::errors::one_line(&format!("{e:#}")), "fan-out failed; retrying later");
        ctx.metrics.run_finished(&schedule, "failed");
        t.retry_at.insert(run_id, Instant::now() + RETRY_AFTER);
    }
}

fn spawn(ctx: &Ctx, t: &mut Term, run: RunRow) {
    if !t.active.insert(run.run_id) {
        return;
    }
    let ctx = ctx.clone();
    let stop = t.fanouts.clone();
    t.tasks.spawn(async move {
        let run_id = run.run_id;
        let Some(schedule) = ctx.config.get(&run.schedule).cloned() else {
            return (run_id, run.schedule, Ok(End::Interrupted));
        };
        let within = ctx.config.safe_resume_within(&schedule.target);
        let work = fan_out(
            &ctx.js,
            &ctx.pg,
            &schedule,
            &run,
            within,
            &stop,
            &ctx.metrics,
        );
        match AssertUnwindSafe(work).catch_unwind().await {
            Ok(res) => (run_id, run.schedule.clone(), res),
            Err(_) => (
                run_id,
                run.schedule.clone(),
                Err(anyhow::anyhow!("fan-out panicked")),
            ),
        }
    });
}

/// One pass; returns when the next tick is due.
async fn step(ctx: &Ctx, t: &mut Term) -> anyhow::Result<DateTime<Utc>> {
    let now = Utc::now();
    let states: HashMap<String, store::StateRow> = store::states(&ctx.pg)
        .await?
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    let paused = |name: &str| states.get(name).is_some_and(|s| s.paused);

    for (trigger_id, name) in store::pending_triggers(&ctx.pg).await? {
        let Some(schedule) = ctx.config.get(&name) else {
            store::pick_trigger(
                &ctx.pg,
                trigger_id,
                None,
                "no such schedule in the scheduler's FLEET_CONFIG",
            )
            .await?;
            continue;
        };
        if paused(&name) {
            store::pick_trigger(&ctx.pg, trigger_id, None, "schedule is paused").await?;
            continue;
        }
        let tick = now.trunc_subsecs(0);
        let new = new_run(ctx, schedule, tick, "manual");
        let created = store::decide(&ctx.pg, &name, None, &[new], &[]).await?;
        match created.into_iter().next() {
            Some(run) => {
                store::pick_trigger(&ctx.pg, trigger_id, Some(run.run_id), "started").await?;
                tracing::info!(schedule = %name, run.id = run.run_id, "manual trigger: fan-out started");
                spawn(ctx, t, run);
            }
            None => {
                let existing = store::run_at(&ctx.pg, &name, tick).await?.map(|r| r.run_id);
                store::pick_trigger(
                    &ctx.pg,
                    trigger_id,
                    existing,
                    "joined the run already at this second",
                )
                .await?;
            }
        }
    }

    let mut next_wake = now + chrono::Duration::from_std(POLL).unwrap_or_default();
    for schedule in &ctx.config.schedules {
        let watermark = states
            .get(&schedule.name)
            .and_then(|s| s.evaluated_until)
            .unwrap_or(now);
        match schedule.cron.next_after(watermark) {
            Some(n) if n <= now => {}
            Some(n) => {
                next_wake = next_wake.min(n);
                continue;
            }
            None => continue,
        }
        if paused(&schedule.name) {
            store::decide(&ctx.pg, &schedule.name, Some(now), &[], &[]).await?;
            ctx.metrics.run_finished(&schedule.name, "skipped_paused");
            tracing::info!(schedule = %schedule.name, "schedule is paused: tick skipped");
            continue;
        }
        let grace = on_time_grace(worst_takeover(ctx.config.lease), POLL);
        let due = due_ticks(&schedule.cron, schedule.missed, grace, watermark, now);
        if due.skipped > 0 {
            ctx.metrics.run_finished(&schedule.name, "skipped_missed");
            tracing::warn!(
                schedule = %schedule.name,
                skipped = due.skipped,
                first = ?due.first_skipped,
                "ticks missed during a downtime were skipped (missed policy)"
            );
        }
        let mut runs = Vec::new();
        let mut skipped = Vec::new();
        for (tick, kind) in &due.run {
            if schedule.overlap == Overlap::Forbid {
                let reason = if runs.is_empty() {
                    pending(ctx, schedule).await?
                } else {
                    Some("overlap: an earlier tick of this pass runs".to_owned())
                };
                if let Some(reason) = reason {
                    ctx.metrics.run_finished(&schedule.name, "skipped_overlap");
                    tracing::info!(schedule = %schedule.name, tick = %tick, %reason, "tick skipped (overlap = forbid)");
                    skipped.push((*tick, kind.as_str(), reason));
                    continue;
                }
            }
            runs.push(new_run(ctx, schedule, *tick, kind.as_str()));
        }
        let skipped: Vec<_> = skipped
            .iter()
            .map(|(t, k, r)| (*t, *k, r.as_str()))
            .collect();
        for run in store::decide(&ctx.pg, &schedule.name, Some(now), &runs, &skipped).await? {
            ctx.metrics.run_finished(&schedule.name, "started");
            tracing::info!(schedule = %schedule.name, run.id = run.run_id, tick = %run.tick, trigger = %run.trigger, tenants = run.tenants_matched, "tick: fan-out started");
            spawn(ctx, t, run);
        }
        if let Some(n) = schedule.cron.next_after(now) {
            next_wake = next_wake.min(n);
        }
    }

    // Runs left `running`: by a previous leader, a pause now lifted, or a failed attempt.
    for run in store::running(&ctx.pg).await? {
        if t.active.contains(&run.run_id)
            || paused(&run.schedule)
            || t.retry_at
                .get(&run.run_id)
                .is_some_and(|at| *at > Instant::now())
        {
            continue;
        }
        if ctx.config.get(&run.schedule).is_none() {
            store::finish_run(
                &ctx.pg,
                run.run_id,
                "failed",
                Some("schedule is no longer configured"),
            )
            .await?;
            continue;
        }
        tracing::info!(schedule = %run.schedule, run.id = run.run_id, published = run.published, "resuming an interrupted fan-out");
        spawn(ctx, t, run);
    }
    Ok(next_wake)
}

fn new_run<'a>(
    ctx: &'a Ctx,
    schedule: &'a Schedule,
    tick: DateTime<Utc>,
    trigger: &'a str,
) -> NewRun<'a> {
    NewRun {
        schedule: &schedule.name,
        tick,
        trigger,
        selector: &schedule.selector,
        spread_ms: schedule.spread.as_millis() as i64,
        leader: &ctx.leader_id,
    }
}

/// Why the previous tick's jobs count as pending, if they do: its run is still publishing, or
/// (for `jobs.` targets) messages of this schedule's subject filter are still in `FLEET_JOBS`
/// (a work queue: a message leaves when its consumer acks it). `tenant.migrate` lands on the
/// events stream, which keeps messages, so only the first test applies to it.
async fn pending(ctx: &Ctx, schedule: &Schedule) -> anyhow::Result<Option<String>> {
    if store::has_running(&ctx.pg, &schedule.name).await? {
        return Ok(Some("overlap: the previous run is still publishing".into()));
    }
    if let Target::Jobs { .. } = schedule.target {
        let filter = schedule.target.filter();
        let stream = ctx.js.get_stream_no_info(JOBS_STREAM).await?;
        match stream.get_first_raw_message_by_subject(&filter, 1).await {
            Ok(_) => {
                return Ok(Some(format!(
                    "overlap: jobs of an earlier tick are still pending in {JOBS_STREAM} ({filter})"
                )))
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {}
            Err(e) => return Err(anyhow::Error::from(e).context("Failed to look for pending jobs")),
        }
    }
    Ok(None)
}
