//! `/healthz` (the process is up), `/readyz` (NATS, Postgres and Redis answer) and `/metrics`
//! (Prometheus text format) on one port per process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::redis_target::RedisTarget;

/// A dependency `/readyz` checks.
#[derive(Clone)]
pub enum Probe {
    Nats(async_nats::Client),
    Postgres(sqlx::PgPool),
    Redis(RedisTarget),
    /// A `[databases.<name>]` other than the control plane: reported by name, but its outage
    /// leaves the process ready, since it stalls only the work on that database (its tenants'
    /// events are retried with backoff) while everything else goes on.
    Database {
        line: String,
        pool: sqlx::PgPool,
    },
}

impl Probe {
    fn name(&self) -> &str {
        match self {
            Probe::Nats(_) => "nats",
            Probe::Postgres(_) => "postgres",
            Probe::Redis(_) => "redis",
            Probe::Database { line, .. } => line,
        }
    }

    /// Whether an outage of this dependency makes the process unready.
    fn required(&self) -> bool {
        !matches!(self, Probe::Database { .. })
    }

    async fn check(&self) -> Result<(), String> {
        const LIMIT: Duration = Duration::from_secs(2);
        match self {
            Probe::Nats(c) => match c.connection_state() {
                async_nats::connection::State::Connected => Ok(()),
                other => Err(format!("{other}")),
            },
            Probe::Postgres(pool) | Probe::Database { pool, .. } => {
                let q = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(pool);
                match tokio::time::timeout(LIMIT, q).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(crate::errors::one_line(&e.to_string())),
                    Err(_) => Err("timed out".into()),
                }
            }
            Probe::Redis(t) => t
                .ping(LIMIT)
                .await
                .map_err(|e| crate::errors::one_line(&e.to_string())),
        }
    }
}

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub probes: Vec<Probe>,
}

/// Binds `addr` and serves until `shutdown`. Returns the bound address (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    state: HttpState,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("FLEET_HTTP_ADDR: cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    // The fleet's state as gauges (crate::fleet_gauges), from this process's own connections.
    let nats = state.probes.iter().find_map(|p| match p {
        Probe::Nats(c) => Some(c.clone()),
        _ => None,
    });
    if let Some(nats) = nats {
        let pg = state.probes.iter().find_map(|p| match p {
            Probe::Postgres(pool) => Some(pool.clone()),
            _ => None,
        });
        let gauges = crate::fleet_gauges::FleetGauges::register(&state.metrics);
        let probe_state = state.clone();
        let ready = Arc::new(move || {
            let st = probe_state.clone();
            async move { ready_now(&st).await.0 }
        });
        tokio::spawn(crate::fleet_gauges::run(
            gauges,
            nats,
            pg,
            ready,
            shutdown.clone(),
        ));
    }
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    let handle = tokio::spawn(async move {
        let res = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "http server failed");
        }
    });
    tracing::info!(addr = %bound, "serving /healthz, /readyz, /metrics");
    Ok((bound, handle))
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    let (ready, body) = ready_now(&state).await;
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}

/// Whether every required probe passes, and the `/readyz` body.
async fn ready_now(state: &HttpState) -> (bool, String) {
    let checks = futures::future::join_all(
        state
            .probes
            .iter()
            .map(|p| async move { (p.name(), p.required(), p.check().await) }),
    )
    .await;
    let mut body = String::new();
    let mut ready = true;
    for (name, required, res) in checks {
        match res {
            Ok(()) => body.push_str(&format!("{name} ok\n")),
            Err(e) => {
                ready &= !required;
                let note = if required {
                    ""
                } else {
                    " (only its tenants wait)"
                };
                body.push_str(&format!("{name} unavailable{note}: {e}\n"));
            }
        }
    }
    (ready, body)
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
