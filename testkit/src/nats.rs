//! A real `nats-server -js` on a free loopback port, killed on drop.

use crate::tools::find_tool;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    config: Option<PathBuf>,
}

pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// Wait until a freshly spawned nats-server (`who` in messages) accepts
/// connections on `port`; panic with its log if it exits or never listens.
pub(crate) fn wait_listening(child: Option<&mut Child>, port: u16, who: &str, log: impl Fn() -> String) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut child = child;
    while Instant::now() < deadline {
        if let Some(child) = child.as_deref_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{who} exited early with {status}: {}", log());
            }
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{who} did not listen on {addr} within 15 s: {}", log());
}

impl NatsServer {
    /// Start with JetStream enabled and no authentication.
    pub fn start() -> Self {
        Self::start_with_config(None)
    }

    /// Start with an extra config file (e.g. accounts and per-device users).
    pub fn start_with_config(config: Option<&Path>) -> Self {
        let store = tempfile::tempdir().expect("tempdir for JetStream");
        let mut server = Self { child: None, port: free_port(), store, config: config.map(Path::to_path_buf) };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(find_tool("nats-server"));
        cmd.arg("-a").arg("127.0.0.1").arg("-p").arg(self.port.to_string());
        cmd.arg("-js").arg("-sd").arg(self.store.path());
        if let Some(cfg) = &self.config {
            cmd.arg("-c").arg(cfg);
        }
        let log = std::fs::File::create(self.store.path().join("nats-server.log")).expect("log file");
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().expect("spawn nats-server");
        self.child = Some(child);
        self.wait_listening();
    }

    fn wait_listening(&mut self) {
        let log_path = self.store.path().join("nats-server.log");
        let log = move || std::fs::read_to_string(&log_path).unwrap_or_default();
        wait_listening(self.child.as_mut(), self.port, "nats-server", log);
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's own log, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.store.path().join("nats-server.log")).unwrap_or_default()
    }

    /// Kill the server (SIGKILL, like a crash); JetStream data stays on disk.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same port with the same JetStream store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
