//! Helpers shared by the scheduler's integration tests: a schedule file, tenants inserted
//! directly into `fleet.tenants`, a scheduler replica running in-process, and the jobs read back
//! from the stream.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream;
use fleet_shared::Fleet;
use fleet_testkit::{eventually, TestEnv};
use sqlx::PgPool;

pub const LIMIT: Duration = Duration::from_secs(30);

/// A test environment with a schedule file.
pub struct Setup {
    pub env: TestEnv,
    pub pg: PgPool,
    _dir: tempfile::TempDir,
    pub config_path: String,
}

impl Setup {
    pub async fn new(config: &str) -> Setup {
        let env = TestEnv::new().await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.toml");
        std::fs::write(&path, config).unwrap();
        let config_path = path.display().to_string();
        // A first connect applies the control-plane migrations, so tenants can be inserted.
        let fleet = env.fleet(&[("FLEET_CONFIG", &config_path)]).await;
        let pg = fleet.pg.clone();
        Setup {
            env,
            pg,
            _dir: dir,
            config_path,
        }
    }

    pub async fn fleet(&self) -> Fleet {
        self.env.fleet(&[("FLEET_CONFIG", &self.config_path)]).await
    }

    /// A scheduler replica running in-process.
    pub async fn replica(&self) -> Replica {
        let fleet = self.fleet().await;
        Replica {
            running: fleet_testkit::Running::spawn(|t| scheduler::run(fleet, t)),
        }
    }

    /// Inserts `n` tenants `<prefix>1..<prefix>n` with `plan` and `status`.
    pub async fn tenants(&self, prefix: &str, n: i64, plan: &str, status: &str) {
        sqlx::query(
            "INSERT INTO fleet.tenants (tenant_id, code, name, plan, status, schema_name)
             SELECT gen_random_uuid(), $1 || i, 'Tenant ' || i, $2, $3, 'tenant_' || $1 || i
             FROM generate_series(1, $4) AS i",
        )
        .bind(prefix)
        .bind(plan)
        .bind(status)
        .bind(n)
        .execute(&self.pg)
        .await
        .unwrap();
    }

    pub async fn trigger(&self, schedule: &str) -> i64 {
        let fleet = self.fleet().await;
        scheduler::trigger(&self.pg, Some(&fleet.nats), schedule, "test")
            .await
            .unwrap()
    }

    pub async fn runs(&self, schedule: &str) -> Vec<scheduler::store::RunRow> {
        let mut runs = scheduler::store::history(&self.pg, schedule, 10_000)
            .await
            .unwrap();
        runs.reverse();
        runs
    }

    /// Waits until `schedule` has a run in `status`, and returns it.
    pub async fn wait_run(&self, schedule: &str, status: &str) -> scheduler::store::RunRow {
        eventually(LIMIT, &format!("a {status} run of {schedule}"), || async {
            self.runs(schedule)
                .await
                .into_iter()
                .find(|r| r.status == status)
        })
        .await
    }

    /// Waits until `schedule` has at least `n` runs `done`; `what` names the wait in a timeout.
    pub async fn wait_done(&self, schedule: &str, n: usize, what: &str) {
        eventually(LIMIT, what, || async {
            let done = self
                .runs(schedule)
                .await
                .iter()
                .filter(|r| r.status == "done")
                .count();
            (done >= n).then_some(())
        })
        .await
    }

    pub async fn js(&self) -> jetstream::Context {
        jetstream::new(async_nats::connect(self.env.nats.url()).await.unwrap())
    }
}

pub struct Replica {
    pub running: fleet_testkit::Running,
}

impl Replica {
    /// Graceful stop (releases the lease).
    pub async fn stop(self) {
        self.running.stop().await;
    }
}

/// One stored job.
#[derive(Debug, Clone)]
pub struct Job {
    pub subject: String,
    pub msg_id: String,
    pub body: serde_json::Value,
    /// Stream timestamp, Unix milliseconds.
    pub stored_ms: i64,
}

/// Every message of `stream` whose subject matches `filter` (a prefix match on literal tokens
/// is enough for these tests), in stream order.
pub async fn jobs(js: &jetstream::Context, stream: &str, prefix: &str) -> Vec<Job> {
    let mut out = Vec::new();
    for m in fleet_testkit::stored_messages(js, stream).await {
        if !m.subject.as_str().starts_with(prefix) {
            continue;
        }
        out.push(Job {
            subject: m.subject.to_string(),
            msg_id: m
                .headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default(),
            body: serde_json::from_slice(&m.payload).unwrap(),
            stored_ms: (m.time.unix_timestamp_nanos() / 1_000_000) as i64,
        });
    }
    out
}

/// Counts jobs per (tenant_id, tick) from their Msg-Ids.
pub fn per_tenant_tick(jobs: &[Job]) -> HashMap<(String, String), usize> {
    let mut m = HashMap::new();
    for j in jobs {
        let mut parts = j.msg_id.splitn(3, ':');
        let (_schedule, tick, tenant) = (parts.next(), parts.next(), parts.next());
        *m.entry((tenant.unwrap().to_owned(), tick.unwrap().to_owned()))
            .or_default() += 1;
    }
    m
}
