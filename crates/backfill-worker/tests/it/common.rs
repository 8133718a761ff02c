//! Helpers shared by the backfill-worker tests: a worker on a TestEnv, job submission and
//! polling on lasting state.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use backfill_worker::JobRow;
use fleet_shared::databases::DatabasePools;
use fleet_shared::Fleet;
use fleet_testkit::{eventually, Running, TestDb, TestEnv};
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

/// A fresh database for jobs on a named database (the tests' `[databases.legacy]`), and its
/// pool.
pub async fn legacy_db() -> (TestDb, PgPool) {
    let legacy = TestDb::create().await.unwrap();
    let pool = legacy.pool().await;
    (legacy, pool)
}

/// The `backfill-worker` binary on `env` with `cfg` (and `extra` variables), quiet: a worker
/// that a test can `kill -9`.
pub fn worker_binary(
    env: &TestEnv,
    cfg: &tempfile::NamedTempFile,
    extra: &[(&str, &str)],
) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_backfill-worker"));
    cmd.env("NATS_URL", env.nats.url())
        .env("DATABASE_URL", &env.db.url)
        .env("REDIS_URL", &env.redis_url)
        .env("FLEET_HTTP_ADDR", "127.0.0.1:0")
        .env("FLEET_CONFIG", cfg.path());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start backfill-worker")
}

/// `kill -9`, nothing more: the dead worker's backends end by themselves, as in production (an
/// idle one at once, one in a statement when it next checks its client).
pub fn kill_9(mut binary: Child) {
    let _ = Command::new("kill")
        .args(["-9", &binary.id().to_string()])
        .status();
    binary.wait().expect("reap the binary");
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

    /// [`pools_of`] this replica's settings, on its own control-plane pool.
    pub fn pools(&self) -> DatabasePools {
        pools_of(&self.fleet.settings, &self.fleet.pg)
    }

    pub async fn stop(self) {
        self.running.stop().await;
    }
}

/// The database pools of a submitter with the `[databases]` of `settings`, `control` its
/// control plane.
pub fn pools_of(settings: &fleet_shared::Settings, control: &PgPool) -> DatabasePools {
    DatabasePools::new(settings.databases.clone(), control.clone(), 2)
}

/// Submits `spec` (SQL jobs allowed) through `pools`, as fleetctl does for a job on a named
/// database: its id, or the refusal as text.
pub async fn submit_on_pools(
    pools: &DatabasePools,
    spec: serde_json::Value,
) -> Result<Uuid, String> {
    backfill_worker::submit_json_on(pools, spec.to_string().as_bytes(), true, None)
        .await
        .map(|s| s.job_id)
        .map_err(|e| e.to_string())
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

/// How many chunk markers the job left on the database of `target` (one per committed chunk
/// of a job on a named or tenant database).
pub async fn marks(target: &PgPool, id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM fleet_backfill.chunk_marks WHERE job_id = $1")
        .bind(id)
        .fetch_one(target)
        .await
        .unwrap()
}

/// Waits (up to a minute) until the job has succeeded or failed.
pub async fn finished(pool: &PgPool, id: Uuid) -> JobRow {
    wait_state(pool, id, &["succeeded", "failed"], Duration::from_secs(60)).await
}

/// Retries the job's failed chunks (the job is `running` again at once) and waits until it has
/// succeeded or failed again.
pub async fn retry_until_finished(pool: &PgPool, id: Uuid) -> JobRow {
    assert_eq!(
        backfill_worker::control(pool, id, backfill_worker::Action::Retry)
            .await
            .unwrap(),
        "running"
    );
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

/// Increments `c`, dividing by zero on a row marked `fail`: the chunk holding one fails.
pub const FAILING_STATEMENT: &str = "UPDATE items SET c = c + 1, d = 1 / (CASE WHEN fail THEN 0 ELSE 1 END) WHERE id > $1 AND id <= $2";

/// [`items`] with 500 rows, the one with id 250 marked `fail`.
pub async fn items_failing_at_250(pool: &PgPool) {
    items(pool, 500).await;
    sqlx::query("UPDATE items SET fail = true WHERE id = 250")
        .execute(pool)
        .await
        .unwrap();
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
