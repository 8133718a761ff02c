//! The combined set of schedules as the leader sees it, for the tools that read and operate
//! schedules (`fleetctl schedule …` and the console): the file's `[[schedules]]` and the stored
//! definitions ([`crate::defs`]), with their state.
//!
//! The precedence is the leader's ([`crate::live`]): a name defined in `FLEET_CONFIG` is the
//! file's and a stored definition of the same name is ignored; a stored definition that does not
//! validate under this `FLEET_CONFIG` is left out. [`Catalog::load`] reads the control plane
//! afresh, so a caller that loads per request sees `schedule apply|set|delete` at once.

use std::collections::HashMap;

use sqlx::PgPool;

use crate::config::{self, SchedulerConfig};
use crate::defs::{self, DefRow};
use crate::schedule::Schedule;
use crate::store::{self, StateRow};

/// Every schedule there is: the file's and the stored ones (a stored one shadowed by the file's
/// of the same name, or invalid under this FLEET_CONFIG, is kept aside).
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
        config::parse_json(&row.spec, self.config.lease)
            .ok()
            .map(|s| (s, "stored"))
    }

    /// The file's schedules, then the stored ones (by name).
    pub fn all(&self) -> Vec<(Schedule, &'static str)> {
        let mut out: Vec<_> = self
            .config
            .schedules
            .iter()
            .map(|s| (s.clone(), "file"))
            .collect();
        for row in &self.stored {
            if self.config.get(&row.name).is_none() {
                if let Ok(s) = config::parse_json(&row.spec, self.config.lease) {
                    out.push((s, "stored"));
                }
            }
        }
        out
    }

    pub fn paused(&self, name: &str) -> bool {
        self.states.get(name).is_some_and(|s| s.paused)
    }

    /// An error naming the schedules there are, unless `name` is one of them (or has state).
    pub fn known(&self, name: &str) -> anyhow::Result<()> {
        if self.get(name).is_some() || self.states.contains_key(name) {
            return Ok(());
        }
        Err(self.unknown(name))
    }

    /// "no schedule named …", with the names there are.
    pub fn unknown(&self, name: &str) -> anyhow::Error {
        let names: Vec<String> = self.all().into_iter().map(|(s, _)| s.name).collect();
        anyhow::anyhow!(
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
