//! From a consumer on the job runtime to `fleetctl schedule history NAME --tenant CODE`: jobs
//! published the way the scheduler fans them out (body fields and `Nats-Msg-Id`), handled by a
//! runtime whose handler succeeds for one tenant, fails transiently once then succeeds for a
//! second and refuses a third as invalid; the real binary then shows done, done after two
//! attempts, and dead_lettered with the reason.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleet_jobs::{HandleError, Job, JobHandler, RuntimeSpec};
use fleet_shared::publish::MSG_ID;
use fleet_testkit::{eventually, Running, TestEnv};

use crate::run::{assert_ok, fleetctl, stdout};

const SCHEDULE: &str = r#"
[[schedules]]
name = "digest"
cron = "0 2 * * *"
subject = "jobs.digest.{tenant_code}"
payload = { kind = "digest" }
"#;

struct ByTenant;

impl JobHandler for ByTenant {
    async fn handle(&self, job: &Job) -> Result<(), HandleError> {
        match job.tenant_code.as_str() {
            "badco" => Err(HandleError::invalid("no such mentorship")),
            "flaky" if job.delivered == 1 => Err(HandleError::Transient(anyhow::anyhow!(
                "database unreachable"
            ))),
            _ => Ok(()),
        }
    }
}

#[tokio::test]
async fn outcomes_of_a_runtime_consumer_show_in_schedule_history_per_tenant() {
    let env = TestEnv::new().await;
    let fleet = env.fleet(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("digest.toml");
    std::fs::write(&file, SCHEDULE).unwrap();
    assert_ok(&fleetctl(
        &env,
        &["schedule", "apply", file.to_str().unwrap()],
        &[],
    ));

    let tick: DateTime<Utc> = "2026-03-29T02:00:00Z".parse().unwrap();
    for code in ["okco", "flaky", "badco"] {
        let tenant_id = uuid::Uuid::new_v4();
        let body = serde_json::json!({
            "kind": "digest", "tenant_id": tenant_id.to_string(), "tenant_code": code,
            "schedule": "digest", "tick": tick.to_rfc3339(),
        });
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            MSG_ID,
            scheduler::fanout::msg_id("digest", tick, tenant_id).as_str(),
        );
        fleet
            .js
            .publish_with_headers(
                format!("jobs.digest.{code}"),
                headers,
                serde_json::to_vec(&body).unwrap().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let mut spec = RuntimeSpec::for_fleet(&fleet, "digest-consumer", "digest").unwrap();
    spec.worker.retry_base = Duration::from_millis(100);
    spec.worker.retry_max = Duration::from_millis(200);
    let f = fleet.clone();
    let running = Running::spawn(move |t| async move {
        fleet_jobs::run_fleet(&f, spec, Arc::new(ByTenant), t).await
    });
    let history = |code: &str| -> Vec<serde_json::Value> {
        let o = fleetctl(
            &env,
            &["schedule", "history", "digest", "--tenant", code, "--json"],
            &[],
        );
        assert_ok(&o);
        serde_json::from_str(&stdout(&o)).unwrap()
    };
    eventually(Duration::from_secs(30), "three final outcomes", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM fleet.job_outcomes WHERE schedule = 'digest' AND status <> 'failed'",
        )
        .fetch_one(&fleet.pg)
        .await
        .unwrap();
        (n == 3).then_some(())
    })
    .await;
    running.stop().await;

    let ok = history("okco");
    assert_eq!(ok.len(), 1, "{ok:?}");
    assert_eq!(ok[0]["status"], "done");
    assert_eq!(ok[0]["attempts"], 1);
    assert_eq!(ok[0]["worker"], "digest-consumer");
    assert_eq!(ok[0]["tick"], "2026-03-29T02:00:00Z");
    let flaky = history("flaky");
    assert_eq!(
        (&flaky[0]["status"], &flaky[0]["attempts"]),
        (&"done".into(), &2.into()),
        "{flaky:?}"
    );
    let bad = history("badco");
    assert_eq!(bad[0]["status"], "dead_lettered", "{bad:?}");
    assert!(
        bad[0]["reason"]
            .as_str()
            .unwrap()
            .contains("no such mentorship"),
        "{bad:?}"
    );
    // The table view says the same.
    let o = fleetctl(
        &env,
        &["schedule", "history", "digest", "--tenant", "badco"],
        &[],
    );
    assert!(stdout(&o).contains("dead_lettered"), "{o:?}");
}
