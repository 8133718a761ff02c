//! Where a message is received, decided on and answered.
//!
//! 1. The rules turn the event into patterns; a missing field or a value that is not a code is
//!    a bad input: dead-lettered at once with the reason, nothing deleted.
//! 2. The patterns join the next pass ([`Passes::invalidate`]) and the handler waits for it.
//! 3. `Ok` only when that pass has finished (the worker loop then acks); a failed pass is a
//!    transient error, so the message is NAKed with backoff and retried.
//!
//! `tenant.lifecycle.deleted` (a tenant archived or purged) clears the patterns of every rule
//! keyed by `org_code` alone for the tenant's org; a tenant without an org code has none.
//!
//! Idempotent by nature: deleting keys that are already gone deletes nothing.

use std::sync::Arc;

use fleet_shared::events::{parse_json, TenantLifecycle, TENANT_LIFECYCLE_DELETED};
use fleet_shared::{HandleError, Handler, Incoming};

use crate::pass::Passes;
use crate::rules::RuleSet;

pub struct InvalidateHandler {
    pub rules: Arc<RuleSet>,
    pub passes: Passes,
}

impl Handler for InvalidateHandler {
    async fn handle(&self, msg: &Incoming) -> Result<(), HandleError> {
        let patterns = if msg.subject == TENANT_LIFECYCLE_DELETED {
            let t: TenantLifecycle = parse_json(&msg.subject, &msg.payload)?;
            let Some(org) = t.org_code else {
                tracing::debug!(tenant.code = %t.code, "deleted tenant has no org_code; no cache to clear");
                return Ok(());
            };
            self.rules.patterns_for_org(&org)
        } else {
            self.rules.patterns_for(&msg.subject, &msg.payload)?
        };
        tracing::debug!(patterns = patterns.len(), "queued for the next pass");
        self.passes
            .invalidate_for(patterns, msg.msg_id().map(str::to_owned))
            .await
            .map_err(|e| HandleError::Transient(anyhow::Error::new(e)))
    }
}
