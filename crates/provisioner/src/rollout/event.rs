//! `tenant.rollout`: a rollout requested by an event (the scheduler's nightly target, or any
//! publisher) instead of `fleetctl migrate rollout`.
//!
//! The body is the same request the CLI builds (docs/EVENTS.md). The message id is the request
//! key, so a redelivery finds the rollout its first delivery created and is acked; a request that
//! is refused (bad field, unknown version, a rollout already running) is dead-lettered with the
//! one-line reason, so a nightly trigger that found the fleet busy is visible, not lost.

use fleet_shared::events::{parse_json, TENANT_ROLLOUT};
use fleet_shared::{HandleError, Incoming};

use super::create::{create, CreateError, Options};
use super::spec::RolloutRequest;
use crate::context::Provisioner;

pub async fn on_rollout(p: &Provisioner, msg: &Incoming) -> Result<(), HandleError> {
    let req: RolloutRequest = parse_json(TENANT_ROLLOUT, &msg.payload)?;
    let key = match msg.msg_id() {
        Some(id) => format!("msg:{id}"),
        None => format!("seq:{}", msg.stream_seq),
    };
    let opts = Options {
        dry_run: false,
        request_key: Some(key),
        known_plans: Some(p.plans.names().map(str::to_owned).collect()),
    };
    match create(&p.pg, &p.migrations, &req, &opts).await {
        Ok(r) => {
            tracing::info!(
                rollout.id = %r.rollout_id, direction = r.direction.as_str(),
                target = r.target_version, tenants = r.pending(), state = %r.state,
                "rollout created by tenant.rollout"
            );
            Ok(())
        }
        Err(CreateError::AlreadyCreated(id)) => {
            tracing::info!(rollout.id = %id, "tenant.rollout delivered again; rollout exists");
            Ok(())
        }
        Err(e) if e.is_transient() => Err(HandleError::Transient(anyhow::Error::new(e))),
        Err(e) => Err(HandleError::invalid(format!("{TENANT_ROLLOUT}: {e}"))),
    }
}
