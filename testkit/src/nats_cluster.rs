//! A real 3-node NATS JetStream cluster on loopback, for chaos tests and the
//! benchmark: every node has its own client port, route port and store
//! directory; each can be killed (SIGKILL), restarted on the same ports with
//! the same store, or paused (SIGSTOP) and resumed (SIGCONT).

use crate::nats::{free_port, wait_listening};
use crate::tools::find_tool;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The cluster's name in every node's `cluster { name }`.
pub const CLUSTER_NAME: &str = "harmony-test";

#[derive(Debug)]
pub struct NatsNode {
    /// `server_name`, which JetStream reports as a stream's leader.
    pub name: String,
    pub port: u16,
    pub route_port: u16,
    dir: PathBuf,
    child: Option<Child>,
    paused: bool,
}

#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsNode>,
    _root: tempfile::TempDir,
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().expect("run kill");
    assert!(status.success(), "kill -{sig} {pid} failed");
}

impl NatsNode {
    fn config(&self, routes: &[u16]) -> String {
        let routes: Vec<String> = routes.iter().map(|p| format!("\"nats-route://127.0.0.1:{p}\"")).collect();
        format!(
            "server_name: \"{name}\"\nlisten: \"127.0.0.1:{port}\"\n\
             jetstream {{ store_dir: \"{store}\" }}\n\
             cluster {{\n  name: \"{CLUSTER_NAME}\"\n  listen: \"127.0.0.1:{route}\"\n  routes: [{routes}]\n}}\n",
            name = self.name,
            port = self.port,
            store = self.dir.join("js").display(),
            route = self.route_port,
            routes = routes.join(", "),
        )
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("nats-server.log")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("log file");
        let child = Command::new(find_tool("nats-server"))
            .arg("-c")
            .arg(self.dir.join("server.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        self.paused = false;
        self.wait_listening();
    }

    fn wait_listening(&mut self) {
        let log_path = self.log_path();
        let log = move || std::fs::read_to_string(&log_path).unwrap_or_default();
        let who = format!("nats-server {}", self.name);
        wait_listening(self.child.as_mut(), self.port, &who, log);
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The node's own log, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL, like a crash or a power cut; the store stays on disk.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.paused {
                signal(child.id(), "CONT");
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// Start again on the same ports with the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGSTOP: the process stays, its sockets stay open, it answers nothing.
    pub fn pause(&mut self) {
        if let (Some(pid), false) = (self.pid(), self.paused) {
            signal(pid, "STOP");
            self.paused = true;
        }
    }

    /// SIGCONT after [`NatsNode::pause`].
    pub fn resume(&mut self) {
        if let (Some(pid), true) = (self.pid(), self.paused) {
            signal(pid, "CONT");
            self.paused = false;
        }
    }
}

impl NatsCluster {
    /// Starts `size` nodes routed to each other, JetStream on each, and
    /// waits until JetStream has a meta leader (so buckets can be created).
    pub fn start(size: usize) -> Self {
        Self::start_with(size, "")
    }

    /// Like [`NatsCluster::start`], with `extra` appended to every node's
    /// config (e.g. the accounts and auth-callout block of callout mode).
    pub fn start_with(size: usize, extra: &str) -> Self {
        assert!(size >= 1, "a cluster needs at least one node");
        let root = tempfile::tempdir().expect("tempdir for the cluster");
        let mut nodes: Vec<NatsNode> = (0..size)
            .map(|i| {
                let dir = root.path().join(format!("n{}", i + 1));
                std::fs::create_dir_all(&dir).expect("node dir");
                NatsNode {
                    name: format!("n{}", i + 1),
                    port: free_port(),
                    route_port: free_port(),
                    dir,
                    child: None,
                    paused: false,
                }
            })
            .collect();
        let routes: Vec<u16> = nodes.iter().map(|n| n.route_port).collect();
        for node in &nodes {
            let text = format!("{}{extra}", node.config(&routes));
            std::fs::write(node.dir.join("server.conf"), text).expect("write server.conf");
        }
        for node in &mut nodes {
            node.spawn();
        }
        let cluster = Self { nodes, _root: root };
        if extra.is_empty() {
            cluster.wait_jetstream_ready(Duration::from_secs(30));
        }
        // With `extra` the nodes may require credentials: the caller waits
        // with its own (`wait_jetstream_ready_as`).
        cluster
    }

    pub fn nodes(&self) -> &[NatsNode] {
        &self.nodes
    }

    pub fn node(&mut self, i: usize) -> &mut NatsNode {
        &mut self.nodes[i]
    }

    /// The index of the node named `name` (as JetStream reports leaders).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Every node's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsNode::url).collect()
    }

    /// Every node's client URL, comma-separated (the operator's `nats.url`).
    pub fn url_list(&self) -> String {
        self.urls().join(",")
    }

    /// Waits until a JetStream account-info request is answered, which
    /// needs an elected meta leader.
    pub fn wait_jetstream_ready(&self, within: Duration) {
        self.wait_jetstream_ready_as(within, None)
    }

    /// [`NatsCluster::wait_jetstream_ready`] as the nkey user whose seed is given.
    pub fn wait_jetstream_ready_as(&self, within: Duration, nkey_seed: Option<String>) {
        // Its own thread and runtime: callers may be inside a runtime already.
        let url = self.urls()[0].clone();
        let ready = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let deadline = Instant::now() + within;
                while Instant::now() < deadline {
                    let opts = match &nkey_seed {
                        Some(seed) => async_nats::ConnectOptions::with_nkey(seed.clone()),
                        None => async_nats::ConnectOptions::new(),
                    };
                    if let Ok(client) = opts.connect(url.as_str()).await {
                        if async_nats::jetstream::new(client).query_account().await.is_ok() {
                            return true;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                false
            })
        });
        assert!(ready.join().expect("readiness thread"), "JetStream cluster had no meta leader within {within:?}");
    }

    /// Restart every node (all killed first, then all started), like a
    /// power cut of the whole control plane.
    pub fn restart_all(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        for node in &mut self.nodes {
            node.spawn();
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }
}

/// The server name of the current leader of `stream`, from the JetStream API
/// (`$JS.API.STREAM.INFO.<stream>` → `cluster.leader`); `None` while the
/// stream has no leader or the request fails.
pub async fn stream_leader(client: &async_nats::Client, stream: &str) -> Option<String> {
    let subject = format!("$JS.API.STREAM.INFO.{stream}");
    let reply = tokio::time::timeout(Duration::from_secs(2), client.request(subject, "".into())).await.ok()?.ok()?;
    let info: serde_json::Value = serde_json::from_slice(&reply.payload).ok()?;
    info.get("cluster")?.get("leader")?.as_str().map(str::to_string)
}
