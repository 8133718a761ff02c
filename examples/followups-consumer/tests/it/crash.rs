//! kill -9 of the real `followups-consumer` binary in the middle of a job, and between handling a
//! job and storing its outcome: neither the job nor its outcome is lost;
//! it is redelivered after the consumer's ack wait and handled by the next consumer (attempt 2),
//! and its outcome is recorded as done.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_jobs::{HandleError, Job, JobHandler, RuntimeSpec};
use fleet_shared::topology::{ensure_consumer, ConsumerSpec, JOBS_STREAM};
use fleet_testkit::{eventually, Running, TestEnv};

struct Seen(Mutex<Vec<i64>>);

impl JobHandler for Seen {
    async fn handle(&self, job: &Job) -> Result<(), HandleError> {
        self.0.lock().unwrap().push(job.delivered);
        Ok(())
    }
}

/// Publishes one `followups` job for acme, as the scheduler does, and waits for the ack.
async fn publish_job(fleet: &fleet_shared::Fleet, body: &serde_json::Value) {
    fleet
        .js
        .publish(
            "jobs.followups.acme",
            serde_json::to_vec(body).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

/// The real `followups-consumer` binary on `env`'s services, its output discarded.
fn spawn_consumer(env: &TestEnv) -> Child {
    Command::new(env!("CARGO_BIN_EXE_followups-consumer"))
        .env("NATS_URL", env.nats.url())
        .env("DATABASE_URL", &env.db.url)
        .env("REDIS_URL", &env.redis_url)
        .env("FLEET_HTTP_ADDR", "127.0.0.1:0")
        .env("LOG_FORMAT", "json")
        .env_remove("FLEET_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The next consumer (in-process) gets the job as its second delivery and records it done, and
/// the job leaves the stream.
async fn redelivered_and_done(fleet: &fleet_shared::Fleet, tenant_id: uuid::Uuid) {
    let seen = Arc::new(Seen(Mutex::new(Vec::new())));
    let spec = RuntimeSpec::for_fleet(fleet, "followups-consumer", "followups").unwrap();
    let f = fleet.clone();
    let handler = seen.clone();
    let running =
        Running::spawn(move |t| async move { fleet_jobs::run_fleet(&f, spec, handler, t).await });
    let status: (String, i32) = eventually(Duration::from_secs(30), "the job done", || async {
        sqlx::query_as(
            "SELECT status, attempts FROM fleet.job_outcomes WHERE schedule = 'followups' AND tenant_id = $1",
        )
        .bind(tenant_id)
        .fetch_optional(&fleet.pg)
        .await
        .unwrap()
    })
    .await;
    running.stop().await;
    assert_eq!(status, ("done".to_owned(), 2));
    assert_eq!(*seen.0.lock().unwrap(), vec![2]);
    let mut jobs = fleet.js.get_stream(JOBS_STREAM).await.unwrap();
    assert_eq!(jobs.info().await.unwrap().state.messages, 0);
}

#[tokio::test]
async fn a_consumer_killed_mid_job_leaves_the_job_to_be_redelivered() {
    let env = TestEnv::new().await;
    let fleet = env.fleet(&[]).await;
    // The durable exists before the binary starts, with a short ack wait (the binary uses an
    // existing consumer as it is), so the redelivery comes within seconds.
    let mut consumer = ConsumerSpec::new(JOBS_STREAM, "jobs-followups", "jobs.followups.*");
    consumer.ack_wait = Duration::from_secs(2);
    let pull = ensure_consumer(&fleet.js, &consumer).await.unwrap();
    let tenant_id = uuid::Uuid::new_v4();
    let body = serde_json::json!({
        "kind": "mentoring_followup", "window_days": 7, "simulate_work": "10m",
        "tenant_id": tenant_id.to_string(), "tenant_code": "acme",
        "schedule": "followups", "tick": "2026-03-29T01:00:00Z",
    });
    publish_job(&fleet, &body).await;

    let mut child = spawn_consumer(&env);
    eventually(
        Duration::from_secs(30),
        "the job in flight at the binary",
        || {
            let mut pull = pull.clone();
            async move {
                let info = pull.info().await.ok()?;
                (info.num_ack_pending == 1 && info.num_pending == 0).then_some(())
            }
        },
    )
    .await;
    child.kill().unwrap(); // SIGKILL: no shutdown, nothing acked or NAKed.
    child.wait().unwrap();

    redelivered_and_done(&fleet, tenant_id).await;
}

/// kill -9 of the binary after it handled a job but before the batch holding the job's outcome
/// committed (the test holds a lock that makes the batch's upsert wait): the job was not acked,
/// so it is redelivered, handled again and its outcome recorded; nothing is lost.
#[tokio::test]
async fn a_consumer_killed_before_its_outcome_batch_committed_loses_no_outcome() {
    let env = TestEnv::new().await;
    let fleet = env.fleet(&[]).await;
    let mut consumer = ConsumerSpec::new(JOBS_STREAM, "jobs-followups", "jobs.followups.*");
    consumer.ack_wait = Duration::from_secs(2);
    let pull = ensure_consumer(&fleet.js, &consumer).await.unwrap();

    // Inserts into fleet.job_outcomes wait behind this lock (reads do not).
    let mut lock = fleet.pg.begin().await.unwrap();
    sqlx::query("LOCK TABLE fleet.job_outcomes IN SHARE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();

    let tenant_id = uuid::Uuid::new_v4();
    let body = serde_json::json!({
        "kind": "mentoring_followup", "window_days": 7,
        "tenant_id": tenant_id.to_string(), "tenant_code": "acme",
        "schedule": "followups", "tick": "2026-03-29T01:00:00Z",
    });
    publish_job(&fleet, &body).await;

    let mut child = spawn_consumer(&env);
    // The handler is done and its outcome's batch is waiting to commit.
    let waiting: Vec<i32> = eventually(
        Duration::from_secs(30),
        "the outcome batch waiting on the lock",
        || async {
            let pids: Vec<i32> = sqlx::query_scalar(
                "SELECT pid FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'
                   AND query LIKE 'INSERT INTO fleet.job_outcomes%'",
            )
            .fetch_all(&fleet.pg)
            .await
            .unwrap();
            (!pids.is_empty()).then_some(pids)
        },
    )
    .await;
    child.kill().unwrap(); // SIGKILL between handling and commit.
    child.wait().unwrap();
    // The dead process's statement must not commit when the lock goes: end its backend too.
    for pid in waiting {
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(&fleet.pg)
            .await
            .unwrap();
    }
    lock.rollback().await.unwrap();
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM fleet.job_outcomes")
        .fetch_one(&fleet.pg)
        .await
        .unwrap();
    assert_eq!(before, 0, "nothing was stored by the killed consumer");
    let info = pull.clone().info().await.unwrap().clone();
    assert_eq!(info.num_ack_pending, 1, "the job was never acked");

    redelivered_and_done(&fleet, tenant_id).await;
}
