//! The scheduler: periodic per-tenant jobs, fanned out once per tenant per tick, leader-elected.
//!
//! Schedules come from `[[schedules]]` in `FLEET_CONFIG` ([`config`]; an invalid one stops the
//! process at start with one line naming it) and from the control plane, where `fleetctl schedule
//! apply|set|delete` manage them at run time ([`defs`]); the leader reloads those every second
//! or when nudged ([`live`]; a name in the file wins). [`catalog`] is that same combined set for
//! the tools that read it (`fleetctl schedule`, the console). Every replica runs [`run`]; they elect one leader on
//! NATS KV ([`elector`]); only the leader decides ticks ([`ticks`], [`tick_loop`]) and fans each out
//! ([`fanout`]) as one job per matching tenant with `Nats-Msg-Id = <schedule>:<tick>:<tenant_id>`,
//! recording the run and its progress in `fleet.schedule_runs` ([`store`]). A follower takes over
//! within two lease periods of the leader's death and resumes any unfinished fan-out from its
//! cursor. The jobs stream's duplicate window is widened at start to `[scheduler] dedupe_window`
//! (default 10 minutes), and never below the longest spread plus a failover, so a job re-published
//! by a resumed fan-out is dropped by the stream; a fan-out resumed after a crash longer than that
//! records that some jobs may have been sent twice (see [`fanout`]).
//!
//! The built-in `tenant.rollout` target is the exception: one rollout request per tick, with
//! `Nats-Msg-Id = <schedule>:<tick>:rollout`, so a failover never starts two rollouts.
//!
//! Manual triggers (`fleetctl schedule trigger`) are rows in `fleet.schedule_triggers`, picked up
//! by the leader within a second, or at once when [`WAKE_SUBJECT`] nudges it.

pub mod backfill;
pub mod catalog;
pub mod config;
pub mod defs;
pub mod elector;
pub mod fanout;
pub mod live;
pub mod metrics;
pub mod purge;
pub mod schedule;
pub mod store;
pub mod tick_loop;
pub mod ticks;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use fleet_shared::fleet::retry_until;
use fleet_shared::topology::{ensure_streams, Topology};
use fleet_shared::Fleet;
use tokio_util::sync::CancellationToken;

use crate::config::SchedulerConfig;
use crate::elector::Elector;
use crate::metrics::SchedulerMetrics;
use crate::tick_loop::Ctx;

pub const NAME: &str = "scheduler";
/// Whether `/readyz` of this worker's binary checks Redis.
pub const USES_REDIS: bool = false;
/// Core-NATS subject (not stored by any stream) that wakes the leader for a manual trigger.
pub const WAKE_SUBJECT: &str = "fleet.scheduler.wake";

/// Runs the worker until `shutdown` is cancelled.
pub async fn run(fleet: Fleet, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = SchedulerConfig::from_file(&fleet.settings.file)?;
    for s in &config.schedules {
        s.selector
            .check_databases(&s.name, &fleet.settings.databases)
            .map_err(|e| anyhow::anyhow!(e))?;
    }
    // Waited for like at connect: a NATS cluster that has just lost a node answers JetStream
    // requests only once it has elected new leaders.
    let wait = fleet.settings.connect_timeout;
    let topology = Topology {
        replicas: fleet.settings.stream_replicas,
        jobs_duplicate_window: config.jobs_duplicate_window(),
        ..Default::default()
    };
    retry_until(wait, "JetStream", || ensure_streams(&fleet.js, &topology))
        .await
        .context("Failed to widen the jobs stream's duplicate window")?;
    let metrics = SchedulerMetrics::register(&fleet.metrics);
    let id = fleet_shared::fleet::instance_id();
    let elector = retry_until(wait, "the leader bucket", || {
        Elector::open(
            &fleet.js,
            id.clone(),
            config.lease,
            fleet.settings.stream_replicas,
        )
    })
    .await?;
    let mut wake = fleet
        .nats
        .subscribe(WAKE_SUBJECT)
        .await
        .context("Failed to subscribe to the scheduler wake subject")?;
    let live = Arc::new(crate::live::Live::new(
        &config,
        fleet.settings.stream_replicas,
    ));
    let ctx = Ctx {
        js: fleet.js.clone(),
        pg: fleet.pg.clone(),
        live,
        config: Arc::new(config),
        metrics: metrics.clone(),
        leader_id: id.clone().into(),
    };
    tracing::info!(
        scheduler.id = %id,
        file_schedules = ctx.config.schedules.len(),
        lease = ?ctx.config.lease,
        "scheduler started; waiting for leadership"
    );

    loop {
        let Some(lease) = elector.acquire(&shutdown).await else {
            return Ok(());
        };
        metrics.leader.set(1);
        tracing::info!(scheduler.id = %id, "became the scheduler leader");
        let term = shutdown.child_token();
        let stop_renewing = CancellationToken::new();
        let (held, led) = tokio::join!(elector.hold(lease, &term, &stop_renewing), async {
            let r = tick_loop::run(&ctx, &term, &mut wake).await;
            stop_renewing.cancel();
            r
        });
        metrics.leader.set(0);
        if let Some(revision) = held {
            elector.release(revision).await;
        }
        if shutdown.is_cancelled() {
            tracing::info!(scheduler.id = %id, "scheduler stopped");
            return Ok(());
        }
        match led {
            Ok(()) => tracing::warn!(scheduler.id = %id, "no longer the leader; following"),
            Err(e) => {
                tracing::error!(error = %fleet_shared::errors::one_line(&format!("{e:#}")), "leading failed; stepping down and retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// The leader's context without an election (nothing else leads meanwhile), for tests that
/// drive the clock with [`tick_loop::pass`].
pub async fn context(fleet: &Fleet) -> anyhow::Result<Ctx> {
    let config = SchedulerConfig::from_file(&fleet.settings.file)?;
    ensure_streams(
        &fleet.js,
        &Topology {
            replicas: fleet.settings.stream_replicas,
            jobs_duplicate_window: config.jobs_duplicate_window(),
            ..Default::default()
        },
    )
    .await?;
    Ok(Ctx {
        js: fleet.js.clone(),
        pg: fleet.pg.clone(),
        live: Arc::new(crate::live::Live::new(
            &config,
            fleet.settings.stream_replicas,
        )),
        config: Arc::new(config),
        metrics: SchedulerMetrics::register(&fleet.metrics),
        leader_id: "test-leader".into(),
    })
}

/// Queues a manual tick of `schedule` (see `fleetctl schedule trigger`) and nudges the leader.
pub async fn trigger(
    pg: &sqlx::PgPool,
    nats: Option<&async_nats::Client>,
    schedule: &str,
    requested_by: &str,
) -> anyhow::Result<i64> {
    let id = store::request_trigger(pg, schedule, requested_by).await?;
    if let Some(nats) = nats {
        // Best effort: without the nudge the leader still finds the row within a second.
        let _ = nats.publish(WAKE_SUBJECT, id.to_string().into()).await;
        let _ = nats.flush().await;
    }
    Ok(id)
}
