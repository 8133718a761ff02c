//! Rollouts against real services: canary, thresholds, retry, rollback and undo, a lock held by
//! application traffic, dry runs, the one-rollout rule, skipped tenants, and a `kill -9` of one of
//! two real provisioner binaries mid-rollout.

use std::path::Path;
use std::time::Duration;

use crate::common::*;
use fleet_testkit::{eventually, TestEnv};
use provisioner::rollout::{self, status, Control, Options, RolloutRequest};
use sqlx::PgPool;
use uuid::Uuid;

const V1: &str = "CREATE TABLE notes (id bigint PRIMARY KEY, tenant_code text NOT NULL);";
const V1_DOWN: &str = "DROP TABLE notes;";
/// Fails for schemas listed in public.fail_codes; logs every run in public.applied_log (both
/// outside the tenant schema, so the log survives and shows how often each tenant ran).
const V2: &str = "DO $$ BEGIN
  IF EXISTS (SELECT 1 FROM public.fail_codes WHERE schema = current_schema()) THEN
    RAISE EXCEPTION 'boom in %', current_schema();
  END IF;
END $$;
INSERT INTO public.applied_log (schema) VALUES (current_schema());
ALTER TABLE notes ADD COLUMN body text;
CREATE INDEX notes_body_idx ON notes (body);";
const V2_DOWN: &str = "DROP INDEX notes_body_idx; ALTER TABLE notes DROP COLUMN body;";

fn write(dir: &Path, file: &str, sql: &str) {
    std::fs::write(dir.join(file), sql).unwrap();
}

struct Fixture {
    env: TestEnv,
    dir: tempfile::TempDir,
    pool: PgPool,
}

impl Fixture {
    /// `codes` provisioned at version 1, then 0002 deployed (not yet rolled out).
    async fn new(codes: &[&str]) -> Fixture {
        let env = TestEnv::new().await;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "0001_notes.sql", V1);
        write(dir.path(), "0001_notes.down.sql", V1_DOWN);
        let pool = env.db.pool().await;
        sqlx::raw_sql(
            "CREATE TABLE public.fail_codes (schema text PRIMARY KEY);
             CREATE TABLE public.applied_log (schema text NOT NULL, at timestamptz DEFAULT now());",
        )
        .execute(&pool)
        .await
        .unwrap();
        let f = Fixture { env, dir, pool };
        let w = f.worker().await;
        let js = js(&f.env).await;
        for c in codes {
            publish_json(&js, "tenant.created", &created(c, "basic").1).await;
        }
        for c in codes {
            assert_eq!(wait_active(&f.pool, c).await.schema_version, 1);
        }
        w.stop().await;
        write(f.dir.path(), "0002_body.sql", V2);
        write(f.dir.path(), "0002_body.down.sql", V2_DOWN);
        f
    }

    fn dir(&self) -> String {
        self.dir.path().to_str().unwrap().to_owned()
    }

    async fn worker(&self) -> Worker {
        Worker::start(&self.env, &[("FLEET_TENANT_MIGRATIONS", &self.dir())]).await
    }

    fn set(&self) -> Vec<fleet_shared::migrate::Migration> {
        let mut s = fleet_shared::migrate::load_dir(self.dir.path()).unwrap();
        s.sort_by_key(|m| m.version);
        s
    }

    async fn create(&self, req: RolloutRequest) -> Uuid {
        rollout::create(&self.pool, &self.set(), &req, &Options::default())
            .await
            .unwrap()
            .rollout_id
    }

    async fn fail(&self, code: &str) {
        sqlx::query("INSERT INTO public.fail_codes VALUES ($1)")
            .bind(format!("tenant_{code}"))
            .execute(&self.pool)
            .await
            .unwrap();
    }

    async fn wait_state(&self, id: Uuid, want: &str) -> status::RolloutSummary {
        eventually(WAIT, &format!("rollout {want}"), || async {
            status::summary(&self.pool, id)
                .await
                .unwrap()
                .filter(|s| s.state == want)
        })
        .await
    }

    async fn outcomes(&self, id: Uuid) -> Vec<status::TenantOutcome> {
        status::tenants(&self.pool, id, None).await.unwrap()
    }

    async fn runs(&self, code: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM public.applied_log WHERE schema = $1")
            .bind(format!("tenant_{code}"))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Registry version equals the ledger's highest version, for every tenant.
    async fn assert_registry_matches_ledgers(&self) {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT schema_name, schema_version FROM fleet.tenants")
                .fetch_all(&self.pool)
                .await
                .unwrap();
        for (schema, v) in rows {
            let l = ledger(&self.pool, &schema).await;
            assert_eq!(l.last().map(|r| r.0).unwrap_or(0), v, "{schema}");
        }
    }
}

fn req() -> RolloutRequest {
    RolloutRequest {
        canary: Some("0".into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_failing_canary_halts_before_wave_one() {
    let f = Fixture::new(&["a1", "b1", "c1", "d1"]).await;
    f.fail("a1").await;
    let w = f.worker().await;
    let id = f
        .create(RolloutRequest {
            canary: Some("a1".into()),
            waves: Some("1,100%".into()),
            max_failures: Some("10".into()),
            ..Default::default()
        })
        .await;
    let s = f.wait_state(id, "halted").await;
    assert!(
        s.reason.as_deref().unwrap().contains("canary failed"),
        "{s:?}"
    );
    assert!(
        s.reason.as_deref().unwrap().contains("boom in tenant_a1"),
        "{s:?}"
    );
    assert_eq!((s.failed, s.done, s.pending), (1, 0, 3));
    for c in ["b1", "c1", "d1"] {
        assert_eq!(tenant(&f.pool, c).await.unwrap().schema_version, 1);
        assert_eq!(f.runs(c).await, 0, "{c} untouched");
    }
    let a = &f.outcomes(id).await[0];
    assert_eq!(
        (a.code.as_str(), a.state.as_str(), a.wave),
        ("a1", "failed", 0)
    );
    assert!(
        a.error.as_deref().unwrap().contains("0002_body.sql"),
        "{a:?}"
    );
    assert_eq!(
        ledger(&f.pool, "tenant_a1").await.len(),
        1,
        "rolled back whole"
    );
    f.assert_registry_matches_ledgers().await;
    w.stop().await;
}

#[tokio::test]
async fn a_failure_threshold_halts_and_retry_reruns_only_the_failed() {
    let codes = ["t1", "t2", "t3", "t4", "t5", "t6"];
    let f = Fixture::new(&codes).await;
    f.fail("t2").await;
    f.fail("t3").await;
    let w = f.worker().await;
    let id = f
        .create(RolloutRequest {
            concurrency: Some(1),
            max_failures: Some("1".into()),
            ..req()
        })
        .await;
    let s = f.wait_state(id, "halted").await;
    assert!(
        s.reason
            .as_deref()
            .unwrap()
            .contains("more than --max-failures 1"),
        "{s:?}"
    );
    assert_eq!(s.failed, 2);
    assert_eq!(s.done, 1, "t1 only, in code order with one at a time");
    assert_eq!(s.pending, 3);
    let st = status::fleet_status(&f.pool, 2).await.unwrap();
    assert_eq!(st.behind, 5);
    assert_eq!(st.last_failed.len(), 2);

    // Fixed: retry runs t2 and t3 again, then the rest; t1 is not run a second time.
    sqlx::query("DELETE FROM public.fail_codes")
        .execute(&f.pool)
        .await
        .unwrap();
    rollout::control(&f.pool, id, Control::Retry).await.unwrap();
    let s = f.wait_state(id, "succeeded").await;
    assert_eq!((s.done, s.failed, s.pending), (6, 0, 0));
    for c in codes {
        assert_eq!(f.runs(c).await, 1, "{c} applied exactly once");
        assert_eq!(tenant(&f.pool, c).await.unwrap().schema_version, 2);
    }
    let t1 = f
        .outcomes(id)
        .await
        .into_iter()
        .find(|o| o.code == "t1")
        .unwrap();
    assert_eq!(t1.attempts, 1);
    let st = status::fleet_status(&f.pool, 2).await.unwrap();
    assert_eq!((st.behind, st.ahead), (0, 0));
    assert_eq!(st.histogram.len(), 1);
    assert_eq!((st.histogram[0].version, st.histogram[0].tenants), (2, 6));
    f.assert_registry_matches_ledgers().await;
    w.stop().await;
}

#[tokio::test]
async fn rollback_and_undo_restore_the_previous_version_and_ledger_exactly() {
    let f = Fixture::new(&["r1", "r2", "r3"]).await;
    let before: Vec<_> = {
        let mut v = Vec::new();
        for c in ["r1", "r2", "r3"] {
            let s = format!("tenant_{c}");
            v.push((ledger(&f.pool, &s).await, tables(&f.pool, &s).await));
        }
        v
    };
    let w = f.worker().await;
    let up = f.create(req()).await;
    f.wait_state(up, "succeeded").await;
    // Rollback: a rollout downwards to version 1.
    let down = f
        .create(RolloutRequest {
            direction: rollout::Direction::Down,
            to: Some(1),
            ..req()
        })
        .await;
    let s = f.wait_state(down, "succeeded").await;
    assert_eq!(s.done, 3);
    for (i, c) in ["r1", "r2", "r3"].iter().enumerate() {
        let s = format!("tenant_{c}");
        assert_eq!(ledger(&f.pool, &s).await, before[i].0, "{c} ledger");
        assert_eq!(tables(&f.pool, &s).await, before[i].1, "{c} tables");
        assert_eq!(tenant(&f.pool, c).await.unwrap().schema_version, 1);
    }
    // Undo of the rollback re-applies 0002 to exactly those tenants; undo of that goes back.
    let redo = f
        .create(RolloutRequest {
            undo: Some(down),
            ..req()
        })
        .await;
    assert_eq!(f.wait_state(redo, "succeeded").await.done, 3);
    assert_eq!(tenant(&f.pool, "r2").await.unwrap().schema_version, 2);
    let undo = f
        .create(RolloutRequest {
            undo: Some(redo),
            ..req()
        })
        .await;
    assert_eq!(f.wait_state(undo, "succeeded").await.done, 3);
    for (i, c) in ["r1", "r2", "r3"].iter().enumerate() {
        assert_eq!(ledger(&f.pool, &format!("tenant_{c}")).await, before[i].0);
    }
    f.assert_registry_matches_ledgers().await;
    w.stop().await;
}

#[tokio::test]
async fn a_lock_held_by_another_session_makes_the_tenant_retry_then_succeed() {
    let f = Fixture::new(&["busy", "calm"]).await;
    // Application traffic: an open transaction that has read the table holds ACCESS SHARE,
    // which the ALTER TABLE of 0002 must wait for.
    let mut app = f.pool.begin().await.unwrap();
    sqlx::query("SELECT count(*) FROM tenant_busy.notes")
        .execute(&mut *app)
        .await
        .unwrap();
    let w = f.worker().await;
    let id = f
        .create(RolloutRequest {
            lock_timeout: Some("200ms".into()),
            ..req()
        })
        .await;
    let metrics = w.fleet.metrics.clone();
    eventually(WAIT, "a lock_timeout retry", || async {
        metrics
            .render()
            .lines()
            .any(|l| l.starts_with("fleet_rollout_lock_timeouts_total") && !l.ends_with(" 0"))
            .then_some(())
    })
    .await;
    assert_eq!(tenant(&f.pool, "busy").await.unwrap().schema_version, 1);
    app.commit().await.unwrap();
    let s = f.wait_state(id, "succeeded").await;
    assert_eq!((s.done, s.failed), (2, 0));
    let busy = f
        .outcomes(id)
        .await
        .into_iter()
        .find(|o| o.code == "busy")
        .unwrap();
    assert!(busy.attempts >= 2, "{busy:?}");
    assert_eq!(f.runs("busy").await, 1);
    f.assert_registry_matches_ledgers().await;
    w.stop().await;
}

#[tokio::test]
async fn dry_run_writes_nothing_and_a_second_rollout_is_refused_naming_the_first() {
    let f = Fixture::new(&["d1", "d2"]).await;
    let dry = rollout::create(
        &f.pool,
        &f.set(),
        &req(),
        &Options {
            dry_run: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(dry.pending(), 2);
    assert_eq!(dry.items[0].versions, [2]);
    assert_eq!(
        count(&f.pool, "SELECT count(*) FROM fleet.rollouts").await,
        0
    );
    assert_eq!(
        count(&f.pool, "SELECT count(*) FROM fleet.tenant_migration_files").await,
        0
    );
    assert_eq!(f.runs("d1").await, 0);

    // No worker runs, so the first rollout stays running.
    let first = f.create(req()).await;
    let err = rollout::create(&f.pool, &f.set(), &req(), &Options::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&first.to_string()) && err.contains("running"),
        "{err}"
    );
    rollout::control(&f.pool, first, Control::Pause)
        .await
        .unwrap();
    let err = rollout::create(&f.pool, &f.set(), &req(), &Options::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("paused"), "{err}");
    rollout::control(&f.pool, first, Control::Cancel)
        .await
        .unwrap();
    // Cancelled: nothing ran, and a new rollout may start.
    assert_eq!(f.runs("d1").await, 0);
    f.create(req()).await;
}

#[tokio::test]
async fn suspended_and_deleted_tenants_are_skipped_and_say_so() {
    let f = Fixture::new(&["s1", "s2", "s3"]).await;
    // The status list grows 'suspended' with the tenant lifecycle; allow it here either way.
    sqlx::raw_sql(
        "ALTER TABLE fleet.tenants DROP CONSTRAINT IF EXISTS tenants_status_check;
         UPDATE fleet.tenants SET status = 'suspended' WHERE code = 's2';
         UPDATE fleet.tenants SET status = 'deleted' WHERE code = 's3';",
    )
    .execute(&f.pool)
    .await
    .unwrap();
    let w = f.worker().await;
    let id = f.create(req()).await;
    let s = f.wait_state(id, "succeeded").await;
    assert_eq!((s.done, s.skipped), (1, 2));
    let o = f.outcomes(id).await;
    let s2 = o.iter().find(|o| o.code == "s2").unwrap();
    assert_eq!(s2.error.as_deref(), Some("tenant is suspended"));
    let s3 = o.iter().find(|o| o.code == "s3").unwrap();
    assert_eq!(s3.error.as_deref(), Some("tenant is deleted"));
    assert_eq!(f.runs("s2").await, 0);
    w.stop().await;
}

#[tokio::test]
async fn kill_9_of_one_of_two_replicas_mid_rollout_moves_every_tenant_exactly_once() {
    let codes: Vec<String> = (0..24).map(|i| format!("k{i:02}")).collect();
    let refs: Vec<&str> = codes.iter().map(String::as_str).collect();
    let f = Fixture::new(&refs).await;
    // Slow enough per tenant that the kill lands mid-rollout (and often mid-transaction).
    write(
        f.dir.path(),
        "0003_slow.sql",
        "SELECT pg_sleep(0.15); INSERT INTO public.applied_log (schema) VALUES (current_schema() || ':3');",
    );
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_provisioner"))
            .env("NATS_URL", f.env.nats.url())
            .env("DATABASE_URL", &f.env.db.url)
            .env("FLEET_TENANT_MIGRATIONS", f.dir())
            .env("FLEET_HTTP_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .env_remove("FLEET_CONFIG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start provisioner")
    };
    let mut a = spawn();
    let mut b = spawn();
    let id = f
        .create(RolloutRequest {
            concurrency: Some(4),
            ..req()
        })
        .await;
    eventually(WAIT, "some tenants done", || async {
        let s = status::summary(&f.pool, id).await.unwrap()?;
        (s.done >= 4).then_some(())
    })
    .await;
    a.kill().unwrap(); // SIGKILL
    a.wait().unwrap();
    let s = f.wait_state(id, "succeeded").await;
    b.kill().unwrap();
    b.wait().unwrap();
    assert_eq!((s.done, s.failed, s.pending), (24, 0, 0));
    for c in &codes {
        assert_eq!(f.runs(c).await, 1, "{c}: 0002 exactly once");
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM public.applied_log WHERE schema = $1")
                .bind(format!("tenant_{c}:3"))
                .fetch_one(&f.pool)
                .await
                .unwrap();
        assert_eq!(n, 1, "{c}: 0003 exactly once");
        assert_eq!(tenant(&f.pool, c).await.unwrap().schema_version, 3);
    }
    f.assert_registry_matches_ledgers().await;
    let _ = Duration::ZERO;
}

/// While `fleet.tenant_moves` has a running move of a tenant (what `fleetctl tenants move`
/// records), a rollout skips it saying why, `tenant.deleted` is refused, and `tenant.migrate`
/// is retried until the move ends and then applies.
#[tokio::test]
async fn a_tenant_being_moved_is_skipped_refused_or_waited_for() {
    let f = Fixture::new(&["m1", "m2"]).await;
    let m1 = tenant(&f.pool, "m1").await.unwrap();
    let move_id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO fleet.tenant_moves (move_id, tenant_id, code, source, target, step, actor)
         VALUES ($1, $2, 'm1', 'control', 'shard_b', 'copied', 'test')",
    )
    .bind(move_id)
    .bind(m1.tenant_id)
    .execute(&f.pool)
    .await
    .unwrap();
    let w = f.worker().await;
    let js = js(&f.env).await;

    let id = f.create(req()).await;
    let s = f.wait_state(id, "succeeded").await;
    assert_eq!((s.done, s.skipped), (1, 1));
    let o = f.outcomes(id).await;
    let skipped = o.iter().find(|o| o.code == "m1").unwrap();
    assert!(
        skipped.error.as_deref().unwrap().starts_with(&format!(
            "tenant is being moved from control to shard_b (move {move_id}, step copied)"
        )),
        "{:?}",
        skipped.error
    );
    assert_eq!(f.runs("m1").await, 0);

    publish_json(&js, "tenant.deleted", &serde_json::json!({"code": "m1"})).await;
    let letters = wait_dead_letters(&js, 1).await;
    assert!(
        letters[0]
            .error
            .contains("tenant.deleted: tenant m1 is being moved from control to shard_b"),
        "{}",
        letters[0].error
    );

    publish_json(&js, "tenant.migrate", &serde_json::json!({"code": "m1"})).await;
    let retried = || {
        w.fleet
            .metrics
            .worker
            .retried
            .get_or_create(&fleet_shared::metrics::EventLabels {
                worker: provisioner::NAME.into(),
                event: "tenant.migrate".into(),
            })
            .get()
    };
    eventually(WAIT, "tenant.migrate retried", || async {
        (retried() >= 1).then_some(())
    })
    .await;
    assert_eq!(tenant(&f.pool, "m1").await.unwrap().schema_version, 1);
    sqlx::query("UPDATE fleet.tenant_moves SET state = 'done' WHERE move_id = $1")
        .bind(move_id)
        .execute(&f.pool)
        .await
        .unwrap();
    eventually(WAIT, "m1 migrated after the move", || async {
        (tenant(&f.pool, "m1").await.unwrap().schema_version == 2).then_some(())
    })
    .await;
    assert_eq!(f.runs("m1").await, 1);
    assert_eq!(
        dead_letters(&js).await.len(),
        1,
        "tenant.migrate waited, not refused"
    );
    w.stop().await;
}
