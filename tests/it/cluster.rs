//! Every worker, unchanged, on a three-node NATS cluster with R3 streams
//! (`FLEET_STREAM_REPLICAS=3`, `NATS_URL` listing the three servers), while the node leading the
//! stream the worker reads (or the leader bucket) is killed with `kill -9` in the middle of the
//! work and brought back. Effects are counted exactly: nothing lost, nothing doubled.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use async_nats::jetstream;
use fleet_shared::topology::{Topology, EVENTS_STREAM, JOBS_STREAM};
use fleet_shared::Fleet;
use fleet_testkit::{
    count, eventually, publish_retrying, stored_messages, wait_for_count, NatsCluster, Running,
    TestDb,
};
use redis::AsyncCommands as _;
use serde_json::json;
use uuid::Uuid;

const LIMIT: Duration = Duration::from_secs(90);

struct ClusterEnv {
    cluster: NatsCluster,
    db: TestDb,
    redis_url: String,
}

impl ClusterEnv {
    async fn new() -> ClusterEnv {
        fleet_shared::telemetry::init_for_tests();
        let cluster = NatsCluster::start().await.expect("start the NATS cluster");
        let db = TestDb::create().await.expect("test database");
        let redis_url = std::env::var("TEST_REDIS_URL")
            .unwrap_or_else(|_| fleet_shared::config::DEFAULT_REDIS_URL.to_owned());
        ClusterEnv {
            cluster,
            db,
            redis_url,
        }
    }

    async fn fleet(&self, extra: &[(&str, &str)]) -> Fleet {
        let mut vars = vec![("FLEET_STREAM_REPLICAS", "3")];
        vars.extend_from_slice(extra);
        let settings =
            fleet_testkit::settings(&self.cluster.url(), &self.db.url, &self.redis_url, &vars);
        Fleet::connect(settings, Topology::default())
            .await
            .expect("connect fleet to the cluster")
    }

    /// A fleet started without `FLEET_STREAM_REPLICAS` (so at the default, R1).
    async fn fleet_at_default_replicas(&self) -> Fleet {
        let settings =
            fleet_testkit::settings(&self.cluster.url(), &self.db.url, &self.redis_url, &[]);
        Fleet::connect(settings, Topology::default()).await.unwrap()
    }

    async fn js(&self) -> jetstream::Context {
        jetstream::new(self.cluster.client().await.expect("cluster client"))
    }

    /// Kills (`kill -9`) the node leading `stream` once it is fully replicated; returns it.
    async fn kill_leader(&mut self, stream: &str) -> usize {
        let leader = self
            .cluster
            .wait_stream_healthy(stream, LIMIT)
            .await
            .expect("stream replicated");
        self.cluster.kill(leader);
        leader
    }
}

/// The streams and the leader bucket that start-up raises to `FLEET_STREAM_REPLICAS`.
const RAISED: [&str; 4] = [
    EVENTS_STREAM,
    JOBS_STREAM,
    "FLEET_DLQ",
    "KV_fleet_scheduler",
];

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cfg.path(), text).unwrap();
    cfg
}

/// Every stored message of `stream` under `prefix`, per subject.
async fn stored(js: &jetstream::Context, stream: &str, prefix: &str) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for m in stored_messages(js, stream).await {
        if m.subject.as_str().starts_with(prefix) {
            *out.entry(m.subject.to_string()).or_default() += 1;
        }
    }
    out
}

/// Publishes `org.updated` for `org`, under a Msg-Id of its own.
async fn org_updated(js: &jetstream::Context, org: &str) {
    let body = serde_json::to_vec(&json!({"org_code": org})).unwrap();
    publish_retrying(js, "org.updated", &format!("upd:{org}"), body).await;
}

async fn dead_letters(js: &jetstream::Context) -> u64 {
    let mut s = js.get_stream("FLEET_DLQ").await.unwrap();
    s.info().await.unwrap().state.messages
}

/// Waits until every durable consumer of `stream` has nothing pending and nothing unacked.
async fn consumers_drained(js: &jetstream::Context, stream: &str) {
    eventually(LIMIT, &format!("{stream} consumers drained"), || async {
        let s = js.get_stream(stream).await.ok()?;
        let names: Vec<String> = {
            use futures::TryStreamExt as _;
            s.consumer_names().try_collect().await.ok()?
        };
        for n in names {
            let mut c: jetstream::consumer::PullConsumer = s.get_consumer(&n).await.ok()?;
            let info = c.info().await.ok()?;
            if info.num_pending > 0 || info.num_ack_pending > 0 {
                return None;
            }
        }
        Some(())
    })
    .await;
}

#[tokio::test]
async fn existing_r1_streams_and_the_leader_bucket_are_raised_to_r3_at_start() {
    let env = ClusterEnv::new().await;
    // A fleet that ran with the default (R1) created the streams and the leader bucket...
    let r1 = env.fleet_at_default_replicas().await;
    scheduler::elector::Elector::open(&r1.js, "r1".into(), Duration::from_secs(5), 1)
        .await
        .unwrap();
    let js = env.js().await;
    for name in RAISED {
        let mut s = js.get_stream(name).await.unwrap();
        assert_eq!(s.info().await.unwrap().config.num_replicas, 1, "{name}");
    }
    publish_retrying(&js, "tenant.migrate", "before-raise", b"{}".to_vec()).await;

    // ...then the normal start-up with FLEET_STREAM_REPLICAS=3 raises them, keeping messages.
    let r3 = env.fleet(&[]).await;
    scheduler::elector::Elector::open(&r3.js, "r3".into(), Duration::from_secs(5), 3)
        .await
        .unwrap();
    for name in RAISED {
        let mut s = js.get_stream(name).await.unwrap();
        assert_eq!(s.info().await.unwrap().config.num_replicas, 3, "{name}");
        env.cluster
            .wait_stream_healthy(name, LIMIT)
            .await
            .expect("all three replicas current");
    }
    assert_eq!(
        stored(&js, EVENTS_STREAM, "tenant.migrate").await.len(),
        1,
        "the stored message survived the raise"
    );
    // A process started with a lower count leaves a raised stream alone.
    env.fleet_at_default_replicas().await;
    let mut s = js.get_stream(EVENTS_STREAM).await.unwrap();
    assert_eq!(s.info().await.unwrap().config.num_replicas, 3);
}

#[tokio::test]
async fn provisioning_burst_survives_kill_9_of_the_stream_leader() {
    let mut env = ClusterEnv::new().await;
    let cfg = config_file("[provisioner]\nconcurrency = 4\nack_wait = \"5s\"\n");
    let fleet = env
        .fleet(&[("FLEET_CONFIG", cfg.path().to_str().unwrap())])
        .await;
    let pool = env.db.pool().await;
    let f = fleet.clone();
    let worker = Running::spawn(|t| provisioner::run(f, t));
    let js = env.js().await;

    let codes: Vec<String> = (0..30).map(|i| format!("cl_{i}")).collect();
    let publish = |code: &String| {
        let body =
            json!({"tenant_id": Uuid::new_v4(), "code": code, "name": code, "plan": "basic"});
        (
            format!("created:{code}"),
            serde_json::to_vec(&body).unwrap(),
        )
    };
    for code in &codes[..15] {
        let (id, body) = publish(code);
        publish_retrying(&js, "tenant.created", &id, body).await;
    }
    wait_for_count(
        &pool,
        LIMIT,
        "a few tenants active",
        "SELECT count(*) FROM fleet.tenants WHERE status = 'active'",
        |n| n >= 3,
    )
    .await;
    let killed = env.kill_leader(EVENTS_STREAM).await;
    for code in &codes[15..] {
        let (id, body) = publish(code);
        publish_retrying(&js, "tenant.created", &id, body).await;
    }
    wait_for_count(
        &pool,
        LIMIT,
        "every tenant active",
        "SELECT count(*) FROM fleet.tenants WHERE status = 'active'",
        |n| n == 30,
    )
    .await;
    env.cluster.restart(killed).unwrap();
    env.cluster
        .wait_stream_healthy(EVENTS_STREAM, LIMIT)
        .await
        .unwrap();
    consumers_drained(&js, EVENTS_STREAM).await;
    worker.stop().await;

    assert_eq!(count(&pool, "SELECT count(*) FROM fleet.tenants").await, 30);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenant\\_cl\\_%'"
        )
        .await,
        30
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM fleet.tenant_configurations").await,
        4 * 30,
        "one set of configs per tenant"
    );
    let created = stored(&js, EVENTS_STREAM, "tenant.created").await;
    assert_eq!(
        created.values().sum::<usize>(),
        30,
        "each event stored once"
    );
    let announced = stored(&js, EVENTS_STREAM, "tenant.provisioned").await;
    assert_eq!(
        announced.values().sum::<usize>(),
        30,
        "one announcement each"
    );
    assert_eq!(dead_letters(&js).await, 0);
}

#[tokio::test]
async fn invalidation_burst_survives_kill_9_of_the_stream_leader() {
    let mut env = ClusterEnv::new().await;
    let redis = fleet_testkit::RedisServer::start().unwrap();
    env.redis_url = redis.url();
    let fleet = env.fleet(&[]).await;
    let f = fleet.clone();
    let worker = Running::spawn(|t| cache_invalidator::run(f, t));
    let js = env.js().await;
    let client = redis::Client::open(env.redis_url.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let orgs: Vec<String> = (0..20).map(|i| format!("org_{i}")).collect();
    for org in &orgs {
        for k in ["details", "members", "plan"] {
            let _: () = con.set(format!("org:{org}:{k}"), "v").await.unwrap();
        }
        let _: () = con.set(format!("keep:{org}"), "v").await.unwrap();
    }

    for org in &orgs[..10] {
        org_updated(&js, org).await;
    }
    let killed = env.kill_leader(EVENTS_STREAM).await;
    for org in &orgs[10..] {
        org_updated(&js, org).await;
    }
    eventually(LIMIT, "every org's keys deleted", || async {
        let keys: Vec<String> = con.clone().keys("org:*").await.unwrap();
        keys.is_empty().then_some(())
    })
    .await;
    env.cluster.restart(killed).unwrap();
    consumers_drained(&js, EVENTS_STREAM).await;
    worker.stop().await;

    let kept: BTreeSet<String> = con.keys("keep:*").await.unwrap();
    assert_eq!(kept.len(), 20, "nothing else deleted");
    let events = stored(&js, EVENTS_STREAM, "org.updated").await;
    assert_eq!(events.values().sum::<usize>(), 20, "each event stored once");
    assert_eq!(dead_letters(&js).await, 0);
}

#[tokio::test]
async fn backfill_job_survives_kill_9_of_the_jobs_stream_leader() {
    let mut env = ClusterEnv::new().await;
    let cfg = config_file("[backfill]\npoll_interval = \"50ms\"\nprogress_interval = \"100ms\"\nparallelism = 2\nmin_chunk_size = 50\nmax_chunk_size = 50\n");
    let extra = [
        ("FLEET_CONFIG", cfg.path().to_str().unwrap()),
        ("FLEET_BACKFILL_ALLOW_SQL", "1"),
    ];
    let fleet = env.fleet(&extra).await;
    let pool = env.db.pool().await;
    sqlx::raw_sql(
        "CREATE TABLE items (id bigserial PRIMARY KEY, c integer NOT NULL DEFAULT 0);
         INSERT INTO items (c) SELECT 0 FROM generate_series(1, 4000);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let f = fleet.clone();
    let worker = Running::spawn(|t| backfill_worker::run(f, t));
    let js = env.js().await;
    // Each chunk sleeps a little, so the job is still running when the node dies.
    let spec = json!({"kind": "sql", "table": "items", "chunk_size": 50, "parallelism": 2,
        "statement": "UPDATE items SET c = c + 1 FROM (SELECT pg_sleep(0.02)) AS s WHERE id > $1 AND id <= $2"});
    publish_retrying(
        &js,
        "backfill.submit",
        "submit:cluster",
        serde_json::to_vec(&spec).unwrap(),
    )
    .await;
    wait_for_count(
        &pool,
        LIMIT,
        "the job is running",
        "SELECT count(*) FROM fleet.backfill_chunks WHERE state = 'done'",
        |n| n >= 5,
    )
    .await;
    let killed = env.kill_leader(JOBS_STREAM).await;
    wait_for_count(
        &pool,
        LIMIT,
        "the job succeeded",
        "SELECT count(*) FROM fleet.backfill_jobs WHERE state = 'succeeded'",
        |n| n == 1,
    )
    .await;
    env.cluster.restart(killed).unwrap();
    worker.stop().await;

    let (zero, one, other): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE c = 0), count(*) FILTER (WHERE c = 1), count(*) FILTER (WHERE c > 1) FROM items",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((zero, one, other), (0, 4000, 0), "every row once");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM fleet.backfill_jobs").await,
        1
    );
}

#[tokio::test]
async fn scheduler_fan_out_and_leader_failover_survive_kill_9_of_a_node() {
    let mut env = ClusterEnv::new().await;
    let cfg = config_file("[scheduler]\nlease = \"3s\"\n\n[[schedules]]\nname = \"every-second\"\ncron = \"* * * * * *\"\nsubject = \"jobs.tick.{tenant_code}\"\n");
    let extra = [("FLEET_CONFIG", cfg.path().to_str().unwrap())];
    let first = env.fleet(&extra).await;
    let pool = env.db.pool().await;
    sqlx::query(
        "INSERT INTO fleet.tenants (tenant_id, code, name, plan, status, schema_name)
         SELECT gen_random_uuid(), 't' || i, 'T', 'basic', 'active', 'tenant_t' || i
         FROM generate_series(1, 10) AS i",
    )
    .execute(&pool)
    .await
    .unwrap();
    let a = Running::spawn(|t| scheduler::run(first, t));
    const RUNS_DONE: &str = "SELECT count(*) FROM fleet.schedule_runs WHERE status = 'done'";
    wait_for_count(&pool, LIMIT, "two finished ticks", RUNS_DONE, |n| n >= 2).await;
    let a_id: String = sqlx::query_scalar(
        "SELECT leader FROM fleet.schedule_runs WHERE status = 'done' ORDER BY tick LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let second = env.fleet(&extra).await;
    let b = Running::spawn(|t| scheduler::run(second, t));
    // The node leading the leader bucket dies: the lease lives on in the other two.
    let killed = env.kill_leader("KV_fleet_scheduler").await;
    let before = count(&pool, RUNS_DONE).await;
    wait_for_count(
        &pool,
        LIMIT,
        "ticks go on with a node down",
        RUNS_DONE,
        |n| n >= before + 3,
    )
    .await;
    // Then the scheduler leader itself dies (no release): the other replica takes over.
    let js = env.js().await;
    let kv = js.get_key_value("fleet_scheduler").await.unwrap();
    let holder = eventually(LIMIT, "a lease holder", || async {
        kv.get("leader").await.ok().flatten()
    })
    .await;
    let (dead, alive) = if String::from_utf8_lossy(&holder) == a_id {
        (a, b)
    } else {
        (b, a)
    };
    dead.kill().await;
    env.cluster.restart(killed).unwrap();
    let before = count(&pool, RUNS_DONE).await;
    wait_for_count(
        &pool,
        LIMIT,
        "three ticks after the takeover",
        RUNS_DONE,
        |n| n >= before + 3,
    )
    .await;
    alive.stop().await;

    let runs: Vec<(chrono::DateTime<chrono::Utc>, String)> = sqlx::query_as(
        "SELECT tick, status FROM fleet.schedule_runs WHERE schedule = 'every-second' ORDER BY tick",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let ticks: Vec<i64> = runs.iter().map(|(t, _)| t.timestamp()).collect();
    for pair in ticks.windows(2) {
        assert_eq!(pair[1] - pair[0], 1, "a tick skipped or doubled: {ticks:?}");
    }
    // Msg-Ids are `schedule:tick:tenant`: none stored twice, every finished tick reached every
    // tenant.
    let ids = msg_ids(&js, JOBS_STREAM).await;
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), unique.len(), "no job stored twice");
    let mut per_tick: HashMap<String, usize> = HashMap::new();
    for id in &ids {
        let tick = id.split(':').nth(1).unwrap().to_owned();
        *per_tick.entry(tick).or_default() += 1;
    }
    for (tick, status) in &runs {
        if status == "done" {
            assert_eq!(
                per_tick.get(&tick.timestamp().to_string()).copied(),
                Some(10),
                "tick {tick}: every tenant once"
            );
        }
    }
}

/// The `Nats-Msg-Id`s of every stored message.
async fn msg_ids(js: &jetstream::Context, stream: &str) -> Vec<String> {
    stored_messages(js, stream)
        .await
        .iter()
        .filter_map(|m| m.headers.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|id| id.as_str().to_owned())
        .collect()
}
