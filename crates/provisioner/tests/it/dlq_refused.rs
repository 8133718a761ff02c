//! The real `provisioner` binary when the dead-letter stream refuses every letter (its
//! `max_msg_size` is smaller than any letter): each bad event is retried a bounded number of
//! times, then terminated with an error log and counted in `fleet_dlq_publish_failures_total`
//! on `/metrics`, while valid events published meanwhile are provisioned.

use std::time::Duration;

use async_nats::jetstream::stream;
use fleet_shared::topology::{DLQ_STREAM, DLQ_SUBJECTS, EVENTS_STREAM};
use fleet_testkit::{eventually, TestEnv};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// Deliveries after which a letter the stream refuses is given up (the worker's bound, below
/// its default `max_attempts`).
const GIVE_UP_AFTER: u64 = fleet_shared::worker::DLQ_GIVE_UP_AFTER as u64;
const LONG: Duration = Duration::from_secs(180);

async fn metrics(port: u16) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// `fleet_dlq_publish_failures_total{worker="provisioner"}`, 0 while absent.
fn dlq_failures(text: &str) -> u64 {
    text.lines()
        .find(|l| {
            l.starts_with("fleet_dlq_publish_failures_total{")
                && l.contains("worker=\"provisioner\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The provisioner consumer's events not yet delivered, and those delivered but not acked.
async fn waiting(js: &async_nats::jetstream::Context) -> (u64, usize) {
    let info = js
        .get_stream(EVENTS_STREAM)
        .await
        .unwrap()
        .consumer_info(provisioner::NAME)
        .await
        .unwrap();
    (info.num_pending, info.num_ack_pending)
}

#[tokio::test]
async fn a_letter_the_dlq_refuses_is_terminated_after_bounded_deliveries() {
    let env = TestEnv::new().await;
    let js = js(&env).await;
    // The fleet keeps an existing stream's limits, so this refusing DLQ stays in place.
    js.create_stream(stream::Config {
        name: DLQ_STREAM.into(),
        subjects: DLQ_SUBJECTS.iter().map(|s| s.to_string()).collect(),
        max_message_size: 16,
        ..Default::default()
    })
    .await
    .unwrap();
    let pool = env.db.pool().await;
    let bin = LoggedBinary::start(&env.nats.url(), &env.db.url, "info", &[]);
    let port = bin.port;

    let bad = 3;
    for i in 0..bad {
        publish_json(
            &js,
            "tenant.created",
            &created(&format!("refused_{i}"), "no-such-plan").1,
        )
        .await;
    }
    // Valid tenants are provisioned while the bad events are still being retried.
    for code in ["flows_a", "flows_b"] {
        publish_json(&js, "tenant.created", &created(code, "basic").1).await;
    }
    for code in ["flows_a", "flows_b"] {
        wait_active(&pool, code).await;
    }

    // Every delivery of every bad event failed to dead-letter once, and then it was terminated.
    let expected = bad * GIVE_UP_AFTER;
    eventually(
        LONG,
        "every bad event given up after bounded deliveries",
        || async {
            let n = dlq_failures(&metrics(port).await);
            assert!(
                n <= expected,
                "{n} DLQ failures: more deliveries than the bound"
            );
            let (pending, ack_pending) = waiting(&js).await;
            (n == expected && ack_pending == 0 && pending == 0).then_some(())
        },
    )
    .await;
    let logs = bin.logs();
    let terminated: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("message terminated without a letter"))
        .collect();
    assert_eq!(terminated.len() as u64, bad, "one error line per bad event");
    assert!(
        terminated.iter().all(|l| l.contains("ERROR")),
        "{terminated:?}"
    );

    // Nothing comes back: a later valid event is handled, and the bad ones stay terminated.
    publish_json(&js, "tenant.created", &created("flows_c", "basic").1).await;
    wait_active(&pool, "flows_c").await;
    // flows_c's row commits before its ack reaches the server: wait for the ack, then check
    // that no bad event came back meanwhile (a redelivery would count one more DLQ failure).
    eventually(
        Duration::from_secs(30),
        "no event waiting for an ack",
        || async { (waiting(&js).await.1 == 0).then_some(()) },
    )
    .await;
    assert_eq!(dlq_failures(&metrics(port).await), expected);
    let dlq = js
        .get_stream(DLQ_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(dlq, 0, "the refusing stream took no letter");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM fleet.tenants WHERE code LIKE 'refused%'"
        )
        .await,
        0
    );

    bin.terminate().await;
}
