//! Outcomes that cannot be stored for longer than the ack wait, as in a database outage: held up
//! by a lock on `fleet.job_outcomes`, or failing because the table is gone for a while. The
//! handled jobs stay unacked but alive, so none is handled again, and once storing works every
//! outcome is stored and every job acked.

use std::time::Duration;

use std::sync::Arc;

use fleet_jobs::RuntimeSpec;
use fleet_shared::topology::JOBS_STREAM;
use fleet_shared::Fleet;
use fleet_testkit::{eventually, Running, TestEnv};

use crate::common::{outcomes, publish_all, scheduled, start, Gated};

const TICK: &str = "2026-03-29T01:00:00Z";

/// Publishes one job of `schedule` per code and runs a consumer with a 2 s ack wait; once every
/// job has been handled, waits three ack waits and checks that none was handled again.
async fn handle_while_storing_fails(
    fleet: &Fleet,
    schedule: &str,
    codes: &[&str],
) -> (Running, Arc<Gated>) {
    let jobs = codes
        .iter()
        .map(|code| scheduled(schedule, schedule, TICK, code))
        .collect();
    publish_all(&fleet.js, jobs).await;
    let gated = Gated::new();
    gated.open();
    let mut spec = RuntimeSpec::for_fleet(fleet, &format!("{schedule}-test"), schedule).unwrap();
    spec.worker.consumers[0].ack_wait = Duration::from_secs(2);
    let running = start(fleet, spec, gated.clone());
    eventually(Duration::from_secs(30), "every job handled", || async {
        (gated.started().len() == codes.len()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        gated.started().len(),
        codes.len(),
        "no job was redelivered while its outcome waited: {:?}",
        gated.started()
    );
    (running, gated)
}

/// Once storing works again: every outcome stored as done on the first attempt, every job
/// acked, none handled twice.
async fn all_stored_and_acked(fleet: &Fleet, schedule: &str, n: usize, gated: &Gated) {
    let rows = eventually(Duration::from_secs(30), "the outcomes stored", || async {
        let rows = outcomes(&fleet.pg, schedule).await;
        (rows.len() == n).then_some(rows)
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
    assert_eq!(gated.started().len(), n);
}

#[tokio::test]
async fn outcomes_held_up_past_the_ack_wait_are_stored_later_and_no_job_runs_twice() {
    let env = TestEnv::new().await;
    let fleet = env.fleet(&[]).await;
    // The writer's upsert waits behind this lock for three ack waits.
    let mut lock = fleet.pg.begin().await.unwrap();
    sqlx::query("LOCK TABLE fleet.job_outcomes IN SHARE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();

    let codes = ["ada", "bob", "cyd"];
    let (running, gated) = handle_while_storing_fails(&fleet, "held", &codes).await;
    assert!(outcomes(&fleet.pg, "held").await.is_empty());
    lock.rollback().await.unwrap();

    all_stored_and_acked(&fleet, "held", codes.len(), &gated).await;
    running.stop().await;
}

/// Storing fails outright (the outcomes table is gone for a while, as in an outage): the writer
/// retries with backoff, the held jobs stay alive past several ack waits and run once, and when
/// the table is back every outcome is stored and every job acked.
#[tokio::test]
async fn outcomes_that_fail_to_store_are_retried_until_stored_and_no_job_runs_twice() {
    let env = TestEnv::new().await;
    let fleet = env.fleet(&[]).await;
    let away = |sql: &'static str| {
        let pg = fleet.pg.clone();
        async move { sqlx::query(sql).execute(&pg).await.unwrap() }
    };
    away("ALTER TABLE fleet.job_outcomes RENAME TO job_outcomes_away").await;

    let codes = ["ada", "bob"];
    let (running, gated) = handle_while_storing_fails(&fleet, "gone", &codes).await;
    away("ALTER TABLE fleet.job_outcomes_away RENAME TO job_outcomes").await;

    all_stored_and_acked(&fleet, "gone", codes.len(), &gated).await;
    running.stop().await;
}
