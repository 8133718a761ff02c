//! Exactly once: a counter column incremented by every chunk ends at exactly 1 on every row,
//! with two replicas sharing the job and one of them (the real binary) killed with SIGKILL in
//! the middle; and a redelivered submit creates no second job.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use fleet_testkit::{eventually, TestEnv};
use serde_json::json;
use sqlx::PgPool;

/// Every chunk sleeps 20 ms inside its transaction and passes a gate (a shared advisory lock)
/// the test can close by taking the lock exclusively: a closed gate holds every lane inside a
/// chunk transaction, so the kill is sure to land mid-transaction.
const GATED_INCREMENT: &str = "UPDATE items SET c = c + 1 FROM (SELECT pg_sleep(0.02), pg_advisory_xact_lock_shared(4242)) AS s WHERE id > $1 AND id <= $2";

/// Chunks pinned at 20 keys: each chunk sleeps 20 ms whatever its size, so an adaptive size
/// would shrink toward one key on a loaded machine and stretch the job past a minute.
const PINNED_CONFIG: &str = "[backfill]\npoll_interval = \"50ms\"\nprogress_interval = \"100ms\"\nparallelism = 2\nmin_chunk_size = 20\nmax_chunk_size = 20\n";

/// The test's side of the gate, on its own connection (the advisory lock is per session).
struct Gate(sqlx::pool::PoolConnection<sqlx::Postgres>);

impl Gate {
    async fn new(pool: &PgPool) -> Gate {
        Gate(pool.acquire().await.expect("gate connection"))
    }

    /// Returns once no chunk is past the gate: chunks already past it commit first.
    async fn close(&mut self) {
        sqlx::query("SELECT pg_advisory_lock(4242)")
            .execute(&mut *self.0)
            .await
            .expect("close the gate");
    }

    async fn open(&mut self) {
        sqlx::query("SELECT pg_advisory_unlock(4242)")
            .execute(&mut *self.0)
            .await
            .expect("open the gate");
    }
}

/// Waits until `n` chunk transactions are held at the closed gate.
async fn lanes_at_gate(pool: &PgPool, n: i64) {
    eventually(Duration::from_secs(60), &format!("{n} lanes at the gate"), || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = 4242
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        (waiting >= n).then_some(())
    })
    .await;
}

async fn workers_with_chunks(pool: &PgPool, id: uuid::Uuid) -> i64 {
    sqlx::query_scalar(
        "SELECT count(DISTINCT worker) FROM fleet.backfill_chunks WHERE job_id = $1 AND state = 'done'",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn kill_9_of_a_replica_loses_nothing_and_repeats_nothing() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    items(&pool, 3000).await;
    let config = config_file(PINNED_CONFIG);
    let mut gate = Gate::new(&pool).await;

    let mut binary = Command::new(env!("CARGO_BIN_EXE_backfill-worker"))
        .env("NATS_URL", env.nats.url())
        .env("DATABASE_URL", &env.db.url)
        .env("REDIS_URL", &env.redis_url)
        .env("FLEET_HTTP_ADDR", "127.0.0.1:0")
        .env("FLEET_CONFIG", config.path())
        .env("FLEET_BACKFILL_ALLOW_SQL", "1")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start backfill-worker");

    // Long timeouts: a lane may wait at the closed gate for as long as the test needs.
    let id = submit(
        &pool,
        json!({"kind": "sql", "table": "items", "statement": GATED_INCREMENT, "chunk_size": 20, "parallelism": 2,
               "lock_timeout": "60s", "statement_timeout": "60s"}),
    )
    .await;
    // The binary alone makes progress...
    eventually(
        Duration::from_secs(30),
        "the binary commits chunks",
        || async { (chunks_done(&pool, id).await >= 10).then_some(()) },
    )
    .await;
    // ...then, with the gate closed so the binary cannot finish the job meanwhile, a second
    // replica joins; once all four lanes wait at the gate, it opens and both commit chunks.
    gate.close().await;
    let replica = Replica::start(&env, &config).await;
    lanes_at_gate(&pool, 4).await;
    gate.open().await;
    eventually(
        Duration::from_secs(30),
        "both replicas commit chunks",
        || async { (workers_with_chunks(&pool, id).await >= 2).then_some(()) },
    )
    .await;
    // The binary dies without warning, with both its lanes inside chunk transactions.
    gate.close().await;
    lanes_at_gate(&pool, 4).await;
    let _ = Command::new("kill")
        .args(["-9", &binary.id().to_string()])
        .status();
    binary.wait().expect("reap the binary");
    let before_kill = chunks_done(&pool, id).await;
    assert!(before_kill < 150, "the kill landed mid-job");
    gate.open().await;

    let job = wait_state(&pool, id, &["succeeded", "failed"], Duration::from_secs(90)).await;
    assert_eq!(job.state, "succeeded", "{:?}", job.error);
    assert_eq!(
        counters(&pool).await,
        (0, 3000, 0),
        "every row incremented exactly once"
    );
    assert_eq!(job.rows_done, 3000);
    replica.stop().await;
}

#[tokio::test]
async fn a_redelivered_submit_finds_its_job() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    items(&pool, 10).await;
    let spec = json!({"kind": "sql", "table": "items", "statement": "UPDATE items SET c = c + 1 WHERE id > $1 AND id <= $2"}).to_string();
    let first = backfill_worker::submit_json(&pool, spec.as_bytes(), true, Some("msg:abc"))
        .await
        .unwrap();
    let again = backfill_worker::submit_json(&pool, spec.as_bytes(), true, Some("msg:abc"))
        .await
        .unwrap();
    assert!(first.created && !again.created);
    assert_eq!(first.job_id, again.job_id);
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM fleet.backfill_jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(jobs, 1);

    // And the job runs once: one replica, then a second one started on the finished job.
    let config = config_file(FAST_CONFIG);
    let replica = Replica::start(&env, &config).await;
    wait_state(&pool, first.job_id, &["succeeded"], Duration::from_secs(30)).await;
    let second = Replica::start(&env, &config).await;
    second.stop().await;
    replica.stop().await;
    assert_eq!(counters(&pool).await, (0, 10, 0));
}
