//! Helpers shared by the job runtime's tests: publishing jobs fast, and a runtime running
//! in-process with a handler of the test's choosing.

use std::future::IntoFuture;
use std::sync::Arc;

use async_nats::jetstream;
use fleet_jobs::{JobHandler, RuntimeSpec};
use fleet_shared::Fleet;
use fleet_testkit::Running;
use futures::future::join_all;

/// Publishes `(subject, body)` pairs, pipelined, and waits for every ack.
pub async fn publish_all(js: &jetstream::Context, jobs: Vec<(String, serde_json::Value)>) {
    for chunk in jobs.chunks(1000) {
        let mut acks = Vec::new();
        for (subject, body) in chunk {
            acks.push(
                js.publish(subject.clone(), serde_json::to_vec(body).unwrap().into())
                    .await
                    .unwrap()
                    .into_future(),
            );
        }
        for ack in join_all(acks).await {
            ack.unwrap();
        }
    }
}

/// A runtime for `spec` with `handler`, on `fleet`.
pub fn start<J: JobHandler>(fleet: &Fleet, spec: RuntimeSpec, handler: Arc<J>) -> Running {
    let fleet = fleet.clone();
    Running::spawn(move |t| async move { fleet_jobs::run_fleet(&fleet, spec, handler, t).await })
}
