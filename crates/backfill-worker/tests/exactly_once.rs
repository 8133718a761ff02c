//! Exactly once: a counter column incremented by every chunk ends at exactly 1 on every row,
//! with two replicas sharing the job and one of them (the real binary) killed with SIGKILL in
//! the middle; and a redelivered submit creates no second job.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use fleet_testkit::{eventually, TestEnv};
use serde_json::json;

/// Every chunk sleeps 20 ms inside its transaction, so kills land mid-transaction.
const SLOW_INCREMENT: &str =
    "UPDATE items SET c = c + 1 FROM (SELECT pg_sleep(0.02)) AS s WHERE id > $1 AND id <= $2";

#[tokio::test]
async fn kill_9_of_a_replica_loses_nothing_and_repeats_nothing() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    items(&pool, 3000).await;
    let config = config_file(FAST_CONFIG);

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

    let id = submit(
        &pool,
        json!({"kind": "sql", "table": "items", "statement": SLOW_INCREMENT, "chunk_size": 20, "target_chunk_ms": 20, "parallelism": 2}),
    )
    .await;
    // The binary alone makes progress...
    eventually(
        Duration::from_secs(30),
        "the binary commits chunks",
        || async { (chunks_done(&pool, id).await >= 10).then_some(()) },
    )
    .await;
    // ...then a second replica joins, and the binary dies without warning.
    let replica = Replica::start(&env, &config).await;
    eventually(Duration::from_secs(30), "both replicas commit chunks", || async {
        let workers: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT worker) FROM fleet.backfill_chunks WHERE job_id = $1 AND state = 'done'",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
        (workers >= 2).then_some(())
    })
    .await;
    let _ = Command::new("kill")
        .args(["-9", &binary.id().to_string()])
        .status();
    binary.wait().expect("reap the binary");

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
