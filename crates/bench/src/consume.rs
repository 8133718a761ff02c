//! `fleet-bench consume`: the job runtime (`fleet-jobs`) on no-op jobs against a bare async-nats
//! pull consumer, in the same run, interleaved; and the fairness figure.
//!
//! One private `nats-server` and a fresh control-plane database. Each round publishes `--jobs`
//! jobs (spread over `--tenants` tenants, bodies shaped like the scheduler's) to a subject only
//! one side consumes, then times that side from its start until `FLEET_JOBS` is empty again
//! (every job acked, so removed from the work queue); the order of the sides rotates from round
//! to round, and the median rate of each side is compared.
//!
//! - **runtime** (the main figure): `fleet_jobs::run` in its default configuration, with a
//!   handler that returns `Ok(())`: concurrency 8, one job per tenant at a time, outcomes
//!   recorded in `fleet.job_outcomes` (batched; each job acked after its batch committed).
//! - **runtime, outcomes off**: the same without a database (`pg = None`), a second line.
//! - **limit**: a bare pull consumer (`stream()` with batches of 256) that acks each message.
//!
//! Fairness: 10,000 jobs of one tenant published before one job each of 50 others; the figure is
//! the position, among handled jobs, of the last single-job tenant (the bound is 50 + 1 +
//! concurrency; see docs/scheduler.md).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use fleet_jobs::{HandleError, Job, JobHandler, RuntimeSpec};
use fleet_shared::metrics::Metrics;
use fleet_shared::topology::{ensure_streams, Topology, JOBS_STREAM};
use fleet_testkit::{NatsServer, TestDb};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::common::report_ratio;

#[derive(clap::Args)]
pub struct Args {
    /// Jobs per round and side
    #[arg(long, default_value_t = 50_000)]
    jobs: usize,
    /// Tenants the jobs are spread over
    #[arg(long, default_value_t = 1_000)]
    tenants: usize,
    /// Rounds (each side measured once per round, alternating who goes first)
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

struct Noop;

impl JobHandler for Noop {
    async fn handle(&self, _job: &Job) -> Result<(), HandleError> {
        Ok(())
    }
}

struct Order(Mutex<Vec<String>>);

impl JobHandler for Order {
    async fn handle(&self, job: &Job) -> Result<(), HandleError> {
        self.0.lock().unwrap().push(job.tenant_code.to_string());
        Ok(())
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    ensure_streams(&js, &Topology::default()).await?;
    let db = TestDb::create().await?;
    let pg = fleet_shared::db::lazy_pool(&fleet_shared::secret::SecretUrl::new(db.url.clone()), 8)?;
    fleet_shared::db::migrate_control_plane(&pg).await?;
    println!(
        "jobs: {} per round and side over {} tenants, {} rounds",
        args.jobs, args.tenants, args.rounds
    );

    // Sides: 0 the runtime as configured by default (outcomes recorded), 1 the bare consumer,
    // 2 the runtime without outcomes.
    let mut rates: [Vec<f64>; 3] = Default::default();
    for round in 0..args.rounds {
        for k in 0..3 {
            let side = (round + k) % 3;
            let task = ["cbench", "cbare", "cnorec"][side];
            publish(&js, task, args.jobs, args.tenants).await?;
            let secs = match side {
                0 => time_runtime(&js, Some(pg.clone()), task).await?,
                1 => time_bare(&js).await?,
                _ => time_runtime(&js, None, task).await?,
            };
            rates[side].push(args.jobs as f64 / secs);
        }
        println!(
            "round {}: runtime {:.0} jobs/s, bare {:.0} jobs/s, runtime without outcomes {:.0} jobs/s",
            round + 1,
            rates[0][round],
            rates[1][round],
            rates[2][round]
        );
    }
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM fleet.job_outcomes WHERE schedule = 'cbench' AND status = 'done'",
    )
    .fetch_one(&pg)
    .await?;
    anyhow::ensure!(
        recorded == (args.jobs * args.rounds) as i64,
        "{recorded} outcomes recorded for {} jobs",
        args.jobs * args.rounds
    );
    let [mut on, mut bare, mut off] = rates;
    let b = median(&mut bare);
    report_ratio(
        "consume, default runtime with outcomes recorded (median of rounds)",
        median(&mut on),
        b,
        "jobs/s",
        0.7,
    );
    report_ratio(
        "consume, runtime without outcomes (median of rounds)",
        median(&mut off),
        b,
        "jobs/s",
        0.7,
    );

    fairness(&js).await
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn publish(
    js: &jetstream::Context,
    task: &str,
    n: usize,
    tenants: usize,
) -> anyhow::Result<()> {
    let mut acks = Vec::with_capacity(1024);
    for i in 0..n {
        let code = format!("t{}", i % tenants.max(1));
        let body = serde_json::json!({
            "kind": "bench", "tenant_id": uuid::Uuid::new_v4(), "tenant_code": code,
            "schedule": task, "tick": "2026-01-01T00:00:00Z",
        });
        acks.push(
            js.publish(
                format!("jobs.{task}.{code}"),
                serde_json::to_vec(&body)?.into(),
            )
            .await?,
        );
        if acks.len() >= 1024 {
            for a in acks.drain(..) {
                std::future::IntoFuture::into_future(a).await?;
            }
        }
    }
    for a in acks {
        std::future::IntoFuture::into_future(a).await?;
    }
    Ok(())
}

async fn wait_empty(js: &jetstream::Context) -> anyhow::Result<()> {
    let mut stream = js.get_stream(JOBS_STREAM).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while stream.info().await?.state.messages > 0 {
        anyhow::ensure!(Instant::now() < deadline, "{JOBS_STREAM} did not drain");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

async fn time_runtime(
    js: &jetstream::Context,
    pg: Option<sqlx::PgPool>,
    task: &str,
) -> anyhow::Result<f64> {
    let spec = RuntimeSpec::new("bench-runtime", task)?;
    let shutdown = CancellationToken::new();
    let t0 = Instant::now();
    let task = tokio::spawn(fleet_jobs::run(
        js.clone(),
        pg,
        Metrics::new(),
        spec,
        Arc::new(Noop),
        shutdown.clone(),
    ));
    wait_empty(js).await?;
    let secs = t0.elapsed().as_secs_f64();
    shutdown.cancel();
    task.await.context("runtime panicked")??;
    Ok(secs)
}

async fn time_bare(js: &jetstream::Context) -> anyhow::Result<f64> {
    let stream = js.get_stream(JOBS_STREAM).await?;
    let t0 = Instant::now();
    let c = stream
        .get_or_create_consumer(
            "bare-bench",
            consumer::pull::Config {
                durable_name: Some("bare-bench".into()),
                filter_subject: "jobs.cbare.*".into(),
                ack_policy: consumer::AckPolicy::Explicit,
                max_ack_pending: 20_000,
                ..Default::default()
            },
        )
        .await?;
    let stop = CancellationToken::new();
    let s2 = stop.clone();
    let reader = tokio::spawn(async move {
        let mut messages = c.stream().max_messages_per_batch(256).messages().await?;
        loop {
            tokio::select! {
                _ = s2.cancelled() => return anyhow::Ok(()),
                m = messages.next() => match m {
                    Some(Ok(m)) => { let _ = m.ack().await; }
                    Some(Err(e)) => anyhow::bail!("bare consumer: {e}"),
                    None => return Ok(()),
                }
            }
        }
    });
    wait_empty(js).await?;
    let secs = t0.elapsed().as_secs_f64();
    stop.cancel();
    reader.await.context("bare consumer panicked")??;
    Ok(secs)
}

async fn fairness(js: &jetstream::Context) -> anyhow::Result<()> {
    let mut acks = Vec::new();
    for i in 0..10_050 {
        let subject = if i < 10_000 {
            "jobs.cfair.big".to_owned()
        } else {
            format!("jobs.cfair.small{}", i - 10_000)
        };
        acks.push(js.publish(subject, "{}".into()).await?);
    }
    for a in acks {
        std::future::IntoFuture::into_future(a).await?;
    }
    let order = Arc::new(Order(Mutex::new(Vec::new())));
    let spec = RuntimeSpec::new("bench-fairness", "cfair")?;
    let concurrency = spec.worker.concurrency;
    let shutdown = CancellationToken::new();
    let t0 = Instant::now();
    let task = tokio::spawn(fleet_jobs::run(
        js.clone(),
        None,
        Metrics::new(),
        spec,
        order.clone(),
        shutdown.clone(),
    ));
    let mut small_done = None;
    loop {
        let o = order.0.lock().unwrap().clone();
        if small_done.is_none() && o.iter().filter(|t| t.starts_with("small")).count() == 50 {
            small_done = Some(t0.elapsed());
        }
        if o.len() >= 10_050 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    task.await.context("runtime panicked")??;
    let o = order.0.lock().unwrap().clone();
    let last = o
        .iter()
        .rposition(|t| t.starts_with("small"))
        .context("no small tenant handled")?;
    println!(
        "fairness: 1 tenant with 10000 queued jobs + 50 tenants with 1 each: the last single-job tenant was handled as job {} of 10050 (bound {}: 50 + 1 + concurrency {concurrency}), all 50 within {:.0} ms of the start",
        last + 1,
        51 + concurrency,
        small_done.unwrap_or_default().as_secs_f64() * 1000.0
    );
    Ok(())
}
