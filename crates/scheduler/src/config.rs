//! The schedule file: `[[schedules]]` (and the optional `[scheduler]` section) of `FLEET_CONFIG`,
//! parsed and validated once at start.
//!
//! Everything that could make a tick fail later is checked here, so a bad schedule stops the
//! process at start with one line naming it: the name (it becomes part of every `Nats-Msg-Id`),
//! the cron expression, the IANA timezone, the subject template (only `{tenant_code}` may be
//! substituted, and the result must be a `jobs.` subject or a built-in target, `tenant.migrate`
//! or `tenant.rollout`), the tenant selector, the payload (a table whose keys do not shadow the
//! fields the scheduler adds; for `tenant.rollout`, only the rollout request's own fields, with
//! their types checked) and the spread (a `tenant.migrate` schedule's spread must fit the events stream's fixed 2-minute
//! duplicate window together with a leader failover; see [`max_events_spread`]).

use std::collections::HashSet;
use std::time::Duration;

use fleet_shared::config::{ConfigError, FileConfig};
use fleet_shared::Code;
use serde::{Deserialize, Serialize};

use crate::schedule::{
    CronSpec, Missed, Overlap, Schedule, Selector, Target, Zone, MIGRATE_SUBJECT, ROLLOUT_SUBJECT,
};

/// The fields the scheduler adds to every job payload; a configured payload may not set them.
pub const RESERVED_PAYLOAD_KEYS: &[&str] = &["tenant_id", "tenant_code", "schedule", "tick"];
/// The `tenant.rollout` fields a schedule's payload may set (the plan and codes come from its
/// tenant selector; `direction` and `undo` are operator decisions, not nightly ones).
pub const ROLLOUT_PAYLOAD_KEYS: &[&str] = &[
    "to",
    "canary",
    "waves",
    "concurrency",
    "max_failures",
    "lock_timeout",
];
/// The duplicate window of `FLEET_EVENTS` (fixed by the shared topology).
pub const EVENTS_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Slack added to every duplicate window beyond spread and failover.
pub const WINDOW_MARGIN: Duration = Duration::from_secs(30);
/// `timezone = "tenant"`: each tenant's tick is at its own zone's wall clock.
pub const TENANT_TIMEZONE: &str = "tenant";
/// The tenant config key holding a tenant's IANA time zone (set with `tenant.config.set`).
pub const TENANT_TIMEZONE_KEY: &str = "timezone";
pub const MAX_CATCH_UP_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_CATCH_UP_MAX: i64 = 10;
pub const MAX_CATCH_UP_MAX: i64 = 1000;
pub const TENANT_STATUSES: &[&str] = &["provisioning", "active", "suspended", "failed", "deleted"];

/// A schedule that cannot run. `Display` is one line naming the schedule.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("schedule {name:?}: {problem}")]
    Invalid { name: String, problem: String },
    #[error(transparent)]
    Section(#[from] ConfigError),
}

fn invalid(name: &str, problem: impl Into<String>) -> ScheduleError {
    ScheduleError::Invalid {
        name: name.to_owned(),
        problem: problem.into(),
    }
}

/// A duration as written: a string in the fleet's one syntax (`"500ms"`, `"30s"`, `"5m"`, `"2h"`,
/// `"1d"`). A number is kept only to be refused with the accepted form, after the schedule's name
/// is known, so the error names the schedule.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
enum RawDuration {
    Number(i64),
    Text(String),
}

impl RawDuration {
    fn parse(self) -> Result<Duration, String> {
        let text = match self {
            RawDuration::Number(n) => n.to_string(),
            RawDuration::Text(t) => t,
        };
        fleet_shared::duration::parse(&text).map_err(|e| e.to_string())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawSelector {
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<OneOrMany>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plans: Option<OneOrMany>,
    #[serde(skip_serializing_if = "Option::is_none")]
    codes: Option<OneOrMany>,
    #[serde(skip_serializing_if = "Option::is_none")]
    database: Option<OneOrMany>,
}

impl RawSelector {
    fn is_empty(&self) -> bool {
        self == &RawSelector::default()
    }
}

/// A schedule as written (TOML in `FLEET_CONFIG`, TOML or JSON for `fleetctl schedule apply`,
/// JSON in `fleet.schedule_definitions`): the same fields everywhere, validated by one function.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    name: String,
    cron: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    default_timezone: Option<String>,
    subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "RawSelector::is_empty")]
    tenants: RawSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spread: Option<RawDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    missed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    missed_deadline: Option<RawDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    catch_up_window: Option<RawDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    catch_up_max: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    overlap: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawScheduler {
    lease: Option<RawDuration>,
    dedupe_window: Option<RawDuration>,
}

/// The whole scheduler configuration.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub schedules: Vec<Schedule>,
    /// Leader lease: the KV bucket's `max_age`; a dead leader is replaced within two of these.
    pub lease: Duration,
    /// `[scheduler] dedupe_window`: how long `FLEET_JOBS` remembers a job's `Nats-Msg-Id`, i.e.
    /// the longest outage after which a resumed fan-out still cannot store a job twice (see
    /// [`SchedulerConfig::jobs_duplicate_window`], which never goes below what spread and a
    /// failover need).
    pub dedupe_window: Duration,
    /// `[provisioner] purge_after`: archived tenants older than this are purged by the leader's
    /// built-in purge task (see [`crate::purge`]); unset: no purge task.
    pub purge_after: Option<Duration>,
}

/// The part of `[provisioner]` the scheduler reads (the provisioner checks the rest).
#[derive(Debug, Clone, Deserialize, Default)]
struct RawProvisioner {
    purge_after: Option<String>,
}

pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);
/// Default `[scheduler] dedupe_window`: a crashed single replica restarted within ten minutes
/// resumes its fan-outs without sending a job twice.
pub const DEFAULT_DEDUPE_WINDOW: Duration = Duration::from_secs(600);
/// The largest `dedupe_window` accepted: the stream keeps every Msg-Id of the window in memory.
pub const MAX_DEDUPE_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The largest spread a `tenant.migrate` schedule may have: the events stream keeps Msg-Ids for
/// 2 minutes, and a resumed fan-out may re-publish up to two leases after the original.
pub fn max_events_spread(lease: Duration) -> Duration {
    EVENTS_DUPLICATE_WINDOW.saturating_sub(lease * 2 + WINDOW_MARGIN)
}

impl SchedulerConfig {
    /// Reads `[scheduler]` and `[[schedules]]` from the config file.
    pub fn from_file(file: &FileConfig) -> Result<SchedulerConfig, ScheduleError> {
        let raw_sched: RawScheduler = file.section("scheduler")?.unwrap_or_default();
        let lease = match raw_sched.lease {
            Some(d) => d
                .parse()
                .map_err(|p| invalid("[scheduler]", format!("lease: {p}")))?,
            None => DEFAULT_LEASE,
        };
        if lease < Duration::from_secs(1) {
            return Err(invalid("[scheduler]", "lease must be at least 1s"));
        }
        let dedupe_window = match raw_sched.dedupe_window {
            Some(d) => d
                .parse()
                .map_err(|p| invalid("[scheduler]", format!("dedupe_window: {p}")))?,
            None => DEFAULT_DEDUPE_WINDOW,
        };
        if dedupe_window > MAX_DEDUPE_WINDOW {
            return Err(invalid("[scheduler]", "dedupe_window may be at most 1d"));
        }
        let raws: Vec<RawSchedule> = file.section("schedules")?.unwrap_or_default();
        let mut seen = HashSet::new();
        let mut schedules = Vec::with_capacity(raws.len());
        for raw in raws {
            let s = validate(raw, lease)?;
            if !seen.insert(s.name.clone()) {
                return Err(invalid(&s.name, "defined twice"));
            }
            schedules.push(s);
        }
        let raw_prov: RawProvisioner = file.section("provisioner")?.unwrap_or_default();
        let purge_after = match raw_prov.purge_after {
            Some(t) => {
                let d = fleet_shared::duration::parse(&t)
                    .map_err(|p| invalid("[provisioner]", format!("purge_after: {p}")))?;
                if d < Duration::from_secs(60) {
                    return Err(invalid("[provisioner]", "purge_after must be at least 1m"));
                }
                Some(d)
            }
            None => None,
        };
        Ok(SchedulerConfig {
            schedules,
            lease,
            dedupe_window,
            purge_after,
        })
    }

    pub fn get(&self, name: &str) -> Option<&Schedule> {
        self.schedules.iter().find(|s| s.name == name)
    }

    /// The duplicate window `FLEET_JOBS` needs: `dedupe_window`, and at least the largest spread
    /// of a `jobs.` schedule plus a failover (two leases) plus a margin.
    pub fn jobs_duplicate_window(&self) -> Duration {
        self.jobs_duplicate_window_for(&self.schedules)
    }

    /// [`SchedulerConfig::jobs_duplicate_window`] for another set of schedules (the file's plus
    /// those managed at run time).
    pub fn jobs_duplicate_window_for(&self, schedules: &[Schedule]) -> Duration {
        let spread = schedules
            .iter()
            .filter(|s| matches!(s.target, Target::Jobs { .. }))
            .map(|s| s.spread)
            .max()
            .unwrap_or_default();
        self.dedupe_window
            .max(spread + self.lease * 2 + WINDOW_MARGIN)
    }

    /// How long a fan-out may have made no progress and still be resumed without any job being
    /// stored twice: the duplicate window of its target's stream, less [`WINDOW_MARGIN`] (for the
    /// acks that were in flight at the last commit, and clock skew). A job not yet committed was
    /// stored at most that margin before the run's last progress (`updated_at`), so re-publishing
    /// it within this long of that progress meets its Msg-Id.
    pub fn safe_resume_within(&self, target: &Target) -> Duration {
        self.safe_resume_within_for(target, &self.schedules)
    }

    /// [`SchedulerConfig::safe_resume_within`] with the duplicate window of `schedules`.
    pub fn safe_resume_within_for(&self, target: &Target, schedules: &[Schedule]) -> Duration {
        let window = match target {
            Target::Jobs { .. } => self.jobs_duplicate_window_for(schedules),
            Target::TenantMigrate | Target::TenantRollout => EVENTS_DUPLICATE_WINDOW,
        };
        window.saturating_sub(WINDOW_MARGIN)
    }
}

fn parse_target(name: &str, subject: &str) -> Result<Target, ScheduleError> {
    if subject == MIGRATE_SUBJECT {
        return Ok(Target::TenantMigrate);
    }
    if subject == ROLLOUT_SUBJECT {
        return Ok(Target::TenantRollout);
    }
    // Only `{tenant_code}` may be substituted; any other brace is a typo worth stopping for.
    let rest = subject.replace("{tenant_code}", "x");
    if rest.contains('{') || rest.contains('}') {
        return Err(invalid(
            name,
            format!("subject {subject:?}: only {{tenant_code}} may be substituted"),
        ));
    }
    let tokens_ok = rest.split('.').all(|t| {
        !t.is_empty()
            && t != "*"
            && t != ">"
            && t.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>')
    });
    if !tokens_ok {
        return Err(invalid(
            name,
            format!("subject {subject:?} is not a NATS subject without wildcards"),
        ));
    }
    if !rest.starts_with("jobs.") {
        return Err(invalid(
            name,
            format!(
                "subject {subject:?} must start with jobs. (or be the built-in {MIGRATE_SUBJECT} or {ROLLOUT_SUBJECT})"
            ),
        ));
    }
    // `{tenant_code}` must be a whole token, or the subject filter would not match it.
    let whole = subject
        .split('.')
        .all(|t| !t.contains("{tenant_code}") || t == "{tenant_code}");
    if !whole {
        return Err(invalid(
            name,
            format!("subject {subject:?}: {{tenant_code}} must be a whole token (jobs.task.{{tenant_code}})"),
        ));
    }
    Ok(Target::Jobs {
        template: subject.to_owned(),
    })
}

/// Validates one schedule given as JSON (a stored definition, or an entry of a file for
/// `fleetctl schedule apply`), exactly as a `[[schedules]]` entry is validated.
pub fn parse_json(value: &serde_json::Value, lease: Duration) -> Result<Schedule, ScheduleError> {
    let name = value
        .get("name")
        .and_then(|n| n.as_str())
        .unwrap_or("<unnamed>")
        .to_owned();
    let raw: RawSchedule = serde_json::from_value(value.clone())
        .map_err(|e| invalid(&name, fleet_shared::errors::one_line(&e.to_string())))?;
    validate(raw, lease)
}

/// The schedule entries of a file for `fleetctl schedule apply`: JSON (one object, an array, or
/// `{"schedules": [...]}`) or TOML (`[[schedules]]` entries). Not yet validated.
pub fn entries_of(text: &str, json: bool) -> Result<Vec<serde_json::Value>, String> {
    let value: serde_json::Value = if json {
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?
    } else {
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            format!(
                "not TOML: {}",
                fleet_shared::errors::one_line(&e.to_string())
            )
        })?;
        serde_json::to_value(table).map_err(|e| e.to_string())?
    };
    let list = match value {
        serde_json::Value::Array(a) => a,
        serde_json::Value::Object(mut m) if m.contains_key("schedules") => {
            if let Some(k) = m.keys().find(|k| *k != "schedules") {
                return Err(format!(
                    "unknown key {k:?} beside schedules (only [[schedules]] entries are applied)"
                ));
            }
            match m.remove("schedules") {
                Some(serde_json::Value::Array(a)) => a,
                _ => return Err("schedules must be a list of tables".into()),
            }
        }
        serde_json::Value::Object(m) if json => vec![serde_json::Value::Object(m)],
        _ => return Err("expected [[schedules]] entries".into()),
    };
    if list.is_empty() {
        return Err("no schedules in the file".into());
    }
    Ok(list)
}

fn validate(raw: RawSchedule, lease: Duration) -> Result<Schedule, ScheduleError> {
    let name = raw.name.clone();
    let spec = serde_json::to_value(&raw).unwrap_or_default();
    // Part of every Nats-Msg-Id (`<schedule>:<tick>:<tenant_id>`): a Name holds no colon.
    fleet_shared::Name::parse(&name).map_err(|e| invalid(&name, e.to_string()))?;
    let tenant_zones = raw.timezone.as_deref().map(str::trim) == Some(TENANT_TIMEZONE);
    let tz = if tenant_zones {
        match raw.default_timezone.as_deref() {
            Some(d) => d,
            None => {
                return Err(invalid(
                    &name,
                    "timezone = \"tenant\" needs default_timezone (the IANA zone of tenants without one, e.g. \"UTC\")",
                ))
            }
        }
    } else {
        if raw.default_timezone.is_some() {
            return Err(invalid(
                &name,
                "default_timezone applies only with timezone = \"tenant\"",
            ));
        }
        raw.timezone.as_deref().unwrap_or("UTC")
    };
    let cron = CronSpec::parse(&raw.cron, tz).map_err(|e| {
        let e = e.to_string();
        invalid(
            &name,
            if tenant_zones {
                format!("default_timezone: {e}")
            } else {
                e
            },
        )
    })?;
    let target = parse_target(&name, raw.subject.trim())?;
    let zone = if tenant_zones {
        if target == Target::TenantRollout {
            return Err(invalid(
                &name,
                "timezone = \"tenant\" does not apply to tenant.rollout: a tick publishes one rollout request for every tenant",
            ));
        }
        Zone::Tenant
    } else {
        Zone::Fixed
    };

    let payload = match raw.payload {
        None => serde_json::Map::new(),
        Some(map) => {
            if target == Target::TenantMigrate && !map.is_empty() {
                return Err(invalid(
                    &name,
                    "the built-in tenant.migrate target sends {\"code\"} and takes no payload",
                ));
            }
            if target == Target::TenantRollout {
                check_rollout_payload(&name, &map)?;
            }
            if let Some(k) = RESERVED_PAYLOAD_KEYS.iter().find(|k| map.contains_key(**k)) {
                return Err(invalid(
                    &name,
                    format!("payload may not set {k:?}: the scheduler adds it"),
                ));
            }
            map
        }
    };

    if target == Target::TenantRollout && raw.tenants.status.is_some() {
        return Err(invalid(
            &name,
            "tenants.status does not apply to tenant.rollout: a rollout migrates the active tenants it selects and skips the others",
        ));
    }
    let statuses = raw
        .tenants
        .status
        .map(OneOrMany::into_vec)
        .unwrap_or_else(|| vec!["active".to_owned()]);
    if statuses.is_empty() {
        return Err(invalid(&name, "tenants.status is empty"));
    }
    if let Some(bad) = statuses
        .iter()
        .find(|s| !TENANT_STATUSES.contains(&s.as_str()))
    {
        return Err(invalid(
            &name,
            format!(
                "tenants.status {bad:?} is not one of {}",
                TENANT_STATUSES.join(", ")
            ),
        ));
    }
    let plans = match raw.tenants.plans.map(OneOrMany::into_vec) {
        None => None,
        Some(p) if p.is_empty() => return Err(invalid(&name, "tenants.plans is empty")),
        Some(p) => {
            for plan in &p {
                fleet_shared::Name::parse(plan)
                    .map_err(|e| invalid(&name, format!("tenants.plans: {e}")))?;
            }
            Some(p)
        }
    };
    if target == Target::TenantRollout && plans.as_ref().is_some_and(|p| p.len() > 1) {
        return Err(invalid(
            &name,
            "tenants.plans: a tenant.rollout selects at most one plan (its \"plan\"); use one schedule per plan",
        ));
    }
    let databases = match raw.tenants.database.map(OneOrMany::into_vec) {
        None => None,
        Some(_) if target == Target::TenantRollout => {
            return Err(invalid(
                &name,
                "tenants.database does not apply to tenant.rollout (a rollout selects by plan or codes and migrates each tenant where the registry says it is)",
            ))
        }
        Some(d) if d.is_empty() => return Err(invalid(&name, "tenants.database is empty")),
        Some(d) => {
            for db in &d {
                fleet_shared::Name::parse(db)
                    .map_err(|e| invalid(&name, format!("tenants.database: {e}")))?;
            }
            Some(d)
        }
    };
    let codes = match raw.tenants.codes.map(OneOrMany::into_vec) {
        None => None,
        Some(_) if target != Target::TenantRollout => {
            return Err(invalid(
                &name,
                "tenants.codes applies only to the tenant.rollout target",
            ))
        }
        Some(c) if c.is_empty() => return Err(invalid(&name, "tenants.codes is empty")),
        Some(c) => Some(
            c.iter()
                .map(|code| {
                    Code::parse(code).map_err(|e| invalid(&name, format!("tenants.codes: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };

    let spread = match raw.spread {
        Some(d) => d
            .parse()
            .map_err(|p| invalid(&name, format!("spread: {p}")))?,
        None => Duration::ZERO,
    };
    if target == Target::TenantRollout && !spread.is_zero() {
        return Err(invalid(
            &name,
            "spread does not apply to tenant.rollout: a tick publishes one rollout request (set the rollout's waves and concurrency in the payload)",
        ));
    }
    if spread > Duration::from_secs(24 * 3600) {
        return Err(invalid(&name, "spread may be at most 1d"));
    }
    if target == Target::TenantMigrate && spread > max_events_spread(lease) {
        return Err(invalid(
            &name,
            format!(
                "spread {spread:?} is too long for tenant.migrate: FLEET_EVENTS keeps Msg-Ids for 120s, so the spread may be at most {:?} with a {lease:?} lease",
                max_events_spread(lease)
            ),
        ));
    }

    let catch_up_fields = raw.catch_up_window.is_some() || raw.catch_up_max.is_some();
    if catch_up_fields && raw.missed.as_deref() != Some("catch_up") {
        return Err(invalid(
            &name,
            "catch_up_window and catch_up_max need missed = \"catch_up\"",
        ));
    }
    let missed = match raw.missed.as_deref().unwrap_or("skip") {
        "catch_up" => {
            if raw.missed_deadline.is_some() {
                return Err(invalid(
                    &name,
                    "missed_deadline needs missed = \"run_latest\" (catch_up uses catch_up_window)",
                ));
            }
            let window = match raw.catch_up_window {
                Some(d) => d
                    .parse()
                    .map_err(|p| invalid(&name, format!("catch_up_window: {p}")))?,
                None => {
                    return Err(invalid(
                        &name,
                        "missed = \"catch_up\" needs catch_up_window (how far back missed ticks are fired, e.g. \"6h\")",
                    ))
                }
            };
            if window > MAX_CATCH_UP_WINDOW {
                return Err(invalid(&name, "catch_up_window may be at most 7d"));
            }
            let interval = cron.longest_interval();
            if window < interval {
                return Err(invalid(
                    &name,
                    format!(
                        "catch_up_window {} is shorter than the interval between ticks ({}): it could never hold a missed tick",
                        humantime::format_duration(window),
                        humantime::format_duration(interval)
                    ),
                ));
            }
            let max = raw.catch_up_max.unwrap_or(DEFAULT_CATCH_UP_MAX);
            if !(1..=MAX_CATCH_UP_MAX).contains(&max) {
                return Err(invalid(
                    &name,
                    format!("catch_up_max {max} is not a number from 1 to {MAX_CATCH_UP_MAX}"),
                ));
            }
            Missed::CatchUp {
                window,
                max: max as u32,
            }
        }
        "skip" => {
            if raw.missed_deadline.is_some() {
                return Err(invalid(
                    &name,
                    "missed_deadline needs missed = \"run_latest\"",
                ));
            }
            Missed::Skip
        }
        "run_latest" => {
            let deadline = match raw.missed_deadline {
                Some(d) => d
                    .parse()
                    .map_err(|p| invalid(&name, format!("missed_deadline: {p}")))?,
                None => Duration::from_secs(3600),
            };
            Missed::RunLatest { deadline }
        }
        other => {
            return Err(invalid(
                &name,
                format!("missed {other:?} is not skip, run_latest or catch_up"),
            ))
        }
    };
    let overlap = match raw.overlap.as_deref().unwrap_or("allow") {
        "allow" => Overlap::Allow,
        "forbid" => Overlap::Forbid,
        other => {
            return Err(invalid(
                &name,
                format!("overlap {other:?} is not allow or forbid"),
            ))
        }
    };

    Ok(Schedule {
        name,
        spec,
        cron,
        zone,
        target,
        payload,
        selector: Selector {
            statuses,
            plans,
            databases,
            codes,
        },
        spread,
        missed,
        overlap,
    })
}

/// The types of a `tenant.rollout` schedule's payload, checked at start so a tick never publishes
/// a request the provisioner refuses for its shape. Values (waves, max_failures, a version that
/// must exist) are checked again by the provisioner, which owns the migration set.
fn check_rollout_payload(
    name: &str,
    map: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), ScheduleError> {
    for (key, value) in map {
        let ok = match key.as_str() {
            "to" => value.as_i64().is_some_and(|v| v >= 0),
            "concurrency" => value.as_u64().is_some_and(|v| (1..=64).contains(&v)),
            "canary" => value.is_string(),
            "waves" | "max_failures" => value.is_string(),
            "lock_timeout" => value
                .as_str()
                .is_some_and(|t| fleet_shared::duration::parse(t).is_ok()),
            "plan" | "codes" => {
                return Err(invalid(
                    name,
                    format!(
                        "payload may not set {key:?}: it comes from tenants.{key}{}",
                        if key == "plan" { "s" } else { "" }
                    ),
                ))
            }
            _ => {
                return Err(invalid(
                    name,
                    format!(
                        "payload key {key:?} is not a tenant.rollout field (allowed: {})",
                        ROLLOUT_PAYLOAD_KEYS.join(", ")
                    ),
                ))
            }
        };
        if !ok {
            let form = match key.as_str() {
                "to" => "a version number",
                "concurrency" => "a number from 1 to 64",
                "canary" => "a string: a count (\"1\") or comma-separated codes",
                "waves" => "a string such as \"1,10%,100%\"",
                "max_failures" => "a string such as \"2\" or \"1%\"",
                _ => "a duration string such as \"2s\"",
            };
            return Err(invalid(
                name,
                format!("payload {key}: {value} is not {form}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_shared::Code;

    fn parse(text: &str) -> Result<SchedulerConfig, ScheduleError> {
        SchedulerConfig::from_file(&FileConfig::parse(text, None).unwrap())
    }

    const GOOD: &str = r#"
[scheduler]
lease = "5s"

[[schedules]]
name = "followups"
cron = "0 */5 * * * *"
timezone = "Europe/Berlin"
subject = "jobs.followups.{tenant_code}"
payload = { kind = "followup", limit = 50 }
tenants = { status = "active", plans = ["premium", "enterprise"] }
spread = "30s"
missed = "run_latest"
missed_deadline = "10m"
overlap = "forbid"

[[schedules]]
name = "migrate-nightly"
cron = "30 2 * * *"
subject = "tenant.migrate"
"#;

    #[test]
    fn a_database_selector_parses_and_is_checked_against_the_configured_databases() {
        let c = parse(
            r#"
[[schedules]]
name = "a"
cron = "0 0 * * *"
subject = "jobs.a.{tenant_code}"
tenants = { database = "shard_b" }

[[schedules]]
name = "b"
cron = "0 0 * * *"
subject = "tenant.migrate"
tenants = { database = ["control", "shard_b"] }
"#,
        )
        .unwrap();
        assert_eq!(
            c.get("a").unwrap().selector.databases.as_deref(),
            Some(&["shard_b".to_owned()][..])
        );
        let dbs = fleet_shared::databases::Databases::from_file(
            None,
            &FileConfig::parse(
                "[databases.shard_b]\nurl = \"postgres://x/y\"\ntenants = true\n",
                None,
            )
            .unwrap()
            .table,
            &fleet_shared::secret::SecretUrl::new("postgres://c/d"),
            |_| None,
        )
        .unwrap();
        for s in &c.schedules {
            s.selector.check_databases(&s.name, &dbs).unwrap();
        }
        let only_control = fleet_shared::databases::Databases::control_only(
            &fleet_shared::secret::SecretUrl::new("postgres://c/d"),
        );
        let err = c
            .get("b")
            .unwrap()
            .selector
            .check_databases("b", &only_control)
            .unwrap_err();
        assert!(
            err.starts_with("schedule \"b\": tenants.database: unknown database \"shard_b\"")
                && err.contains("configured: control")
                && !err.contains('\n'),
            "{err}"
        );
        for (tenants, subject, wants) in [
            (
                "{ database = [] }",
                "jobs.x.{tenant_code}",
                "tenants.database is empty",
            ),
            (
                "{ database = \"Bad Name\" }",
                "jobs.x.{tenant_code}",
                "tenants.database",
            ),
            (
                "{ database = \"shard_b\" }",
                "tenant.rollout",
                "does not apply to tenant.rollout",
            ),
        ] {
            let err = parse(&format!(
                "[[schedules]]\nname = \"x\"\ncron = \"0 0 * * *\"\nsubject = \"{subject}\"\ntenants = {tenants}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                err.contains(wants) && !err.contains('\n'),
                "{tenants}: {err}"
            );
        }
    }

    #[test]
    fn a_good_file_parses() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.lease, Duration::from_secs(5));
        let f = c.get("followups").unwrap();
        assert_eq!(f.spread, Duration::from_secs(30));
        assert_eq!(
            f.missed,
            Missed::RunLatest {
                deadline: Duration::from_secs(600)
            }
        );
        assert_eq!(f.overlap, Overlap::Forbid);
        assert_eq!(f.selector.statuses, vec!["active"]);
        assert_eq!(f.target.filter(), "jobs.followups.*");
        let acme = Code::parse("acme").unwrap();
        assert_eq!(f.target.subject(&acme), "jobs.followups.acme");
        let m = c.get("migrate-nightly").unwrap();
        assert_eq!(m.target, Target::TenantMigrate);
        assert_eq!(m.missed, Missed::Skip);
        // The default dedupe_window (10 min) is longer than spread + two leases + margin.
        assert_eq!(c.dedupe_window, DEFAULT_DEDUPE_WINDOW);
        assert_eq!(c.jobs_duplicate_window(), Duration::from_secs(600));
        assert_eq!(c.safe_resume_within(&f.target), Duration::from_secs(570));
        assert_eq!(c.safe_resume_within(&m.target), Duration::from_secs(90));
    }

    #[test]
    fn suspended_tenants_only_when_selected_and_purge_after_from_the_provisioner_section() {
        let c = parse(GOOD).unwrap();
        assert!(c
            .schedules
            .iter()
            .all(|s| !s.selector.statuses.contains(&"suspended".to_string())));
        assert_eq!(c.purge_after, None);
        let both = GOOD.replace(
            "tenants = { status = \"active\", plans",
            "tenants = { status = [\"active\", \"suspended\"], plans",
        );
        let c = parse(&both).unwrap();
        assert!(c
            .schedules
            .iter()
            .any(|s| s.selector.statuses == ["active", "suspended"]));
        let purge = format!("{GOOD}\n[provisioner]\nconcurrency = 2\npurge_after = \"30d\"\n");
        assert_eq!(
            parse(&purge).unwrap().purge_after,
            Some(Duration::from_secs(30 * 86400))
        );
        for bad in ["\"30s\"", "\"soon\""] {
            let text = format!("{GOOD}\n[provisioner]\npurge_after = {bad}\n");
            assert!(parse(&text)
                .unwrap_err()
                .to_string()
                .contains("purge_after"));
        }
    }

    #[test]
    fn the_dedupe_window_is_configurable_and_never_shorter_than_a_spread_plus_a_failover() {
        let long = GOOD.replace("lease = \"5s\"", "lease = \"5s\"\ndedupe_window = \"2h\"");
        assert_eq!(
            parse(&long).unwrap().jobs_duplicate_window(),
            Duration::from_secs(7200)
        );
        // Shorter than spread (30s) + two leases + 30s: the window is what they need.
        let short = GOOD.replace("lease = \"5s\"", "lease = \"5s\"\ndedupe_window = \"10s\"");
        assert_eq!(
            parse(&short).unwrap().jobs_duplicate_window(),
            Duration::from_secs(30 + 10 + 30)
        );
        for bad in ["\"2d\"", "\"soon\""] {
            let text = GOOD.replace(
                "lease = \"5s\"",
                &format!("lease = \"5s\"\ndedupe_window = {bad}"),
            );
            let e = parse(&text).unwrap_err().to_string();
            assert!(
                e.contains("[scheduler]") && e.contains("dedupe_window"),
                "{e}"
            );
        }
    }

    #[test]
    fn the_example_config_runs_the_nightly_migrate_as_one_rollout_per_tick() {
        let c = parse(include_str!("../../../deploy/local/fleet.toml")).unwrap();
        let m = c.get("migrate-nightly").unwrap();
        assert_eq!(m.target, Target::TenantRollout);
        assert_eq!(m.payload["waves"], "1,10%,100%");
    }

    #[test]
    fn no_schedules_is_fine() {
        let c = parse("").unwrap();
        assert!(c.schedules.is_empty());
        assert_eq!(c.lease, DEFAULT_LEASE);
    }

    #[test]
    fn invalid_schedules_fail_with_one_line_naming_them() {
        let base = |extra: &str| {
            format!(
                "[[schedules]]\nname = \"bad1\"\nsubject = \"jobs.x.{{tenant_code}}\"\n{extra}\n"
            )
        };
        let cases = [
            (base("cron = \"not a cron\""), "cron"),
            (base("cron = \"0 * * * * * * *\""), "cron"),
            (base("cron = \"* * * * *\"\ntimezone = \"Mars/Olympus\""), "timezone"),
            (
                "[[schedules]]\nname = \"bad1\"\ncron = \"* * * * *\"\nsubject = \"jobs.x.{code}\"\n".to_owned(),
                "only {tenant_code}",
            ),
            (
                "[[schedules]]\nname = \"bad1\"\ncron = \"* * * * *\"\nsubject = \"other.{tenant_code}\"\n".to_owned(),
                "must start with jobs.",
            ),
            (
                "[[schedules]]\nname = \"bad1\"\ncron = \"* * * * *\"\nsubject = \"jobs.*.x\"\n".to_owned(),
                "wildcards",
            ),
            (
                "[[schedules]]\nname = \"bad1\"\ncron = \"* * * * *\"\nsubject = \"jobs.x_{tenant_code}\"\n".to_owned(),
                "whole token",
            ),
            (base("cron = \"* * * * *\"\nmissed = \"sometimes\""), "missed"),
            (base("cron = \"* * * * *\"\noverlap = \"maybe\""), "overlap"),
            (base("cron = \"* * * * *\"\nspread = \"ten\""), "spread"),
            (base("cron = \"* * * * *\"\npayload = { tick = 1 }"), "tick"),
            (base("cron = \"* * * * *\"\ntenants = { status = \"gone\" }"), "status"),
            (base("cron = \"* * * * *\"\ntenants = { plans = [\"Gold!\"] }"), "plans"),
            (
                "[[schedules]]\nname = \"bad1\"\ncron = \"* * * * *\"\nsubject = \"tenant.migrate\"\nspread = \"10m\"\n".to_owned(),
                "too long for tenant.migrate",
            ),
        ];
        for (text, needle) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains("\"bad1\""), "{text}: {err}");
            assert!(err.contains(needle), "{text}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let err = parse(
            "[[schedules]]\nname = \"Bad:Name\"\ncron = \"* * * * *\"\nsubject = \"jobs.x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("Bad:Name"), "{err}");
        let twice =
            "[[schedules]]\nname = \"a\"\ncron = \"* * * * *\"\nsubject = \"jobs.x\"\n".repeat(2);
        assert!(parse(&twice)
            .unwrap_err()
            .to_string()
            .contains("defined twice"));
        let unknown = parse(
            "[[schedules]]\nname = \"a\"\ncron = \"* * * * *\"\nsubject = \"jobs.x\"\nbogus = 1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(unknown.contains("[schedules]"), "{unknown}");
    }

    #[test]
    fn a_rollout_schedule_maps_its_selector_and_refuses_what_a_rollout_cannot_take() {
        let ok = "[[schedules]]\nname = \"r\"\ncron = \"* * * * *\"\nsubject = \"tenant.rollout\"\ntenants = { plans = \"premium\", codes = [\"acme\"] }\npayload = { to = 6, waves = \"1,100%\", lock_timeout = \"2s\" }\n";
        let c = parse(ok).unwrap();
        let r = c.get("r").unwrap();
        assert_eq!(r.target, Target::TenantRollout);
        assert_eq!(r.selector.codes.as_ref().unwrap()[0].as_str(), "acme");
        let bad = |extra: &str| {
            format!("[[schedules]]\nname = \"bad1\"\ncron = \"* * * * *\"\nsubject = \"tenant.rollout\"\n{extra}\n")
        };
        let cases = [
            (
                bad("tenants = { status = \"active\" }"),
                "tenants.status does not apply",
            ),
            (
                bad("tenants = { plans = [\"a\", \"b\"] }"),
                "at most one plan",
            ),
            (bad("tenants = { codes = [\"Bad!\"] }"), "tenants.codes"),
            (bad("spread = \"10s\""), "spread does not apply"),
            (
                bad("payload = { direction = \"down\" }"),
                "not a tenant.rollout field",
            ),
            (bad("payload = { plan = \"premium\" }"), "tenants.plans"),
            (bad("payload = { to = \"six\" }"), "payload to"),
            (bad("payload = { concurrency = 0 }"), "payload concurrency"),
            (bad("payload = { canary = 1 }"), "payload canary"),
            (
                bad("payload = { lock_timeout = \"soon\" }"),
                "payload lock_timeout",
            ),
        ];
        for (text, needle) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains("\"bad1\""), "{text}: {err}");
            assert!(err.contains(needle), "{text}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let codes_elsewhere = "[[schedules]]\nname = \"bad1\"\ncron = \"* * * * *\"\nsubject = \"jobs.x\"\ntenants = { codes = [\"acme\"] }\n";
        assert!(parse(codes_elsewhere)
            .unwrap_err()
            .to_string()
            .contains("only to the tenant.rollout target"));
    }

    #[test]
    fn durations_use_the_one_syntax_and_a_bare_number_names_the_schedule() {
        let bare = GOOD.replace("spread = \"30s\"", "spread = 30");
        let err = parse(&bare).unwrap_err().to_string();
        assert!(
            err.contains("spread") && err.contains("write e.g. 30s"),
            "{err}"
        );
        let err = parse(&GOOD.replace("lease = \"5s\"", "lease = 5"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[scheduler]") && err.contains("lease"),
            "{err}"
        );
    }
}
