//! Event payloads and subjects: the contract that docs/EVENTS.md documents.
//!
//! Payloads are parsed strictly where it matters (codes, ids, required fields) and leniently
//! elsewhere: unknown fields are ignored so upstream services can add fields without breaking
//! the fleet. A payload that does not parse is a [`BadInput`], whose one-line reason is what the
//! dead-letter stream records.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::codes::Code;

pub const TENANT_CREATED: &str = "tenant.created";
pub const TENANT_MIGRATE: &str = "tenant.migrate";
pub const TENANT_PROVISIONED: &str = "tenant.provisioned";
/// Starts a rollout (body: the rollout request, see docs/EVENTS.md).
pub const TENANT_ROLLOUT: &str = "tenant.rollout";
pub const ORG_UPDATED: &str = "org.updated";
pub const SESSION_CHANGED: &str = "session.changed";
pub const BACKFILL_SUBMIT: &str = "backfill.submit";
pub const BACKFILL_CONTROL: &str = "backfill.control";
pub const TENANT_UPDATED: &str = "tenant.updated";
pub const TENANT_CONFIG_SET: &str = "tenant.config.set";
pub const TENANT_CONFIG_UNSET: &str = "tenant.config.unset";
pub const TENANT_SUSPENDED: &str = "tenant.suspended";
pub const TENANT_RESUMED: &str = "tenant.resumed";
pub const TENANT_DELETED: &str = "tenant.deleted";
/// A tenant's schema is about to be cut over to another database (published by `fleetctl
/// tenants move`): its writes wait for a moment, then must go to the new database.
pub const TENANT_MOVING: &str = "tenant.moving";
/// A tenant's schema now lives on `database` (published after the registry switched).
pub const TENANT_MOVED: &str = "tenant.moved";
/// Announcements of committed lifecycle changes: `tenant.lifecycle.<kind>`
/// (see [`TenantLifecycle`]).
pub const TENANT_LIFECYCLE_PREFIX: &str = "tenant.lifecycle";
/// The announcement of an archived or purged live tenant, which the cache-invalidator consumes
/// to clear the tenant's cache.
pub const TENANT_LIFECYCLE_DELETED: &str = "tenant.lifecycle.deleted";
/// The header a publisher names itself in (`fleetctl` sets `fleetctl:<user>@<host>`); the audit
/// trail records it as the actor.
pub const FLEET_ACTOR: &str = "Fleet-Actor";

/// `tenant.lifecycle.<kind>`
pub fn lifecycle_subject(kind: &str) -> String {
    format!("{TENANT_LIFECYCLE_PREFIX}.{kind}")
}

fn check_config_key(subject: &str, key: &str) -> Result<(), BadInput> {
    crate::names::check_config_key(key).map_err(|e| BadInput::new(format!("{subject}: {e}")))
}

/// `backfill.progress.<job_id>`
pub fn backfill_progress_subject(job_id: &Uuid) -> String {
    format!("backfill.progress.{job_id}")
}

/// `dlq.<worker>`
pub fn dlq_subject(worker: &str) -> String {
    format!("dlq.{worker}")
}

/// A payload the fleet will never be able to process: dead-lettered at once with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

impl BadInput {
    pub fn new(reason: impl Into<String>) -> Self {
        BadInput(crate::errors::one_line(&reason.into()))
    }
}

pub use crate::errors::{quoted, QUOTE_BYTES};

/// Cuts every `` `…` `` or `"…"` span longer than [`QUOTE_BYTES`] in a library's error message
/// (serde names an unknown field or echoes a wrong value whole).
pub fn shorten_quotes(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len().min(1024));
    let mut rest = msg;
    while let Some(open) = rest.find(['`', '"']) {
        let q = rest.as_bytes()[open] as char;
        out.push_str(&rest[..=open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find(q) else {
            rest = after;
            break;
        };
        let inner = &after[..close];
        if inner.len() > QUOTE_BYTES {
            let mut end = QUOTE_BYTES;
            while !inner.is_char_boundary(end) {
                end -= 1;
            }
            out.push_str(&inner[..end]);
            out.push_str(&format!("…({} bytes)", inner.len()));
        } else {
            out.push_str(inner);
        }
        out.push(q);
        rest = &after[close + 1..];
    }
    if rest.len() > 4 * QUOTE_BYTES {
        let mut end = 4 * QUOTE_BYTES;
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        out.push_str(&rest[..end]);
        out.push('…');
    } else {
        out.push_str(rest);
    }
    out
}

/// Parses a JSON payload into `T`, turning every failure into a one-line [`BadInput`].
pub fn parse_json<T: DeserializeOwned>(subject: &str, payload: &[u8]) -> Result<T, BadInput> {
    if payload.is_empty() {
        return Err(BadInput::new(format!(
            "{subject}: empty payload, expected a JSON object"
        )));
    }
    serde_json::from_slice(payload).map_err(|e| {
        let kind = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "payload is not valid JSON"
            }
            _ => "payload does not match the contract",
        };
        BadInput::new(format!(
            "{subject}: {kind}: {}",
            shorten_quotes(&e.to_string())
        ))
    })
}

/// `tenant.created`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantCreated {
    pub tenant_id: Uuid,
    pub code: Code,
    pub name: String,
    pub plan: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_code: Option<Code>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_overrides: Option<BTreeMap<String, serde_json::Value>>,
    /// The `[databases.<name>]` (a tenant home) to place the tenant on; unset: the provisioner
    /// chooses (docs/SCALING.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

impl TenantCreated {
    /// Checks what serde cannot: a usable name and sane override keys.
    pub fn validate(&self) -> Result<(), BadInput> {
        let name = self.name.trim();
        if name.is_empty() {
            return Err(BadInput::new("tenant.created: name is empty"));
        }
        if name.chars().count() > 200 {
            return Err(BadInput::new(
                "tenant.created: name is longer than 200 characters",
            ));
        }
        if self.tenant_id.is_nil() {
            return Err(BadInput::new("tenant.created: tenant_id is the nil UUID"));
        }
        if let Some(overrides) = &self.config_overrides {
            for key in overrides.keys() {
                check_config_key("tenant.created: config_overrides key", key)?;
            }
        }
        Ok(())
    }
}

/// `tenant.migrate`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantMigrate {
    pub code: Code,
}

/// `tenant.provisioned` (published by the fleet)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantProvisioned {
    pub tenant_id: Uuid,
    pub code: Code,
    pub schema: String,
    pub schema_version: i64,
    pub plan: String,
    /// The `[databases.<name>]` holding the schema (`control`: `DATABASE_URL`).
    #[serde(default = "control_database")]
    pub database: String,
}

fn control_database() -> String {
    crate::databases::CONTROL.to_owned()
}

/// `tenant.updated`: any of name, org code and plan; absent fields stay as they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantUpdated {
    pub code: Code,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_code: Option<Code>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
}

impl TenantUpdated {
    pub fn validate(&self) -> Result<(), BadInput> {
        if self.name.is_none() && self.org_code.is_none() && self.plan.is_none() {
            return Err(BadInput::new(
                "tenant.updated: nothing to change (give name, org_code or plan)",
            ));
        }
        if let Some(name) = &self.name {
            let name = name.trim();
            if name.is_empty() || name.chars().count() > 200 {
                return Err(BadInput::new(
                    "tenant.updated: name must be 1 to 200 characters",
                ));
            }
        }
        Ok(())
    }
}

/// `tenant.config.set`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// Unknown fields are refused here (unlike elsewhere): a misspelt `encrypted` must not store a
/// secret in plain text.
#[serde(deny_unknown_fields)]
pub struct TenantConfigSet {
    pub code: Code,
    pub key: String,
    pub value: serde_json::Value,
    #[serde(default)]
    pub encrypted: bool,
}

impl TenantConfigSet {
    pub fn validate(&self) -> Result<(), BadInput> {
        check_config_key(TENANT_CONFIG_SET, &self.key)
    }
}

/// `tenant.config.unset`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantConfigUnset {
    pub code: Code,
    pub key: String,
}

impl TenantConfigUnset {
    pub fn validate(&self) -> Result<(), BadInput> {
        check_config_key(TENANT_CONFIG_UNSET, &self.key)
    }
}

/// `tenant.suspended`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantSuspended {
    pub code: Code,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `tenant.resumed`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantResumed {
    pub code: Code,
}

/// How `tenant.deleted` removes a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeleteMode {
    /// Rename the schema out of the way, mark the tenant `deleted`, free the code.
    #[default]
    Archive,
    /// Drop the schema and the tenant's rows.
    Purge,
}

impl DeleteMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DeleteMode::Archive => "archive",
            DeleteMode::Purge => "purge",
        }
    }
}

/// `tenant.deleted`. With `tenant_id` it names one tenant exactly: that is how an archived
/// tenant (whose code may belong to a new tenant by now) is purged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantDeleted {
    pub code: Code,
    #[serde(default)]
    pub mode: DeleteMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<Uuid>,
}

/// `tenant.moving` (published by the fleet): the cut-over of a move starts. Writes to the tenant
/// on `from` wait until it ends, and then fail there; `tenant.moved` follows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantMoving {
    pub tenant_id: Uuid,
    pub code: Code,
    /// The `[databases.<name>]` the schema is moving from.
    pub from: String,
    /// The `[databases.<name>]` it is moving to.
    pub to: String,
    pub move_id: Uuid,
}

/// `tenant.moved` (published by the fleet): the registry names `database` for the tenant now;
/// connect there. The copy on `from` is read-only and archived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantMoved {
    pub tenant_id: Uuid,
    pub code: Code,
    /// The `[databases.<name>]` holding the schema from now on.
    pub database: String,
    pub schema: String,
    pub from: String,
    pub move_id: Uuid,
}

/// `tenant.lifecycle.<kind>` (published by the fleet after a lifecycle change commits): the
/// audit row of the change. `old`/`new` never hold a secret (encrypted values are masked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantLifecycle {
    pub tenant_id: Uuid,
    pub code: Code,
    #[serde(default)]
    pub org_code: Option<Code>,
    /// The subject of the event that caused it, e.g. `tenant.updated`.
    pub event: String,
    /// Its message id.
    pub event_id: String,
    /// The tenant's status after the change.
    pub status: String,
    /// `fleet.tenant_events.id`
    pub audit_id: i64,
    pub old: serde_json::Value,
    pub new: serde_json::Value,
}

/// `org.updated`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrgUpdated {
    pub org_code: Code,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_code: Option<Code>,
}

/// `session.changed`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionChanged {
    pub org_code: Code,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_created_parses_and_rejects() {
        let ok = br#"{"tenant_id":"7f2a1c8e-3b4d-4e5f-8a9b-0c1d2e3f4a5b","code":"acme","name":"Acme","plan":"premium","extra":1}"#;
        let t: TenantCreated = parse_json(TENANT_CREATED, ok).unwrap();
        t.validate().unwrap();
        assert_eq!(t.code.as_str(), "acme");

        for (bad, needle) in [
            (&b"{not json"[..], "not valid JSON"),
            (&b""[..], "empty payload"),
            (br#"{"code":"acme","name":"A","plan":"basic"}"#, "missing field `tenant_id`"),
            (
                br#"{"tenant_id":"7f2a1c8e-3b4d-4e5f-8a9b-0c1d2e3f4a5b","code":"Acme; DROP SCHEMA public","name":"A","plan":"basic"}"#,
                "not a valid code",
            ),
        ] {
            let err = parse_json::<TenantCreated>(TENANT_CREATED, bad).unwrap_err().0;
            assert!(err.contains(needle), "{err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn quoted_input_is_bounded() {
        let huge = "x".repeat(70_000);
        let q = quoted(&huge);
        assert!(q.len() < 100 && q.contains("70000 bytes"), "{q}");
        assert_eq!(quoted("basic"), "\"basic\"");
        let msg = format!("unknown field `{huge}`, expected one of `a`, `b`");
        let s = shorten_quotes(&msg);
        assert!(
            s.len() < 200 && s.contains("70000 bytes") && s.ends_with("`b`"),
            "{s}"
        );
        let err = parse_json::<TenantMigrate>(
            TENANT_MIGRATE,
            format!("{{\"code\":\"{huge}\"}}").as_bytes(),
        )
        .unwrap_err()
        .0;
        assert!(err.len() < 400, "{err}");
    }

    #[test]
    fn override_keys_are_checked() {
        let t: TenantCreated = parse_json(
            TENANT_CREATED,
            br#"{"tenant_id":"7f2a1c8e-3b4d-4e5f-8a9b-0c1d2e3f4a5b","code":"acme","name":"A","plan":"basic","config_overrides":{"bad key'":1}}"#,
        )
        .unwrap();
        assert!(t.validate().is_err());
    }
}
