//! Where a message is received, decided on and answered.
//!
//! `tenant.rollout` creates a rollout (`rollout/event.rs`); the replicas' rollout loop runs it.
//! `tenant.created` and `tenant.migrate` run their transaction (see `provision.rs`,
//! `migrate_tenant.rs`); only after it commits is `tenant.provisioned` published, and only after
//! that does the handler return `Ok` (and the worker loop ack). A crash in between redelivers the
//! message, which finds the tenant active and publishes again under the same `Nats-Msg-Id`
//! (`tenant.provisioned:<tenant_id>:<schema_version>`), so JetStream keeps one announcement.
//! The lifecycle events (`tenant.updated`, `tenant.config.*`, `tenant.suspended`, `.resumed`,
//! `.deleted`) are decided in `lifecycle/receive.rs` with the same guarantee.
//! Every other `tenant.*` subject (including our own `tenant.provisioned`, which shares the
//! stream and the durable's filter) is acknowledged and ignored.

use std::time::Instant;

use fleet_shared::events::{
    parse_json, TenantCreated, TenantMigrate, TenantProvisioned, TENANT_CREATED, TENANT_MIGRATE,
    TENANT_PROVISIONED, TENANT_ROLLOUT,
};
use fleet_shared::{HandleError, Handler, Incoming};

use crate::context::Provisioner;
use crate::error::ProvisionError;
use crate::metrics::PlanLabels;
use crate::provision::{provision, TenantRow};

impl Handler for Provisioner {
    async fn handle(&self, msg: &Incoming) -> Result<(), HandleError> {
        match msg.subject.as_str() {
            TENANT_CREATED => self.on_created(msg).await,
            TENANT_MIGRATE => self.on_migrate(msg).await,
            s if crate::lifecycle::receive::SUBJECTS.contains(&s) => self.on_lifecycle(msg).await,
            TENANT_ROLLOUT => crate::rollout::event::on_rollout(self, msg).await,
            other => {
                tracing::debug!(subject = other, "not a provisioner subject; ignored");
                Ok(())
            }
        }
    }
}

fn record_code(code: &str) {
    tracing::Span::current().record("tenant.code", code);
}

impl Provisioner {
    async fn on_created(&self, msg: &Incoming) -> Result<(), HandleError> {
        let req: TenantCreated = parse_json(TENANT_CREATED, &msg.payload)?;
        record_code(req.code.as_str());
        req.validate()?;
        let configs = self
            .plans
            .resolve(&req.plan, req.config_overrides.as_ref())
            .ok_or_else(|| ProvisionError::UnknownPlan {
                plan: fleet_shared::errors::quoted(&req.plan),
                known: self.plans.names().collect::<Vec<_>>().join(", "),
            })?;

        let started = Instant::now();
        let cause = crate::lifecycle::Cause::from_msg(msg);
        let done = provision(&self.placement, &self.migrations, &req, &configs, &cause).await?;
        let took = self.observe(TENANT_CREATED, started);
        if done.created {
            self.metrics
                .provisioned
                .get_or_create(&PlanLabels {
                    plan: done.tenant.plan.clone(),
                })
                .inc();
            self.metrics
                .migrations_applied
                .inc_by(done.applied.len() as u64);
            if done.from_pool {
                self.metrics.warm_pool_claims.inc();
            }
            tracing::info!(
                tenant.id = %done.tenant.tenant_id,
                from_pool = done.from_pool,
                plan = %done.tenant.plan,
                schema.version = done.tenant.schema_version,
                configs = configs.len(),
                transaction_ms = took.as_millis() as u64,
                "tenant provisioned"
            );
        } else {
            self.metrics.duplicates.inc();
            tracing::info!(tenant.id = %done.tenant.tenant_id, "tenant already active; announcing again");
        }
        self.announce(&done.tenant, msg).await
    }

    async fn on_migrate(&self, msg: &Incoming) -> Result<(), HandleError> {
        let req: TenantMigrate = parse_json(TENANT_MIGRATE, &msg.payload)?;
        record_code(req.code.as_str());
        let started = Instant::now();
        let done = crate::migrate_tenant::migrate_tenant(
            &self.placement.pools,
            &self.migrations,
            &req.code,
        )
        .await?;
        let took = self.observe(TENANT_MIGRATE, started);
        self.metrics
            .migrations_applied
            .inc_by(done.applied.len() as u64);
        tracing::info!(
            applied = ?done.applied,
            schema.version = done.tenant.schema_version,
            transaction_ms = took.as_millis() as u64,
            "tenant migrated"
        );
        self.announce(&done.tenant, msg).await
    }

    /// Publishes `tenant.provisioned` for the committed state. The id depends only on the tenant
    /// and its schema version, so repeats within the duplicate window are dropped by JetStream.
    async fn announce(&self, t: &TenantRow, msg: &Incoming) -> Result<(), HandleError> {
        let code = fleet_shared::Code::parse(&t.code)
            .map_err(|e| HandleError::invalid(format!("registry holds a bad code: {e}")))?;
        let body = TenantProvisioned {
            tenant_id: t.tenant_id,
            code,
            schema: t.schema_name.clone(),
            schema_version: t.schema_version,
            plan: t.plan.clone(),
            database: t.database.clone(),
        };
        let id = provisioned_msg_id(t);
        fleet_shared::publish::publish_json(
            &self.js,
            TENANT_PROVISIONED,
            &id,
            &body,
            msg.traceparent(),
        )
        .await
        .map_err(ProvisionError::Announce)?;
        Ok(())
    }
}

/// `tenant.provisioned:<tenant_id>:<schema_version>`
pub fn provisioned_msg_id(t: &TenantRow) -> String {
    format!("{TENANT_PROVISIONED}:{}:{}", t.tenant_id, t.schema_version)
}
