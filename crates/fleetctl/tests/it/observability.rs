//! The observability kit in deploy/observability: every metric the Grafana dashboard and the
//! Prometheus rules name is served by `/metrics` of a running `fleetctl up`, and the rules pass
//! `promtool check rules`.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use fleet_testkit::http::request;
use fleet_testkit::{find_binary, free_port, wait_for_port, TestEnv};

fn kit(file: &str) -> (String, String) {
    let path = format!(
        "{}/../../deploy/observability/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    (std::fs::read_to_string(&path).expect(file), path)
}

/// The metric families an expression text names (`fleet_x_total` → `fleet_x`).
fn named(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(p) = text[i..].find("fleet_") {
        let start = i + p;
        let before_ok =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len()
            && (b[end].is_ascii_lowercase() || b[end].is_ascii_digit() || b[end] == b'_')
        {
            end += 1;
        }
        if before_ok {
            let mut name = &text[start..end];
            for suffix in ["_total", "_bucket", "_sum", "_count"] {
                if let Some(s) = name.strip_suffix(suffix) {
                    name = s;
                }
            }
            out.insert(name.to_owned());
        }
        i = end.max(start + 1);
    }
    out
}

#[tokio::test]
async fn every_metric_the_kit_names_is_served_and_the_rules_check() {
    let (rules, rules_path) = kit("alerts.yml");
    let (dashboard, _) = kit("grafana-dashboard.json");
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("the dashboard is JSON");
    let mut wanted = named(&rules);
    wanted.extend(named(&dashboard));
    for must in [
        "fleet_ready",
        "fleet_consumer_pending",
        "fleet_scheduler_leader",
        "fleet_backfill_jobs",
    ] {
        assert!(wanted.contains(must), "the kit watches {must}");
    }

    let promtool = find_binary("promtool").expect("promtool (deploy/local/stack.sh test-tools)");
    let o = Command::new(promtool)
        .args(["check", "rules", &rules_path])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));

    let env = TestEnv::with_private_redis().await;
    let port = free_port();
    let mut up = Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(["up", "--no-console"])
        .env("NATS_URL", env.nats.url())
        .env("DATABASE_URL", &env.db.url)
        .env("REDIS_URL", &env.redis_url)
        .env("FLEET_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .env_remove("FLEET_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, Duration::from_secs(60)).unwrap();
    let addr = format!("127.0.0.1:{port}");
    // Each worker registers its families when it starts, so a ready fleet may still be
    // starting its scheduler: poll until every named family is served or the minute is up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (sampled, missing) = loop {
        let text = match request(&addr, "GET", "/metrics", &[], b"").await {
            Ok(r) => r.text(),
            Err(_) => String::new(),
        };
        let served: BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|m| !served.contains(m.as_str()))
            .collect();
        // The state gauges have values once the fleet is ready and sampled.
        let sampled = text.contains("fleet_ready 1") && text.contains("fleet_consumer_pending{");
        if (sampled && missing.is_empty()) || tokio::time::Instant::now() > deadline {
            break (
                sampled,
                missing.into_iter().cloned().collect::<Vec<String>>(),
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = up.kill();
    let _ = up.wait();
    assert!(
        sampled,
        "the fleet was not ready and sampled within a minute"
    );
    assert!(
        missing.is_empty(),
        "named by the kit but not served within a minute: {missing:?}"
    );
}
