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
use crate::defs::{self, ChangeRow, DefRow};
use crate::schedule::Schedule;
use crate::store::{self, StateRow};

/// Every schedule there is: the file's and the stored ones (a stored one shadowed by the file's
/// of the same name, or invalid under this FLEET_CONFIG, is kept aside).
pub struct Catalog {
    pub config: SchedulerConfig,
    pub stored: Vec<DefRow>,
    pub states: HashMap<String, StateRow>,
    /// Deleted stored schedules by name, with their deletion (when, by whom, the last definition).
    pub deleted: HashMap<String, ChangeRow>,
}

impl Catalog {
    pub async fn load(config: SchedulerConfig, pg: &PgPool) -> anyhow::Result<Catalog> {
        let stored = defs::load(pg).await?;
        let states = store::states(pg)
            .await?
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let deleted = defs::deleted(pg)
            .await?
            .into_iter()
            .map(|c| (c.name.clone(), c))
            .collect();
        Ok(Catalog {
            config,
            stored,
            states,
            deleted,
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

    /// An error naming the schedules there are, unless `name` is one of them (or has state); a
    /// deleted one is refused with when and by whom.
    pub fn known(&self, name: &str) -> anyhow::Result<()> {
        match self.known_or_deleted(name)? {
            None => Ok(()),
            Some(tomb) => anyhow::bail!(
                "schedule {} was deleted ({}); its history stays in `fleetctl schedule history {name}`",
                fleet_shared::errors::quoted(name),
                deletion(tomb)
            ),
        }
    }

    /// Like [`Catalog::known`], but a deleted schedule is found too: its tombstone is returned
    /// (`None`: the schedule exists).
    pub fn known_or_deleted(&self, name: &str) -> anyhow::Result<Option<&ChangeRow>> {
        if self.get(name).is_some() || self.states.contains_key(name) {
            return Ok(None);
        }
        if let Some(tomb) = self.deleted.get(name) {
            return Ok(Some(tomb));
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

/// "deleted at T by WHO" of a tombstone.
pub fn deletion(tomb: &ChangeRow) -> String {
    format!(
        "deleted at {} by {}",
        tomb.changed_at.to_rfc3339(),
        tomb.changed_by.as_deref().unwrap_or("?")
    )
}
