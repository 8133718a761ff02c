//! Tick computation: when a schedule fires, in UTC instants, and which ticks are due after a
//! pause in evaluation (normal wake-up, leader failover, downtime).
//!
//! Cron expressions are matched against the schedule's *wall clock* in its IANA timezone (croner
//! finds the next matching wall-clock time; chrono-tz maps it to instants). Across DST changes:
//!
//! - **Spring forward (gap)**: a wall-clock time that does not exist (02:30 in Europe/Berlin on
//!   the last Sunday of March) fires once, at the first instant after the gap (03:00 CEST). Several
//!   matches inside the gap (every 15 minutes) collapse into that one tick.
//! - **Fall back (overlap)**: a wall-clock time that happens twice fires **once, at its first
//!   occurrence** (02:30 CEST, not again at 02:30 CET) when the hour field is fixed (`30 2 * * *`).
//!   When the hour field is a wildcard or a step (`*/15 * * * *`, `0 * * * *`), the schedule is
//!   about elapsed time rather than a time of day, so it fires in both passes of the repeated hour.
//!
//! Ticks are always strictly increasing instants with whole seconds, so `<schedule>:<tick unix
//! seconds>:<tenant_id>` identifies a job uniquely.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::schedule::{CronSpec, Missed};

/// The least on-time grace, whatever the lease: a tick evaluated at most this late is on time.
pub const MIN_ON_TIME_GRACE: Duration = Duration::from_secs(10);

/// How late a tick may be evaluated and still count as on time; later ones are "missed" (see
/// [`Missed`]).
///
/// A leader change must not make ticks "missed": when a leader dies right after deciding its
/// ticks, the next tick can only be decided once a follower holds the lease, which takes up to
/// `takeover` (the election's worst case, [`crate::elector::worst_takeover`]: two leases, the dead
/// leader's entry ages out, then the follower's next poll), plus one pass of the tick loop (`poll`,
/// [`crate::tick_loop::POLL`]) on each side (the dead leader's last pass, the new leader's first).
/// So the grace is that, and never less than [`MIN_ON_TIME_GRACE`]; only an outage longer than a
/// failover is handled by the missed policy.
pub fn on_time_grace(takeover: Duration, poll: Duration) -> Duration {
    (takeover + poll * 2).max(MIN_ON_TIME_GRACE)
}

/// Whether a tick runs as scheduled or as the catch-up of a downtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickKind {
    Cron,
    Missed,
    /// A missed tick fired by `missed = "catch_up"`: queued, started one at a time, oldest first.
    CatchUp,
}

impl TickKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TickKind::Cron => "cron",
            TickKind::Missed => "missed",
            TickKind::CatchUp => "catch_up",
        }
    }
}

/// The decision for the ticks in `(watermark, now]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub run: Vec<(DateTime<Utc>, TickKind)>,
    /// Ticks in the window that were not run (late, and not the one `run_latest` catches up).
    pub skipped: u64,
    /// The first skipped tick, for the log line.
    pub first_skipped: Option<DateTime<Utc>>,
}

/// Decides the ticks in `(watermark, now]`: ticks at most `grace` late (see [`on_time_grace`])
/// run; later ones are missed: skipped, or with `run_latest` the latest of them runs once if it is
/// at most `deadline` old and no on-time tick supersedes it.
pub fn due_ticks(
    spec: &CronSpec,
    missed: Missed,
    grace: Duration,
    watermark: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Due {
    let grace = chrono::Duration::from_std(grace).unwrap_or_default();
    let lookback = match missed {
        Missed::Skip => grace,
        Missed::RunLatest { deadline } => chrono::Duration::from_std(deadline)
            .unwrap_or_default()
            .max(grace),
        Missed::CatchUp { window, .. } => chrono::Duration::from_std(window)
            .unwrap_or_default()
            .max(grace),
    };
    let mut due = Due {
        run: Vec::new(),
        skipped: 0,
        first_skipped: None,
    };
    // Ticks older than the lookback are skipped whatever the policy; only note the first.
    let from = watermark.max(now - lookback);
    if from > watermark {
        if let Some(t) = spec.next_after(watermark).filter(|t| *t <= from) {
            due.first_skipped = Some(t);
            due.skipped += 1;
        }
    }
    let mut latest_missed = None;
    let mut cursor = from;
    let mut catch_up = Vec::new();
    while let Some(t) = spec.next_after(cursor).filter(|t| *t <= now) {
        if now - t <= grace {
            due.run.push((t, TickKind::Cron));
        } else if let Missed::CatchUp { .. } = missed {
            catch_up.push(t);
        } else {
            if let Some(prev) = latest_missed.replace(t) {
                due.skipped += 1;
                due.first_skipped.get_or_insert(prev);
            }
        }
        cursor = t;
    }
    if let Missed::CatchUp { max, .. } = missed {
        // The latest `max` missed ticks, oldest first; older ones are skipped.
        let keep = catch_up.len().saturating_sub(max as usize);
        for t in catch_up.drain(..keep) {
            due.skipped += 1;
            due.first_skipped.get_or_insert(t);
        }
        let mut run: Vec<_> = catch_up
            .into_iter()
            .map(|t| (t, TickKind::CatchUp))
            .collect();
        run.append(&mut due.run);
        due.run = run;
    }
    if let Some(t) = latest_missed {
        if due.run.is_empty() && matches!(missed, Missed::RunLatest { .. }) {
            due.run.push((t, TickKind::Missed));
        } else {
            due.skipped += 1;
            due.first_skipped.get_or_insert(t);
        }
    }
    due
}

/// The ticks of `spec` in `[from, to]`, oldest first, at most `limit` (the last element tells
/// the caller whether the range holds more: it returns `limit + 1` at most).
pub fn ticks_in(
    spec: &CronSpec,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: usize,
) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    let mut cursor = from - chrono::Duration::seconds(1);
    while let Some(t) = spec.next_after(cursor).filter(|t| *t <= to) {
        out.push(t);
        if out.len() > limit {
            break;
        }
        cursor = t;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elector::worst_takeover;
    use crate::tick_loop::POLL;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn ticks(spec: &CronSpec, from: &str, n: usize) -> Vec<String> {
        let mut t = utc(from);
        let mut out = Vec::new();
        for _ in 0..n {
            t = spec.next_after(t).unwrap();
            out.push(t.with_timezone(&spec.timezone()).to_rfc3339());
        }
        out
    }

    #[test]
    fn five_and_six_fields() {
        let every_minute = CronSpec::parse("* * * * *", "UTC").unwrap();
        assert_eq!(
            every_minute.next_after(utc("2026-01-01T10:00:30Z")),
            Some(utc("2026-01-01T10:01:00Z"))
        );
        let every_2s = CronSpec::parse("*/2 * * * * *", "UTC").unwrap();
        assert_eq!(
            every_2s.next_after(utc("2026-01-01T10:00:00Z")),
            Some(utc("2026-01-01T10:00:02Z"))
        );
        assert!(CronSpec::parse("* * * *", "UTC").is_err());
        assert!(CronSpec::parse("61 * * * *", "UTC").is_err());
        assert!(CronSpec::parse("* * * * *", "Nowhere/Town").is_err());
    }

    #[test]
    fn berlin_spring_forward_runs_the_missing_0230_at_0300_cest_once() {
        let daily = CronSpec::parse("30 2 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            ticks(&daily, "2026-03-27T12:00:00Z", 3),
            [
                "2026-03-28T02:30:00+01:00",
                // 02:30 does not exist on 2026-03-29: the first instant after the gap.
                "2026-03-29T03:00:00+02:00",
                "2026-03-30T02:30:00+02:00",
            ]
        );
    }

    #[test]
    fn berlin_fall_back_runs_a_fixed_0230_once_at_its_first_occurrence() {
        let daily = CronSpec::parse("30 2 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            ticks(&daily, "2026-10-23T12:00:00Z", 3),
            [
                "2026-10-24T02:30:00+02:00",
                "2026-10-25T02:30:00+02:00",
                "2026-10-26T02:30:00+01:00",
            ]
        );
        // Evaluated from inside the repeated hour (second pass), it does not fire again.
        assert_eq!(
            daily.next_after(utc("2026-10-25T01:10:00Z")), // 02:10 CET, second pass
            Some(utc("2026-10-26T01:30:00Z"))
        );
    }

    #[test]
    fn berlin_fall_back_hourly_fires_in_both_passes() {
        let hourly = CronSpec::parse("0 30 * * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            ticks(&hourly, "2026-10-24T23:00:00Z", 4),
            [
                "2026-10-25T01:30:00+02:00",
                "2026-10-25T02:30:00+02:00",
                "2026-10-25T02:30:00+01:00",
                "2026-10-25T03:30:00+01:00",
            ]
        );
    }

    #[test]
    fn berlin_spring_forward_quarter_hours_collapse_into_one_tick() {
        let q = CronSpec::parse("*/15 * * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            ticks(&q, "2026-03-29T00:40:00Z", 3), // 01:40 CET
            [
                "2026-03-29T01:45:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-29T03:15:00+02:00",
            ]
        );
    }

    #[test]
    fn on_time_ticks_run() {
        let s = CronSpec::parse("*/5 * * * * *", "UTC").unwrap();
        let due = due_ticks(
            &s,
            Missed::Skip,
            MIN_ON_TIME_GRACE,
            utc("2026-01-01T10:00:00Z"),
            utc("2026-01-01T10:00:06Z"),
        );
        assert_eq!(due.run, vec![(utc("2026-01-01T10:00:05Z"), TickKind::Cron)]);
        assert_eq!(due.skipped, 0);
    }

    #[test]
    fn missed_ticks_are_skipped_or_the_latest_runs_within_its_deadline() {
        let hourly = CronSpec::parse("0 * * * *", "UTC").unwrap();
        let down = utc("2026-01-01T06:59:00Z");
        let now = utc("2026-01-01T10:20:00Z");
        let skip = due_ticks(&hourly, Missed::Skip, MIN_ON_TIME_GRACE, down, now);
        assert!(skip.run.is_empty());
        assert!(skip.skipped >= 1);
        assert_eq!(skip.first_skipped, Some(utc("2026-01-01T07:00:00Z")));

        let latest = Missed::RunLatest {
            deadline: Duration::from_secs(3600),
        };
        let due = due_ticks(&hourly, latest, MIN_ON_TIME_GRACE, down, now);
        assert_eq!(
            due.run,
            vec![(utc("2026-01-01T10:00:00Z"), TickKind::Missed)]
        );
        assert_eq!(due.first_skipped, Some(utc("2026-01-01T07:00:00Z")));

        // The latest missed tick is older than the deadline: nothing runs.
        let short = Missed::RunLatest {
            deadline: Duration::from_secs(600),
        };
        assert!(due_ticks(&hourly, short, MIN_ON_TIME_GRACE, down, now)
            .run
            .is_empty());

        // An on-time tick supersedes the catch-up.
        let due = due_ticks(
            &hourly,
            latest,
            MIN_ON_TIME_GRACE,
            down,
            utc("2026-01-01T10:00:03Z"),
        );
        assert_eq!(due.run, vec![(utc("2026-01-01T10:00:00Z"), TickKind::Cron)]);
    }

    /// The review's failover scenario: `* * * * *`, default 10 s lease, the leader killed at
    /// 12:00:59.5 right after deciding its ticks (watermark 12:00:59); the follower acquires two
    /// leases later and decides at ~12:01:21. The 12:01:00 tick fell into the failover, not into
    /// a downtime: it must run, not be skipped as missed.
    #[test]
    fn a_tick_that_fell_into_a_failover_runs_on_time() {
        let lease = Duration::from_secs(10);
        let grace = on_time_grace(worst_takeover(lease), POLL);
        let every_minute = CronSpec::parse("* * * * *", "UTC").unwrap();
        let watermark = utc("2026-01-01T12:00:59Z");
        // The worst takeover: two leases after the crash, plus the new leader's first pass.
        let crash = utc("2026-01-01T12:00:59.5Z");
        let decided = crash + chrono::Duration::from_std(worst_takeover(lease) + POLL).unwrap();
        let due = due_ticks(&every_minute, Missed::Skip, grace, watermark, decided);
        assert_eq!(due.run, vec![(utc("2026-01-01T12:01:00Z"), TickKind::Cron)]);
        assert_eq!(due.skipped, 0);

        // A real downtime (longer than a failover) still follows the missed policy.
        let later = utc("2026-01-01T12:01:00Z") + chrono::Duration::from_std(grace).unwrap();
        let due = due_ticks(
            &every_minute,
            Missed::Skip,
            grace,
            watermark,
            later + chrono::Duration::seconds(1),
        );
        assert!(due.run.is_empty());
        assert_eq!(due.first_skipped, Some(utc("2026-01-01T12:01:00Z")));
    }

    #[test]
    fn catch_up_fires_every_missed_tick_in_the_window_oldest_first_up_to_max() {
        let hourly = CronSpec::parse("0 * * * *", "UTC").unwrap();
        let down = utc("2026-01-01T00:30:00Z");
        let now = utc("2026-01-01T12:20:00Z");
        let catch_up = Missed::CatchUp {
            window: Duration::from_secs(6 * 3600),
            max: 4,
        };
        let due = due_ticks(&hourly, catch_up, MIN_ON_TIME_GRACE, down, now);
        let run: Vec<_> = due.run.iter().map(|(t, k)| (t.to_rfc3339(), *k)).collect();
        assert_eq!(
            run,
            [9, 10, 11, 12].map(|h| (
                utc(&format!("2026-01-01T{h:02}:00:00Z")).to_rfc3339(),
                TickKind::CatchUp
            ))
        );
        // 01:00..06:00 fell out of the window (one noted), 07:00 and 08:00 beyond max.
        assert!(due.skipped >= 3);
        let wide = Missed::CatchUp {
            window: Duration::from_secs(6 * 3600),
            max: 100,
        };
        let due = due_ticks(&hourly, wide, MIN_ON_TIME_GRACE, down, now);
        assert_eq!(due.run.len(), 6, "07:00 to 12:00");
        assert_eq!(due.run[0].0, utc("2026-01-01T07:00:00Z"));
    }

    #[test]
    fn the_on_time_grace_covers_a_failover_for_any_lease() {
        for secs in [1, 2, 10, 30, 120] {
            let lease = Duration::from_secs(secs);
            let grace = on_time_grace(worst_takeover(lease), POLL);
            assert!(grace >= worst_takeover(lease) + POLL * 2);
            assert!(grace >= MIN_ON_TIME_GRACE);
        }
    }
}
