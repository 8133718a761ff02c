//! Graceful shutdown: a job mid-handling when shutdown is signalled finishes, its outcome is
//! stored and its message acked; no other job starts, and the buffered jobs go back to the
//! stream (NAKed) for another replica.

use std::time::Duration;

use fleet_jobs::RuntimeSpec;
use fleet_shared::topology::JOBS_STREAM;
use fleet_testkit::{eventually, TestEnv};
use futures::StreamExt;

use crate::common::{outcomes, publish_all, scheduled, start, Gated};

#[tokio::test]
async fn a_job_in_flight_at_shutdown_finishes_is_recorded_and_acked_and_no_new_job_starts() {
    let env = TestEnv::new().await;
    let fleet = env.fleet(&[]).await;
    let tick = "2026-03-29T01:00:00Z";
    let jobs = ["ada", "bob", "cyd"]
        .iter()
        .map(|code| scheduled("stop", "stop", tick, code))
        .collect();
    publish_all(&fleet.js, jobs).await;

    let gated = Gated::new();
    let mut spec = RuntimeSpec::for_fleet(&fleet, "stop-test", "stop").unwrap();
    spec.worker.concurrency = 1;
    spec.worker.consumers[0].ack_wait = Duration::from_secs(600);
    let running = start(&fleet, spec, gated.clone());
    eventually(Duration::from_secs(30), "one job started", || async {
        (gated.started().len() == 1).then_some(())
    })
    .await;

    // Shutdown is signalled while the job is held; only then does it finish.
    running.token.cancel();
    gated.open();
    running.stop().await;

    let started = gated.started();
    assert_eq!(
        started.len(),
        1,
        "no job started after shutdown: {started:?}"
    );
    let rows = outcomes(&fleet.pg, "stop").await;
    assert_eq!(rows, [(started[0].clone(), "done".to_owned(), 1)]);

    // The finished job was acked (gone from the work queue); the two buffered ones were handed
    // back at once (NAKed): the next fetch gets them as second deliveries, long before the
    // ten-minute ack wait would have.
    let mut stream = fleet.js.get_stream(JOBS_STREAM).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 2);
    let consumer = stream
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>("jobs-stop")
        .await
        .unwrap();
    let back: std::sync::Mutex<Vec<(String, i64)>> = Default::default();
    let got = &back;
    eventually(
        Duration::from_secs(30),
        "the two buffered jobs redelivered",
        || {
            let consumer = consumer.clone();
            async move {
                let mut batch = consumer.fetch().max_messages(2).messages().await.ok()?;
                while let Some(Ok(m)) = batch.next().await {
                    let delivered = m.info().ok()?.delivered;
                    got.lock().unwrap().push((m.subject.to_string(), delivered));
                    m.ack().await.ok()?;
                }
                (got.lock().unwrap().len() == 2).then_some(())
            }
        },
    )
    .await;
    let mut back = back.into_inner().unwrap();
    back.sort();
    let mut others: Vec<(String, i64)> = ["ada", "bob", "cyd"]
        .iter()
        .filter(|c| **c != started[0])
        .map(|c| (format!("jobs.stop.{c}"), 2))
        .collect();
    others.sort();
    assert_eq!(back, others);
}
