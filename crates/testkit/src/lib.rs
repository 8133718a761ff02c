//! Test support for the fleet's integration tests: real services, isolated per test.
//!
//! - [`NatsServer`]: a private `nats-server -js` on a free loopback port with its own store,
//!   stoppable and restartable (same port, same data) for fault tests.
//! - [`NatsCluster`]: three routed `nats-server -js` nodes (R3 streams), any of which can be
//!   killed (`kill -9`) and restarted.
//! - [`RedisServer`]: a private `redis-server` likewise.
//! - [`TestDb`]: a fresh database on the machine's Postgres, dropped when the test ends.
//! - [`PgServer`]: a private PostgreSQL server (`initdb`, `wal_level = logical`) on a free
//!   loopback port, stoppable and restartable: a second database server for placement tests.
//! - [`PgReplicaPair`]: a private Postgres primary with a streaming replica (replica lag tests).
//! - [`TcpProxy`]: a loopback proxy that can cut and restore every connection through it, to
//!   make Postgres, Redis or NATS "unreachable for a while" without killing the server.
//! - [`Running`]: a worker's `run` spawned in-process, stopped gracefully or killed.
//! - [`TestEnv`]: the three together, with [`Settings`] pointing at them.
//! - [`TestCerts`], [`user_nkey`]: a throwaway PKI and nkeys for servers started with
//!   [`NatsServer::start_with_config`] (users, a token, nkeys, TLS, limits).
//! - [`http::request`]: a minimal HTTP/1.1 client; [`webdriver::Browser`]: headless chromium
//!   over WebDriver, for the console's browser tests.
//! - [`TestOperator`]: an operator, a JetStream account and `.creds` files for a server in
//!   operator (JWT) mode.

mod cluster;
pub mod db;
pub mod http;
mod jwt;
mod pg_replica;
mod postgres;
mod proxy;
mod running;
mod servers;
mod tls;
pub mod webdriver;

pub use cluster::{publish_retrying, stored_messages, NatsCluster};
pub use db::TestDb;
pub use jwt::{creds_file, TestOperator};
pub use pg_replica::PgReplicaPair;
pub use postgres::PgServer;
pub use proxy::TcpProxy;
pub use running::Running;
pub use servers::{find_binary, free_port, wait_for_port, NatsServer, RedisServer};
pub use tls::{user_nkey, TestCerts};

use std::collections::HashMap;
use std::time::Duration;

use fleet_shared::{config::Settings, topology::Topology, Fleet};

/// Settings for a test: the given URLs, HTTP on an ephemeral loopback port, plus `extra`
/// variables (e.g. `FLEET_CONFIG`).
pub fn settings(
    nats_url: &str,
    database_url: &str,
    redis_url: &str,
    extra: &[(&str, &str)],
) -> Settings {
    let mut vars: HashMap<String, String> = HashMap::from([
        ("NATS_URL".into(), nats_url.into()),
        ("DATABASE_URL".into(), database_url.into()),
        ("REDIS_URL".into(), redis_url.into()),
        ("LOG_FORMAT".into(), "pretty".into()),
        ("FLEET_SHUTDOWN_TIMEOUT".into(), "10s".into()),
    ]);
    for (k, v) in extra {
        vars.insert((*k).into(), (*v).into());
    }
    Settings::from_lookup("127.0.0.1:0", |k| vars.get(k).cloned()).expect("test settings")
}

/// A private NATS, a fresh database and the shared (or a private) Redis.
pub struct TestEnv {
    pub nats: NatsServer,
    pub db: TestDb,
    pub redis: Option<RedisServer>,
    pub redis_url: String,
}

impl TestEnv {
    /// Private NATS, fresh database, the machine's Redis (`TEST_REDIS_URL` or 127.0.0.1:6379).
    pub async fn new() -> TestEnv {
        fleet_shared::telemetry::init_for_tests();
        let nats = NatsServer::start().expect("start nats-server");
        let db = TestDb::create().await.expect("create test database");
        let redis_url = std::env::var("TEST_REDIS_URL")
            .unwrap_or_else(|_| fleet_shared::config::DEFAULT_REDIS_URL.to_owned());
        TestEnv {
            nats,
            db,
            redis: None,
            redis_url,
        }
    }

    /// As [`TestEnv::new`] with a private `redis-server`.
    pub async fn with_private_redis() -> TestEnv {
        let mut env = TestEnv::new().await;
        let redis = RedisServer::start().expect("start redis-server");
        env.redis_url = redis.url();
        env.redis = Some(redis);
        env
    }

    pub fn settings(&self, extra: &[(&str, &str)]) -> Settings {
        settings(&self.nats.url(), &self.db.url, &self.redis_url, extra)
    }

    /// A connected [`Fleet`] on this environment.
    pub async fn fleet(&self, extra: &[(&str, &str)]) -> Fleet {
        Fleet::connect(self.settings(extra), Topology::default())
            .await
            .expect("connect fleet")
    }
}

/// Polls `f` every 50 ms until it returns `Some`, or panics with `what` after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The one bigint `sql` returns (a `SELECT count(*) …`).
pub async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Waits until the count `sql` returns satisfies `ok` and returns it; a timeout names `what`.
pub async fn wait_for_count(
    pool: &sqlx::PgPool,
    limit: Duration,
    what: &str,
    sql: &str,
    ok: impl Fn(i64) -> bool,
) -> i64 {
    eventually(limit, what, || async {
        let n = count(pool, sql).await;
        ok(n).then_some(n)
    })
    .await
}

/// Checks a worker binary's command line: `--help` and `--version` print to stdout and exit 0
/// without connecting anywhere; an unknown argument fails with exit code 2 and one line on stderr.
pub fn assert_worker_cli(binary: &str, name: &str) {
    use std::process::Command;
    // Settings that could never connect: a binary that tried would hang or fail differently.
    let run = |args: &[&str]| {
        Command::new(binary)
            .args(args)
            .env("NATS_URL", "nats://127.0.0.1:1")
            .env("FLEET_CONNECT_TIMEOUT", "120s")
            .output()
            .expect("run the binary")
    };
    let help = run(&["--help"]);
    let out = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success(), "--help: {help:?}");
    assert!(
        out.contains(name) && out.contains("NATS_URL"),
        "--help: {out}"
    );
    let version = run(&["--version"]);
    assert!(version.status.success(), "--version: {version:?}");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("{name} {}", env!("CARGO_PKG_VERSION"))
    );
    for bad in [&["--bogus"][..], &["extra"][..], &["--help-me"][..]] {
        let o = run(bad);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {o:?}");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{bad:?}: one line, got {err}"
        );
        assert!(err.starts_with("error:"), "{err}");
    }
}

/// The value of one sample in a Prometheus text exposition (0 when absent).
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
