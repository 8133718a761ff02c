//! Placement: which database a new tenant's schema goes to.
//!
//! The homes are the `[databases.<name>]` of `FLEET_CONFIG` with `tenants = true`, plus
//! `control` (`DATABASE_URL`) unless `[databases.control] tenants = false`. For each
//! `tenant.created`, in this order:
//!
//! 1. the event's `database` (a configured tenant home, else the event is bad input);
//! 2. the plan's database, `[provisioner] plan_databases = { enterprise = "big" }`;
//! 3. the home with the fewest live tenants relative to its `capacity` (ties: the first by name).
//!
//! On a home with `isolation = "database"` the tenant also gets a database of its own there
//! ([`crate::own_db`]); a plan gets that isolation by naming such a home in `plan_databases`.
//!
//! The choice is recorded in `fleet.tenants.database`, the registry every path that touches a
//! tenant schema reads (see docs/SCALING.md). Counting and choosing are not serialized across
//! tenants: two tenants placed at the same moment may both go to the emptiest home, which only
//! makes the spread approximate, never wrong.

use std::collections::BTreeMap;

use fleet_shared::databases::{DatabaseConfig, DatabasePools, CONTROL};
use fleet_shared::events::BadInput;
use sqlx::PgConnection;

use crate::error::ProvisionError;

/// Connections per tenant database pool in a provisioner.
pub const POOL_CONNECTIONS: u32 = 8;

/// Where new tenants go, and the pools of every database.
#[derive(Clone, Debug)]
pub struct Placement {
    pub pools: DatabasePools,
    plan_databases: BTreeMap<String, String>,
}

impl Placement {
    /// `plan_databases` from `[provisioner]`, each checked to be a configured tenant home.
    pub fn new(
        pools: DatabasePools,
        plan_databases: &BTreeMap<String, String>,
    ) -> Result<Placement, String> {
        for (plan, db) in plan_databases {
            home(&pools, db)
                .map_err(|e| format!("FLEET_CONFIG [provisioner] plan_databases.{plan}: {e}"))?;
        }
        at_least_one_home(&pools)?;
        Ok(Placement {
            pools,
            plan_databases: plan_databases.clone(),
        })
    }

    /// Only the control plane (tests and tools without a `FLEET_CONFIG`).
    pub fn control_only(pools: DatabasePools) -> Placement {
        Placement {
            pools,
            plan_databases: BTreeMap::new(),
        }
    }

    /// Checks a database named by an operator: configured and a tenant home; else one line.
    pub fn check_home(&self, name: &str) -> Result<(), String> {
        home(&self.pools, name).map(|_| ())
    }

    /// Why [`Placement::choose`] picks what it picks for `named` and `plan`, for messages.
    pub fn reason(&self, named: Option<&str>, plan: &str) -> &'static str {
        if named.is_some() {
            "named"
        } else if self.plan_databases.contains_key(plan) {
            "the plan's database"
        } else {
            "fewest tenants relative to capacity"
        }
    }

    /// Checks a database named by an event: configured and a tenant home.
    pub fn check_named(&self, name: &str) -> Result<(), BadInput> {
        home(&self.pools, name)
            .map(|_| ())
            .map_err(|e| BadInput::new(format!("tenant.created: database: {e}")))
    }

    /// The database for a new tenant (see the module docs). `con` is the control plane.
    pub async fn choose(
        &self,
        con: &mut PgConnection,
        named: Option<&str>,
        plan: &str,
    ) -> Result<String, ProvisionError> {
        if let Some(n) = named {
            self.check_named(n)?;
            return Ok(n.to_owned());
        }
        if let Some(db) = self.plan_databases.get(plan) {
            return Ok(db.clone());
        }
        let homes: Vec<&DatabaseConfig> = self.pools.databases().tenant_homes().collect();
        if homes.len() == 1 {
            return Ok(homes[0].name.as_str().to_owned());
        }
        let counts: Vec<(String, i64)> = sqlx::query_as(
            "SELECT database, count(*) FROM fleet.tenants WHERE status <> 'deleted' GROUP BY database",
        )
        .fetch_all(&mut *con)
        .await
        .map_err(ProvisionError::db("count tenants per database"))?;
        let counts: BTreeMap<String, i64> = counts.into_iter().collect();
        let best = homes
            .iter()
            .min_by(|a, b| {
                let load = |d: &DatabaseConfig| {
                    *counts.get(d.name.as_str()).unwrap_or(&0) as f64 / f64::from(d.capacity)
                };
                load(a)
                    .partial_cmp(&load(b))
                    .unwrap_or(std::cmp::Ordering::Equal)
                    .then_with(|| a.name.as_str().cmp(b.name.as_str()))
            })
            .map(|d| d.name.as_str().to_owned())
            .unwrap_or_else(|| CONTROL.to_owned());
        Ok(best)
    }
}

/// At least one home must exist, or no tenant could ever be placed.
fn at_least_one_home(pools: &DatabasePools) -> Result<(), String> {
    if pools.databases().tenant_homes().next().is_none() {
        return Err(
            "FLEET_CONFIG [databases]: no database is a tenant home (set tenants = true on one, or leave [databases.control] tenants unset)"
                .into(),
        );
    }
    Ok(())
}

/// `name`'s configuration if it is a tenant home; else one line saying why not.
fn home<'a>(pools: &'a DatabasePools, name: &str) -> Result<&'a DatabaseConfig, String> {
    let db = pools.databases().get(name).map_err(|e| e.to_string())?;
    if !db.tenants {
        return Err(format!(
            "database {name} is not a tenant home (set tenants = true in [databases.{name}])"
        ));
    }
    Ok(db)
}
