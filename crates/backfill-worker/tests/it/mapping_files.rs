//! `mapping_path` in a `backfill.submit` over NATS: only regular files under `[backfill]
//! mapping_dir`, refused at once for a FIFO, a device, a directory, a huge file, a path outside
//! the directory and a symlink escaping it, while the worker's `/healthz` keeps answering and a
//! valid job submitted afterwards is still created. Without `mapping_dir` every path is refused.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use fleet_shared::dlq;
use fleet_testkit::{eventually, TestEnv};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

async fn healthz(addr: std::net::SocketAddr) -> bool {
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        out.starts_with("HTTP/1.0 200").then_some(())
    };
    tokio::time::timeout(Duration::from_secs(10), probe)
        .await
        .ok()
        .flatten()
        .is_some()
}

async fn publish(js: &async_nats::jetstream::Context, spec: serde_json::Value) {
    js.publish("backfill.submit", serde_json::to_vec(&spec).unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_mapping_paths_are_refused_without_blocking_the_worker() {
    let env = TestEnv::new().await;
    let dir = tempfile::tempdir().unwrap();
    let maps = dir.path().join("maps");
    std::fs::create_dir(&maps).unwrap();
    std::fs::write(
        maps.join("good.csv"),
        "organization_id,organization_code,tenant_code\n1,org_a,ten_a\n",
    )
    .unwrap();
    let fifo = maps.join("fifo.csv");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    std::fs::create_dir(maps.join("sub.csv")).unwrap();
    let huge = std::fs::File::create(maps.join("huge.csv")).unwrap();
    huge.set_len(8 * 1024 * 1024).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", maps.join("escape.csv")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", maps.join("zero.csv")).unwrap();
    std::fs::write(dir.path().join("outside.csv"), "x").unwrap();

    let config = config_file(&format!(
        "{FAST_CONFIG}mapping_dir = {:?}\nmapping_max_bytes = 1048576\n",
        maps.display().to_string()
    ));
    let replica = Replica::start(&env, &config).await;
    let pool = env.db.pool().await;
    items(&pool, 10).await;
    let token = CancellationToken::new();
    let (addr, http) = fleet_shared::http::serve(
        "127.0.0.1:0".parse().unwrap(),
        replica.fleet.http_state(false),
        token.clone(),
    )
    .await
    .unwrap();

    // /healthz polled throughout; every probe must answer.
    let stop = Arc::new(AtomicBool::new(false));
    let (probes, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let prober = {
        let (stop, probes, failed) = (stop.clone(), probes.clone(), failed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if !healthz(addr).await {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                probes.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let js = replica.fleet.js.clone();
    let cases = [
        ("fifo.csv".to_owned(), "is a FIFO"),
        ("sub.csv".to_owned(), "is a directory"),
        (
            "huge.csv".to_owned(),
            "larger than [backfill] mapping_max_bytes",
        ),
        (
            "escape.csv".to_owned(),
            "resolves outside [backfill] mapping_dir",
        ),
        (
            "zero.csv".to_owned(),
            "resolves outside [backfill] mapping_dir",
        ),
        (
            "/dev/zero".to_owned(),
            "resolves outside [backfill] mapping_dir",
        ),
        (
            "../outside.csv".to_owned(),
            "resolves outside [backfill] mapping_dir",
        ),
        (fifo.display().to_string(), "is a FIFO"),
        ("missing.csv".to_owned(), "cannot resolve it"),
    ];
    for (path, _) in &cases {
        publish(&js, json!({"kind": "tenant_codes", "mapping_path": path})).await;
    }
    // A valid job after them.
    let job_id = uuid::Uuid::new_v4();
    publish(
        &js,
        json!({"job_id": job_id, "kind": "sql", "table": "items", "statement": "UPDATE items SET c = c + 1 WHERE id > $1 AND id <= $2"}),
    )
    .await;

    let letters = eventually(WAIT, "every hostile spec dead-lettered", || async {
        let l = dlq::list(&js, Some(backfill_worker::NAME), 100)
            .await
            .ok()?;
        (l.len() >= cases.len()).then_some(l)
    })
    .await;
    for (path, why) in &cases {
        let shown = format!("{path:?}");
        let letter = letters
            .iter()
            .find(|l| l.error.contains(&format!("mapping_path {shown}")))
            .unwrap_or_else(|| panic!("no letter for {path}: {letters:#?}"));
        assert!(letter.error.contains(why), "{path}: {}", letter.error);
    }
    eventually(WAIT, "the valid job created after them", || async {
        backfill_worker::get_job(&pool, job_id)
            .await
            .unwrap()
            .map(|_| ())
    })
    .await;
    // A readable file inside the directory gets past the file checks (whatever the catalog says).
    publish(
        &js,
        json!({"kind": "tenant_codes", "mapping_path": "good.csv"}),
    )
    .await;
    let good = eventually(WAIT, "the good mapping handled", || async {
        let l = dlq::list(&js, Some(backfill_worker::NAME), 100)
            .await
            .ok()?;
        (l.len() > cases.len()).then(|| l.last().cloned()).flatten()
    })
    .await;
    assert!(!good.error.contains("mapping_path"), "{}", good.error);

    stop.store(true, Ordering::Relaxed);
    prober.await.unwrap();
    assert!(probes.load(Ordering::Relaxed) > 0);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "/healthz stopped answering"
    );
    token.cancel();
    let _ = http.await;
    replica.stop().await;
}

#[tokio::test]
async fn without_mapping_dir_no_path_is_read() {
    let env = TestEnv::new().await;
    let config = config_file(FAST_CONFIG);
    let replica = Replica::start(&env, &config).await;
    let js = replica.fleet.js.clone();
    publish(
        &js,
        json!({"kind": "tenant_codes", "mapping_path": "/etc/hostname"}),
    )
    .await;
    let letters = eventually(WAIT, "dead-lettered", || async {
        let l = dlq::list(&js, None, 10).await.ok()?;
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert!(
        letters[0].error.contains("mapping_dir is not set"),
        "{}",
        letters[0].error
    );
    replica.stop().await;
}
