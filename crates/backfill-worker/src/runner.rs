//! Running jobs: every replica polls `fleet.backfill_jobs` for runnable jobs and works their
//! chunks; replicas coordinate only through Postgres row locks.
//!
//! **One chunk, one transaction.** A lane claims a pending chunk with
//! `SELECT ... FOR UPDATE SKIP LOCKED`, runs the part's statement on `($1, $2]` and marks the
//! chunk `done` with its row count in the *same* transaction. If the replica dies (`kill -9`),
//! Postgres aborts that transaction when the connection drops: the statement's effect and the
//! checkpoint vanish together and the row lock is released, so another replica (or this one,
//! restarted) redoes the chunk. Committed chunks are never redone because claiming requires
//! `state = 'pending'`. Hence every row is processed exactly once, however many replicas run
//! and however they die. Job progress is *derived* from the chunk rows rather than counted in
//! the chunk transaction, so parallel chunks never contend on the job row.
//!
//! **Keyset chunks, carved on demand.** A part (one table) is a key range `(lo, hi]` with a
//! cursor `next_lo`; a lane that finds no pending chunk carves the next `(next_lo, next_lo + size]`
//! at the current adaptive size ([`crate::adapt`]) in one short statement. Never OFFSET: each
//! chunk's statement is an index range scan however far the job has got. Carving on demand
//! (rather than planning every chunk up front) is what lets the size adapt both ways.
//!
//! **Timeouts split.** Each chunk runs under `SET LOCAL statement_timeout / lock_timeout`. A chunk
//! that times out is split in two (the halves are retried) and the adaptive size halves; a
//! one-key chunk that still times out fails with the error. Other statement errors fail the
//! chunk with its error kept on the row (`retry` re-runs only failed chunks); connection errors
//! leave it pending and the lane backs off.
//!
//! **Control within one chunk.** Each chunk transaction first reads the job's state; a paused
//! or cancelled job stops every lane at its next chunk.
//!
//! **Finishing.** When no pending chunk and no uncarved range is left, the replica that notices
//! locks the job row, runs `tenant_codes` verification (no NULL left, per table) and sets
//! `succeeded` or `failed`. Only one replica does so: the state check happens under the row lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fleet_shared::errors::{is_transient, sqlstate};
use fleet_shared::retry::RetryPolicy;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::adapt::Adapt;
use crate::config::BackfillConfig;
use crate::kind::{ChunkCall, ChunkOutcome, ChunkRunner, FinishCtx, PlanCtx};
use crate::metrics::BackfillMetrics;
use crate::spec::{Effective, JobSpec, MappingSource};
use crate::state::JobState;
use crate::store;
use crate::store::chunks::{self, Part, PartMode};
use crate::target::{self, Target, TargetAccess};
use crate::throttle;
use crate::validate::ValidateError;
use fleet_shared::databases::DatabasePools;

/// Between attempts of a chunk that hit a transient database error.
const CHUNK_RETRY: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(5));

/// One replica's job runner.
pub struct Runner {
    /// The control plane (jobs, parts, chunks).
    pub pool: PgPool,
    /// The databases jobs work on (`control` among them); see [`crate::target`].
    pub pools: DatabasePools,
    pub nats: Option<async_nats::Client>,
    pub cfg: BackfillConfig,
    pub allow_sql: bool,
    pub worker_id: String,
    /// Wakes the poller at once (a job was submitted or resumed through this replica).
    pub wake: Arc<Notify>,
    pub metrics: BackfillMetrics,
}

/// What one lane step did.
enum Step {
    Did {
        keys: i64,
        elapsed: Duration,
    },
    Split,
    Failed,
    Carved,
    /// A chunk had to wait (a [`ChunkOutcome::Held`]); the lane tries again.
    Held,
    Idle,
    Stopped,
}

/// What the job's health monitor last found (see [`crate::throttle`]).
#[derive(Debug, Clone, PartialEq)]
enum Health {
    Ok,
    Throttled(String),
    /// The job is no longer running (paused, cancelled, finished): lanes stop.
    Stopped,
}

/// Shared by the lanes of one job on this replica.
struct JobCtx {
    health: tokio::sync::watch::Sender<Health>,
    /// The databases the job's health is read from (its own first), each with its monitor.
    watched: Vec<(PgPool, fleet_shared::health::HealthMonitor)>,
    job_id: Uuid,
    target: Target,
    eff: Effective,
    parts: HashMap<i32, Part>,
    search_path: Option<String>,
    /// Runs the parts planned with mode `copy` (the kind's own chunks).
    chunk_runner: Option<Arc<dyn ChunkRunner>>,
    adapt: Adapt,
    last_progress: Mutex<Instant>,
    /// A chunk was held and set the job's `throttled`; the next chunk done clears it.
    held: std::sync::atomic::AtomicBool,
}

/// What a chunk's statements did, before its commit.
struct ChunkRun {
    rows: i64,
    /// Up to 10 keys of rows the chunk could not settle, and how many there are in all
    /// (`copy_to_tenant`: the target holds a different row under the key).
    unsettled: Vec<i64>,
    unsettled_total: i64,
}

impl ChunkRun {
    fn outcome(self) -> ChunkOutcome {
        if self.unsettled_total > 0 {
            ChunkOutcome::Unsettled {
                keys: self.unsettled,
                total: self.unsettled_total,
            }
        } else {
            ChunkOutcome::Done { rows: self.rows }
        }
    }
}

/// Runs a chunk's statements on `(lo, hi]` in the caller's transaction.
fn exec_chunk<'a>(
    tx: &'a mut sqlx::PgConnection,
    p: &'a Part,
    settings: &'a [String],
    lo: i64,
    hi: i64,
) -> futures::future::BoxFuture<'a, sqlx::Result<ChunkRun>> {
    Box::pin(async move {
        for set in settings {
            sqlx::query(set).persistent(false).execute(&mut *tx).await?;
        }
        let rows = if p.mode == PartMode::Count {
            sqlx::query_scalar::<_, i64>(&p.statement)
                .bind(lo)
                .bind(hi)
                .fetch_one(&mut *tx)
                .await?
        } else {
            sqlx::query(&p.statement)
                .bind(lo)
                .bind(hi)
                .execute(&mut *tx)
                .await?
                .rows_affected() as i64
        };
        let mut run = ChunkRun {
            rows,
            unsettled: Vec::new(),
            unsettled_total: 0,
        };
        if let Some(then) = &p.then_statement {
            // Parts planned before the statement returned rows hold a bare DELETE: no rows.
            let keys: Vec<(i64, i64)> = sqlx::query_as(then)
                .bind(lo)
                .bind(hi)
                .fetch_all(&mut *tx)
                .await?;
            run.unsettled_total = keys.first().map_or(0, |(_, total)| *total);
            run.unsettled = keys.into_iter().map(|(key, _)| key).collect();
        }
        Ok(run)
    })
}

fn one_line(e: &dyn std::fmt::Display) -> String {
    fleet_shared::errors::one_line(&e.to_string())
}

fn db_message(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => one_line(&d.message()),
        other => one_line(other),
    }
}

impl Runner {
    /// Polls for runnable jobs and runs each in its own task until `shutdown`; running chunks
    /// finish (they are short by design) before this returns.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tasks: HashMap<Uuid, tokio::task::JoinHandle<()>> = HashMap::new();
        let poll = self.cfg.poll_interval;
        loop {
            tasks.retain(|_, h| !h.is_finished());
            if tasks.len() < self.cfg.max_jobs {
                match store::runnable_jobs(&self.pool).await {
                    Ok(ids) => {
                        for id in ids {
                            if tasks.len() >= self.cfg.max_jobs {
                                break;
                            }
                            if let std::collections::hash_map::Entry::Vacant(slot) = tasks.entry(id)
                            {
                                let me = self.clone();
                                let token = shutdown.clone();
                                slot.insert(tokio::spawn(
                                    async move { me.run_job(id, token).await },
                                ));
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %one_line(&e), "cannot read backfill jobs; retrying")
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
        for (_, h) in tasks {
            let _ = h.await;
        }
    }

    async fn run_job(self: Arc<Self>, job_id: Uuid, shutdown: CancellationToken) {
        let span = tracing::info_span!("backfill_job", job.id = %job_id, worker = %self.worker_id);
        let _ = tracing::Instrument::instrument(
            async {
                if let Err(e) = self.clone().drive(job_id, &shutdown).await {
                    tracing::warn!(error = %format!("{e:#}"), "backfill job interrupted; will resume");
                }
            },
            span,
        )
        .await;
    }

    async fn fail_job(&self, job_id: Uuid, from: JobState, reason: &str) -> sqlx::Result<()> {
        store::fail_job(&self.pool, job_id, from, reason).await?;
        tracing::warn!(reason, "backfill job failed");
        self.progress(job_id, None).await;
        Ok(())
    }

    async fn drive(
        self: Arc<Self>,
        job_id: Uuid,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let row = store::job_to_run(&self.pool, job_id)
            .await
            .context("Failed to read the job")?;
        let Some((state, spec_json, stored_size)) = row else {
            return Ok(());
        };
        let spec = match JobSpec::from_value(spec_json, true, MappingSource::Stored) {
            Ok(s) => s,
            Err(e) => {
                self.fail_job(
                    job_id,
                    state,
                    &format!("stored spec no longer parses: {}", one_line(&e)),
                )
                .await?;
                return Ok(());
            }
        };
        if spec.kind.job().runs_operator_sql() && !self.allow_sql {
            self.fail_job(
                job_id,
                state,
                "sql jobs are not enabled on this worker (FLEET_BACKFILL_ALLOW_SQL=1)",
            )
            .await?;
            return Ok(());
        }
        let target = match Target::resolve(&self.pools, &spec.database) {
            Ok(t) => t,
            Err(e) => {
                // Another replica may know the database: leave the job to it, and say why.
                tracing::warn!(error = %e, "backfill job names a database this replica does not know");
                return Ok(());
            }
        };
        let eff = spec.options.effective(&self.cfg);
        match state {
            JobState::Pending => {
                if !self.plan_job(job_id, &spec, &eff, &target).await? {
                    return Ok(());
                }
            }
            JobState::Running => {}
            _ => return Ok(()),
        }

        let parts: HashMap<i32, Part> = chunks::parts(&self.pool, job_id)
            .await
            .context("Failed to read the job's parts")?
            .into_iter()
            .collect();
        let initial = if stored_size > 0 {
            stored_size
        } else {
            eff.chunk_size
        };
        let max_chunk = match eff.max_rows_per_sec {
            Some(rate) => eff
                .max_chunk_size
                .min(throttle::max_chunk_for_rate(rate, eff.parallelism))
                .max(eff.min_chunk_size),
            None => eff.max_chunk_size,
        };
        let tables = self.job_tables(job_id, &spec).await?;
        let mut watched = vec![(
            target.pool.clone(),
            fleet_shared::health::HealthMonitor::new(eff.health.clone()),
        )];
        for pool in spec
            .kind
            .job()
            .written_databases(&self.pools, &target.name)
            .await
        {
            watched.push((
                pool,
                fleet_shared::health::HealthMonitor::new(eff.health.clone()),
            ));
        }
        let first = self.health(job_id, &watched, &tables).await;
        let ctx = Arc::new(JobCtx {
            health: tokio::sync::watch::channel(first).0,
            watched,
            job_id,
            target: target.clone(),
            parts,
            search_path: spec.kind.job().search_path(&spec.schema),
            chunk_runner: spec.kind.job().chunk_runner(&self.pools, &target),
            adapt: Adapt::new(initial, eff.target_chunk, eff.min_chunk_size, max_chunk),
            eff,
            last_progress: Mutex::new(Instant::now() - Duration::from_secs(3600)),
            held: std::sync::atomic::AtomicBool::new(false),
        });
        let mut lanes = JoinSet::new();
        for _ in 0..ctx.eff.parallelism.max(1) {
            lanes.spawn(self.clone().lane(ctx.clone(), shutdown.clone()));
        }
        let lanes_done = shutdown.child_token();
        let monitor = tokio::spawn(
            self.clone()
                .monitor(ctx.clone(), tables, lanes_done.clone()),
        );
        while lanes.join_next().await.is_some() {}
        lanes_done.cancel();
        let _ = monitor.await;
        if let Err(e) = throttle::set_reason(&self.pool, job_id, None).await {
            tracing::debug!(error = %one_line(&e), "cannot clear the throttle reason");
        }
        self.progress(job_id, Some(ctx.adapt.size())).await;
        if !shutdown.is_cancelled() {
            self.finish_job(job_id, &spec, &target).await?;
        }
        Ok(())
    }

    /// Plans a pending job (see [`crate::plan`]). Returns whether the job is now running.
    async fn plan_job(
        &self,
        job_id: Uuid,
        spec: &JobSpec,
        eff: &Effective,
        target: &Target,
    ) -> anyhow::Result<bool> {
        let mut tx = self.pool.begin().await?;
        match store::lock_to_plan(&mut tx, job_id).await? {
            Some(JobState::Pending) => {}
            Some(JobState::Running) => return Ok(true),
            _ => return Ok(false),
        }
        let lock_ms = eff
            .lock_timeout
            .unwrap_or(Duration::from_secs(5))
            .as_millis();
        // On another database the plan runs in its own transaction there, committed before the
        // parts are: a crash in between leaves the job pending, and planning again is harmless
        // (its DDL is IF NOT EXISTS, the mapping copy ON CONFLICT DO NOTHING).
        let mut ttx = if target.is_control {
            None
        } else {
            match target.pool.begin().await {
                Ok(t) => Some(t),
                Err(e) => return Err(self.waiting(job_id, target, e).await),
            }
        };
        {
            let con: &mut sqlx::PgConnection = match ttx.as_mut() {
                Some(t) => t,
                None => &mut tx,
            };
            for set in [
                format!("SET LOCAL lock_timeout = {lock_ms}"),
                "SET LOCAL statement_timeout = 0".to_owned(),
            ] {
                sqlx::query(&set)
                    .persistent(false)
                    .execute(&mut *con)
                    .await?;
            }
            if !target.is_control {
                target::ensure_schema(con).await?;
                spec.kind
                    .job()
                    .prepare_target(&self.pool, con, job_id)
                    .await?;
            }
        }
        let con: &mut sqlx::PgConnection = match ttx.as_mut() {
            Some(t) => t,
            None => &mut tx,
        };
        let ctx = PlanCtx {
            job_id,
            schema: &spec.schema,
            eff,
            map_table: target.map_table(),
            pools: &self.pools,
            target,
        };
        let plan = match spec.kind.job().plan(con, ctx).await {
            Ok(p) => p,
            Err(ValidateError::Refused(reason)) => {
                drop(tx);
                self.fail_job(job_id, JobState::Pending, &reason).await?;
                return Ok(false);
            }
            Err(ValidateError::Db(e)) if is_transient(&e) => {
                drop(ttx);
                drop(tx);
                return Err(self.waiting(job_id, target, e).await);
            }
            Err(ValidateError::Db(e)) => {
                drop(tx);
                self.fail_job(
                    job_id,
                    JobState::Pending,
                    &format!("planning failed: {}", db_message(&e)),
                )
                .await?;
                return Ok(false);
            }
        };
        if let Some(t) = ttx {
            t.commit().await?;
        }
        for (i, p) in plan.parts.iter().enumerate() {
            chunks::insert_part(&mut tx, job_id, i as i32, p).await?;
        }
        store::mark_planned(&mut tx, job_id, eff.chunk_size, plan.report.as_ref()).await?;
        tx.commit().await?;
        tracing::info!(parts = plan.parts.len(), "backfill job planned");
        self.progress(job_id, Some(eff.chunk_size)).await;
        Ok(true)
    }

    /// A pending job whose database does not answer stays pending, with the reason on the job
    /// row; it is planned once the database answers (the poller tries again).
    async fn waiting(&self, job_id: Uuid, target: &Target, e: sqlx::Error) -> anyhow::Error {
        let reason = format!("waiting for database {}: {}", target.name, db_message(&e));
        let _ = store::set_waiting(&self.pool, job_id, &reason).await;
        anyhow::Error::new(e).context(reason)
    }

    /// The tables a job writes, qualified and quoted (what the health check watches).
    async fn job_tables(&self, job_id: Uuid, spec: &JobSpec) -> anyhow::Result<Vec<String>> {
        let names = chunks::part_names(&self.pool, job_id)
            .await
            .context("Failed to read the job's parts")?;
        let mut tables = Vec::new();
        for n in names {
            if let Ok(t) = crate::ident::Ident::parse("table", &n) {
                tables.extend(spec.kind.job().watched_tables(&spec.schema, &t));
            }
        }
        Ok(tables)
    }

    /// One health reading of the job's target (an unreadable target counts as healthy: the
    /// chunks' own errors handle an outage).
    async fn health(
        &self,
        job_id: Uuid,
        watched: &[(PgPool, fleet_shared::health::HealthMonitor)],
        tables: &[String],
    ) -> Health {
        let state = store::job_state(&self.pool, job_id)
            .await
            .unwrap_or(Some(JobState::Running));
        if state != Some(JobState::Running) {
            return Health::Stopped;
        }
        for (pool, monitor) in watched {
            match monitor.check(pool, tables).await {
                Ok(Some(reason)) => return Health::Throttled(reason),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %one_line(&e), "cannot read the target's health");
                }
            }
        }
        Health::Ok
    }

    /// Reads the job's health every `health_interval` until its lanes are done; a change is
    /// stored on the job row and published.
    async fn monitor(
        self: Arc<Self>,
        ctx: Arc<JobCtx>,
        tables: Vec<String>,
        done: CancellationToken,
    ) {
        let mut shown: Option<String> = None;
        loop {
            let h = self.health(ctx.job_id, &ctx.watched, &tables).await;
            let reason = match &h {
                Health::Throttled(r) => Some(r.clone()),
                _ => None,
            };
            if reason != shown
                && throttle::set_reason(&self.pool, ctx.job_id, reason.as_deref())
                    .await
                    .is_ok()
            {
                shown = reason;
                self.progress(ctx.job_id, Some(ctx.adapt.size())).await;
            }
            ctx.health.send_replace(h);
            tokio::select! {
                _ = done.cancelled() => return,
                _ = tokio::time::sleep(self.cfg.health_interval) => {}
            }
        }
    }

    /// Waits while the job is throttled; false when the lane should stop.
    async fn wait_healthy(&self, ctx: &JobCtx, shutdown: &CancellationToken) -> bool {
        let mut rx = ctx.health.subscribe();
        loop {
            let h = rx.borrow_and_update().clone();
            match h {
                Health::Ok => return true,
                Health::Stopped => return false,
                Health::Throttled(_) => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                r = rx.changed() => if r.is_err() { return false },
            }
        }
    }

    async fn lane(self: Arc<Self>, ctx: Arc<JobCtx>, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        while !shutdown.is_cancelled() {
            if !self.wait_healthy(&ctx, &shutdown).await {
                break;
            }
            match self.step(&ctx).await {
                Ok(Step::Did { keys, elapsed }) => {
                    failures = 0;
                    ctx.adapt.observe(keys, elapsed);
                    self.maybe_progress(&ctx).await;
                }
                Ok(Step::Split | Step::Failed | Step::Carved | Step::Held) => failures = 0,
                Ok(Step::Idle | Step::Stopped) => break,
                Err(e) if is_transient(&e) && failures < 30 => {
                    failures += 1;
                    self.metrics.outcome("retry");
                    let delay = CHUNK_RETRY.delay(failures);
                    tracing::warn!(error = %one_line(&e), retry_in = ?delay, "chunk hit a transient error; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %one_line(&e), "lane stopped on an error; the job will be resumed");
                    break;
                }
            }
        }
    }

    /// Claims and runs one chunk, or carves one, or reports there is nothing to do.
    fn step<'a>(&'a self, ctx: &'a JobCtx) -> futures::future::BoxFuture<'a, sqlx::Result<Step>> {
        Box::pin(self.step_inner(ctx))
    }

    async fn step_inner(&self, ctx: &JobCtx) -> sqlx::Result<Step> {
        let mut tx = self.pool.begin().await?;
        if store::job_state(&mut *tx, ctx.job_id).await? != Some(JobState::Running) {
            return Ok(Step::Stopped);
        }
        let Some(claimed) = chunks::claim(&mut tx, ctx.job_id).await? else {
            tx.rollback().await?;
            return self.carve(ctx).await;
        };
        let chunks::Claimed {
            chunk_id,
            part,
            lo,
            hi,
        } = claimed;
        let Some(p) = ctx.parts.get(&part) else {
            return Err(sqlx::Error::Protocol(format!(
                "chunk {chunk_id} names unknown part {part}"
            )));
        };
        let mut settings = Vec::new();
        if let Some(t) = ctx.eff.statement_timeout {
            settings.push(format!("SET LOCAL statement_timeout = {}", t.as_millis()));
        }
        if let Some(t) = ctx.eff.lock_timeout {
            settings.push(format!("SET LOCAL lock_timeout = {}", t.as_millis()));
        }
        if let Some(sp) = &ctx.search_path {
            settings.push(format!("SET LOCAL search_path TO {sp}"));
        }
        // The rate limit: reserve the chunk's keys (an upper bound of its rows) in the job's
        // shared bucket, and wait until they are covered.
        let reserved = match ctx.eff.max_rows_per_sec {
            Some(rate) => {
                let n = (hi - lo) as f64;
                let wait = throttle::reserve(&self.pool, ctx.job_id, rate, n).await?;
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                Some((rate, n))
            }
            None => None,
        };
        let give_back = |rows: i64| async move {
            if let Some((rate, n)) = reserved {
                let _ = throttle::give_back(&self.pool, ctx.job_id, rate, n - rows as f64).await;
            }
        };
        let started = Instant::now();
        let outcome = match (&p.mode, &ctx.chunk_runner) {
            (PartMode::Copy, Some(runner)) => {
                let call = ChunkCall {
                    job_id: ctx.job_id,
                    chunk_id,
                    lo,
                    hi,
                    statement: &p.statement,
                    settings: &settings,
                };
                runner.run(call).await
            }
            (PartMode::Copy, None) => Err(sqlx::Error::Protocol(format!(
                "part {part} of job {} is run by its kind, which has no chunk runner",
                ctx.job_id
            ))),
            _ => self.own_chunk(ctx, &mut tx, p, &settings, claimed).await,
        };
        let rows = match outcome {
            Err(e) => {
                drop(tx);
                give_back(0).await;
                return self.chunk_error(ctx, chunk_id, lo, hi, e).await;
            }
            Ok(ChunkOutcome::Recorded { rows }) => {
                // The effect committed before a crash; its checkpoint is recorded, nothing ran.
                self.mark_done(&mut tx, chunk_id, rows, started.elapsed())
                    .await?;
                tx.commit().await?;
                give_back(0).await;
                self.metrics.outcome("done");
                tracing::info!(
                    chunk.id = chunk_id,
                    rows,
                    "chunk found done on the target; checkpoint recorded"
                );
                return Ok(Step::Carved);
            }
            Ok(ChunkOutcome::Unsettled { keys, total }) => {
                // Nothing of the chunk is copied or deleted, so a retry after the operator
                // resolved the collisions starts from a clean range.
                tx.rollback().await?;
                give_back(0).await;
                let more = if total > keys.len() as i64 {
                    ", ..."
                } else {
                    ""
                };
                let keys = keys
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                let msg = format!(
                    "{total} source row(s) not copied: the target already holds a different row under the same key or unique value (keys {keys}{more}); \
                     the chunk was rolled back and no source row of it was deleted; resolve them and retry"
                );
                self.fail_chunk(chunk_id, lo, hi, &msg).await?;
                return Ok(Step::Failed);
            }
            Ok(ChunkOutcome::Held { reason }) => {
                tx.rollback().await?;
                give_back(0).await;
                ctx.held.store(true, std::sync::atomic::Ordering::Relaxed);
                throttle::set_reason(&self.pool, ctx.job_id, Some(&reason)).await?;
                self.metrics.outcome("held");
                tracing::debug!(chunk.id = chunk_id, reason, "chunk held");
                tokio::time::sleep(self.cfg.health_interval).await;
                return Ok(Step::Held);
            }
            Ok(ChunkOutcome::Replan { reason }) => {
                tx.rollback().await?;
                give_back(0).await;
                self.fail_job(ctx.job_id, JobState::Running, &reason)
                    .await?;
                return Ok(Step::Stopped);
            }
            Ok(ChunkOutcome::Done { rows }) => rows,
        };
        self.mark_done(&mut tx, chunk_id, rows, started.elapsed())
            .await?;
        tx.commit().await?;
        give_back(rows).await;
        if ctx.held.swap(false, std::sync::atomic::Ordering::Relaxed) {
            throttle::set_reason(&self.pool, ctx.job_id, None).await?;
        }
        let elapsed = started.elapsed();
        self.metrics.outcome("done");
        self.metrics.rows.inc_by(rows.max(0) as u64);
        self.metrics.chunk_seconds.observe(elapsed.as_secs_f64());
        tracing::debug!(
            chunk.id = chunk_id,
            chunk.lo = lo,
            chunk.hi = hi,
            rows,
            ms = elapsed.as_millis() as u64,
            "chunk done"
        );
        Ok(Step::Did {
            keys: hi - lo,
            elapsed,
        })
    }

    /// A chunk of a part planned as statements on the job's database: on the control plane in
    /// the claim's own transaction `tx` (committed by the caller with the checkpoint); on
    /// another database in a transaction there that also writes the chunk's marker, committed
    /// here (see [`crate::target`]).
    async fn own_chunk(
        &self,
        ctx: &JobCtx,
        tx: &mut sqlx::PgConnection,
        p: &Part,
        settings: &[String],
        chunk: chunks::Claimed,
    ) -> sqlx::Result<ChunkOutcome> {
        let chunks::Claimed {
            chunk_id, lo, hi, ..
        } = chunk;
        if ctx.target.is_control {
            return Ok(exec_chunk(tx, p, settings, lo, hi).await?.outcome());
        }
        let mut t = ctx.target.pool.begin().await?;
        if let Some(rows) = target::marker(&mut t, ctx.job_id, chunk_id).await? {
            t.rollback().await?;
            return Ok(ChunkOutcome::Recorded { rows });
        }
        let outcome = exec_chunk(&mut t, p, settings, lo, hi).await?.outcome();
        if let ChunkOutcome::Done { rows } = outcome {
            if p.mode != PartMode::Count {
                target::mark(&mut t, ctx.job_id, chunk_id, lo, hi, rows).await?;
            }
            t.commit().await?;
        }
        Ok(outcome)
    }

    async fn mark_done(
        &self,
        tx: &mut sqlx::PgConnection,
        chunk_id: i64,
        rows: i64,
        elapsed: Duration,
    ) -> sqlx::Result<()> {
        chunks::mark_done(tx, chunk_id, rows, elapsed, &self.worker_id).await
    }

    /// Handles a chunk whose transaction failed (and was rolled back): split on timeout, fail
    /// on a statement error, hand transient errors back for a retry.
    async fn chunk_error(
        &self,
        ctx: &JobCtx,
        chunk_id: i64,
        lo: i64,
        hi: i64,
        e: sqlx::Error,
    ) -> sqlx::Result<Step> {
        let code = sqlstate(&e).unwrap_or_default();
        let timed_out = code == "57014" || code == "55P03";
        if !timed_out && is_transient(&e) {
            return Err(e);
        }
        let msg = db_message(&e);
        if timed_out && hi - lo > 1 {
            ctx.adapt.shrink();
            let mid = lo + (hi - lo) / 2;
            chunks::split(
                &self.pool,
                chunk_id,
                mid,
                hi,
                &format!("split after: {msg}"),
            )
            .await?;
            self.metrics.outcome("split");
            tracing::info!(chunk.id = chunk_id, chunk.lo = lo, chunk.hi = hi, mid, error = %msg, "chunk timed out; split in two");
            return Ok(Step::Split);
        }
        self.fail_chunk(chunk_id, lo, hi, &msg).await?;
        Ok(Step::Failed)
    }

    /// Marks a pending chunk failed, keeping `msg` as its error (`retry` re-runs it).
    async fn fail_chunk(&self, chunk_id: i64, lo: i64, hi: i64, msg: &str) -> sqlx::Result<()> {
        chunks::fail(&self.pool, chunk_id, msg, &self.worker_id).await?;
        self.metrics.outcome("failed");
        tracing::warn!(chunk.id = chunk_id, chunk.lo = lo, chunk.hi = hi, error = %msg, "chunk failed");
        Ok(())
    }

    /// Carves the next chunk of the first part with uncarved keys.
    async fn carve(&self, ctx: &JobCtx) -> sqlx::Result<Step> {
        let size = ctx.adapt.size().max(1);
        if chunks::carve(&self.pool, ctx.job_id, size).await?.is_some() {
            return Ok(Step::Carved);
        }
        if chunks::uncarved(&self.pool, ctx.job_id).await? {
            // Another lane holds the part for a moment.
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok(Step::Carved)
        } else {
            Ok(Step::Idle)
        }
    }

    async fn maybe_progress(&self, ctx: &JobCtx) {
        let due = {
            let mut last = ctx.last_progress.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() >= self.cfg.progress_interval {
                *last = Instant::now();
                true
            } else {
                false
            }
        };
        if due {
            self.progress(ctx.job_id, Some(ctx.adapt.size())).await;
        }
    }

    /// Persists a progress snapshot and publishes it on `backfill.progress.<job_id>` (core NATS:
    /// losing one is harmless, the next one or the database has the state).
    async fn progress(&self, job_id: Uuid, chunk_size: Option<i64>) {
        match store::refresh_progress(&self.pool, job_id, chunk_size).await {
            Ok(Some(job)) => {
                if let Some(nats) = &self.nats {
                    let snap = crate::Progress::from(&job);
                    if let Ok(body) = serde_json::to_vec(&snap) {
                        let subject = fleet_shared::events::backfill_progress_subject(&job_id);
                        if let Err(e) = nats.publish(subject, body.into()).await {
                            tracing::debug!(error = %e, "cannot publish progress");
                        }
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %one_line(&e), "cannot store progress"),
        }
    }

    /// Ends a job whose chunks are all finished (see the module docs): the kind has its last
    /// word ([`crate::kind::JobKind::finish`]), under the job row's lock.
    async fn finish_job(
        &self,
        job_id: Uuid,
        spec: &JobSpec,
        target: &Target,
    ) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        let Some((state, report, dry_run)) = store::lock_to_finish(&mut tx, job_id).await? else {
            return Ok(());
        };
        if state != JobState::Running || chunks::open(&mut tx, job_id).await? {
            return Ok(());
        }
        let failed = chunks::failed_ranges(&mut tx, job_id).await?;
        let error = failed.first().map(|(lo, hi, e)| {
            format!(
                "{} chunk(s) failed (fleetctl backfill retry re-runs them); first ({lo}, {hi}]: {}",
                failed.len(),
                e.as_deref().unwrap_or("unknown error")
            )
        });
        let rows_per_part = chunks::rows_per_part(&mut *tx, job_id).await?;
        let ctx = FinishCtx {
            schema: &spec.schema,
            dry_run,
            report,
            rows_per_part,
            error,
        };
        let mut access = TargetAccess::new(&mut tx, target);
        let finished = spec.kind.job().finish(&mut access, ctx).await;
        access.release().await;
        let finished = finished?;
        let finalize = match (&finished.error, dry_run) {
            (None, false) => spec.kind.job().finalize_plan(),
            _ => None,
        };
        if let Some(plan) = finalize {
            store::keep_report(&mut tx, job_id, finished.report.as_ref()).await?;
            tx.commit().await?;
            self.progress(job_id, None).await;
            return self.finalize_job(job_id, spec, target, &plan).await;
        }
        let state = store::finish_job(
            &mut tx,
            job_id,
            finished.error.as_deref(),
            finished.report.as_ref(),
        )
        .await?;
        tx.commit().await?;
        tracing::info!(
            state = state.as_str(),
            error = finished.error.as_deref().unwrap_or(""),
            "backfill job finished"
        );
        self.progress(job_id, None).await;
        Ok(())
    }

    /// Runs a finished job's finalize ([`crate::finalize::job`]; no control-plane transaction
    /// is open meanwhile) and ends the job with its outcome.
    async fn finalize_job(
        &self,
        job_id: Uuid,
        spec: &JobSpec,
        target: &Target,
        plan: &crate::finalize::job::FinalizePlan,
    ) -> anyhow::Result<()> {
        let eff = spec.options.effective(&self.cfg);
        let lock_timeout = eff.lock_timeout.unwrap_or(Duration::from_secs(5));
        let monitor = fleet_shared::health::HealthMonitor::new(eff.health.clone());
        let health = crate::finalize::engine::Health {
            monitor: &monitor,
            interval: self.cfg.health_interval,
        };
        let done = crate::finalize::job::run(
            &self.pool,
            &target.pool,
            job_id,
            &spec.schema,
            plan,
            lock_timeout,
            Some(health),
        )
        .await
        .context("Failed to finalize")?;
        let crate::finalize::job::JobFinalize::Done(error) = done else {
            let _ = throttle::set_reason(&self.pool, job_id, None).await;
            return Ok(());
        };
        let _ = throttle::set_reason(&self.pool, job_id, None).await;
        let state = store::finish_finalized(&self.pool, job_id, error.as_deref()).await?;
        tracing::info!(
            state = state.as_str(),
            error = error.as_deref().unwrap_or(""),
            "backfill job finished (finalized)"
        );
        self.progress(job_id, None).await;
        Ok(())
    }
}
