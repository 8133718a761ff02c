//! The schedules `fleetctl` can see (the bottom module of the `schedule` commands): the file's
//! `[[schedules]]` and the stored definitions, with their state, and who is making a change.

use std::collections::HashMap;

use scheduler::config::SchedulerConfig;
use scheduler::defs::{self, DefRow};
use scheduler::schedule::Schedule;
use scheduler::store::{self, StateRow};
use sqlx::PgPool;

/// Every schedule fleetctl can see: the file's and the stored ones (a stored one shadowed by the
/// file's of the same name, or invalid under this FLEET_CONFIG, is kept aside).
pub struct Catalog {
    pub config: SchedulerConfig,
    pub stored: Vec<DefRow>,
    pub states: HashMap<String, StateRow>,
}

impl Catalog {
    pub async fn load(config: SchedulerConfig, pg: &PgPool) -> anyhow::Result<Catalog> {
        let stored = defs::load(pg).await?;
        let states = store::states(pg)
            .await?
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        Ok(Catalog {
            config,
            stored,
            states,
        })
    }

    /// The schedule of this name and its source (`file` or `stored`).
    pub fn get(&self, name: &str) -> Option<(Schedule, &'static str)> {
        if let Some(s) = self.config.get(name) {
            return Some((s.clone(), "file"));
        }
        let row = self.stored.iter().find(|r| r.name == name)?;
        scheduler::config::parse_json(&row.spec, self.config.lease)
            .ok()
            .map(|s| (s, "stored"))
    }

    pub fn all(&self) -> Vec<(Schedule, &'static str)> {
        let mut out: Vec<_> = self
            .config
            .schedules
            .iter()
            .map(|s| (s.clone(), "file"))
            .collect();
        for row in &self.stored {
            if self.config.get(&row.name).is_none() {
                if let Ok(s) = scheduler::config::parse_json(&row.spec, self.config.lease) {
                    out.push((s, "stored"));
                }
            }
        }
        out
    }

    /// An error naming the schedules there are, unless `name` is one of them (or has state).
    pub fn known(&self, name: &str) -> anyhow::Result<()> {
        if self.get(name).is_some() || self.states.contains_key(name) {
            return Ok(());
        }
        let names: Vec<String> = self.all().into_iter().map(|(s, _)| s.name).collect();
        anyhow::bail!(
            "no schedule named {} (schedules: {})",
            fleet_shared::errors::quoted(name),
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        )
    }
}

/// What to call the person making a change or a trigger.
pub fn who() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "fleetctl".into())
}
