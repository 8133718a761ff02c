//! Helpers shared by the backfill-worker tests: a worker on a TestEnv, job submission and
//! polling on lasting state.

use std::time::Duration;

use backfill_worker::JobRow;
use fleet_shared::Fleet;
use fleet_testkit::{eventually, Running, TestEnv};
use sqlx::PgPool;
use uuid::Uuid;

/// A `[backfill]` section that makes tests snappy: fast polling and progress.
pub const FAST_CONFIG: &str =
    "[backfill]\npoll_interval = \"50ms\"\nprogress_interval = \"100ms\"\nparallelism = 2\n";

pub fn config_file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().expect("temp config");
    std::fs::write(f.path(), text).expect("write config");
    f
}

/// A running in-process worker replica.
pub struct Replica {
    pub fleet: Fleet,
    pub running: Running,
}

impl Replica {
    pub async fn start(env: &TestEnv, config: &tempfile::NamedTempFile) -> Replica {
        let path = config.path().to_str().expect("utf-8 path").to_owned();
        let fleet = env
            .fleet(&[("FLEET_CONFIG", &path), ("FLEET_BACKFILL_ALLOW_SQL", "1")])
            .await;
        let f = fleet.clone();
        let running = Running::spawn(|t| backfill_worker::run(f, t));
        Replica { fleet, running }
    }

    pub async fn stop(self) {
        self.running.stop().await;
    }
}

pub async fn submit(pool: &PgPool, spec: serde_json::Value) -> Uuid {
    backfill_worker::submit_json(pool, spec.to_string().as_bytes(), true, None)
        .await
        .unwrap_or_else(|e| panic!("submit refused: {e}"))
        .job_id
}

pub async fn job(pool: &PgPool, id: Uuid) -> JobRow {
    backfill_worker::get_job(pool, id)
        .await
        .expect("read job")
        .expect("job exists")
}

/// Waits until the job is in one of `states`.
pub async fn wait_state(pool: &PgPool, id: Uuid, states: &[&str], limit: Duration) -> JobRow {
    eventually(limit, &format!("job {id} in {states:?}"), || async {
        let j = backfill_worker::get_job(pool, id)
            .await
            .expect("read job")?;
        states.contains(&j.state.as_str()).then_some(j)
    })
    .await
}

/// Waits (up to a minute) until the job has succeeded or failed.
pub async fn finished(pool: &PgPool, id: Uuid) -> JobRow {
    wait_state(pool, id, &["succeeded", "failed"], Duration::from_secs(60)).await
}

/// Retries the job's failed chunks and waits until it has succeeded or failed again.
pub async fn retry_until_finished(pool: &PgPool, id: Uuid) -> JobRow {
    backfill_worker::control(pool, id, backfill_worker::Action::Retry)
        .await
        .unwrap();
    finished(pool, id).await
}

/// Puts a finished job back to `running` (no finish time), so that a replica takes it up again.
pub async fn running_again(pool: &PgPool, id: Uuid) {
    sqlx::query(
        "UPDATE fleet.backfill_jobs SET state = 'running', finished_at = NULL WHERE job_id = $1",
    )
    .bind(id)
    .execute(pool)
    .await
    .unwrap();
}

pub async fn chunks_done(pool: &PgPool, id: Uuid) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM fleet.backfill_chunks WHERE job_id = $1 AND state = 'done'",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .expect("count chunks")
}

/// `items(id, c, fail)`: `n` rows whose counter `c` starts at 0.
pub async fn items(pool: &PgPool, n: i64) {
    fleet_shared::db::migrate_control_plane(pool)
        .await
        .expect("control plane");
    sqlx::raw_sql(
        "CREATE TABLE items (id bigserial PRIMARY KEY, c integer NOT NULL DEFAULT 0, fail boolean NOT NULL DEFAULT false, d integer)",
    )
    .execute(pool)
    .await
    .expect("create items");
    sqlx::query("INSERT INTO items (c) SELECT 0 FROM generate_series(1, $1)")
        .bind(n)
        .execute(pool)
        .await
        .expect("fill items");
}

/// (rows with c = 0, rows with c = 1, rows with any other c)
pub async fn counters(pool: &PgPool) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE c = 0), count(*) FILTER (WHERE c = 1), count(*) FILTER (WHERE c NOT IN (0, 1)) FROM items",
    )
    .fetch_one(pool)
    .await
    .expect("count items")
}
