//! A worker running in-process, the way every worker test drives one.

use std::future::Future;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A worker's `run(.., token)` spawned on the test runtime. [`Running::stop`] is a graceful
/// shutdown that must succeed; [`Running::kill`] aborts the task mid-work, like a crash.
pub struct Running {
    pub token: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub fn spawn<F, Fut>(run: F) -> Running
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let token = CancellationToken::new();
        let task = tokio::spawn(run(token.clone()));
        Running { token, task }
    }

    /// Cancels the token and waits for the worker to return; panics if it failed.
    pub async fn stop(self) {
        self.token.cancel();
        self.task
            .await
            .expect("worker task panicked")
            .expect("worker returned an error");
    }

    /// Aborts the worker without a graceful shutdown (no lease released, nothing drained).
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}
