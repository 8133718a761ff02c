//! A rollout request as an operator or an event states it, and its parsing.
//!
//! The same textual forms serve `fleetctl migrate rollout` flags and the `tenant.rollout` event
//! body (`"waves": "1,10%,100%"`, `"max_failures": "2%"`, `"lock_timeout": "2s"`), parsed here
//! once, so the two can never disagree. Everything is checked before anything is written: a bad
//! value is refused with one line naming the field and the accepted form.

use std::time::Duration;

use fleet_shared::Code;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Defaults, documented in docs/migrations.md.
pub const DEFAULT_CONCURRENCY: u32 = 8;
pub const MAX_CONCURRENCY: u32 = 64;
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_CANARY: &str = "1";
pub const DEFAULT_WAVES: &str = "100%";
pub const DEFAULT_MAX_FAILURES: &str = "0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Up,
    Down,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

/// The `tenant.rollout` body and the CLI's flags, as given (strings where the CLI takes text).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    /// `up` (default) or `down` (a rollback; `to` required).
    #[serde(default)]
    pub direction: Direction,
    /// Target version; default the deployed set's latest (up only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<i64>,
    /// Only tenants on this plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Only these tenants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codes: Option<Vec<Code>>,
    /// `N` tenants, or comma-separated codes, migrated first; any failure there halts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<String>,
    /// Cumulative wave sizes after the canary: counts or percentages, ending at `100%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waves: Option<String>,
    /// Tenants migrated at once across all provisioner replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Failed tenants tolerated before the rollout halts: `N` or `X%` of the selected tenants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<String>,
    /// `lock_timeout` of each tenant's transaction (humantime, e.g. `2s`, `500ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<String>,
    /// Undo this rollout: move exactly the tenants it moved back to their versions before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<Uuid>,
}

/// How the canary is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Canary {
    Count(usize),
    Codes(Vec<Code>),
}

/// A cumulative wave boundary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Size {
    Count(usize),
    Percent(f64),
}

impl Size {
    fn parse(field: &str, s: &str) -> Result<Size, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| {
                format!("{field}: {s:?} is not a count or a percentage (e.g. 10 or 10%)")
            })?;
            if !(0.0..=100.0).contains(&v) || !v.is_finite() {
                return Err(format!("{field}: {s} is out of range (0% to 100%)"));
            }
            return Ok(Size::Percent(v));
        }
        s.parse::<usize>()
            .map(Size::Count)
            .map_err(|_| format!("{field}: {s:?} is not a count or a percentage (e.g. 10 or 10%)"))
    }

    /// The size out of `total`, rounded up for percentages (10% of 5 is 1, not 0).
    pub fn of(self, total: usize) -> usize {
        match self {
            Size::Count(n) => n.min(total),
            Size::Percent(p) => ((p / 100.0 * total as f64).ceil() as usize).min(total),
        }
    }
}

/// A request with every field parsed and checked (the set-dependent checks are in `create`).
#[derive(Debug, Clone)]
pub struct Parsed {
    pub direction: Direction,
    pub to: Option<i64>,
    pub plan: Option<String>,
    pub codes: Option<Vec<Code>>,
    pub canary: Canary,
    pub waves: Vec<Size>,
    pub concurrency: u32,
    pub max_failures: Size,
    pub lock_timeout: Duration,
    pub undo: Option<Uuid>,
}

pub fn parse_waves(s: &str) -> Result<Vec<Size>, String> {
    let waves: Vec<Size> = s
        .split(',')
        .map(|w| Size::parse("--waves", w))
        .collect::<Result<_, _>>()?;
    if waves.last() != Some(&Size::Percent(100.0)) {
        return Err(format!(
            "--waves {s:?} must end at 100% (e.g. 1,10%,100%), or tenants would be left out"
        ));
    }
    let mut last_pct = 0.0;
    for w in &waves {
        if let Size::Percent(p) = w {
            if *p < last_pct {
                return Err(format!(
                    "--waves {s:?} must not shrink ({p}% after {last_pct}%)"
                ));
            }
            last_pct = *p;
        }
    }
    Ok(waves)
}

pub fn parse_canary(s: &str) -> Result<Canary, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<usize>() {
        return Ok(Canary::Count(n));
    }
    let codes: Vec<Code> = s
        .split(',')
        .map(|c| Code::parse(c.trim()).map_err(|e| format!("--canary: {e}")))
        .collect::<Result<_, _>>()?;
    Ok(Canary::Codes(codes))
}

pub fn parse_duration(field: &str, s: &str) -> Result<Duration, String> {
    let d = fleet_shared::duration::parse(s).map_err(|e| format!("{field}: {e}"))?;
    if d < Duration::from_millis(1) || d > Duration::from_secs(600) {
        return Err(format!("{field}: {s} is out of range (1ms to 10m)"));
    }
    Ok(d)
}

impl RolloutRequest {
    pub fn parse(&self) -> Result<Parsed, String> {
        if let Some(p) = &self.plan {
            if p.trim().is_empty() {
                return Err("--plan is empty".into());
            }
        }
        if let Some(codes) = &self.codes {
            if codes.is_empty() {
                return Err("--codes is empty".into());
            }
        }
        if self.direction == Direction::Down && self.to.is_none() && self.undo.is_none() {
            return Err("a rollback needs --to V (the version to go back to)".into());
        }
        if let Some(v) = self.to {
            if v < 0 {
                return Err(format!("--to {v}: versions are 0 or more"));
            }
        }
        let concurrency = self.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
            return Err(format!(
                "--concurrency {concurrency} is out of range (1 to {MAX_CONCURRENCY})"
            ));
        }
        let max_failures = Size::parse(
            "--max-failures",
            self.max_failures.as_deref().unwrap_or(DEFAULT_MAX_FAILURES),
        )?;
        Ok(Parsed {
            direction: self.direction,
            to: self.to,
            plan: self.plan.clone(),
            codes: self.codes.clone(),
            canary: parse_canary(self.canary.as_deref().unwrap_or(DEFAULT_CANARY))?,
            waves: parse_waves(self.waves.as_deref().unwrap_or(DEFAULT_WAVES))?,
            concurrency,
            max_failures,
            lock_timeout: match &self.lock_timeout {
                Some(s) => parse_duration("--lock-timeout", s)?,
                None => DEFAULT_LOCK_TIMEOUT,
            },
            undo: self.undo,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_canary_thresholds_and_durations() {
        assert_eq!(
            parse_waves("1,10%,100%").unwrap(),
            [Size::Count(1), Size::Percent(10.0), Size::Percent(100.0)]
        );
        for bad in ["1,10%", "10%,5%,100%", "x,100%", "150%", ""] {
            assert!(parse_waves(bad).is_err(), "{bad}");
        }
        assert_eq!(Size::Percent(10.0).of(5), 1);
        assert_eq!(Size::Count(7).of(5), 5);
        assert_eq!(parse_canary("2").unwrap(), Canary::Count(2));
        assert!(matches!(parse_canary("a,b").unwrap(), Canary::Codes(c) if c.len() == 2));
        assert!(parse_canary("A*").is_err());
        assert_eq!(
            parse_duration("--lock-timeout", "500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert!(parse_duration("--lock-timeout", "2").is_err());
        let r = RolloutRequest {
            max_failures: Some("101%".into()),
            ..Default::default()
        };
        assert!(r.parse().unwrap_err().contains("out of range"));
        let r = RolloutRequest {
            concurrency: Some(0),
            ..Default::default()
        };
        assert!(r.parse().is_err());
        let r = RolloutRequest {
            direction: Direction::Down,
            ..Default::default()
        };
        assert!(r.parse().unwrap_err().contains("--to"));
    }
}
