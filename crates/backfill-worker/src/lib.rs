//! The backfill-worker: chunked, resumable, throttled data migrations with live progress.
//!
//! Jobs (`sql`, `tenant_codes`, `copy_to_tenant`, `finalize`; see docs/backfill.md) arrive as
//! `backfill.submit` messages or straight from `fleetctl backfill submit`, which calls
//! [`submit_json`] so a bad spec is refused with its reason before anything is created. Jobs and
//! their chunks live in Postgres (`fleet.backfill_*`): the database is the queue, because the
//! guarantee that matters, *each chunk's effect happens exactly once*, needs the chunk's
//! statement and its checkpoint in one transaction, and only the database that holds the data
//! can give that (a job on another database, `"database": "<name>"`, keeps a marker there in
//! the chunk's transaction instead: [`target`]; a `copy_to_tenant` chunk, read on one database
//! and written on the tenant's, runs through its kind's [`kind::ChunkRunner`] with the marker on
//! the tenant's database). NATS carries commands in (`backfill.submit`, `backfill.control`, consumed from
//! FLEET_JOBS with one durable per subject) and progress out (`backfill.progress.<job_id>`, core
//! NATS: snapshots are also persisted on the job row, so none needs to be stored in a stream).
//!
//! Module map: [`spec`] (parsing: [`options`] common to every kind, the kind's own fields) →
//! [`kind`] (one file per job kind behind [`kind::JobKind`]: its checks against the catalog
//! built from [`validate`], its plan built from [`plan`], its chunk statements and its finish)
//! → [`store`] (jobs, control transitions, progress; [`store::chunks`] is every part and chunk
//! query) → [`runner`] (chunk claiming, timeouts and splits, finishing) with [`adapt`] (chunk
//! size), [`throttle`] (target health, the shared rate bucket) and [`target`] (the job's
//! database and its chunk markers); [`finalize`] runs the DDL steps a kind asks for once its
//! chunks are done ([`kind::JobKind::finalize_plan`]), outside the job row's lock; [`state`] is
//! a job's state; [`handler`] is the NATS side.
//!
//! How it is built, and why (user-facing behaviour: [docs/backfill.md](../../../docs/backfill.md)):
//! - Chunks are carved on demand from a per-table cursor instead of being planned up front, so
//!   the chunk size can grow as well as shrink while the job runs.
//! - Job counters are derived from chunk rows (not incremented in each chunk transaction), so
//!   parallel chunk transactions never queue on the job row.
//! - `tenant_codes` updates skip rows that already hold the right codes, so a re-run or retry
//!   writes nothing it does not have to (fewer dead tuples, less WAL).
//! - `fleetctl` submits and controls through Postgres directly (same functions as the NATS
//!   handlers), so it can report refusals and unknown jobs synchronously.

pub mod adapt;
pub mod catalog;
pub mod config;
pub mod error;
pub mod finalize;
pub mod handler;
pub mod ident;
pub mod kind;
pub mod mapping;
pub mod mapping_file;
pub mod metrics;
pub mod options;
pub mod plan;
pub mod runner;
pub mod spec;
pub mod state;
pub mod store;
pub mod target;
pub mod throttle;
pub mod validate;

use std::sync::Arc;

use fleet_shared::topology::{ConsumerSpec, JOBS_STREAM};
use fleet_shared::Fleet;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use config::BackfillConfig;
pub use state::JobState;
pub use store::{
    control, delete_job, get_job, list_jobs, submit_json, submit_json_on, Action, ControlError,
    JobRow, SubmitError, Submitted,
};

/// Largest `backfill.submit`/`backfill.control` payload read (a spec may inline its mapping CSV);
/// larger ones are dead-lettered unread.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;
pub const NAME: &str = "backfill-worker";
/// Whether `/readyz` of this worker's binary checks Redis.
pub const USES_REDIS: bool = false;

/// A progress snapshot, as published on `backfill.progress.<job_id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub job_id: uuid::Uuid,
    pub state: String,
    /// Rows written (a dry run: rows counted).
    pub rows_done: i64,
    /// Rows the job is expected to go over; `percent` is rows done / this.
    pub rows_estimated: i64,
    pub chunks_done: i64,
    pub chunks_failed: i64,
    /// Estimate while the job runs (chunks are carved as it goes).
    pub chunks_total: i64,
    pub percent: f64,
    pub rows_per_sec: f64,
    pub eta_seconds: Option<f64>,
    pub chunk_size: i64,
    pub error: Option<String>,
    pub at: chrono::DateTime<chrono::Utc>,
}

impl From<&JobRow> for Progress {
    fn from(j: &JobRow) -> Self {
        Progress {
            job_id: j.job_id,
            state: j.shown_state(),
            rows_done: j.rows_done,
            rows_estimated: j.rows_estimated,
            chunks_done: j.chunks_done,
            chunks_failed: j.chunks_failed,
            chunks_total: j.chunks_total.max(j.chunks_done + j.chunks_failed),
            percent: j.percent(),
            rows_per_sec: j.rows_per_sec,
            eta_seconds: j.eta_seconds,
            chunk_size: j.chunk_size,
            error: j.error.clone(),
            at: j.updated_at,
        }
    }
}

/// Runs the worker until `shutdown` is cancelled: the NATS consumers and the job runner.
pub async fn run(fleet: Fleet, shutdown: CancellationToken) -> anyhow::Result<()> {
    let cfg = BackfillConfig::from_settings(&fleet.settings)?;
    let mapping_files = mapping_file::MappingFiles::for_worker(cfg.mapping_dir.as_deref())?;
    let metrics = metrics::BackfillMetrics::register(&fleet.metrics);
    let runner = Arc::new(runner::Runner {
        pools: fleet_shared::databases::DatabasePools::new(
            fleet.settings.databases.clone(),
            fleet.pg.clone(),
            cfg.parallelism as u32 * cfg.max_jobs as u32 + 2,
        )
        .with_tenant_pools(fleet.settings.tenant_pools),
        pool: fleet.pg.clone(),
        nats: Some(fleet.nats.clone()),
        cfg,
        allow_sql: fleet.settings.backfill_allow_sql,
        worker_id: fleet_shared::fleet::instance_id(),
        wake: Arc::new(tokio::sync::Notify::new()),
        metrics,
    });
    let jobs = tokio::spawn(runner.clone().run(shutdown.clone()));
    let spec = fleet.worker_spec(
        NAME,
        vec![
            ConsumerSpec::new(
                JOBS_STREAM,
                "backfill-submit",
                fleet_shared::events::BACKFILL_SUBMIT,
            ),
            ConsumerSpec::new(
                JOBS_STREAM,
                "backfill-control",
                fleet_shared::events::BACKFILL_CONTROL,
            ),
        ],
        MAX_EVENT_BYTES,
    );
    let res = fleet_shared::worker::run(
        fleet.js.clone(),
        fleet.metrics.clone(),
        spec,
        Arc::new(handler::Handlers {
            runner,
            mapping_files,
        }),
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    let _ = jobs.await;
    res
}
