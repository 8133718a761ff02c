//! The scheduler's vocabulary: one validated schedule ([`Schedule`]) and the parts it is made of
//! (its cron expression in a timezone, its target, tenant selector, missed and overlap policies).
//!
//! This is the bottom module of the crate: it depends on no other module here, so the config
//! parser, the tick computation, the fan-out and the records can all use these types without
//! depending on each other. Timing that depends on the leader election is passed in by the caller.

use std::time::Duration;

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use fleet_shared::Code;

/// The built-in target: `{"code"}` to `tenant.migrate` on `FLEET_EVENTS`, consumed by the provisioner.
pub const MIGRATE_SUBJECT: &str = "tenant.migrate";
/// The built-in once-per-tick target: one rollout request on `tenant.rollout`, consumed by the
/// provisioner, which brings the selected tenants to the latest (or `to`) version.
pub const ROLLOUT_SUBJECT: &str = "tenant.rollout";

#[derive(Debug, thiserror::Error)]
pub enum TickError {
    #[error("invalid cron {expr:?}: {reason} (5 fields: min hour dom month dow, or 6 with seconds first)")]
    Cron { expr: String, reason: String },
    #[error("invalid timezone {0:?}: use an IANA name such as Europe/Berlin or UTC")]
    Timezone(String),
}

/// A cron expression in a timezone.
#[derive(Debug, Clone)]
pub struct CronSpec {
    expr: String,
    cron: Cron,
    tz: Tz,
    /// The hour field is `*` or `*/n`: fire in both passes of a repeated hour.
    hour_wildcard: bool,
}

impl CronSpec {
    pub fn parse(expr: &str, tz: &str) -> Result<CronSpec, TickError> {
        let fail = |reason: String| TickError::Cron {
            expr: expr.to_owned(),
            reason,
        };
        let fields: Vec<&str> = expr.split_whitespace().collect();
        if !(5..=6).contains(&fields.len()) {
            return Err(fail(format!("{} fields", fields.len())));
        }
        let cron = Cron::new(expr)
            .with_seconds_optional()
            .parse()
            .map_err(|e| fail(fleet_shared::errors::one_line(&e.to_string())))?;
        let tz: Tz = tz
            .trim()
            .parse()
            .map_err(|_| TickError::Timezone(tz.to_owned()))?;
        let hour = fields[if fields.len() == 6 { 2 } else { 1 }];
        Ok(CronSpec {
            expr: expr.to_owned(),
            cron,
            tz,
            hour_wildcard: hour.starts_with('*'),
        })
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The same expression read in another zone.
    pub fn in_zone(&self, tz: Tz) -> CronSpec {
        CronSpec { tz, ..self.clone() }
    }

    /// The longest gap between consecutive ticks, over at most 2,000 ticks or a year from a
    /// fixed instant (so it is the same on every machine); a day if it fires less often.
    pub fn longest_interval(&self) -> Duration {
        let start = Utc
            .timestamp_opt(1_767_225_600, 0)
            .single()
            .unwrap_or_default(); // 2026-01-01
        let end = start + chrono::Duration::days(366);
        let Some(mut t) = self.next_after(start) else {
            return Duration::from_secs(86_400);
        };
        let mut longest = Duration::ZERO;
        for _ in 0..2000 {
            match self.next_after(t) {
                Some(n) if n <= end => {
                    longest = longest.max((n - t).to_std().unwrap_or_default());
                    t = n;
                }
                _ => break,
            }
        }
        if longest.is_zero() {
            Duration::from_secs(86_400)
        } else {
            longest
        }
    }

    /// The first tick strictly after `after`, or `None` if the expression never fires again.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let after = after.with_timezone(&Utc);
        let offset_at = |t: DateTime<Utc>| self.tz.offset_from_utc_datetime(&t.naive_utc()).fix();
        let margin = chrono::Duration::hours(3);
        // Near a DST change, wall-clock matches just before `after`'s wall clock can still be
        // later instants (the repeated hour), so the wall-clock search starts a little earlier.
        let near_change = offset_at(after - margin) != offset_at(after + margin);
        let mut naive = after.with_timezone(&self.tz).naive_local();
        if near_change {
            naive -= margin;
        }
        // Bounded: a pathological expression (Feb 30) fails inside croner instead.
        for _ in 0..200_000 {
            let wall = self
                .cron
                .find_next_occurrence(&Utc.from_utc_datetime(&naive), false)
                .ok()?
                .naive_utc();
            let candidates = match self.tz.from_local_datetime(&wall) {
                LocalResult::Single(t) => [Some(t), None],
                LocalResult::Ambiguous(first, second) => {
                    [Some(first), self.hour_wildcard.then_some(second)]
                }
                LocalResult::None => [self.gap_end(wall), None],
            };
            let next = candidates
                .into_iter()
                .flatten()
                .map(|t| t.with_timezone(&Utc))
                .filter(|t| *t > after)
                .min();
            if next.is_some() {
                return next;
            }
            naive = wall;
        }
        None
    }

    /// The first instant whose wall clock is at or after `wall` (which falls in a DST gap).
    fn gap_end(&self, wall: NaiveDateTime) -> Option<DateTime<Tz>> {
        let start = self
            .tz
            .from_local_datetime(&(wall - chrono::Duration::hours(3)))
            .earliest()?
            .timestamp();
        let (mut lo, mut hi) = (start, start + 6 * 3600);
        while lo + 1 < hi {
            let mid = lo + (hi - lo) / 2;
            let local = self.tz.timestamp_opt(mid, 0).single()?.naive_local();
            if local >= wall {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        self.tz.timestamp_opt(hi, 0).single()
    }
}

/// What to do with ticks that fell into a downtime (no leader, or the leader was stuck).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// Ticks later than [`crate::ticks::on_time_grace`] (a failover's length) are skipped.
    Skip,
    /// The latest missed tick runs once if it is at most `deadline` old; older ones are skipped.
    RunLatest { deadline: Duration },
    /// Every missed tick at most `window` old runs (the latest `max` of them), oldest first and
    /// one at a time, each spread from when it starts: a long outage never becomes a burst.
    CatchUp { window: Duration, max: u32 },
}

/// Whose wall clock the cron expression is read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    /// The schedule's `timezone` (the cron's own zone).
    Fixed,
    /// `timezone = "tenant"`: each tenant's zone (tenant config key `timezone`); the cron's zone
    /// is `default_timezone`, for tenants without one.
    Tenant,
}

/// Whether a tick may start while the previous tick's jobs are still pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    Allow,
    /// Skip (and record) the tick while the previous run is still publishing or, for `jobs.`
    /// subjects, messages of this schedule's subject filter are still in `FLEET_JOBS`.
    Forbid,
}

/// Where a schedule's jobs go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `jobs.…` on `FLEET_JOBS`; the template's `{tenant_code}` is replaced by the tenant's code.
    Jobs { template: String },
    /// The built-in target: `{"code"}` to `tenant.migrate` on `FLEET_EVENTS`.
    TenantMigrate,
    /// The built-in once-per-tick target: one rollout request to `tenant.rollout` on
    /// `FLEET_EVENTS` per tick, not one message per tenant.
    TenantRollout,
}

impl Target {
    /// The subject of one tenant's job. The code is a validated [`Code`] (`[a-z0-9_]`), so it is
    /// always a single valid subject token.
    pub fn subject(&self, code: &Code) -> String {
        match self {
            Target::Jobs { template } => template.replace("{tenant_code}", code.as_str()),
            Target::TenantMigrate => MIGRATE_SUBJECT.to_owned(),
            Target::TenantRollout => ROLLOUT_SUBJECT.to_owned(),
        }
    }

    /// The subject filter covering every tenant's job (`{tenant_code}` → `*`).
    pub fn filter(&self) -> String {
        match self {
            Target::Jobs { template } => template.replace("{tenant_code}", "*"),
            Target::TenantMigrate => MIGRATE_SUBJECT.to_owned(),
            Target::TenantRollout => ROLLOUT_SUBJECT.to_owned(),
        }
    }

    pub fn display(&self) -> &str {
        match self {
            Target::Jobs { template } => template,
            Target::TenantMigrate => MIGRATE_SUBJECT,
            Target::TenantRollout => ROLLOUT_SUBJECT,
        }
    }
}

/// Which tenants a tick fans out to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub statuses: Vec<String>,
    /// `None`: every plan.
    pub plans: Option<Vec<String>>,
    /// `tenants.database`: only tenants whose schema is on one of these `[databases.<name>]`
    /// (the registry's `fleet.tenants.database`); `None`: every database.
    pub databases: Option<Vec<String>>,
    /// `tenants.codes`, only on a `tenant.rollout` schedule (the rollout's `codes`); `None`: every
    /// tenant the plan selects.
    pub codes: Option<Vec<Code>>,
}

impl Selector {
    /// Every `tenants.database` is configured (`[databases.<name>]` or `control`); else one line
    /// naming the schedule and listing the configured databases.
    pub fn check_databases(
        &self,
        schedule: &str,
        databases: &fleet_shared::databases::Databases,
    ) -> Result<(), String> {
        for db in self.databases.iter().flatten() {
            databases.get(db).map_err(|e| {
                format!(
                    "schedule {}: tenants.database: {e}",
                    fleet_shared::errors::quoted(schedule)
                )
            })?;
        }
        Ok(())
    }
}

/// One validated schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    /// The schedule as written, in its canonical JSON form (what `schedule show` prints and
    /// `schedule apply` diffs against).
    pub spec: serde_json::Value,
    pub cron: CronSpec,
    pub zone: Zone,
    pub target: Target,
    /// The configured payload (a JSON object), merged into every job.
    pub payload: serde_json::Map<String, serde_json::Value>,
    pub selector: Selector,
    pub spread: Duration,
    pub missed: Missed,
    pub overlap: Overlap,
}
