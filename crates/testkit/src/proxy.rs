//! A TCP proxy on loopback whose connections can be cut, to simulate a dependency that is
//! unreachable for a while.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct TcpProxy {
    pub port: u16,
    down: Arc<AtomicBool>,
    generation: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl TcpProxy {
    /// Proxies a fresh loopback port to `target` (`host:port`).
    pub async fn start(target: &str) -> anyhow::Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let down = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let target = target.to_owned();
        let (d, g, s) = (down.clone(), generation.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = s.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((mut inbound, _)) = accepted else {
                    continue;
                };
                if d.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let cut = g.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = cut.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Ok(TcpProxy {
            port,
            down,
            generation,
            stop,
        })
    }

    /// Cuts every open connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        let mut g = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        g.cancel();
        *g = CancellationToken::new();
    }

    pub fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }

    /// `host:port` of the proxy.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}
