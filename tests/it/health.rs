//! `/healthz`, `/readyz` and `/metrics` over a real socket: readiness follows the dependencies.

use std::time::Duration;

use fleet_testkit::{eventually, TestEnv};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out[9..12].parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (code, body)
}

#[tokio::test]
async fn readiness_follows_dependencies_and_metrics_render() {
    let mut env = TestEnv::with_private_redis().await;
    let fleet = env.fleet(&[]).await;
    let stop = CancellationToken::new();
    let (addr, server) = fleet_shared::http::serve(
        "127.0.0.1:0".parse().unwrap(),
        fleet.http_state(true),
        stop.clone(),
    )
    .await
    .unwrap();

    assert_eq!(get(addr, "/healthz").await.0, 200);
    let (code, body) = get(addr, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, "nats ok\npostgres ok\nredis ok\n");
    let (code, body) = get(addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("# TYPE fleet_messages_received counter"),
        "{body}"
    );

    env.redis.as_mut().unwrap().stop();
    let (code, body) = get(addr, "/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("redis unavailable"), "{body}");

    env.nats.stop();
    eventually(Duration::from_secs(10), "nats reported down", || async {
        let (code, body) = get(addr, "/readyz").await;
        (code == 503 && body.contains("nats unavailable")).then_some(())
    })
    .await;

    env.redis.as_mut().unwrap().restart().unwrap();
    env.nats.restart().unwrap();
    eventually(Duration::from_secs(20), "ready again", || async {
        (get(addr, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    stop.cancel();
    server.await.unwrap();
}
