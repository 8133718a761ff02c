//! Plan defaults: the tenant configurations written at provisioning.
//!
//! The built-in plans are `basic`, `premium` and `enterprise` (their values are tabled in
//! docs/provisioner.md);
//! `custom` starts as a copy of `enterprise`. A `[plans.<name>]` table in `FLEET_CONFIG` replaces
//! individual keys of a built-in plan or, under a new name, defines a new plan. A tenant's
//! `config_overrides` are merged last. Merging is per key: an override replaces a key's whole
//! value (`security.password_policy` is one value, not merged field by field), so what a tenant
//! gets is always a value someone wrote down.
//!
//! The config is validated when the worker starts: a bad plan name or key fails start with one
//! line naming `[plans.<name>]`, never at the first event.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// A plan's configuration: key → JSON value.
pub type PlanConfig = BTreeMap<String, Value>;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("FLEET_CONFIG [plans.{plan}]: {problem}")]
    BadConfig { plan: String, problem: String },
    #[error("{0}")]
    Config(#[from] fleet_shared::config::ConfigError),
}

/// The plans this process knows, with their merged defaults.
#[derive(Debug, Clone)]
pub struct Plans {
    plans: BTreeMap<String, PlanConfig>,
}

fn password_policy(min_length: u32, special: bool) -> Value {
    json!({
        "minLength": min_length,
        "requireUppercase": true,
        "requireLowercase": true,
        "requireNumbers": true,
        "requireSpecialChars": special,
    })
}

fn plan(entries: &[(&str, Value)]) -> PlanConfig {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// Seed 004's defaults, exactly as listed there, plus `custom` = `enterprise`.
pub fn built_in() -> BTreeMap<String, PlanConfig> {
    let basic = plan(&[
        ("security.password_policy", password_policy(8, false)),
        ("session.timeout", json!(3600)),
        ("file_upload.max_size", json!(10_737_418_240u64)),
        ("api.rate_limit", json!(1000)),
    ]);
    let premium = plan(&[
        ("security.password_policy", password_policy(10, true)),
        ("session.timeout", json!(7200)),
        ("file_upload.max_size", json!(107_374_182_400u64)),
        ("api.rate_limit", json!(10_000)),
        ("features.biometric_auth", json!(true)),
    ]);
    let enterprise = plan(&[
        ("security.password_policy", password_policy(12, true)),
        ("session.timeout", json!(14_400)),
        ("file_upload.max_size", json!(1_073_741_824_000u64)),
        ("api.rate_limit", json!(100_000)),
        ("features.biometric_auth", json!(true)),
        ("features.ai_verification", json!(true)),
        ("features.advanced_analytics", json!(true)),
    ]);
    BTreeMap::from([
        ("basic".to_string(), basic),
        ("premium".to_string(), premium),
        ("custom".to_string(), enterprise.clone()),
        ("enterprise".to_string(), enterprise),
    ])
}

impl Plans {
    /// The built-in plans with the `[plans]` section of `FLEET_CONFIG` applied.
    pub fn from_settings(settings: &fleet_shared::Settings) -> Result<Plans, PlanError> {
        let section: Option<BTreeMap<String, BTreeMap<String, Value>>> =
            settings.file.section("plans")?;
        Plans::with_overrides(section.unwrap_or_default())
    }

    /// The built-in plans with `overrides` (plan → key → value) applied.
    pub fn with_overrides(
        overrides: BTreeMap<String, BTreeMap<String, Value>>,
    ) -> Result<Plans, PlanError> {
        let mut plans = built_in();
        for (name, keys) in overrides {
            let bad = |problem: String| PlanError::BadConfig {
                plan: name.clone(),
                problem,
            };
            fleet_shared::Name::parse(&name).map_err(|e| bad(e.to_string()))?;
            for key in keys.keys() {
                fleet_shared::names::check_config_key(key).map_err(|e| bad(e.to_string()))?;
            }
            plans.entry(name).or_default().extend(keys);
        }
        Ok(Plans { plans })
    }

    /// The plan names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.plans.keys().map(String::as_str)
    }

    /// `plan`'s defaults, or `None` for an unknown plan.
    pub fn get(&self, plan: &str) -> Option<&PlanConfig> {
        self.plans.get(plan)
    }

    /// `plan`'s defaults merged with a tenant's overrides, or `None` for an unknown plan.
    pub fn resolve(
        &self,
        plan: &str,
        tenant_overrides: Option<&BTreeMap<String, Value>>,
    ) -> Option<PlanConfig> {
        let mut config = self.plans.get(plan)?.clone();
        if let Some(o) = tenant_overrides {
            config.extend(o.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Some(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_shared::config::FileConfig;

    #[test]
    fn seed_004_values() {
        let p = Plans::with_overrides(BTreeMap::new()).unwrap();
        let basic = p.resolve("basic", None).unwrap();
        assert_eq!(basic.len(), 4);
        assert_eq!(basic["file_upload.max_size"], json!(10737418240u64));
        assert_eq!(
            basic["security.password_policy"]["requireSpecialChars"],
            json!(false)
        );
        let premium = p.resolve("premium", None).unwrap();
        assert_eq!(premium["api.rate_limit"], json!(10000));
        assert_eq!(premium["features.biometric_auth"], json!(true));
        let enterprise = p.resolve("enterprise", None).unwrap();
        assert_eq!(enterprise.len(), 7);
        assert_eq!(enterprise["file_upload.max_size"], json!(1073741824000u64));
        assert_eq!(p.resolve("custom", None).unwrap(), enterprise);
        assert!(p.resolve("gold", None).is_none());
    }

    #[test]
    fn file_overrides_and_new_plans_then_tenant_overrides() {
        let f = FileConfig::parse(
            "[plans.basic]\n\"api.rate_limit\" = 2000\n[plans.startup]\n\"session.timeout\" = 60\n",
            None,
        )
        .unwrap();
        let section = f.section("plans").unwrap().unwrap();
        let p = Plans::with_overrides(section).unwrap();
        assert_eq!(
            p.resolve("basic", None).unwrap()["api.rate_limit"],
            json!(2000)
        );
        assert_eq!(
            p.resolve("startup", None).unwrap(),
            plan(&[("session.timeout", json!(60))])
        );
        let o = BTreeMap::from([("api.rate_limit".to_string(), json!(5))]);
        assert_eq!(
            p.resolve("basic", Some(&o)).unwrap()["api.rate_limit"],
            json!(5)
        );
    }

    #[test]
    fn bad_plan_config_names_the_plan() {
        let bad = BTreeMap::from([(
            "basic".to_string(),
            BTreeMap::from([("bad key'".to_string(), json!(1))]),
        )]);
        let err = Plans::with_overrides(bad).unwrap_err().to_string();
        assert!(err.starts_with("FLEET_CONFIG [plans.basic]"), "{err}");
        let bad = BTreeMap::from([("Gold Plan".to_string(), BTreeMap::new())]);
        assert!(Plans::with_overrides(bad).is_err());
    }
}
