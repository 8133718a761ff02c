//! The running set of schedules: `[[schedules]]` from `FLEET_CONFIG` plus those managed at run
//! time ([`crate::defs`]), reloaded by the leader at every pass of its loop.
//!
//! **Which wins:** a name defined in the leader's `FLEET_CONFIG` is the file's; a stored
//! definition of the same name is ignored (logged once) and `fleetctl schedule apply|set|delete`
//! refuse such names. A stored definition that does not validate here (e.g. this process runs
//! with another lease) is left out and logged once per version; the rest of the set is unaffected.
//! A reload that needs a longer duplicate window on `FLEET_JOBS` (a larger spread) widens it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_nats::jetstream;
use chrono::Utc;
use fleet_shared::topology::{ensure_streams, Topology};
use sqlx::PgPool;

use crate::config::{self, SchedulerConfig};
use crate::defs;
use crate::schedule::{CronSpec, Schedule, Zone};
use crate::store;

/// The schedules the leader works with now; cheap to read from fan-out tasks.
pub struct Live {
    current: RwLock<Arc<Vec<Schedule>>>,
    /// Parsed stored definitions by name: (version, the schedule or `None` if it is invalid here).
    parsed: Mutex<HashMap<String, (i64, Option<Schedule>)>>,
    known: Mutex<HashSet<String>>,
    window: Mutex<Duration>,
    replicas: usize,
}

impl Live {
    pub fn new(config: &SchedulerConfig, replicas: usize) -> Live {
        Live {
            current: RwLock::new(Arc::new(config.schedules.clone())),
            parsed: Mutex::new(HashMap::new()),
            known: Mutex::new(HashSet::new()),
            window: Mutex::new(config.jobs_duplicate_window()),
            replicas,
        }
    }

    pub fn all(&self) -> Arc<Vec<Schedule>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn get(&self, name: &str) -> Option<Schedule> {
        self.all().iter().find(|s| s.name == name).cloned()
    }

    /// Reads the stored definitions and replaces the set; new names get a state row (evaluated
    /// from now).
    pub async fn reload(
        &self,
        config: &SchedulerConfig,
        pg: &PgPool,
        js: &jetstream::Context,
        now: chrono::DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let rows = defs::load(pg).await?;
        let mut set = config.schedules.clone();
        {
            let mut parsed = self.parsed.lock().unwrap_or_else(|e| e.into_inner());
            parsed.retain(|name, _| rows.iter().any(|r| &r.name == name));
            for row in rows {
                if config.get(&row.name).is_some() {
                    if parsed
                        .insert(row.name.clone(), (row.version, None))
                        .is_none()
                    {
                        tracing::warn!(schedule = %row.name, "a schedule of this name is in FLEET_CONFIG; the file's wins and the stored definition is ignored");
                    }
                    continue;
                }
                let fresh = parsed.get(&row.name).is_none_or(|(v, _)| *v != row.version);
                if fresh {
                    let schedule = match config::parse_json(&row.spec, config.lease) {
                        Ok(s) => Some(s),
                        Err(e) => {
                            tracing::error!(schedule = %row.name, version = row.version, error = %e, "stored schedule is invalid here; left out");
                            None
                        }
                    };
                    if schedule.is_some() {
                        tracing::info!(schedule = %row.name, version = row.version, "schedule definition loaded");
                    }
                    parsed.insert(row.name.clone(), (row.version, schedule));
                }
                if let Some((_, Some(s))) = parsed.get(&row.name) {
                    set.push(s.clone());
                }
            }
        }
        let names: Vec<String> = set.iter().map(|s| s.name.clone()).collect();
        let new: Vec<String> = {
            let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            names
                .iter()
                .filter(|n| !known.contains(*n))
                .cloned()
                .collect()
        };
        if !new.is_empty() {
            store::ensure_states(pg, &new, now).await?;
            self.known
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(new);
        }
        let needed = config.jobs_duplicate_window_for(&set);
        let widen = {
            let w = self.window.lock().unwrap_or_else(|e| e.into_inner());
            needed > *w
        };
        if widen {
            ensure_streams(
                js,
                &Topology {
                    replicas: self.replicas,
                    jobs_duplicate_window: needed,
                    ..Default::default()
                },
            )
            .await?;
            *self.window.lock().unwrap_or_else(|e| e.into_inner()) = needed;
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        Ok(())
    }
}

/// A clock a schedule's ticks are read on: the zone (`None` for a fixed-zone schedule) and the
/// cron expression in it.
pub type Clock = (Option<String>, CronSpec);

/// The clocks of `schedule`: its one zone, or (`timezone = "tenant"`) one per valid zone among
/// the tenants it selects (tenants without one are in `default_timezone`; with no tenant, the
/// default alone), plus the stored zones that are not IANA names, with their tenant counts.
pub async fn clocks_of(
    pg: &PgPool,
    schedule: &Schedule,
) -> anyhow::Result<(Vec<Clock>, Vec<(String, i64)>)> {
    if schedule.zone == Zone::Fixed {
        return Ok((vec![(None, schedule.cron.clone())], Vec::new()));
    }
    let default = schedule.cron.timezone().name().to_owned();
    let zones = store::tenant_zones(pg, &schedule.selector, &default).await?;
    let mut clocks = Vec::new();
    let mut invalid = Vec::new();
    for (zone, n) in zones {
        match zone.parse::<chrono_tz::Tz>() {
            Ok(tz) if tz.name() == zone => clocks.push((Some(zone), schedule.cron.in_zone(tz))),
            _ => invalid.push((zone, n)),
        }
    }
    if clocks.is_empty() {
        clocks.push((Some(default), schedule.cron.clone()));
    }
    Ok((clocks, invalid))
}
