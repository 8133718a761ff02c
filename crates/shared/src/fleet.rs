//! The connections a worker needs, made once per process, and the thin `main` every worker
//! binary shares.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use backon::Retryable as _;
use tokio_util::sync::CancellationToken;

use crate::config::{Settings, DEFAULT_BIN_HTTP_ADDR};
use crate::http::{HttpState, Probe};
use crate::metrics::Metrics;
use crate::nats_settings::NatsSettings;
use crate::redis_target::RedisTarget;
use crate::retry::RetryPolicy;
use crate::secret::ExposeSecret;
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
        if let Some(secret) = url_password(settings.database_url.expose_secret()) {
            crate::telemetry::redact_secret(&secret);
        }
        let nats = connect_nats(&settings.nats, "tenant-fleet", wait).await?;
        let js = jetstream::new(nats.clone());
        let topology = Topology {
            replicas: settings.stream_replicas,
            ..topology
        };
        // A cluster that is starting or has just lost a node answers "JetStream temporarily
        // unavailable" until it has elected leaders again: waited for like a server that is not up.
        retry_until(wait, "JetStream", || ensure_streams(&js, &topology))
            .await
            .map_err(|e| e.context("Failed to ensure the JetStream topology"))?;

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

    /// A [`WorkerSpec`](crate::worker::WorkerSpec) with what the settings and the server decide:
    /// shutdown timeout, the server's `max_payload`, and the event size limit
    /// (`FLEET_MAX_EVENT_BYTES`, else `default_max_event_bytes`).
    pub fn worker_spec(
        &self,
        name: &str,
        consumers: Vec<crate::topology::ConsumerSpec>,
        default_max_event_bytes: usize,
    ) -> crate::worker::WorkerSpec {
        let mut spec = crate::worker::WorkerSpec::new(name, consumers);
        spec.shutdown_timeout = self.settings.shutdown_timeout;
        spec.max_payload = self.nats.server_info().max_payload;
        spec.max_event_bytes = self
            .settings
            .nats
            .max_event_bytes
            .unwrap_or(default_max_event_bytes);
        spec
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
        // Tenant homes other than the control plane: named on /readyz (`database <name>`).
        for db in self.settings.databases.tenant_homes() {
            if db.is_control() {
                continue;
            }
            if let Ok(pool) = crate::db::lazy_pool(&db.url, 1) {
                probes.push(Probe::Database {
                    line: format!("database {}", db.name),
                    pool,
                });
            }
        }
        HttpState {
            metrics: self.metrics.clone(),
            probes,
        }
    }
}

/// Connects to NATS (every server of `NATS_URL`, with its credentials and TLS settings),
/// retrying for up to `wait`; afterwards the client reconnects on its own forever, and logs each
/// disconnect and reconnect. A failure that no retry can cure (a TLS setup the client rejects, a
/// bad nkey, credentials the server refuses) ends at once with one line.
pub async fn connect_nats(
    nats: &NatsSettings,
    name: &str,
    wait: Duration,
) -> anyhow::Result<async_nats::Client> {
    let shown = nats.shown();
    let attempt = || async {
        nats.options()
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
            .connect(nats.servers())
            .await
    };
    let permanent = |e: &async_nats::ConnectError| {
        use async_nats::ConnectErrorKind as K;
        match e.kind() {
            K::ServerParse | K::Tls | K::Authentication | K::AuthorizationViolation => true,
            // A TLS handshake that failed (an alert, a certificate refused, a server that does
            // not speak TLS) surfaces as an I/O error of kind InvalidData; retrying repeats it.
            K::Io => std::error::Error::source(e)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData),
            _ => false,
        }
    };
    retry_while(wait, "NATS", attempt, permanent)
        .await
        .with_context(|| {
            format!(
                "NATS_URL {shown} (credentials: {}, TLS {}): cannot connect",
                nats.auth_kind(),
                if nats.tls_required() {
                    "required"
                } else {
                    "if offered"
                }
            )
        })
}

/// Waiting for a dependency at start.
const CONNECT_RETRY: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(5));

/// Retries `f` with [`CONNECT_RETRY`] until it succeeds or `wait` has passed.
pub async fn retry_until<T, E, F, Fut>(wait: Duration, what: &str, f: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    retry_while(wait, what, f, |_| false).await
}

/// As [`retry_until`], but an error for which `permanent` says true is returned at once.
pub async fn retry_while<T, E, F, Fut>(
    wait: Duration,
    what: &str,
    f: F,
    permanent: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let deadline = tokio::time::Instant::now() + wait;
    f.retry(CONNECT_RETRY.backoff().with_total_delay(Some(wait)))
        .when(|e| !permanent(e) && tokio::time::Instant::now() < deadline)
        .notify(|e, delay| {
            tracing::warn!(error = %crate::errors::one_line(&e.to_string()), retry_in = ?delay, "{what} not ready");
        })
        .await
}

/// `host-pid-random`: unique per process and readable where it is recorded (the scheduler's
/// leader key and run records, a backfill chunk's claim).
pub fn instance_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &rand[..8])
}

/// The password of a URL, if it has one (for log redaction).
fn url_password(u: &str) -> Option<String> {
    let url = url::Url::parse(u.split(',').next()?.trim()).ok()?;
    let p = url.password()?;
    let decoded = url::form_urlencoded::parse(format!("x={}", p.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| p.to_owned());
    Some(decoded)
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
fn exit_code(res: anyhow::Result<()>) -> std::process::ExitCode {
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            let line =
                crate::telemetry::redact(&crate::errors::one_line(&chain.join(": "))).into_owned();
            tracing::error!(error = %line, "stopped");
            eprintln!("error: {line}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The whole `main` of a worker binary: settings, telemetry, connections, HTTP, signals, run,
/// on the default topology. Exits non-zero with one line on stderr when the configuration is bad
/// or the worker stops with an error.
pub async fn worker_main<F, Fut>(uses_redis: bool, run: F) -> std::process::ExitCode
where
    F: FnOnce(Fleet, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    exit_code(run_worker(Topology::default(), uses_redis, run).await)
}

async fn run_worker<F, Fut>(topology: Topology, uses_redis: bool, run: F) -> anyhow::Result<()>
where
    F: FnOnce(Fleet, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    crate::cli::parse_worker_args();
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
