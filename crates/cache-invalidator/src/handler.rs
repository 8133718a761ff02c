//! Where a message is received, decided on and answered.
//!
//! 1. The rules turn the event into patterns; a missing field or a value that is not a code is
//!    a bad input: dead-lettered at once with the reason, nothing deleted.
//! 2. The patterns join the next pass ([`Passes::invalidate`]) and the handler waits for it.
//! 3. `Ok` only when that pass has finished (the worker loop then acks); a failed pass is a
//!    transient error, so the message is NAKed with backoff and retried.
//!
//! Idempotent by nature: deleting keys that are already gone deletes nothing.

use std::sync::Arc;

use fleet_shared::{HandleError, Handler, Incoming};

use crate::pass::Passes;
use crate::rules::RuleSet;

pub struct InvalidateHandler {
    pub rules: Arc<RuleSet>,
    pub passes: Passes,
}

impl Handler for InvalidateHandler {
    async fn handle(&self, msg: &Incoming) -> Result<(), HandleError> {
        let patterns = self.rules.patterns_for(&msg.subject, &msg.payload)?;
        tracing::debug!(patterns = patterns.len(), "queued for the next pass");
        self.passes
            .invalidate(patterns)
            .await
            .map_err(|e| HandleError::Transient(anyhow::Error::new(e)))
    }
}
