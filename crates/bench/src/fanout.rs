//! `fleet-bench fanout`: the scheduler's fan-out against a bare pipelined JetStream publisher.
//!
//! Both sides run on private servers: a fresh database holding `--tenants` active tenants
//! (bulk-inserted in one statement) and a private `nats-server` each, so the limit publishes into
//! an empty stream just like the scheduler did.
//!
//! - **fleet**: the release `scheduler` binary runs with a one-schedule `FLEET_CONFIG`
//!   (`spread = 0`); once it leads, the schedule is triggered (the `fleetctl schedule trigger`
//!   path: a row plus a NATS nudge) and the clock runs until `FLEET_JOBS` holds one message per
//!   tenant. Its peak RSS is sampled throughout.
//! - **limit**: the same subjects, bodies and `Nats-Msg-Id`s, prepared in memory beforehand,
//!   published by a bare async-nats JetStream client with up to `--window` acks outstanding,
//!   until every ack is in.

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;
use fleet_shared::topology::{ensure_streams, Topology, JOBS_STREAM};
use fleet_testkit::{NatsServer, TestDb};

use crate::common::{report_ratio, report_rss, RssSampler, WorkerProcess};

const SCHEDULE: &str = "bench";

#[derive(clap::Args)]
pub struct Args {
    /// Tenants in fleet.tenants (every one gets a job)
    #[arg(long, default_value_t = 100_000)]
    tenants: i64,
    /// Acks the bare publisher keeps outstanding
    #[arg(long, default_value_t = 1024)]
    window: usize,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let n = args.tenants.max(1);
    let db = TestDb::create().await?;
    let pg = fleet_shared::db::lazy_pool(&fleet_shared::secret::SecretUrl::new(db.url.clone()), 4)?;
    fleet_shared::db::migrate_control_plane(&pg).await?;
    sqlx::query(
        "INSERT INTO fleet.tenants (tenant_id, code, name, plan, status, schema_name)
         SELECT gen_random_uuid(), 't' || i, 'Tenant ' || i, 'basic', 'active', 'tenant_t' || i
         FROM unnest(ARRAY(SELECT generate_series(1, $1::bigint))) AS i",
    )
    .bind(n)
    .execute(&pg)
    .await
    .context("Failed to insert tenants")?;
    sqlx::query("ANALYZE fleet.tenants").execute(&pg).await?;
    println!("tenants: {n}");

    // ---- fleet: the scheduler binary ------------------------------------------------------
    let nats = NatsServer::start()?;
    let config =
        std::env::temp_dir().join(format!("fleet-bench-fanout-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "[[schedules]]\nname = \"{SCHEDULE}\"\ncron = \"0 0 0 1 1 *\"\nsubject = \"jobs.bench.{{tenant_code}}\"\npayload = {{ kind = \"bench\" }}\nspread = \"0s\"\n"
        ),
    )?;
    let client = async_nats::connect(nats.url()).await?;
    let js = jetstream::new(client.clone());
    let worker = WorkerProcess::spawn(
        "scheduler",
        &[
            ("NATS_URL", nats.url()),
            ("DATABASE_URL", db.url.clone()),
            ("FLEET_CONFIG", config.display().to_string()),
        ],
    )?;
    let start_wait = Instant::now();
    while scheduler::elector::current_leader(&js).await?.is_none() {
        anyhow::ensure!(
            start_wait.elapsed() < Duration::from_secs(60),
            "the scheduler did not take the lead"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss = RssSampler::start(worker.pid());
    let t0 = Instant::now();
    scheduler::trigger(&pg, Some(&client), SCHEDULE, "fleet-bench").await?;
    wait_for_messages(&js, n as u64, Duration::from_secs(600)).await?;
    let fleet_secs = t0.elapsed().as_secs_f64();
    let peak_mb = rss.finish();
    // The run is marked done after its last publish is acked, so a moment after the last
    // message is in the stream.
    let finished = Instant::now();
    let run_secs = loop {
        let done: Option<f64> = sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM (finished_at - started_at))::float8 FROM fleet.schedule_runs WHERE schedule = $1 AND status = 'done'",
        )
        .bind(SCHEDULE)
        .fetch_optional(&pg)
        .await?;
        if let Some(secs) = done {
            break secs;
        }
        anyhow::ensure!(
            finished.elapsed() < Duration::from_secs(30),
            "the run did not finish within 30 s of its last message"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drop(worker);
    let _ = std::fs::remove_file(&config);
    let fleet_rate = n as f64 / fleet_secs;
    println!(
        "fleet: {n} jobs stored in {fleet_secs:.2} s from trigger ({fleet_rate:.0} jobs/s; the run's own record: {run_secs:.2} s)"
    );

    // ---- limit: a bare pipelined publisher on a fresh server --------------------------------
    let tenants: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT tenant_id, code FROM fleet.tenants ORDER BY tenant_id")
            .fetch_all(&pg)
            .await?;
    let tick = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    // Same length as the scheduler's RFC 3339 tick.
    let tick_text = "2026-01-01T00:00:00Z";
    let messages: Vec<(String, HeaderMap, Bytes)> = tenants
        .iter()
        .map(|(id, code)| {
            let mut h = HeaderMap::new();
            h.insert("Nats-Msg-Id", format!("{SCHEDULE}:{tick}:{id}").as_str());
            h.insert(
                "traceparent",
                fleet_shared::publish::new_traceparent().as_str(),
            );
            let body = serde_json::json!({
                "kind": "bench", "tenant_id": id, "tenant_code": code,
                "schedule": SCHEDULE, "tick": tick_text,
            });
            (
                format!("jobs.bench.{code}"),
                h,
                Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
            )
        })
        .collect();
    drop(nats);
    let nats2 = NatsServer::start()?;
    let js2 = jetstream::new(async_nats::connect(nats2.url()).await?);
    ensure_streams(&js2, &Topology::default()).await?;
    let t0 = Instant::now();
    let mut inflight = VecDeque::with_capacity(args.window);
    for (subject, headers, payload) in messages {
        if inflight.len() >= args.window {
            let ack: jetstream::context::PublishAckFuture =
                inflight.pop_front().context("window")?;
            ack.into_future().await?;
        }
        inflight.push_back(js2.publish_with_headers(subject, headers, payload).await?);
    }
    for ack in inflight {
        ack.into_future().await?;
    }
    wait_for_messages(&js2, n as u64, Duration::from_secs(600)).await?;
    let limit_secs = t0.elapsed().as_secs_f64();
    let limit_rate = n as f64 / limit_secs;
    println!(
        "limit: {n} jobs stored in {limit_secs:.2} s by a bare publisher ({} acks outstanding)",
        args.window
    );

    report_ratio("fanout", fleet_rate, limit_rate, "jobs/s", 0.5);
    report_rss("scheduler peak RSS", peak_mb, 60.0);
    Ok(())
}

async fn wait_for_messages(js: &jetstream::Context, n: u64, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let mut stream = js.get_stream(JOBS_STREAM).await?;
    loop {
        if stream.info().await?.state.messages >= n {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{JOBS_STREAM} did not reach {n} messages"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
