//! The verdicts and their outcomes: ok → done, invalid → dead-lettered (with the reason in the
//! DLQ), transient → NAKed, retried, then done with two attempts; all recorded in
//! `fleet.job_outcomes` keyed by (schedule, tick, tenant_id).

use std::sync::Arc;
use std::time::Duration;

use fleet_jobs::{HandleError, Job, JobHandler, RuntimeSpec};
use fleet_testkit::{eventually, TestEnv};
use uuid::Uuid;

use crate::common::{publish_all, start};

struct ByTenant;

impl JobHandler for ByTenant {
    async fn handle(&self, job: &Job) -> Result<(), HandleError> {
        match job.tenant_code.as_str() {
            "bad" => Err(HandleError::invalid("no such mentorship")),
            "flaky" if job.delivered == 1 => Err(HandleError::Transient(anyhow::anyhow!(
                "database unreachable"
            ))),
            _ => Ok(()),
        }
    }
}

#[tokio::test]
async fn outcomes_are_recorded_per_job() {
    let env = TestEnv::new().await;
    let fleet = env.fleet(&[]).await;
    let tick = "2026-03-29T01:00:00Z";
    let jobs = ["good", "bad", "flaky"]
        .iter()
        .map(|code| {
            (
                format!("jobs.verd.{code}"),
                serde_json::json!({
                    "tenant_id": Uuid::new_v4().to_string(), "tenant_code": code,
                    "schedule": "verd", "tick": tick,
                }),
            )
        })
        .chain([(
            "jobs.verd.nojson".to_owned(),
            serde_json::json!("not an object"),
        )])
        .collect();
    publish_all(&fleet.js, jobs).await;

    let mut spec = RuntimeSpec::for_fleet(&fleet, "verd-test", "verd").unwrap();
    spec.worker.retry_base = Duration::from_millis(100);
    spec.worker.retry_max = Duration::from_millis(200);
    let running = start(&fleet, spec, Arc::new(ByTenant));
    let rows = eventually(Duration::from_secs(30), "three final outcomes", || async {
        let rows: Vec<(String, String, i32, Option<String>)> = sqlx::query_as(
            "SELECT tenant_code, status, attempts, reason FROM fleet.job_outcomes WHERE schedule = 'verd' ORDER BY tenant_code",
        )
        .fetch_all(&fleet.pg)
        .await
        .unwrap();
        rows.iter()
            .all(|r| r.1 != "failed")
            .then_some(rows)
            .filter(|r| r.len() == 3)
    })
    .await;
    running.stop().await;
    assert_eq!(rows[0].0, "bad");
    assert_eq!(rows[0].1, "dead_lettered");
    assert!(rows[0].3.as_deref().unwrap().contains("no such mentorship"));
    assert_eq!(
        (rows[1].0.as_str(), rows[1].1.as_str(), rows[1].2),
        ("flaky", "done", 2)
    );
    assert_eq!((rows[2].0.as_str(), rows[2].1.as_str()), ("good", "done"));

    // Two dead letters: the invalid job and the body that is not an object; the queue is empty.
    let mut dlq = fleet.js.get_stream("FLEET_DLQ").await.unwrap();
    assert_eq!(dlq.info().await.unwrap().state.messages, 2);
    let mut jobs = fleet.js.get_stream("FLEET_JOBS").await.unwrap();
    assert_eq!(jobs.info().await.unwrap().state.messages, 0);
}
