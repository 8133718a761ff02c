//! Receiving a lifecycle event: parse (a bad payload is a dead letter), run its transaction,
//! announce after commit, then return `Ok` so the worker loop acks. A repeat of a committed
//! message re-announces (the same message id, so JetStream keeps one) and changes nothing.

use fleet_shared::events::{
    parse_json, TENANT_CONFIG_SET, TENANT_CONFIG_UNSET, TENANT_DELETED, TENANT_RESUMED,
    TENANT_SUSPENDED, TENANT_UPDATED,
};
use fleet_shared::{HandleError, Incoming};

use super::{announce, Cause, Outcome};
use crate::context::Provisioner;

/// The subjects handled here.
pub const SUBJECTS: &[&str] = &[
    TENANT_UPDATED,
    TENANT_CONFIG_SET,
    TENANT_CONFIG_UNSET,
    TENANT_SUSPENDED,
    TENANT_RESUMED,
    TENANT_DELETED,
];

impl Provisioner {
    pub(crate) async fn on_lifecycle(&self, msg: &Incoming) -> Result<(), HandleError> {
        let s = msg.subject.as_str();
        let p = &msg.payload;
        let cause = Cause::from_msg(msg);
        let started = std::time::Instant::now();
        let outcome = match s {
            TENANT_UPDATED => {
                let req = parse_json(s, p)?;
                super::update::update(&self.pg, &self.plans, &cause, &req).await
            }
            TENANT_CONFIG_SET => {
                let req = parse_json(s, p)?;
                super::config::set(&self.pg, self.config_keys.as_ref(), &cause, &req).await
            }
            TENANT_CONFIG_UNSET => {
                let req = parse_json(s, p)?;
                super::config::unset(&self.pg, &self.plans, &cause, &req).await
            }
            TENANT_SUSPENDED => {
                let req = parse_json(s, p)?;
                super::status::suspend(&self.pg, &cause, &req).await
            }
            TENANT_RESUMED => {
                let req = parse_json(s, p)?;
                super::status::resume(&self.pg, &cause, &req).await
            }
            TENANT_DELETED => {
                let req = parse_json(s, p)?;
                super::delete::delete(&self.placement.pools, &cause, &req).await
            }
            other => {
                tracing::debug!(subject = other, "not a lifecycle subject; ignored");
                return Ok(());
            }
        }?;
        let took = self.observe(s, started);
        match &outcome {
            Outcome::Done(a) => {
                self.metrics
                    .lifecycle_changes
                    .get_or_create(&crate::metrics::EventLabels { event: s.into() })
                    .inc();
                tracing::info!(
                tenant.code = %a.code,
                tenant.id = %a.tenant_id,
                audit.id = a.id,
                status = %a.status,
                transaction_ms = took.as_millis() as u64,
                    "tenant lifecycle change committed"
                )
            }
            Outcome::Repeat(_) => {
                self.metrics.duplicates.inc();
                tracing::info!(event.id = %cause.event_id, "already applied; announcing again");
            }
        }
        if let Some(a) = outcome.audit() {
            announce::announce(&self.js, a, msg.traceparent()).await?;
        }
        Ok(())
    }
}
