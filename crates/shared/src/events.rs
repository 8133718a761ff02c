//! Event payloads and subjects (the contract in DESIGN.md).
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
pub const ORG_UPDATED: &str = "org.updated";
pub const SESSION_CHANGED: &str = "session.changed";
pub const BACKFILL_SUBMIT: &str = "backfill.submit";
pub const BACKFILL_CONTROL: &str = "backfill.control";

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
        BadInput::new(format!("{subject}: {kind}: {e}"))
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
                let ok = !key.is_empty()
                    && key.len() <= 255
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
                if !ok {
                    return Err(BadInput::new(format!(
                        "tenant.created: config_overrides key {key:?} is not a config key (use a-z, 0-9, . _ -, at most 255)"
                    )));
                }
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
    fn override_keys_are_checked() {
        let t: TenantCreated = parse_json(
            TENANT_CREATED,
            br#"{"tenant_id":"7f2a1c8e-3b4d-4e5f-8a9b-0c1d2e3f4a5b","code":"acme","name":"A","plan":"basic","config_overrides":{"bad key'":1}}"#,
        )
        .unwrap();
        assert!(t.validate().is_err());
    }
}
