//! The connections a worker needs, made once per process, and the thin `main` every worker
//! binary shares.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use crate::config::{Settings, DEFAULT_BIN_HTTP_ADDR};
use crate::http::{HttpState, Probe};
use crate::metrics::Metrics;
use crate::redis_target::RedisTarget;
use crate::secret::{ExposeSecret, SecretUrl};
use crate::topology::{ensure_streams, Topology};

/// Everything a worker runs on. Cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    pub settings: Arc<Settings>,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub pg: sqlx::PgPool,
    pub redis: RedisTarget,
    pub metrics: Arc<Metrics>,
}

impl Fleet {
    /// Connects to NATS and Postgres (waiting up to `FLEET_CONNECT_TIMEOUT`, 60s by default,
    /// for them to come up), creates the database if missing, applies control-plane migrations
    /// and ensures the JetStream topology.
    pub async fn connect(settings: Settings, topology: Topology) -> anyhow::Result<Fleet> {
        let wait = settings.connect_timeout;
        let nats = connect_nats(&settings.nats_url, "tenant-fleet", wait).await?;
        let js = jetstream::new(nats.clone());
        let topology = Topology {
            replicas: settings.stream_replicas,
            ..topology
        };
        ensure_streams(&js, &topology).await?;

        retry_until(wait, "Postgres", || {
            crate::db::ensure_database(&settings.database_url)
        })
        .await
        .with_context(|| {
            format!(
                "DATABASE_URL {}: cannot reach Postgres",
                settings.database_url
            )
        })?;
        let pg = crate::db::lazy_pool(&settings.database_url, 16)?;
        retry_until(wait, "Postgres", || crate::db::migrate_control_plane(&pg))
            .await
            .context("Failed to apply control-plane migrations")?;

        let redis = settings.redis.clone();
        Ok(Fleet {
            settings: Arc::new(settings),
            nats,
            js,
            pg,
            redis,
            metrics: Metrics::new(),
        })
    }

    /// State for [`crate::http::serve`]; `/readyz` checks NATS, Postgres and (if `redis`) Redis.
    pub fn http_state(&self, redis: bool) -> HttpState {
        let mut probes = vec![
            Probe::Nats(self.nats.clone()),
            Probe::Postgres(self.pg.clone()),
        ];
        if redis {
            probes.push(Probe::Redis(self.redis.clone()));
        }
        HttpState {
            metrics: self.metrics.clone(),
            probes,
        }
    }
}

/// Connects to NATS, retrying for up to `wait`; afterwards the client reconnects on its own
/// forever, and logs each disconnect and reconnect.
pub async fn connect_nats(
    url: &SecretUrl,
    name: &str,
    wait: Duration,
) -> anyhow::Result<async_nats::Client> {
    let attempt = || async {
        async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(10)))
            .event_callback(|ev| async move {
                match ev {
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS disconnected; reconnecting")
                    }
                    async_nats::Event::Connected => tracing::info!("NATS connected"),
                    other => tracing::debug!(event = %other, "NATS event"),
                }
            })
            .connect(url.expose_secret())
            .await
    };
    retry_until(wait, "NATS", attempt)
        .await
        .with_context(|| format!("NATS_URL {url}: cannot connect"))
}

/// Retries `f` with capped exponential backoff until it succeeds or `wait` has passed.
pub async fn retry_until<T, E, F, Fut>(wait: Duration, what: &str, mut f: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let deadline = tokio::time::Instant::now() + wait;
    let mut delay = Duration::from_millis(100);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() + delay < deadline => {
                tracing::warn!(error = %crate::errors::one_line(&e.to_string()), retry_in = ?delay, "{what} not ready");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// A token cancelled on SIGTERM or SIGINT (Ctrl-C).
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        t.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => tracing::info!("SIGINT: shutting down"),
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        t.cancel();
    });
    token
}

/// Turns a worker's result into the process exit code, printing a failure as one line on
/// stderr (`error: a: b: c`) rather than `anyhow`'s multi-line debug form.
pub fn exit_code(res: anyhow::Result<()>) -> std::process::ExitCode {
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            let line = crate::errors::one_line(&chain.join(": "));
            tracing::error!(error = %line, "stopped");
            eprintln!("error: {line}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The whole `main` of a worker binary: settings, telemetry, connections, HTTP, signals, run.
/// Exits non-zero with one line on stderr when the configuration is bad.
pub async fn worker_main<F, Fut>(topology: Topology, uses_redis: bool, run: F) -> anyhow::Result<()>
where
    F: FnOnce(Fleet, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let settings = match Settings::from_env(DEFAULT_BIN_HTTP_ADDR) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    crate::telemetry::init(settings.log_format);
    let shutdown = shutdown_on_signals();
    let fleet = Fleet::connect(settings, topology).await?;
    let (_addr, http) = crate::http::serve(
        fleet.settings.http_addr,
        fleet.http_state(uses_redis),
        shutdown.clone(),
    )
    .await?;
    let nats = fleet.nats.clone();
    let res = run(fleet, shutdown.clone()).await;
    shutdown.cancel();
    let _ = http.await;
    // Flush acks still buffered in the client before the process exits.
    let _ = nats.drain().await;
    res
}
