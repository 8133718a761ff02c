//! One job as a handler sees it, and the handler trait.
//!
//! A job is a message on `jobs.<task>.<tenant_code>` (the subject's last token is the tenant's
//! code). Its body is a JSON object; jobs the scheduler publishes carry `tenant_id`, `tenant_code`,
//! `schedule` and `tick` (RFC 3339) besides the schedule's payload, and those four identify the
//! job's outcome record. A message whose subject does not end in a valid tenant code or whose body
//! is not a JSON object is bad input: dead-lettered before the handler sees it.

use std::future::Future;

use chrono::{DateTime, Utc};
use fleet_shared::worker::{HandleError, Incoming};
use fleet_shared::Code;
use uuid::Uuid;

/// A delivered job.
#[derive(Debug, Clone)]
pub struct Job {
    pub subject: String,
    /// The task: the subject's second token (`followups` in `jobs.followups.acme`).
    pub task: String,
    /// The subject's last token.
    pub tenant_code: Code,
    /// The whole JSON body (payload plus the scheduler's fields).
    pub body: serde_json::Map<String, serde_json::Value>,
    /// Set on scheduled jobs: which schedule and tick the job belongs to.
    pub schedule: Option<String>,
    pub tick: Option<DateTime<Utc>>,
    pub tenant_id: Option<Uuid>,
    /// 1 on the first delivery.
    pub delivered: i64,
    pub msg_id: Option<String>,
}

impl Job {
    /// Reads a job from a delivered message; bad input is an [`HandleError::Invalid`].
    pub fn parse(msg: &Incoming) -> Result<Job, HandleError> {
        let tokens: Vec<&str> = msg.subject.split('.').collect();
        if tokens.len() < 3 || tokens[0] != "jobs" {
            return Err(HandleError::invalid(format!(
                "{}: a job subject is jobs.<task>.<tenant_code>",
                msg.subject
            )));
        }
        let code = tokens[tokens.len() - 1];
        let tenant_code =
            Code::parse(code).map_err(|e| HandleError::invalid(format!("{}: {e}", msg.subject)))?;
        let body = match serde_json::from_slice::<serde_json::Value>(&msg.payload) {
            Ok(serde_json::Value::Object(m)) => m,
            Ok(_) => {
                return Err(HandleError::invalid(format!(
                    "{}: the job body is not a JSON object",
                    msg.subject
                )))
            }
            Err(e) => {
                return Err(HandleError::invalid(format!(
                    "{}: the job body is not JSON: {e}",
                    msg.subject
                )))
            }
        };
        let text = |k: &str| body.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        if let Some(c) = text("tenant_code") {
            if c != tenant_code.as_str() {
                return Err(HandleError::invalid(format!(
                    "{}: body tenant_code {c:?} does not match the subject",
                    msg.subject
                )));
            }
        }
        let tick = text("tick").and_then(|t| DateTime::parse_from_rfc3339(&t).ok());
        Ok(Job {
            subject: msg.subject.clone(),
            task: tokens[1].to_owned(),
            tenant_code,
            schedule: text("schedule"),
            tick: tick.map(|t| t.with_timezone(&Utc)),
            tenant_id: text("tenant_id").and_then(|t| t.parse().ok()),
            body,
            delivered: msg.delivered,
            msg_id: msg.msg_id().map(str::to_owned),
        })
    }

    /// A payload field.
    pub fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.body.get(key)
    }
}

/// What a consumer does with one job. The verdicts are the worker loop's:
///
/// - `Ok(())`: done; the job is acked (commit its effect first).
/// - `Err(HandleError::invalid(..))`: it can never succeed; dead-lettered with the reason.
/// - `Err(HandleError::Transient(..))`: a dependency failed; NAKed with exponential backoff and
///   retried, dead-lettered once its attempts are spent.
///
/// A job can be delivered again after its effect committed (a lost ack, a crash): handlers must
/// be idempotent, e.g. keyed on `(schedule, tick, tenant_id)` or the job's `msg_id`.
///
/// Handlers run as futures of the runtime's task (up to `concurrency` at once, started in the
/// fair queue's order): long computation belongs in `tokio::task::spawn_blocking`.
pub trait JobHandler: Send + Sync + 'static {
    fn handle(&self, job: &Job) -> impl Future<Output = Result<(), HandleError>> + Send;
}
