//! Many replicas as separate processes on a three-node NATS cluster with R3 streams: 3
//! provisioners, 2 cache-invalidators, 3 backfill-workers and 2 schedulers (each a
//! `fleetctl up --only <worker>` process, the same code as the worker binaries), a mixed burst,
//! and `kill -9` of one replica of each kind in the middle of it. Effects are counted exactly.

use std::collections::{BTreeSet, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::run::test_log;
use async_nats::jetstream;
use fleet_testkit::{
    count, eventually, publish_retrying, wait_for_count, NatsCluster, RedisServer, TestDb,
};
use redis::AsyncCommands as _;
use serde_json::json;
use uuid::Uuid;

const LIMIT: Duration = Duration::from_secs(120);

struct Proc(Child);

impl Proc {
    fn kill_9(&mut self) {
        let _ = self.0.kill(); // SIGKILL
        let _ = self.0.wait();
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_9();
    }
}

const CONFIG: &str = r#"
[provisioner]
concurrency = 2
ack_wait = "5s"

[backfill]
poll_interval = "50ms"
progress_interval = "200ms"
parallelism = 2
min_chunk_size = 50
max_chunk_size = 50

[scheduler]
lease = "3s"

[[schedules]]
name = "every-second"
cron = "* * * * * *"
subject = "jobs.tick.{tenant_code}"
tenants = { status = "active", plans = ["enterprise"] }
"#;

fn spawn(worker: &str, nats: &str, db: &str, redis: &str, config: &str) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(["up", "--only", worker])
        .env("NATS_URL", nats)
        .env("DATABASE_URL", db)
        .env("REDIS_URL", redis)
        .env("FLEET_STREAM_REPLICAS", "3")
        .env("FLEET_CONFIG", config)
        .env("FLEET_BACKFILL_ALLOW_SQL", "1")
        .env("FLEET_HTTP_ADDR", "127.0.0.1:0")
        .env("FLEET_SHUTDOWN_TIMEOUT", "10s")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(test_log())
        .spawn()
        .expect("spawn fleetctl up --only");
    Proc(child)
}

/// (subject, Nats-Msg-Id) of every stored message of `stream`.
async fn stored(js: &jetstream::Context, stream: &str) -> Vec<(String, String)> {
    fleet_testkit::stored_messages(js, stream)
        .await
        .iter()
        .map(|m| {
            let id = m
                .headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            (m.subject.to_string(), id)
        })
        .collect()
}

#[tokio::test]
async fn ten_replicas_of_four_kinds_with_one_of_each_killed_mid_burst() {
    fleet_shared::telemetry::init_for_tests();
    let cluster = NatsCluster::start().await.unwrap();
    let db = TestDb::create().await.unwrap();
    let redis = RedisServer::start().unwrap();
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cfg.path(), CONFIG).unwrap();
    let cfg_path = cfg.path().to_str().unwrap().to_owned();
    let nats = cluster.url();
    let start = |w: &str| spawn(w, &nats, &db.url, &redis.url(), &cfg_path);

    // The first provisioner creates the control plane and the R3 streams; then the rest.
    let mut provisioners = vec![start("provisioner")];
    let pool = db.pool().await;
    eventually(LIMIT, "the control plane", || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM fleet.tenants")
            .fetch_one(&pool)
            .await
            .ok()
    })
    .await;
    sqlx::raw_sql(
        "INSERT INTO fleet.tenants (tenant_id, code, name, plan, status, schema_name)
           SELECT gen_random_uuid(), 'sched_' || i, 'S', 'enterprise', 'active', 'tenant_sched_' || i
           FROM generate_series(1, 5) AS i;
         CREATE TABLE items (id bigserial PRIMARY KEY, c integer NOT NULL DEFAULT 0);
         INSERT INTO items (c) SELECT 0 FROM generate_series(1, 3000);",
    )
    .execute(&pool)
    .await
    .unwrap();
    provisioners.push(start("provisioner"));
    provisioners.push(start("provisioner"));
    let mut invalidators = vec![start("cache-invalidator"), start("cache-invalidator")];
    let mut backfills = vec![
        start("backfill-worker"),
        start("backfill-worker"),
        start("backfill-worker"),
    ];
    let mut schedulers = vec![start("scheduler"), start("scheduler")];

    let js = jetstream::new(cluster.client().await.unwrap());
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let orgs: Vec<String> = (0..20).map(|i| format!("org_{i}")).collect();
    for org in &orgs {
        for k in ["details", "members"] {
            let _: () = con.set(format!("org:{org}:{k}"), "v").await.unwrap();
        }
        let _: () = con.set(format!("keep:{org}"), "v").await.unwrap();
    }

    // The mixed burst: a backfill job, 40 tenants, 20 org updates.
    let spec = json!({"kind": "sql", "table": "items", "chunk_size": 50, "parallelism": 2,
        "statement": "UPDATE items SET c = c + 1 FROM (SELECT pg_sleep(0.03)) AS s WHERE id > $1 AND id <= $2"});
    publish_retrying(
        &js,
        "backfill.submit",
        "submit:replicas",
        serde_json::to_vec(&spec).unwrap(),
    )
    .await;
    let codes: Vec<String> = (0..40).map(|i| format!("rep_{i}")).collect();
    let created = |code: &str| {
        serde_json::to_vec(
            &json!({"tenant_id": Uuid::new_v4(), "code": code, "name": code, "plan": "basic"}),
        )
        .unwrap()
    };
    for (i, code) in codes.iter().enumerate() {
        publish_retrying(&js, "tenant.created", &format!("c:{code}"), created(code)).await;
        if let Some(org) = orgs.get(i / 2).filter(|_| i % 2 == 0) {
            let body = serde_json::to_vec(&json!({"org_code": org})).unwrap();
            publish_retrying(&js, "org.updated", &format!("u:{org}"), body).await;
        }
        if i == 20 {
            // Mid-burst: one replica of each kind dies without warning.
            eventually(LIMIT, "work under way", || async {
                let active = count(
                    &pool,
                    "SELECT count(*) FROM fleet.tenants WHERE status = 'active' AND plan = 'basic'",
                )
                .await;
                let chunks = count(
                    &pool,
                    "SELECT count(*) FROM fleet.backfill_chunks WHERE state = 'done'",
                )
                .await;
                let runs = count(
                    &pool,
                    "SELECT count(*) FROM fleet.schedule_runs WHERE status = 'done'",
                )
                .await;
                (active >= 2 && chunks >= 3 && runs >= 1).then_some(())
            })
            .await;
            provisioners[0].kill_9();
            invalidators[0].kill_9();
            backfills[0].kill_9();
            // The first scheduler started first, so it is the one most likely holding the lease.
            schedulers[0].kill_9();
        }
    }

    wait_for_count(
        &pool,
        LIMIT,
        "every tenant active",
        "SELECT count(*) FROM fleet.tenants WHERE status = 'active' AND plan = 'basic'",
        |n| n == 40,
    )
    .await;
    eventually(LIMIT, "every org's keys deleted", || async {
        let keys: Vec<String> = con.clone().keys("org:*").await.unwrap();
        keys.is_empty().then_some(())
    })
    .await;
    wait_for_count(
        &pool,
        LIMIT,
        "the backfill job succeeded",
        "SELECT count(*) FROM fleet.backfill_jobs WHERE state = 'succeeded'",
        |n| n == 1,
    )
    .await;
    let runs_now = count(
        &pool,
        "SELECT count(*) FROM fleet.schedule_runs WHERE status = 'done'",
    )
    .await;
    eventually(LIMIT, "ticks after the scheduler kill", || async {
        (count(
            &pool,
            "SELECT count(*) FROM fleet.schedule_runs WHERE status = 'done'",
        )
        .await
            >= runs_now + 2)
            .then_some(())
    })
    .await;
    for p in provisioners
        .iter_mut()
        .chain(&mut invalidators)
        .chain(&mut backfills)
        .chain(&mut schedulers)
    {
        p.terminate();
    }
    for p in provisioners
        .iter_mut()
        .chain(&mut invalidators)
        .chain(&mut backfills)
        .chain(&mut schedulers)
    {
        let _ = p.0.wait();
    }

    // Provisioning: one row, one schema, one set of configs and one announcement per tenant.
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM fleet.tenants WHERE plan = 'basic'"
        )
        .await,
        40
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenant\\_rep\\_%'"
        )
        .await,
        40
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM fleet.tenant_configurations").await,
        4 * 40
    );
    let events = stored(&js, "FLEET_EVENTS").await;
    let provisioned = events
        .iter()
        .filter(|(s, _)| s == "tenant.provisioned")
        .count();
    assert_eq!(provisioned, 40, "one announcement per tenant");
    // Invalidation: every org's keys gone, nothing else.
    let kept: BTreeSet<String> = con.keys("keep:*").await.unwrap();
    assert_eq!(kept.len(), 20);
    // Backfill: every row exactly once, one job.
    let (zero, one, other): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE c = 0), count(*) FILTER (WHERE c = 1), count(*) FILTER (WHERE c > 1) FROM items",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((zero, one, other), (0, 3000, 0));
    assert_eq!(
        count(&pool, "SELECT count(*) FROM fleet.backfill_jobs").await,
        1
    );
    // Scheduler: contiguous ticks, no job stored twice, every finished tick to all 5 tenants.
    let ticks: Vec<(chrono::DateTime<chrono::Utc>, String)> = sqlx::query_as(
        "SELECT tick, status FROM fleet.schedule_runs WHERE schedule = 'every-second' ORDER BY tick",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for pair in ticks.windows(2) {
        assert_eq!((pair[1].0 - pair[0].0).num_seconds(), 1, "{ticks:?}");
    }
    let jobs: Vec<String> = stored(&js, "FLEET_JOBS")
        .await
        .into_iter()
        .filter(|(s, _)| s.starts_with("jobs.tick."))
        .map(|(_, id)| id)
        .collect();
    let unique: BTreeSet<&String> = jobs.iter().collect();
    assert_eq!(jobs.len(), unique.len(), "no job stored twice");
    let mut per_tick: HashMap<String, usize> = HashMap::new();
    for id in &jobs {
        *per_tick
            .entry(id.split(':').nth(1).unwrap().to_owned())
            .or_default() += 1;
    }
    for (tick, status) in &ticks {
        if status == "done" {
            assert_eq!(
                per_tick.get(&tick.timestamp().to_string()).copied(),
                Some(5),
                "tick {tick}"
            );
        }
    }
    // Nothing dead-lettered.
    let mut dlq = js.get_stream("FLEET_DLQ").await.unwrap();
    assert_eq!(dlq.info().await.unwrap().state.messages, 0);
}
