//! Hostile events (a value echoed into the reason, a payload over the worker's limit, a payload
//! near the server's `max_payload`) on every subject the fleet consumes, several times the
//! workers' concurrency of them at once: each is dead-lettered with a short reason in a letter
//! that fits the server, and valid events published after them are still handled.

use std::time::Duration;

use async_nats::jetstream;
use fleet_shared::dlq;
use fleet_shared::topology::{DLQ_STREAM, EVENTS_STREAM, JOBS_STREAM};
use fleet_testkit::{eventually, Running, TestEnv};
use serde_json::json;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(90);
/// Concurrency of every worker in this test; more hostile messages than this arrive at once.
const CONCURRENCY: usize = 2;

async fn publish(js: &jetstream::Context, subject: &str, body: Vec<u8>) {
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", Uuid::new_v4().to_string().as_str());
    js.publish_with_headers(subject.to_owned(), h, body.into())
        .await
        .expect("publish")
        .await
        .expect("publish ack");
}

/// A JSON body of about `size` bytes for `subject` that the fleet must refuse.
fn hostile(subject: &str, size: usize) -> Vec<u8> {
    let big = "x".repeat(size.saturating_sub(120));
    let v = match subject {
        "tenant.created" => {
            json!({"tenant_id": Uuid::new_v4(), "code": "hostile", "name": "H", "plan": big})
        }
        "tenant.migrate" => json!({"code": big}),
        "org.updated" => json!({"org_code": big}),
        "session.changed" => json!({"org_code": big, "session_id": "s"}),
        "backfill.submit" => json!({"kind": "sql", big: 1}),
        "backfill.control" => json!({"job_id": Uuid::new_v4(), "action": big}),
        other => panic!("no hostile body for {other}"),
    };
    serde_json::to_vec(&v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_events_on_every_subject_are_dead_lettered_and_never_stall_valid_ones() {
    let env = TestEnv::new().await;
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        format!(
            "[provisioner]\nconcurrency = {CONCURRENCY}\n[invalidation]\nconcurrency = {CONCURRENCY}\n[backfill]\npoll_interval = \"50ms\"\n"
        ),
    )
    .unwrap();
    let cfg = config.path().to_str().unwrap().to_owned();
    let extra = [
        ("FLEET_CONFIG", cfg.as_str()),
        ("FLEET_BACKFILL_ALLOW_SQL", "1"),
    ];

    let prov = env.fleet(&extra).await;
    let inval = env.fleet(&extra).await;
    let back = env.fleet(&extra).await;
    let js = prov.js.clone();
    let max_payload = prov.nats.server_info().max_payload;
    let (p, i, b) = (prov.clone(), inval.clone(), back.clone());
    let workers = [
        Running::spawn(|t| provisioner::run(p, t)),
        Running::spawn(|t| cache_invalidator::run(i, t)),
        Running::spawn(|t| backfill_worker::run(b, t)),
    ];

    // Below the limits (parsed, reason quotes the value), above the provisioner's and the
    // cache-invalidator's limit, and as large as the server takes with our headers.
    let near_max = max_payload - 512;
    let subjects = [
        "tenant.created",
        "tenant.migrate",
        "org.updated",
        "session.changed",
        "backfill.submit",
        "backfill.control",
    ];
    let mut hostile_count = 0;
    for subject in subjects {
        for size in [60_000, 70_000] {
            publish(&js, subject, hostile(subject, size)).await;
            hostile_count += 1;
        }
        for _ in 0..CONCURRENCY + 1 {
            let mut body = hostile(subject, near_max);
            body.truncate(near_max.min(body.len()));
            publish(&js, subject, body).await;
            hostile_count += 1;
        }
    }

    // Valid events after the hostile ones.
    sqlx::raw_sql("CREATE TABLE items (id bigserial PRIMARY KEY, c integer NOT NULL DEFAULT 0); INSERT INTO items (c) SELECT 0 FROM generate_series(1, 10)")
        .execute(&prov.pg)
        .await
        .unwrap();
    let mut tenants = Vec::new();
    for n in 0..5 {
        let code = format!("valid_{n}");
        let body =
            json!({"tenant_id": Uuid::new_v4(), "code": code, "name": "Valid", "plan": "basic"});
        publish(&js, "tenant.created", serde_json::to_vec(&body).unwrap()).await;
        tenants.push(code);
    }
    publish(&js, "tenant.migrate", br#"{"code":"valid_0"}"#.to_vec()).await;
    publish(&js, "org.updated", br#"{"org_code":"valid_org"}"#.to_vec()).await;
    publish(
        &js,
        "session.changed",
        br#"{"org_code":"valid_org","session_id":"s1"}"#.to_vec(),
    )
    .await;
    let job_id = Uuid::new_v4();
    let spec = json!({"job_id": job_id, "kind": "sql", "table": "items", "statement": "UPDATE items SET c = c + 1 WHERE id > $1 AND id <= $2", "chunk_size": 1, "max_rows_per_sec": 0.2});
    publish(&js, "backfill.submit", serde_json::to_vec(&spec).unwrap()).await;

    for code in &tenants {
        eventually(WAIT, &format!("tenant {code} active"), || async {
            let s: Option<String> =
                sqlx::query_scalar("SELECT status FROM fleet.tenants WHERE code = $1")
                    .bind(code)
                    .fetch_optional(&prov.pg)
                    .await
                    .unwrap();
            (s.as_deref() == Some("active")).then_some(())
        })
        .await;
    }
    eventually(WAIT, "backfill job created", || async {
        backfill_worker::get_job(&back.pg, job_id)
            .await
            .unwrap()
            .map(|_| ())
    })
    .await;
    let acked = |fleet: &fleet_shared::Fleet, worker: &str, event: &str| {
        fleet
            .metrics
            .worker
            .acked
            .get_or_create(&fleet_shared::metrics::EventLabels {
                worker: worker.into(),
                event: event.into(),
            })
            .get()
    };
    eventually(
        WAIT,
        "valid org.updated and session.changed handled",
        || async {
            (acked(&inval, cache_invalidator::NAME, "org.updated") >= 1
                && acked(&inval, cache_invalidator::NAME, "session.changed") >= 1)
                .then_some(())
        },
    )
    .await;
    // A control action on the job, published after the hostile controls.
    let control = json!({"job_id": job_id, "action": "cancel"});
    publish(
        &js,
        "backfill.control",
        serde_json::to_vec(&control).unwrap(),
    )
    .await;
    eventually(WAIT, "valid backfill.control handled", || async {
        (acked(&back, backfill_worker::NAME, "backfill.control") >= 1).then_some(())
    })
    .await;

    // Every hostile message became exactly one bounded letter; nothing is left unacked.
    let letters = eventually(WAIT, "every hostile event dead-lettered", || async {
        let l = dlq::list(&js, None, 1000).await.ok()?;
        (l.len() >= hostile_count).then_some(l)
    })
    .await;
    assert_eq!(letters.len(), hostile_count, "one letter per hostile event");
    let dlq_stream = js.get_stream(DLQ_STREAM).await.unwrap();
    for l in &letters {
        assert!(
            l.error.len() <= dlq::MAX_REASON_BYTES && !l.error.contains('\n'),
            "reason too long ({} bytes): {}",
            l.error.len(),
            &l.error[..200.min(l.error.len())]
        );
        let raw = dlq_stream.get_raw_message(l.seq).await.unwrap();
        let header_bytes: usize = raw
            .headers
            .iter()
            .map(|(k, v)| {
                let k: &str = k.as_ref();
                v.iter()
                    .map(|v| k.len() + v.as_str().len() + 4)
                    .sum::<usize>()
            })
            .sum();
        assert!(
            raw.payload.len() + header_bytes < max_payload,
            "letter {} fits",
            l.seq
        );
        let size = fleet_shared::publish::header_value(&raw.headers, dlq::H_PAYLOAD_SIZE);
        if raw.payload.len() > 100_000 || size.is_some() {
            let size: usize = size.expect("a cut payload names its size").parse().unwrap();
            assert!(size > raw.payload.len());
            assert_eq!(raw.payload.len(), dlq::PREVIEW_BYTES);
            let sha = fleet_shared::publish::header_value(&raw.headers, dlq::H_PAYLOAD_SHA256)
                .expect("a cut payload has its digest");
            assert_eq!(sha.len(), 64);
        }
    }
    let reasons: Vec<&str> = letters.iter().map(|l| l.error.as_str()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("unknown plan") && r.contains("bytes)")),
        "the unknown plan is quoted, cut with its size: {reasons:#?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("larger than this worker's limit")),
        "oversized events are refused unread: {reasons:#?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("backfill.submit") && r.contains("unknown field")),
        "an unknown spec field is named, cut: {reasons:#?}"
    );
    for (stream, durable) in [
        (EVENTS_STREAM, provisioner::DURABLE.to_owned()),
        (
            EVENTS_STREAM,
            cache_invalidator::durable_name("org.updated"),
        ),
        (
            EVENTS_STREAM,
            cache_invalidator::durable_name("session.changed"),
        ),
        (JOBS_STREAM, "backfill-submit".to_owned()),
        (JOBS_STREAM, "backfill-control".to_owned()),
    ] {
        eventually(WAIT, &format!("{durable} has nothing pending"), || async {
            let mut c: jetstream::consumer::PullConsumer = js
                .get_stream(stream)
                .await
                .ok()?
                .get_consumer(&durable)
                .await
                .ok()?;
            let info = c.info().await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        })
        .await;
    }
    let failures: u64 = [&prov, &inval, &back]
        .iter()
        .map(|f| {
            let m = &f.metrics.worker.dlq_publish_failures;
            [
                provisioner::NAME,
                cache_invalidator::NAME,
                backfill_worker::NAME,
            ]
            .iter()
            .map(|w| {
                m.get_or_create(&fleet_shared::metrics::WorkerLabels {
                    worker: (*w).into(),
                })
                .get()
            })
            .sum::<u64>()
        })
        .sum();
    assert_eq!(failures, 0, "no dead letter was refused");
    for w in workers {
        w.stop().await;
    }
}
