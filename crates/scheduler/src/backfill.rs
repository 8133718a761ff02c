//! Backfill (`fleetctl schedule backfill NAME --from T1 --to T2`): the ticks of a past range,
//! queued as runs with `trigger = backfill` that the leader starts one at a time, oldest first,
//! paced like catch-up (see [`crate::tick_loop`]).
//!
//! Deduplicated against ticks already fired: a tick with a run row (done, failed, running or
//! queued) is left alone, so each job still goes out once per (schedule, tenant, tick) and keeps
//! its `Nats-Msg-Id`; a tick recorded as `skipped` (overlap) is queued. Refused, with one line
//! naming the schedule: a range that ends in the future, is empty or reversed, spans more than
//! [`MAX_RANGE`], or holds more than [`MAX_TICKS`] ticks.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::schedule::{Schedule, Zone};
use crate::store::{self, NewRun};

/// The widest range one backfill may cover.
pub const MAX_RANGE: chrono::Duration = chrono::Duration::days(31);
/// The most ticks one backfill may queue.
pub const MAX_TICKS: usize = 1000;

/// The ticks of a backfill, with the zones whose tick each is (`timezone = "tenant"`).
pub struct Planned {
    pub ticks: BTreeMap<DateTime<Utc>, Vec<String>>,
    /// Tenants left out for an invalid stored time zone, noted on each run.
    pub note: Option<String>,
}

/// Checks the range and lists its ticks.
pub async fn plan(
    pg: &PgPool,
    schedule: &Schedule,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> anyhow::Result<Planned> {
    let name = fleet_shared::errors::quoted(&schedule.name);
    if from >= to {
        anyhow::bail!("schedule {name}: backfill --from must be before --to");
    }
    if to > now {
        anyhow::bail!(
            "schedule {name}: backfill --to {} is in the future: a backfill fires past ticks only",
            to.to_rfc3339()
        );
    }
    if to - from > MAX_RANGE {
        anyhow::bail!(
            "schedule {name}: backfill --from..--to spans {} days, more than the {}-day limit of one backfill",
            (to - from).num_days(),
            MAX_RANGE.num_days()
        );
    }
    let (clocks, invalid) = crate::live::clocks_of(pg, schedule).await?;
    let mut ticks: BTreeMap<DateTime<Utc>, Vec<String>> = BTreeMap::new();
    for (zone, clock) in &clocks {
        for t in crate::ticks::ticks_in(clock, from, to, MAX_TICKS) {
            ticks.entry(t).or_default().extend(zone.clone());
        }
    }
    if ticks.len() > MAX_TICKS {
        anyhow::bail!(
            "schedule {name}: backfill range holds more than {MAX_TICKS} ticks: backfill a shorter range at a time"
        );
    }
    let note = (!invalid.is_empty()).then(|| {
        let n: i64 = invalid.iter().map(|(_, n)| n).sum();
        format!(
            "{n} tenant(s) skipped: invalid time zone {}",
            invalid
                .iter()
                .map(|(z, _)| fleet_shared::errors::quoted(z))
                .collect::<Vec<_>>()
                .join(", ")
        )
    });
    Ok(Planned { ticks, note })
}

/// Queues the planned ticks that did not fire yet; returns how many were queued.
pub async fn queue(
    pg: &PgPool,
    schedule: &Schedule,
    planned: &Planned,
    by: &str,
) -> anyhow::Result<usize> {
    let tenant = schedule.zone == Zone::Tenant;
    let runs: Vec<NewRun> = planned
        .ticks
        .iter()
        .map(|(tick, zones)| NewRun {
            schedule: &schedule.name,
            tick: *tick,
            trigger: "backfill",
            selector: &schedule.selector,
            spread_ms: schedule.spread.as_millis() as i64,
            leader: by,
            default_zone: tenant.then(|| schedule.cron.timezone().name().to_owned()),
            zones: tenant.then(|| zones.clone()),
            queued: true,
            note: planned.note.clone(),
        })
        .collect();
    Ok(store::decide(pg, &schedule.name, None, &runs, &[])
        .await?
        .len())
}
