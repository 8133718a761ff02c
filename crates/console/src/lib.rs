//! The operator console: server-rendered pages over the fleet's own state (Postgres, JetStream),
//! served by `fleetctl console` and inside `fleetctl up` on `FLEET_CONSOLE_ADDR`.
//!
//! - Pages are rendered by [`maud`] (compiled templates; every interpolated value is HTML-escaped,
//!   so a tenant name `<script>…` shows as text). The only script is `/static/console.js`, which
//!   reads the live parts over Server-Sent Events; no build step.
//! - Reading needs nothing. Acting (replay, discard, pause, trigger, suspend, delete …) is a `POST` that
//!   needs a session logged in with `FLEET_CONSOLE_TOKEN` and the session's CSRF token in the
//!   form ([`auth`]). Without the setting the console is read-only and says so on every page.
//! - Every response carries a strict Content-Security-Policy (no inline script or style, nothing
//!   from other origins, no framing) ([`security_headers`]).
//! - Page parameters are parsed into types (codes, UUIDs, sequences) before they reach a query;
//!   search text is only ever a bound parameter with `LIKE` wildcards escaped.
//! - Bound to loopback unless `FLEET_CONSOLE_ADDR` says otherwise. Secrets never reach a page: the
//!   settings are not rendered, config values marked encrypted are masked, and so are secret
//!   values in event payloads (`fleet_shared::dlq::mask_secrets`).

pub mod auth;
mod backfills;
mod dlq;
mod layout;
mod overview;
mod rollouts;
mod sampler;
mod schedules;
mod tenant_actions;
mod tenants;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use fleet_shared::Settings;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use auth::Visitor;

/// What every handler reads from.
pub struct Console {
    pub js: async_nats::jetstream::Context,
    nats: async_nats::Client,
    pub pg: sqlx::PgPool,
    /// Every database's pool, for reading a tenant's schema where the registry says it is.
    pub pools: fleet_shared::databases::DatabasePools,
    pub settings: Settings,
    /// `FLEET_CONFIG`'s scheduler part, read at start like the leader reads it; the stored
    /// schedules are read per request ([`scheduler::catalog`]).
    pub schedule_file: scheduler::config::SchedulerConfig,
    /// The plans the provisioner knows (built-in plus `[plans]`), for the plan change.
    pub plans: provisioner::plans::Plans,
    sessions: auth::Sessions,
    sampler: sampler::Sampler,
}

pub type Shared = Arc<Console>;

impl Console {
    pub fn new(
        nats: async_nats::Client,
        pg: sqlx::PgPool,
        settings: Settings,
    ) -> anyhow::Result<Shared> {
        let schedule_file = scheduler::config::SchedulerConfig::from_file(&settings.file)?;
        let plans = provisioner::plans::Plans::from_settings(&settings)?;
        let pools =
            fleet_shared::databases::DatabasePools::new(settings.databases.clone(), pg.clone(), 2)
                .with_tenant_pools(settings.tenant_pools);
        Ok(Arc::new(Console {
            js: async_nats::jetstream::new(nats.clone()),
            nats,
            pg,
            pools,
            schedule_file,
            plans,
            sessions: auth::Sessions::default(),
            sampler: sampler::Sampler::default(),
            settings,
        }))
    }

    pub fn js_client(&self) -> &async_nats::Client {
        &self.nats
    }

    /// Whether actions are possible at all.
    pub fn writable(&self) -> bool {
        self.settings.console_token.is_some()
    }
}

/// An error page: a status and one line saying why. Nothing was changed.
pub struct Refusal(pub StatusCode, pub String);

impl Refusal {
    pub fn bad(msg: impl Into<String>) -> Refusal {
        Refusal(StatusCode::BAD_REQUEST, msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> Refusal {
        Refusal(StatusCode::NOT_FOUND, msg.into())
    }
}

impl From<anyhow::Error> for Refusal {
    fn from(e: anyhow::Error) -> Refusal {
        let line = fleet_shared::errors::one_line(&format!("{e:#}"));
        tracing::warn!(error = %line, "console request failed");
        Refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            fleet_shared::telemetry::redact(&line).into_owned(),
        )
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = layout::error_page(self.0, &self.1);
        (self.0, Html(body.into_string())).into_response()
    }
}

pub type Page = Result<Response, Refusal>;

/// The router, without the listener (tests and the bench drive it directly too).
pub fn router(console: Shared) -> Router {
    Router::new()
        .route("/", get(overview::page))
        .route("/tenants", get(tenants::list))
        .route("/tenants/{code}", get(tenants::show))
        .route("/tenants/{code}/{action}", post(tenant_actions::act))
        .route("/rollouts", get(rollouts::page))
        .route("/backfills", get(backfills::page))
        .route("/backfills/live", get(backfills::live))
        .route("/backfills/{id}/{action}", post(backfills::act))
        .route("/schedules", get(schedules::page))
        .route("/schedules/{name}/{action}", post(schedules::act))
        .route("/dlq", get(dlq::list))
        .route("/dlq/replay-all", post(dlq::replay_all))
        .route("/dlq/{seq}", get(dlq::show))
        .route("/dlq/{seq}/{action}", post(dlq::act))
        .route("/login", post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/static/console.css", get(css))
        .route("/static/console.js", get(js))
        .fallback(|| async { Refusal::not_found("no such page") })
        .layer(axum::middleware::from_fn_with_state(
            console.clone(),
            auth::session_layer,
        ))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(console)
}

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The headers every response carries.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

async fn css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../static/console.css"),
    )
}

async fn js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../static/console.js"),
    )
}

/// Binds `addr` and serves the console until `shutdown`; also starts the sampler behind the
/// overview's rates and chart.
pub async fn serve(
    console: Shared,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("FLEET_CONSOLE_ADDR {addr}: cannot listen: {e}"))?;
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() {
        tracing::warn!(console = %local, "the console listens beyond loopback; put it behind TLS and keep FLEET_CONSOLE_TOKEN secret");
    }
    tokio::spawn(sampler::run(console.clone(), shutdown.clone()));
    let app = router(console.clone());
    let handle = tokio::spawn(async move {
        let stop = shutdown.clone();
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
        {
            tracing::error!(error = %e, "console server failed");
        }
    });
    tracing::info!(console = %local, writable = console.writable(), "operator console listening");
    Ok((local, handle))
}
