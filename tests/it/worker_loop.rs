//! The shared worker loop against a real nats-server: every handler verdict leads to the promised
//! ack, retry or dead letter, and shutdown lets in-flight work finish.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use fleet_shared::dlq;
use fleet_shared::topology::{ConsumerSpec, EVENTS_STREAM};
use fleet_shared::worker::{self, HandleError, Handler, Incoming, WorkerSpec};
use fleet_testkit::{eventually, Running, TestEnv};

/// Behaves according to the payload: `ok`, `bad` (invalid), `flaky` (fails twice), `down`
/// (always transient), `panic`, `slow` (takes 1.5 s), `slower` (takes 5 s).
#[derive(Clone, Default)]
struct Toy {
    seen: Arc<Mutex<HashMap<String, u32>>>,
}

impl Toy {
    fn seen(&self, body: &str) -> u32 {
        self.seen.lock().unwrap().get(body).copied().unwrap_or(0)
    }
}

impl Handler for Toy {
    async fn handle(&self, msg: &Incoming) -> Result<(), HandleError> {
        let body = String::from_utf8_lossy(&msg.payload).into_owned();
        assert!(
            msg.msg_id().is_some_and(|id| !id.is_empty()),
            "handlers see Nats-Msg-Id"
        );
        let n = {
            let mut seen = self.seen.lock().unwrap();
            let n = seen.entry(body.clone()).or_default();
            *n += 1;
            *n
        };
        match body.as_str() {
            "bad" => Err(HandleError::invalid("bad body\nsecond line")),
            "flaky" if n < 3 => Err(HandleError::Transient(anyhow::anyhow!("flaky {n}"))),
            "down" => Err(HandleError::Transient(anyhow::anyhow!("dependency down"))),
            "panic" => panic!("toy panic"),
            "slow" => {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                Ok(())
            }
            "slower" => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

fn spec() -> WorkerSpec {
    let mut c = ConsumerSpec::new(EVENTS_STREAM, "toy", "org.toy");
    c.ack_wait = Duration::from_secs(3);
    let mut s = WorkerSpec::new("toy", vec![c]);
    s.max_attempts = 4;
    s.retry_base = Duration::from_millis(20);
    s.retry_max = Duration::from_millis(100);
    s.shutdown_timeout = Duration::from_secs(10);
    s
}

/// Runs the toy worker in the background.
fn start(fleet: &fleet_shared::Fleet, spec: WorkerSpec, toy: &Toy) -> Running {
    let (js, metrics, toy) = (
        fleet.js.clone(),
        fleet.metrics.clone(),
        Arc::new(toy.clone()),
    );
    Running::spawn(|t| worker::run(js, metrics, spec, toy, t))
}

async fn publish(env: &fleet_shared::Fleet, body: &str) {
    let mut h = HeaderMap::new();
    h.insert("X-Custom", "kept");
    fleet_shared::publish::publish(
        &env.js,
        "org.toy",
        &uuid::Uuid::new_v4().to_string(),
        Some(h),
        body.to_owned().into(),
    )
    .await
    .unwrap();
}

async fn drained(fleet: &fleet_shared::Fleet) -> bool {
    let stream = fleet.js.get_stream(EVENTS_STREAM).await.unwrap();
    let mut c: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer("toy").await.unwrap();
    let info = c.info().await.unwrap();
    info.num_pending == 0 && info.num_ack_pending == 0
}

#[tokio::test]
async fn verdicts_lead_to_ack_retry_or_dead_letter() {
    let env = TestEnv::new().await;
    let fleet = env.fleet(&[]).await;
    let toy = Toy::default();
    let worker = start(&fleet, spec(), &toy);

    for body in ["ok", "bad", "flaky", "down", "panic"] {
        publish(&fleet, body).await;
    }
    let letters = eventually(Duration::from_secs(20), "three dead letters", || async {
        let l = dlq::list(&fleet.js, Some("toy"), 10).await.unwrap();
        (l.len() == 3).then_some(l)
    })
    .await;
    eventually(Duration::from_secs(10), "consumer drained", || async {
        drained(&fleet).await.then_some(())
    })
    .await;

    assert_eq!(toy.seen("ok"), 1);
    assert_eq!(toy.seen("flaky"), 3, "retried until it succeeded");
    assert_eq!(toy.seen("bad"), 1, "bad input is not retried");
    assert_eq!(
        toy.seen("down"),
        4,
        "transient failures retried max_attempts times"
    );

    let by_payload: HashMap<&str, &dlq::DeadLetter> =
        letters.iter().map(|l| (l.payload.as_str(), l)).collect();
    let bad = by_payload["bad"];
    assert_eq!(
        bad.error, "bad body second line",
        "reason folded to one line"
    );
    assert_eq!(bad.subject, "org.toy");
    assert_eq!(bad.delivery_count, Some(1));
    assert_eq!(
        fleet_shared::publish::header_value(&bad.headers, "X-Custom"),
        Some("kept")
    );
    assert!(fleet_shared::publish::header_value(&bad.headers, dlq::H_ORIGINAL_MSG_ID).is_some());
    assert!(fleet_shared::publish::header_value(&bad.headers, dlq::H_FAILED_AT).is_some());
    assert!(by_payload["down"]
        .error
        .starts_with("gave up after 4 attempts: dependency down"));
    assert!(by_payload["panic"]
        .error
        .contains("handler panicked: toy panic"));

    let metrics = fleet.metrics.render();
    assert!(
        metrics.contains(r#"fleet_messages_dead_lettered_total{worker="toy",event="org.toy"} 3"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"fleet_messages_acked_total{worker="toy",event="org.toy"} 2"#));

    // Replay re-drives the letter to its subject under a new id and removes it from the DLQ.
    fleet_shared::dlq_replay::replay(&fleet.js, bad.seq, &Default::default())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "replayed message handled",
        || async { (toy.seen("bad") == 2).then_some(()) },
    )
    .await;
    let after = eventually(Duration::from_secs(10), "new letter", || async {
        let l = dlq::list(&fleet.js, Some("toy"), 10).await.unwrap();
        (l.len() == 3 && l.iter().all(|x| x.seq != bad.seq)).then_some(l)
    })
    .await;
    assert!(after.iter().any(|l| l.payload == "bad"));

    worker.stop().await;
}

/// A handler that runs longer than the ack wait (5 s against 3 s) keeps its message: the loop
/// sends in-progress acks every third of the ack wait, so the server never redelivers it.
#[tokio::test]
async fn a_handler_longer_than_the_ack_wait_keeps_its_message() {
    let env = TestEnv::new().await;
    let fleet = env.fleet(&[]).await;
    let toy = Toy::default();
    let worker = start(&fleet, spec(), &toy);
    publish(&fleet, "slower").await;
    eventually(
        Duration::from_secs(20),
        "the slow message acked",
        || async { (toy.seen("slower") == 1 && drained(&fleet).await).then_some(()) },
    )
    .await;
    // Past another ack wait: nothing comes back.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(toy.seen("slower"), 1, "handled once, never redelivered");
    assert!(drained(&fleet).await);
    worker.stop().await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_work_finish_and_acks_it() {
    let env = TestEnv::new().await;
    let fleet = env.fleet(&[]).await;
    let toy = Toy::default();
    let worker = start(&fleet, spec(), &toy);
    publish(&fleet, "slow").await;
    eventually(Duration::from_secs(10), "slow handler started", || async {
        (toy.seen("slow") == 1).then_some(())
    })
    .await;
    worker.stop().await;
    assert!(
        drained(&fleet).await,
        "the in-flight message was acked before run returned"
    );

    // A new worker gets nothing again.
    let worker2 = start(&fleet, spec(), &toy);
    publish(&fleet, "ok").await;
    eventually(
        Duration::from_secs(10),
        "second worker handles new work",
        || async { (toy.seen("ok") == 1).then_some(()) },
    )
    .await;
    assert_eq!(toy.seen("slow"), 1);
    worker2.stop().await;
}

#[tokio::test]
async fn survives_a_nats_restart_without_losing_messages() {
    let mut env = TestEnv::new().await;
    let fleet = env.fleet(&[]).await;
    let toy = Toy::default();
    let worker = start(&fleet, spec(), &toy);
    for i in 0..20 {
        publish(&fleet, &format!("before-{i}")).await;
    }
    env.nats.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.nats.restart().unwrap();
    for i in 0..20 {
        publish(&fleet, &format!("after-{i}")).await;
    }
    eventually(Duration::from_secs(30), "all 40 handled", || async {
        let seen = toy.seen.lock().unwrap();
        (seen.len() == 40).then_some(())
    })
    .await;
    eventually(Duration::from_secs(15), "consumer drained", || async {
        drained(&fleet).await.then_some(())
    })
    .await;
    worker.stop().await;
}

#[tokio::test]
async fn shutdown_hands_prefetched_messages_to_another_replica_at_once() {
    let env = TestEnv::new().await;
    let fleet = env.fleet(&[]).await;
    let mut s = spec();
    s.concurrency = 2;
    // A long ack wait: without the release, the prefetched messages would wait for it.
    s.consumers[0].ack_wait = Duration::from_secs(60);
    let first = Toy::default();
    let worker = start(&fleet, s.clone(), &first);
    publish(&fleet, "slow").await;
    publish(&fleet, "slow").await;
    for i in 0..6 {
        publish(&fleet, &format!("queued-{i}")).await;
    }
    eventually(Duration::from_secs(10), "both slots busy", || async {
        (first.seen("slow") == 2).then_some(())
    })
    .await;
    worker.stop().await;

    let second = Toy::default();
    let worker2 = start(&fleet, s, &second);
    // Well inside the 60 s ack wait: only an explicit release makes this possible.
    eventually(
        Duration::from_secs(20),
        "the rest handled by the next replica",
        || async {
            let handled = (0..6)
                .filter(|i| {
                    first.seen(&format!("queued-{i}")) + second.seen(&format!("queued-{i}")) == 1
                })
                .count();
            (handled == 6).then_some(())
        },
    )
    .await;
    worker2.stop().await;
}
