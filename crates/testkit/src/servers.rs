//! Private server processes on free loopback ports.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// Finds a server binary on `PATH` or in the usual Debian locations.
pub fn find_binary(name: &str) -> anyhow::Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("{name} is not installed (run deploy/local/stack.sh deps)"))
}

/// Waits until something accepts connections on `port`.
pub fn wait_for_port(port: u16, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("nothing listened on 127.0.0.1:{port} within {limit:?}")
}

struct Proc {
    child: Option<Child>,
}

impl Proc {
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private `nats-server` with JetStream.
pub struct NatsServer {
    pub port: u16,
    dir: tempfile::TempDir,
    /// Extra server configuration (authorization, TLS, limits), if any.
    config: Option<String>,
    proc: Proc,
}

impl NatsServer {
    pub fn start() -> anyhow::Result<NatsServer> {
        let dir = tempfile::tempdir()?;
        let mut s = NatsServer {
            port: free_port(),
            dir,
            config: None,
            proc: Proc { child: None },
        };
        s.restart()?;
        Ok(s)
    }

    /// With `config` added to the server's configuration file, e.g.
    /// `authorization { user: app, password: s3cret }`, `authorization { token: t0k }`,
    /// `authorization { users = [ { nkey: UABC... } ] }`, a `tls { ... }` block (see
    /// [`crate::TestCerts`]) or `max_payload: 65536`. Listen address and JetStream are set here.
    pub fn start_with_config(config: &str) -> anyhow::Result<NatsServer> {
        let dir = tempfile::tempdir()?;
        let mut s = NatsServer {
            port: free_port(),
            dir,
            config: Some(config.to_owned()),
            proc: Proc { child: None },
        };
        s.restart()?;
        Ok(s)
    }

    /// The server's own directory (store and configuration); tests may put files here.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL): clients see the connection drop.
    pub fn stop(&mut self) {
        self.proc.kill();
    }

    /// Starts (again) on the same port with the same store.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.proc.kill();
        let mut cmd = Command::new(find_binary("nats-server")?);
        match &self.config {
            None => {
                cmd.args([
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-js",
                    "-sd",
                ])
                .arg(self.dir.path());
            }
            Some(extra) => {
                let store = self.dir.path().join("js");
                let conf = format!(
                    "listen: 127.0.0.1:{}\njetstream {{ store_dir: {:?} }}\n{extra}\n",
                    self.port,
                    store.display().to_string()
                );
                let path = self.dir.path().join("nats.conf");
                std::fs::write(&path, conf)?;
                cmd.arg("-c").arg(path);
            }
        }
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        self.proc.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(10))
    }
}

/// A private `redis-server` keeping nothing on disk.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    proc: Proc,
}

impl RedisServer {
    pub fn start() -> anyhow::Result<RedisServer> {
        Self::start_with(&[])
    }

    /// With extra `redis-server` arguments (e.g. `--cluster-enabled yes`).
    pub fn start_with(extra: &[&str]) -> anyhow::Result<RedisServer> {
        let mut s = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir()?,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            proc: Proc { child: None },
        };
        s.restart()?;
        Ok(s)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn stop(&mut self) {
        self.proc.kill();
    }

    /// Starts (again) on the same port. Data does not survive (no persistence).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.proc.kill();
        let child = Command::new(find_binary("redis-server")?)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.proc.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(10))
    }
}
