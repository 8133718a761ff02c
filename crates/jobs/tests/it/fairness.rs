//! Per-tenant fairness: one tenant with 10,000 queued jobs and 50 tenants with one job each.
//! Every single-job tenant is handled within the first 55 handled messages (50 of them, the big
//! tenant's first, and at most one more per worker slot), because the whole backlog fits the
//! prefetch and is admitted as one batch, handed out round-robin with one job per tenant at once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_jobs::{HandleError, Job, JobHandler, RuntimeSpec};
use fleet_testkit::{eventually, TestEnv};

use crate::common::{publish_all, start};

struct Recorder(Mutex<Vec<String>>);

impl JobHandler for Recorder {
    async fn handle(&self, job: &Job) -> Result<(), HandleError> {
        self.0.lock().unwrap().push(job.tenant_code.to_string());
        Ok(())
    }
}

#[tokio::test]
async fn a_tenant_with_ten_thousand_jobs_cannot_delay_fifty_single_jobs() {
    let env = TestEnv::new().await;
    let fleet = env.fleet(&[]).await;
    let mut jobs: Vec<(String, serde_json::Value)> = (0..10_000)
        .map(|i| ("jobs.fair.big".to_owned(), serde_json::json!({ "n": i })))
        .collect();
    jobs.extend((0..50).map(|i| (format!("jobs.fair.small{i}"), serde_json::json!({}))));
    publish_all(&fleet.js, jobs).await;

    let recorder = Arc::new(Recorder(Mutex::new(Vec::new())));
    let mut spec = RuntimeSpec::for_fleet(&fleet, "fair-test", "fair").unwrap();
    spec.worker.concurrency = 4;
    spec.per_tenant = 1;
    let running = start(&fleet, spec, recorder.clone());
    eventually(
        Duration::from_secs(60),
        "the first 200 jobs handled",
        || async { (recorder.0.lock().unwrap().len() >= 200).then_some(()) },
    )
    .await;
    running.stop().await;

    let order = recorder.0.lock().unwrap().clone();
    let small: Vec<usize> = order
        .iter()
        .enumerate()
        .filter(|(_, t)| t.starts_with("small"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(small.len(), 50, "every single-job tenant handled once");
    let last = *small.iter().max().unwrap();
    assert!(
        last < 50 + 1 + 4,
        "the last single-job tenant was handled as message {last}: {:?}",
        &order[..60]
    );
}
