//! Where `backfill.submit` and `backfill.control` messages are received, decided on and (by
//! the shared worker loop) acknowledged.
//!
//! Both handlers commit to Postgres before returning `Ok`, so the ack follows the commit. A
//! redelivered submit finds its job by submit key (the `Nats-Msg-Id`, else the stream sequence)
//! and acks without creating another; a repeated control action is a no-op. Bad specs, unknown
//! jobs and illegal transitions are dead-lettered at once with the reason; database outages are
//! retried with backoff.

use std::sync::Arc;

use fleet_shared::events::{parse_json, BACKFILL_CONTROL, BACKFILL_SUBMIT};
use fleet_shared::{HandleError, Handler, Incoming};
use serde::Deserialize;
use uuid::Uuid;

use crate::mapping_file::{self, MappingFiles};
use crate::runner::Runner;
use crate::store::{self, Action, ControlError, SubmitError};

pub struct Handlers {
    pub runner: Arc<Runner>,
    /// Where a spec's `mapping_path` may be read (see [`crate::mapping_file`]).
    pub mapping_files: MappingFiles,
}

/// `backfill.control`
#[derive(Debug, Deserialize)]
struct Control {
    job_id: Uuid,
    action: String,
}

impl Handler for Handlers {
    async fn handle(&self, msg: &Incoming) -> Result<(), HandleError> {
        match msg.subject.as_str() {
            BACKFILL_SUBMIT => self.submit(msg).await,
            BACKFILL_CONTROL => self.control(msg).await,
            other => Err(HandleError::invalid(format!(
                "backfill-worker does not handle {other}"
            ))),
        }
    }
}

impl Handlers {
    async fn submit(&self, msg: &Incoming) -> Result<(), HandleError> {
        let key = msg
            .msg_id()
            .map(|id| format!("msg:{id}"))
            .unwrap_or_else(|| format!("seq:{}", msg.stream_seq));
        let json = mapping_file::inline(
            &msg.payload,
            &self.mapping_files,
            self.runner.cfg.mapping_max_bytes,
        )
        .await
        .map_err(|r| HandleError::invalid(format!("backfill.submit: {r}")))?;
        match store::submit_json_on(&self.runner.pools, &json, self.runner.allow_sql, Some(&key))
            .await
        {
            Ok(s) => {
                tracing::info!(job.id = %s.job_id, created = s.created, "backfill job submitted");
                self.runner.wake.notify_one();
                Ok(())
            }
            Err(SubmitError::Refused(r)) => {
                Err(HandleError::invalid(format!("backfill.submit: {r}")))
            }
            Err(SubmitError::Db(e)) => Err(HandleError::Transient(e)),
        }
    }

    async fn control(&self, msg: &Incoming) -> Result<(), HandleError> {
        let c: Control = parse_json(BACKFILL_CONTROL, &msg.payload)?;
        let action = Action::parse(&c.action).ok_or_else(|| {
            HandleError::invalid(format!(
                "backfill.control: unknown action {} (accepted: pause, resume, cancel, retry)",
                fleet_shared::events::quoted(&c.action)
            ))
        })?;
        match store::control(&self.runner.pool, c.job_id, action).await {
            Ok(state) => {
                tracing::info!(job.id = %c.job_id, action = action.as_str(), state = %state, "backfill control applied");
                self.runner.wake.notify_one();
                Ok(())
            }
            Err(e @ (ControlError::NotFound(_) | ControlError::Illegal { .. })) => {
                Err(HandleError::invalid(format!("backfill.control: {e}")))
            }
            Err(ControlError::Db(_, e)) => Err(HandleError::Transient(
                anyhow::Error::new(e).context("Failed to apply the action"),
            )),
        }
    }
}
