//! Helpers shared by the job runtime's tests: publishing jobs fast, a runtime running
//! in-process with a handler of the test's choosing, a handler the test holds mid-job, and
//! reading outcomes.

use std::future::IntoFuture;
use std::sync::{Arc, Mutex};

use async_nats::jetstream;
use fleet_jobs::{HandleError, Job, JobHandler, RuntimeSpec};
use fleet_shared::Fleet;
use fleet_testkit::Running;
use futures::future::join_all;
use tokio::sync::watch;

/// Publishes `(subject, body)` pairs, pipelined, and waits for every ack.
pub async fn publish_all(js: &jetstream::Context, jobs: Vec<(String, serde_json::Value)>) {
    for chunk in jobs.chunks(1000) {
        let mut acks = Vec::new();
        for (subject, body) in chunk {
            acks.push(
                js.publish(subject.clone(), serde_json::to_vec(body).unwrap().into())
                    .await
                    .unwrap()
                    .into_future(),
            );
        }
        for ack in join_all(acks).await {
            ack.unwrap();
        }
    }
}

/// A runtime for `spec` with `handler`, on `fleet`.
pub fn start<J: JobHandler>(fleet: &Fleet, spec: RuntimeSpec, handler: Arc<J>) -> Running {
    let fleet = fleet.clone();
    Running::spawn(move |t| async move { fleet_jobs::run_fleet(&fleet, spec, handler, t).await })
}

/// A scheduled job's subject and body, as the scheduler publishes them (`tenant_id`,
/// `tenant_code`, `schedule`, `tick`).
pub fn scheduled(
    task: &str,
    schedule: &str,
    tick: &str,
    code: &str,
) -> (String, serde_json::Value) {
    (
        format!("jobs.{task}.{code}"),
        serde_json::json!({
            "tenant_id": uuid::Uuid::new_v4().to_string(), "tenant_code": code,
            "schedule": schedule, "tick": tick,
        }),
    )
}

/// A handler that notes each job's tenant as it starts, then waits until the test opens the
/// gate; `bad` is invalid input and `flaky` fails transiently on its first delivery.
pub struct Gated {
    pub started: Mutex<Vec<String>>,
    open: watch::Sender<bool>,
}

impl Gated {
    pub fn new() -> Arc<Gated> {
        Arc::new(Gated {
            started: Mutex::new(Vec::new()),
            open: watch::channel(false).0,
        })
    }

    pub fn open(&self) {
        self.open.send_replace(true);
    }

    pub fn started(&self) -> Vec<String> {
        self.started.lock().unwrap().clone()
    }
}

impl JobHandler for Gated {
    async fn handle(&self, job: &Job) -> Result<(), HandleError> {
        self.started
            .lock()
            .unwrap()
            .push(job.tenant_code.to_string());
        let mut open = self.open.subscribe();
        open.wait_for(|o| *o)
            .await
            .map_err(|e| HandleError::Transient(e.into()))?;
        match job.tenant_code.as_str() {
            "bad" => Err(HandleError::invalid("no such mentorship")),
            "flaky" if job.delivered == 1 => Err(HandleError::Transient(anyhow::anyhow!(
                "database unreachable"
            ))),
            _ => Ok(()),
        }
    }
}

/// Outcomes of `schedule`'s jobs: (tenant_code, status, attempts), by tenant code.
pub async fn outcomes(pg: &sqlx::PgPool, schedule: &str) -> Vec<(String, String, i32)> {
    sqlx::query_as(
        "SELECT tenant_code, status, attempts FROM fleet.job_outcomes WHERE schedule = $1 ORDER BY tenant_code",
    )
    .bind(schedule)
    .fetch_all(pg)
    .await
    .unwrap()
}
