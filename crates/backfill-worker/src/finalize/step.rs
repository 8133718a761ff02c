//! The finalize steps, their states, and which of them a job picks.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One DDL step of finalize, in execution order (see [`super::engine`] for what each does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    NotNull,
    PrimaryKey,
    ForeignKeys,
    Indexes,
    Citus,
}

impl Step {
    pub const ALL: [Step; 5] = [
        Step::NotNull,
        Step::PrimaryKey,
        Step::ForeignKeys,
        Step::Indexes,
        Step::Citus,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::NotNull => "not_null",
            Step::PrimaryKey => "primary_key",
            Step::ForeignKeys => "foreign_keys",
            Step::Indexes => "indexes",
            Step::Citus => "citus",
        }
    }

    pub fn parse(s: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|st| st.as_str() == s)
    }

    fn index(self) -> usize {
        Step::ALL.iter().position(|s| *s == self).unwrap_or(0)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one table's step stands (`fleet.backfill_finalize_steps.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    Running,
    Done,
    Skipped,
    Failed,
}

impl StepState {
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Running => "running",
            StepState::Done => "done",
            StepState::Skipped => "skipped",
            StepState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<StepState> {
        Some(match s {
            "pending" => StepState::Pending,
            "running" => StepState::Running,
            "done" => StepState::Done,
            "skipped" => StepState::Skipped,
            "failed" => StepState::Failed,
            _ => return None,
        })
    }

    /// A step in this state is not run again (a failed or pending one is, on resume or retry).
    pub fn is_final(self) -> bool {
        matches!(self, StepState::Done | StepState::Skipped)
    }
}

/// The steps a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selection([bool; 5]);

impl Selection {
    pub const ALL: Selection = Selection([true; 5]);
    pub const NONE: Selection = Selection([false; 5]);

    pub fn has(&self, s: Step) -> bool {
        self.0[s.index()]
    }

    pub fn is_empty(&self) -> bool {
        !self.0.iter().any(|b| *b)
    }

    /// The spec's `finalize` value: `true` (every step), `false` (none), or an object of step
    /// names to booleans. Naming steps `true` runs only those; naming steps only `false` runs
    /// every other one (`{"citus": false}`). Anything else is refused with one line.
    pub fn from_json(v: &serde_json::Value) -> Result<Selection, String> {
        match v {
            serde_json::Value::Bool(true) => Ok(Selection::ALL),
            serde_json::Value::Bool(false) => Ok(Selection::NONE),
            serde_json::Value::Object(m) => {
                let mut picked = [None; 5];
                for (k, v) in m {
                    let step = Step::parse(k).ok_or_else(|| {
                        format!(
                            "finalize: unknown step {} (steps: not_null, primary_key, foreign_keys, indexes, citus)",
                            fleet_shared::errors::quoted(k)
                        )
                    })?;
                    let on = v
                        .as_bool()
                        .ok_or_else(|| format!("finalize: {k} must be true or false"))?;
                    picked[step.index()] = Some(on);
                }
                let any_true = picked.contains(&Some(true));
                let mut sel = [false; 5];
                for (i, p) in picked.iter().enumerate() {
                    sel[i] = p.unwrap_or(!any_true);
                }
                Ok(Selection(sel))
            }
            _ => Err("finalize: must be true, false or an object of steps, e.g. {\"not_null\": true, \"indexes\": true}".into()),
        }
    }

    /// The normalized spec form (every step named).
    pub fn to_json(&self) -> serde_json::Value {
        let m: serde_json::Map<String, serde_json::Value> = Step::ALL
            .iter()
            .map(|s| (s.as_str().to_owned(), serde_json::Value::Bool(self.has(*s))))
            .collect();
        serde_json::Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_selection_is_all_none_or_picked_steps() {
        assert_eq!(Selection::from_json(&json!(true)).unwrap(), Selection::ALL);
        assert!(Selection::from_json(&json!(false)).unwrap().is_empty());
        let s = Selection::from_json(&json!({"not_null": true, "indexes": true})).unwrap();
        assert!(s.has(Step::NotNull) && s.has(Step::Indexes));
        assert!(!s.has(Step::PrimaryKey) && !s.has(Step::Citus));
        let s = Selection::from_json(&json!({"citus": false})).unwrap();
        assert!(s.has(Step::NotNull) && s.has(Step::ForeignKeys) && !s.has(Step::Citus));
        assert_eq!(Selection::from_json(&s.to_json()).unwrap(), s);
        for (bad, needle) in [
            (json!({"nul": true}), "unknown step \"nul\""),
            (json!({"citus": 1}), "citus must be true or false"),
            (json!("yes"), "must be true, false or an object"),
        ] {
            let e = Selection::from_json(&bad).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }
}
