//! The scheduler worker. (Skeleton: being built.)

use fleet_shared::Fleet;
use tokio_util::sync::CancellationToken;

pub const NAME: &str = "scheduler";
/// Whether `/readyz` of this worker's binary checks Redis.
pub const USES_REDIS: bool = false;

/// Runs the worker until `shutdown` is cancelled.
pub async fn run(fleet: Fleet, shutdown: CancellationToken) -> anyhow::Result<()> {
    let _ = fleet;
    shutdown.cancelled().await;
    Ok(())
}
