//! What every benchmark needs: private servers, the worker binary as a child process, RSS
//! sampling, percentiles and a description of the machine.
#![allow(dead_code)] // each benchmark uses a part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

/// One line describing the machine (CPU model, cores, memory, kernel).
pub fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem_gib:.0} GiB RAM, Linux {kernel}")
}

/// The path of a sibling binary (`provisioner`, ...) built in the same profile as this one.
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me
        .parent()
        .context("bench binary has no directory")?
        .join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} not found: build it first (make bench builds every binary in release)",
        path.display()
    );
    Ok(path)
}

/// The Redis the backfill benches give the fleet: nothing listens there, a backfill needs none.
const NO_REDIS: &str = "redis://127.0.0.1:1";

/// The pools a process submitting backfill jobs has when `config` is its FLEET_CONFIG (its
/// `[databases]`), with `control` as the control plane at `control_url`.
pub fn backfill_pools(
    nats_url: &str,
    control_url: &str,
    config: &Path,
    control: &sqlx::PgPool,
) -> fleet_shared::databases::DatabasePools {
    let settings = fleet_testkit::settings(
        nats_url,
        control_url,
        NO_REDIS,
        &[("FLEET_CONFIG", config.to_str().unwrap_or_default())],
    );
    fleet_shared::databases::DatabasePools::new(settings.databases.clone(), control.clone(), 4)
}

/// The release `backfill-worker` on the control plane at `control_url`, `config` its
/// FLEET_CONFIG.
pub fn spawn_backfill_worker(
    nats_url: String,
    control_url: &str,
    config: &Path,
) -> anyhow::Result<WorkerProcess> {
    WorkerProcess::spawn(
        "backfill-worker",
        &[
            ("NATS_URL", nats_url),
            ("DATABASE_URL", control_url.to_owned()),
            ("REDIS_URL", NO_REDIS.into()),
            ("FLEET_CONFIG", config.display().to_string()),
        ],
    )
}

/// Polls a backfill job every 100 ms until it has ended, however it ended.
pub async fn job_ended(
    pool: &sqlx::PgPool,
    job_id: uuid::Uuid,
) -> anyhow::Result<backfill_worker::JobRow> {
    loop {
        let j = backfill_worker::get_job(pool, job_id)
            .await?
            .context("job vanished")?;
        if j.is_terminal() {
            return Ok(j);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A worker binary running as a child process; killed when dropped.
pub struct WorkerProcess {
    pub child: Child,
}

impl WorkerProcess {
    /// Starts `name` with `env` (plus quiet logs) and waits until its `/healthz` answers.
    pub fn spawn(name: &str, env: &[(&str, String)]) -> anyhow::Result<WorkerProcess> {
        let port = fleet_testkit::free_port();
        let mut cmd = Command::new(sibling_binary(name)?);
        cmd.env("FLEET_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("LOG_FORMAT", "json")
            .env(
                "RUST_LOG",
                std::env::var("BENCH_WORKER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        fleet_testkit::wait_for_port(port, Duration::from_secs(60))
            .with_context(|| format!("{name} did not start"))?;
        Ok(WorkerProcess { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn rss_mb(&self) -> f64 {
        rss_kb(self.pid()) as f64 / 1024.0
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident set size of a process in KiB (0 if unknown).
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Samples a process's RSS every 50 ms in the background and keeps the peak.
pub struct RssSampler {
    peak_kb: Arc<AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let peak_kb = Arc::new(AtomicU64::new(rss_kb(pid)));
        let stop = tokio_util::sync::CancellationToken::new();
        let (p, s) = (peak_kb.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.is_cancelled() {
                p.fetch_max(rss_kb(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        RssSampler { peak_kb, stop }
    }

    /// Stops sampling and returns the peak in MiB.
    pub fn finish(self) -> f64 {
        self.stop.cancel();
        self.peak_kb.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

/// The `p`-th percentile (0..=100) of `samples` (sorted in place).
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

/// Prints one measured-vs-limit line and returns the ratio.
pub fn report_ratio(what: &str, fleet: f64, limit: f64, unit: &str, target: f64) -> f64 {
    let ratio = if limit > 0.0 { fleet / limit } else { 0.0 };
    let verdict = if ratio >= target { "met" } else { "MISSED" };
    println!(
        "{what}: fleet {fleet:.1} {unit}, limit {limit:.1} {unit}, ratio {ratio:.2}x (target >= {target}x: {verdict})"
    );
    ratio
}

/// Prints an RSS line against its target.
pub fn report_rss(what: &str, mb: f64, target_mb: f64) {
    let verdict = if mb <= target_mb { "met" } else { "MISSED" };
    println!("{what}: {mb:.1} MB (target <= {target_mb} MB: {verdict})");
}
