//! What the leader does, once a second or when nudged: reload the schedules managed at run time
//! ([`crate::live`]), pick up manual triggers, decide each schedule's due ticks (missed, overlap
//! and pause policies; for `timezone = "tenant"`, one clock per zone among its tenants), start
//! their fan-outs, resume runs left `running` (by a dead leader, a shutdown, a pause, or a failed
//! publish), and start queued catch-up and backfill runs one at a time per schedule, oldest
//! first, at least `max(spread, 1s)` apart.
//!
//! Only the leader runs this, and every decision is a Postgres transaction keyed by
//! `(schedule, tick)`, so even two processes that both believe they lead (a stalled leader waking
//! up) create a tick's run once; their jobs then meet the stream's `Nats-Msg-Id` window.
//! Fan-outs run as tasks in a `JoinSet` owned by this loop: dropping or aborting the loop aborts
//! them too, like a crash, and their runs stay `running` for the next leader.

use std::collections::{BTreeMap, HashMap, HashSet};
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
use crate::live::Live;
use crate::metrics::SchedulerMetrics;
use crate::schedule::{CronSpec, Missed, Overlap, Schedule, Target, Zone};
use crate::store::{self, NewRun, RunRow};
use crate::ticks::{due_ticks, on_time_grace, TickKind};

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
    /// The file's schedules plus those managed at run time, reloaded every pass.
    pub live: Arc<Live>,
    pub metrics: SchedulerMetrics,
    pub leader_id: Arc<str>,
}

type Joined = (i64, String, anyhow::Result<End>);

struct Term {
    tasks: JoinSet<Joined>,
    active: HashSet<i64>,
    retry_at: HashMap<i64, Instant>,
    fanouts: CancellationToken,
    /// (schedule, zone) pairs already reported as invalid, so the log says it once.
    reported: HashSet<(String, String)>,
}

/// Leads until `term` is cancelled (shutdown or lost lease), then stops the fan-outs, which
/// commit their progress, and returns.
pub async fn run(
    ctx: &Ctx,
    term: &CancellationToken,
    wake: &mut async_nats::Subscriber,
) -> anyhow::Result<()> {
    let mut t = Term {
        tasks: JoinSet::new(),
        active: HashSet::new(),
        retry_at: HashMap::new(),
        fanouts: term.child_token(),
        reported: HashSet::new(),
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
        let now = Utc::now();
        if let Err(e) = ctx.live.reload(&ctx.config, &ctx.pg, &ctx.js, now).await {
            break Err(e);
        }
        let next = match step(ctx, &mut t, now).await {
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
        let Some(schedule) = ctx.live.get(&run.schedule) else {
            return (run_id, run.schedule, Ok(End::Interrupted));
        };
        let within = ctx
            .config
            .safe_resume_within_for(&schedule.target, &ctx.live.all());
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

/// One pass of the leader at `now`, for tests that drive the clock: reloads the schedules,
/// decides and starts what is due, and waits for the fan-outs it started to finish.
pub async fn pass(ctx: &Ctx, now: DateTime<Utc>) -> anyhow::Result<()> {
    let mut t = Term {
        tasks: JoinSet::new(),
        active: HashSet::new(),
        retry_at: HashMap::new(),
        fanouts: CancellationToken::new(),
        reported: HashSet::new(),
    };
    ctx.live.reload(&ctx.config, &ctx.pg, &ctx.js, now).await?;
    step(ctx, &mut t, now).await?;
    while let Some(joined) = t.tasks.join_next().await {
        if let Ok((_, _, Err(e))) = joined {
            return Err(e);
        }
    }
    Ok(())
}

/// One pass at `now`; returns when the next tick is due.
async fn step(ctx: &Ctx, t: &mut Term, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    let states: HashMap<String, store::StateRow> = store::states(&ctx.pg)
        .await?
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    let paused = |name: &str| states.get(name).is_some_and(|s| s.paused);

    for (trigger_id, name) in store::pending_triggers(&ctx.pg).await? {
        let Some(schedule) = ctx.live.get(&name) else {
            store::pick_trigger(
                &ctx.pg,
                trigger_id,
                None,
                "no such schedule (neither in the scheduler's FLEET_CONFIG nor in the control plane)",
            )
            .await?;
            continue;
        };
        let schedule = &schedule;
        if paused(&name) {
            store::pick_trigger(&ctx.pg, trigger_id, None, "schedule is paused").await?;
            continue;
        }
        let tick = now.trunc_subsecs(0);
        let new = new_run(ctx, schedule, tick, "manual", None, false, None);
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
    let schedules = ctx.live.all();
    for schedule in schedules.iter() {
        let watermark = states
            .get(&schedule.name)
            .and_then(|s| s.evaluated_until)
            .unwrap_or(now);
        let (clocks, note) = clocks(ctx, t, schedule).await?;
        match clocks
            .iter()
            .filter_map(|(_, c)| c.next_after(watermark))
            .min()
        {
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
        // One tick per instant: zones whose local tick falls on the same instant share a run.
        let mut due_at: BTreeMap<DateTime<Utc>, (TickKind, Vec<String>)> = BTreeMap::new();
        let (mut skipped_n, mut first_skipped): (u64, Option<DateTime<Utc>>) = (0, None);
        for (zone, clock) in &clocks {
            let due = due_ticks(clock, schedule.missed, grace, watermark, now);
            skipped_n += due.skipped;
            first_skipped = match (first_skipped, due.first_skipped) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            for (tick, kind) in due.run {
                let entry = due_at.entry(tick).or_insert((kind, Vec::new()));
                entry.1.extend(zone.clone());
            }
        }
        if let Missed::CatchUp { max, .. } = schedule.missed {
            // `catch_up_max` counts per schedule, not per zone: of the catch-up ticks of every
            // zone, the latest `max` instants run (each zone's clock above kept its own latest
            // `max`, so these are among them); older ones are skipped.
            let catch_up: Vec<DateTime<Utc>> = due_at
                .iter()
                .filter(|(_, (kind, _))| *kind == TickKind::CatchUp)
                .map(|(tick, _)| *tick)
                .collect();
            let over = catch_up.len().saturating_sub(max as usize);
            for tick in &catch_up[..over] {
                due_at.remove(tick);
                skipped_n += 1;
                first_skipped = Some(first_skipped.map_or(*tick, |f| f.min(*tick)));
            }
        }
        if skipped_n > 0 {
            ctx.metrics.run_finished(&schedule.name, "skipped_missed");
            tracing::warn!(
                schedule = %schedule.name,
                skipped = skipped_n,
                first = ?first_skipped,
                "ticks missed during a downtime were skipped (missed policy)"
            );
        }
        let mut runs = Vec::new();
        let mut skipped = Vec::new();
        let mut started_one = false;
        for (tick, (kind, zones)) in due_at {
            let zones = (schedule.zone == Zone::Tenant).then_some(zones);
            // Catch-up ticks are queued: started one at a time below, paced, oldest first.
            let queued = kind == TickKind::CatchUp;
            if !queued && schedule.overlap == Overlap::Forbid {
                let reason = if !started_one {
                    pending(ctx, schedule).await?
                } else {
                    Some("overlap: an earlier tick of this pass runs".to_owned())
                };
                if let Some(reason) = reason {
                    ctx.metrics.run_finished(&schedule.name, "skipped_overlap");
                    tracing::info!(schedule = %schedule.name, tick = %tick, %reason, "tick skipped (overlap = forbid)");
                    skipped.push((tick, kind.as_str(), reason));
                    continue;
                }
            }
            started_one |= !queued;
            runs.push(new_run(
                ctx,
                schedule,
                tick,
                kind.as_str(),
                zones,
                queued,
                note.clone(),
            ));
        }
        let skipped: Vec<_> = skipped
            .iter()
            .map(|(t, k, r)| (*t, *k, r.as_str()))
            .collect();
        for run in store::decide(&ctx.pg, &schedule.name, Some(now), &runs, &skipped).await? {
            if run.status == "queued" {
                tracing::info!(schedule = %schedule.name, run.id = run.run_id, tick = %run.tick, "missed tick queued for catch-up");
                continue;
            }
            ctx.metrics.run_finished(&schedule.name, "started");
            tracing::info!(schedule = %schedule.name, run.id = run.run_id, tick = %run.tick, trigger = %run.trigger, tenants = run.tenants_matched, "tick: fan-out started");
            spawn(ctx, t, run);
        }
        if let Some(n) = clocks.iter().filter_map(|(_, c)| c.next_after(now)).min() {
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
        if ctx.live.get(&run.schedule).is_none() {
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

    // Queued catch-up and backfill runs: one at a time per schedule, oldest first, paced.
    for run in store::next_queued(&ctx.pg).await? {
        if paused(&run.schedule) || t.active.contains(&run.run_id) {
            continue;
        }
        let Some(schedule) = ctx.live.get(&run.schedule) else {
            store::drop_queued(&ctx.pg, &run.schedule, "schedule is no longer configured").await?;
            continue;
        };
        let gap = chrono::Duration::from_std(schedule.spread.max(Duration::from_secs(1)))
            .unwrap_or_default();
        if let Some(last) = store::last_paced(&ctx.pg, &run.schedule).await? {
            if now < last + gap {
                next_wake = next_wake.min(last + gap);
                continue;
            }
        }
        if schedule.overlap == Overlap::Forbid && pending(ctx, &schedule).await?.is_some() {
            continue;
        }
        if let Some(run) = store::start_queued(&ctx.pg, &run, now).await? {
            ctx.metrics.run_finished(&run.schedule, "started");
            tracing::info!(schedule = %run.schedule, run.id = run.run_id, tick = %run.tick, trigger = %run.trigger, tenants = run.tenants_matched, "queued tick: fan-out started");
            spawn(ctx, t, run);
        }
    }
    Ok(next_wake)
}

/// The clocks a schedule's ticks are read on: its one zone, or (`timezone = "tenant"`) one per
/// valid zone among its tenants (tenants without one are in `default_timezone`). Tenants whose
/// stored zone is not an IANA name (or is encrypted, so unreadable here) are never fired at a
/// guess: they are left out, reported once in the log, and noted on every run the schedule
/// starts meanwhile (the returned note).
async fn clocks(
    ctx: &Ctx,
    t: &mut Term,
    schedule: &Schedule,
) -> anyhow::Result<(Vec<(Option<String>, CronSpec)>, Option<String>)> {
    let (clocks, invalid) = crate::live::clocks_of(&ctx.pg, schedule).await?;
    if invalid.is_empty() {
        return Ok((clocks, None));
    }
    let names: Vec<String> = invalid.iter().map(|(z, _)| z.clone()).collect();
    let count: i64 = invalid.iter().map(|(_, n)| n).sum();
    let codes = store::tenants_in_zones(
        &ctx.pg,
        &schedule.selector,
        &names,
        schedule.cron.timezone().name(),
        5,
    )
    .await?;
    let shown: Vec<String> = names
        .iter()
        .map(|z| match z.as_str() {
            store::ENCRYPTED_ZONE => "(an encrypted value)".to_owned(),
            _ => fleet_shared::errors::quoted(z),
        })
        .collect();
    let note = format!(
        "{count} tenant(s) skipped: invalid time zone {} (tenant config key timezone; e.g. {})",
        shown.join(", "),
        codes.join(", ")
    );
    for z in &names {
        if t.reported.insert((schedule.name.clone(), z.clone())) {
            tracing::warn!(schedule = %schedule.name, zone = %fleet_shared::errors::quoted(z), tenants = ?codes, "tenants with an invalid time zone are skipped, not fired at a guess");
        }
    }
    Ok((clocks, Some(note)))
}

pub(crate) fn new_run<'a>(
    ctx: &'a Ctx,
    schedule: &'a Schedule,
    tick: DateTime<Utc>,
    trigger: &'a str,
    zones: Option<Vec<String>>,
    queued: bool,
    note: Option<String>,
) -> NewRun<'a> {
    NewRun {
        schedule: &schedule.name,
        tick,
        trigger,
        selector: &schedule.selector,
        spread_ms: schedule.spread.as_millis() as i64,
        leader: &ctx.leader_id,
        default_zone: zones
            .as_ref()
            .map(|_| schedule.cron.timezone().name().to_owned()),
        zones,
        queued,
        note,
    }
}

/// Why the previous tick's jobs count as pending, if they do: its run is still publishing, or
/// (for `jobs.` targets) not every job it published is finished. A job is finished when a
/// consumer on the job runtime recorded a final outcome for it (`done` or `dead_lettered` in
/// `fleet.job_outcomes`). Consumers that record nothing (another language, or a lost record)
/// are covered by the stream: when no message of the schedule's subject filter is left in
/// `FLEET_JOBS` (a work queue: a message leaves when its consumer acks or terminates it), every
/// job is finished too. `tenant.migrate` lands on the events stream, which keeps messages, so
/// only the first test applies to it.
async fn pending(ctx: &Ctx, schedule: &Schedule) -> anyhow::Result<Option<String>> {
    if store::has_running(&ctx.pg, &schedule.name).await? {
        return Ok(Some("overlap: the previous run is still publishing".into()));
    }
    if let Target::Jobs { .. } = schedule.target {
        let filter = schedule.target.filter();
        let stream = ctx.js.get_stream_no_info(JOBS_STREAM).await?;
        match stream.get_first_raw_message_by_subject(&filter, 1).await {
            Ok(_) => {}
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
            Err(e) => return Err(anyhow::Error::from(e).context("Failed to look for pending jobs")),
        }
        let Some(prev) = store::last_fired(&ctx.pg, &schedule.name).await? else {
            // No earlier tick of this schedule fired: nothing of it can be unfinished.
            return Ok(None);
        };
        let (done, _failed, dead) =
            fleet_jobs::outcomes::tick_counts(&ctx.pg, &schedule.name, prev.tick).await?;
        let finished = done + dead;
        if finished < prev.published {
            return Ok(Some(format!(
                "overlap: {} of the {} jobs of the previous tick ({}) are not finished (pending in {JOBS_STREAM} or retrying)",
                prev.published - finished,
                prev.published,
                prev.tick.to_rfc3339()
            )));
        }
    }
    Ok(None)
}
