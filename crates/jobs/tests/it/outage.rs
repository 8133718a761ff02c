//! Outcomes that cannot be stored for longer than the ack wait, as in a database outage: held up
//! by a lock on `fleet.job_outcomes`, or failing because the table is gone for a while. The
//! handled jobs stay unacked but alive, so none is handled again, and once storing works every
//! outcome is stored and every job acked.

use std::time::Duration;

use fleet_jobs::RuntimeSpec;
use fleet_shared::topology::JOBS_STREAM;
use fleet_testkit::{eventually, TestEnv};

use crate::common::{outcomes, publish_all, scheduled, start, Gated};

#[tokio::test]
async fn outcomes_held_up_past_the_ack_wait_are_stored_later_and_no_job_runs_twice() {
    let env = TestEnv::new().await;
    let fleet = env.fleet(&[]).await;
    let tick = "2026-03-29T01:00:00Z";

    // The writer's upsert waits behind this lock for three ack waits.
    let mut lock = fleet.pg.begin().await.unwrap();
    sqlx::query("LOCK TABLE fleet.job_outcomes IN SHARE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();

    let jobs = ["ada", "bob", "cyd"]
        .iter()
        .map(|code| scheduled("held", "held", tick, code))
        .collect();
    publish_all(&fleet.js, jobs).await;
    let gated = Gated::new();
    gated.open();
    let mut spec = RuntimeSpec::for_fleet(&fleet, "held-test", "held").unwrap();
    spec.worker.consumers[0].ack_wait = Duration::from_secs(2);
    let running = start(&fleet, spec, gated.clone());
    eventually(Duration::from_secs(30), "all three handled", || async {
        (gated.started().len() == 3).then_some(())
    })
    .await;

    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        gated.started().len(),
        3,
        "no job was redelivered while its outcome waited: {:?}",
        gated.started()
    );
    assert!(outcomes(&fleet.pg, "held").await.is_empty());
    lock.rollback().await.unwrap();

    let rows = eventually(Duration::from_secs(30), "the outcomes stored", || async {
        let rows = outcomes(&fleet.pg, "held").await;
        (rows.len() == 3).then_some(rows)
    })
    .await;
    for (code, status, attempts) in &rows {
        assert_eq!((status.as_str(), *attempts), ("done", 1), "{code}");
    }
    eventually(Duration::from_secs(10), "every job acked", || async {
        let mut stream = fleet.js.get_stream(JOBS_STREAM).await.unwrap();
        (stream.info().await.unwrap().state.messages == 0).then_some(())
    })
    .await;
    assert_eq!(gated.started().len(), 3);
    running.stop().await;
}

/// Storing fails outright (the outcomes table is gone for a while, as in an outage): the writer
/// retries with backoff, the held jobs stay alive past several ack waits and run once, and when
/// the table is back every outcome is stored and every job acked.
#[tokio::test]
async fn outcomes_that_fail_to_store_are_retried_until_stored_and_no_job_runs_twice() {
    let env = TestEnv::new().await;
    let fleet = env.fleet(&[]).await;
    let tick = "2026-03-29T01:00:00Z";
    let away = |sql: &'static str| {
        let pg = fleet.pg.clone();
        async move { sqlx::query(sql).execute(&pg).await.unwrap() }
    };
    away("ALTER TABLE fleet.job_outcomes RENAME TO job_outcomes_away").await;

    let jobs = ["ada", "bob"]
        .iter()
        .map(|code| scheduled("gone", "gone", tick, code))
        .collect();
    publish_all(&fleet.js, jobs).await;
    let gated = Gated::new();
    gated.open();
    let mut spec = RuntimeSpec::for_fleet(&fleet, "gone-test", "gone").unwrap();
    spec.worker.consumers[0].ack_wait = Duration::from_secs(2);
    let running = start(&fleet, spec, gated.clone());
    eventually(Duration::from_secs(30), "both handled", || async {
        (gated.started().len() == 2).then_some(())
    })
    .await;

    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        gated.started().len(),
        2,
        "no job was redelivered while its outcome could not be stored: {:?}",
        gated.started()
    );
    away("ALTER TABLE fleet.job_outcomes_away RENAME TO job_outcomes").await;

    let rows = eventually(Duration::from_secs(30), "the outcomes stored", || async {
        let rows = outcomes(&fleet.pg, "gone").await;
        (rows.len() == 2).then_some(rows)
    })
    .await;
    for (code, status, attempts) in &rows {
        assert_eq!((status.as_str(), *attempts), ("done", 1), "{code}");
    }
    eventually(Duration::from_secs(10), "every job acked", || async {
        let mut stream = fleet.js.get_stream(JOBS_STREAM).await.unwrap();
        (stream.info().await.unwrap().state.messages == 0).then_some(())
    })
    .await;
    assert_eq!(gated.started().len(), 2);
    running.stop().await;
}
