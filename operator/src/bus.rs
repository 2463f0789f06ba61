//! NATS connection and the JetStream handles the operator uses.

use crate::config::NatsConfig;
use crate::error::{Error, Result};
use async_nats::jetstream::{self, kv, object_store};
use harmony_protocol::names::{BUNDLE_OBJECT_BUCKET, HEARTBEAT_BUCKET, OFFER_BUCKET, OPERATOR_STATE_BUCKET};
use harmony_protocol::workload::{MANIFEST_BUCKET, OBJECT_BUCKET, WORKLOAD_STATUS_BUCKET};
use std::time::Duration;

/// The servers of `nats.url`: one URL, or several separated by commas (the
/// nodes of a cluster; the client picks one and reconnects across them).
pub fn server_addrs(url: &str) -> Result<Vec<async_nats::ServerAddr>> {
    let addrs: Vec<async_nats::ServerAddr> = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| u.parse().map_err(|e| Error::Invalid(format!("NATS URL {u:?}: {e}"))))
        .collect::<Result<_>>()?;
    if addrs.is_empty() {
        return Err(Error::Invalid("nats.url names no server".into()));
    }
    Ok(addrs)
}

/// Connects for the long-running server: keeps retrying until NATS is up.
pub async fn connect(cfg: &NatsConfig) -> Result<async_nats::Client> {
    let addrs = server_addrs(&cfg.url)?;
    options(cfg)
        .await?
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(addrs)
        .await
        .map_err(Error::nats)
}

/// Connects once, for a CLI command: an unreachable server is reported at
/// once, by URL, instead of every later request timing out.
pub async fn connect_once(cfg: &NatsConfig) -> Result<async_nats::Client> {
    let addrs = server_addrs(&cfg.url)?;
    options(cfg)
        .await?
        .connection_timeout(Duration::from_secs(3))
        .connect(addrs)
        .await
        .map_err(|e| Error::Unreachable { url: cfg.url.clone(), detail: e.to_string() })
}

async fn options(cfg: &NatsConfig) -> Result<async_nats::ConnectOptions> {
    let opts = if let Some(creds) = &cfg.credentials_file {
        async_nats::ConnectOptions::with_credentials_file(creds.clone()).await.map_err(|e| Error::io(creds, e))?
    } else if let Some(path) = &cfg.nkey_seed_file {
        let seed = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        async_nats::ConnectOptions::with_nkey(seed.trim().to_string())
    } else {
        async_nats::ConnectOptions::new()
    };
    Ok(opts
        .name("harmony-operator")
        // A paused or half-dead server keeps the TCP connection open; only
        // unanswered pings reveal it. At the default (60 s, two missed) the
        // operator would sit out minutes before moving to another node.
        .ping_interval(Duration::from_secs(5)))
}

/// The buckets, opened (they are created by `init`).
#[derive(Debug, Clone)]
pub struct Buckets {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub heartbeats: kv::Store,
    pub offers: kv::Store,
    pub state: kv::Store,
}

impl Buckets {
    pub async fn open(client: async_nats::Client) -> Result<Self> {
        let js = jetstream::new(client.clone());
        let open = |name: &'static str| {
            let js = js.clone();
            async move {
                js.get_key_value(name).await.map_err(|e| {
                    let e = e.to_string();
                    let hint = if e.contains("not found") { " (run `harmony-operator init`)" } else { "" };
                    Error::Nats(format!("bucket {name}: {e}{hint}"))
                })
            }
        };
        Ok(Self {
            heartbeats: open(HEARTBEAT_BUCKET).await?,
            offers: open(OFFER_BUCKET).await?,
            state: open(OPERATOR_STATE_BUCKET).await?,
            client,
            js,
        })
    }

    pub async fn bundles(&self) -> Result<object_store::ObjectStore> {
        self.object_store(BUNDLE_OBJECT_BUCKET).await
    }

    /// Workload content by SHA-256 (issue #15).
    pub async fn workload_objects(&self) -> Result<object_store::ObjectStore> {
        self.object_store(OBJECT_BUCKET).await
    }

    async fn object_store(&self, name: &str) -> Result<object_store::ObjectStore> {
        self.js
            .get_object_store(name)
            .await
            .map_err(|e| Error::Nats(format!("object store {name}: {e} (run `harmony-operator init`)")))
    }

    /// Signed workload manifests, key = device id. Opened on use rather
    /// than in [`Buckets::open`]: a fleet upgraded from before workloads
    /// keeps running until `init` is run again.
    pub async fn manifests(&self) -> Result<kv::Store> {
        self.kv(MANIFEST_BUCKET).await
    }

    /// What devices report of their workloads, key = device id.
    pub async fn workload_statuses(&self) -> Result<kv::Store> {
        self.kv(WORKLOAD_STATUS_BUCKET).await
    }

    async fn kv(&self, name: &str) -> Result<kv::Store> {
        self.js
            .get_key_value(name)
            .await
            .map_err(|e| Error::Nats(format!("bucket {name}: {e} (run `harmony-operator init`)")))
    }
}

/// Largest value of the manifest bucket: above the devices' limit on the
/// signed payload (`MAX_MANIFEST_BYTES`) with room for the envelope's
/// escaping, and within nats-server's default 1 MiB message.
pub const MANIFEST_MAX_VALUE_BYTES: usize = 1024 * 1024;

/// Limits for the buckets `init` creates.
#[derive(Debug, Clone)]
pub struct BucketLimits {
    /// Heartbeats of devices silent this long disappear from the registry.
    pub heartbeat_ttl: Duration,
    /// Cap of the bundle object store; `None`: as much as the server allows.
    pub max_bundle_bytes: Option<i64>,
    /// Copies of every bucket kept by a JetStream cluster (R1..R5).
    pub replicas: usize,
}

impl Default for BucketLimits {
    fn default() -> Self {
        Self { heartbeat_ttl: Duration::from_secs(7 * 24 * 3600), max_bundle_bytes: None, replicas: 1 }
    }
}

/// JetStream allows 1 to 5 replicas of a stream.
pub const MAX_REPLICAS: usize = 5;

/// Refuses a replica count the server cannot hold, before anything is
/// created: outside 1..=5, more than one on a server outside a cluster, or
/// more than the cluster's servers (when the server advertises them).
pub fn check_replicas(replicas: usize, info: &async_nats::ServerInfo) -> Result<()> {
    if !(1..=MAX_REPLICAS).contains(&replicas) {
        return Err(Error::Invalid(format!("--replicas {replicas}: JetStream keeps 1 to {MAX_REPLICAS} copies")));
    }
    match &info.cluster {
        None if replicas > 1 => Err(Error::Invalid(format!(
            "--replicas {replicas}: server {} is not part of a cluster, so it can keep only 1 copy",
            info.server_name
        ))),
        Some(name) if !info.connect_urls.is_empty() && replicas > info.connect_urls.len() => Err(Error::Invalid(
            format!("--replicas {replicas}: cluster {name} has only {} servers", info.connect_urls.len()),
        )),
        _ => Ok(()),
    }
}

/// Creates (or updates) every bucket; safe to run again.
pub async fn create_buckets(js: &jetstream::Context, limits: &BucketLimits) -> Result<()> {
    let kvs = [
        kv::Config {
            bucket: HEARTBEAT_BUCKET.into(),
            description: "device heartbeats, key = device id".into(),
            history: 1,
            max_age: limits.heartbeat_ttl,
            max_value_size: 64 * 1024,
            num_replicas: limits.replicas,
            ..Default::default()
        },
        kv::Config {
            bucket: OFFER_BUCKET.into(),
            description: "signed upgrade offers, key = device id".into(),
            history: 1,
            max_value_size: 64 * 1024,
            num_replicas: limits.replicas,
            ..Default::default()
        },
        kv::Config {
            bucket: OPERATOR_STATE_BUCKET.into(),
            description: "operator state: rollouts, jobs, offer sequence numbers, leader lease".into(),
            history: 1,
            max_value_size: 8 * 1024 * 1024,
            num_replicas: limits.replicas,
            ..Default::default()
        },
        kv::Config {
            bucket: MANIFEST_BUCKET.into(),
            description: "signed workload manifests, key = device id".into(),
            // A few earlier generations, to see what a device was given.
            history: 5,
            max_value_size: MANIFEST_MAX_VALUE_BYTES as i32,
            num_replicas: limits.replicas,
            ..Default::default()
        },
        kv::Config {
            bucket: WORKLOAD_STATUS_BUCKET.into(),
            description: "workload status written by each device, key = device id".into(),
            history: 1,
            max_value_size: 256 * 1024,
            num_replicas: limits.replicas,
            ..Default::default()
        },
    ];
    for cfg in kvs {
        let name = cfg.bucket.clone();
        js.create_or_update_key_value(cfg).await.map_err(|e| refused(&name, limits.replicas, e))?;
    }
    create_log_bucket(js, AUDIT_BUCKET, "audit log: who did what when, key = time-id", AUDIT_MAX_ENTRIES, limits)
        .await?;
    create_log_bucket(js, JOB_ARCHIVE_BUCKET, "finished jobs, key = <device>.<rollout>", JOB_ARCHIVE_MAX, limits)
        .await?;
    create_object_store(js, BUNDLE_OBJECT_BUCKET, "RAUC bundles", limits.max_bundle_bytes.unwrap_or(-1), limits)
        .await?;
    create_object_store(js, OBJECT_BUCKET, "workload contents and image archives, name = sha256", -1, limits).await?;
    Ok(())
}

/// Creates an object store, or sets an existing one's copy count (it keeps
/// its objects and its other settings).
async fn create_object_store(
    js: &jetstream::Context,
    name: &str,
    description: &str,
    max_bytes: i64,
    limits: &BucketLimits,
) -> Result<()> {
    if js.get_object_store(name).await.is_err() {
        js.create_object_store(object_store::Config {
            bucket: name.into(),
            description: Some(description.into()),
            max_bytes,
            num_replicas: limits.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| refused(name, limits.replicas, e))?;
        return Ok(());
    }
    let stream_name = format!("OBJ_{name}");
    let mut stream = js.get_stream(&stream_name).await.map_err(|e| refused(name, limits.replicas, e))?;
    let info = stream.info().await.map_err(|e| refused(name, limits.replicas, e))?;
    if info.config.num_replicas != limits.replicas {
        let mut config = info.config.clone();
        config.num_replicas = limits.replicas;
        js.update_stream(config).await.map_err(|e| refused(name, limits.replicas, e))?;
    }
    Ok(())
}

/// The server's own refusal, with the replica count asked for.
fn refused(bucket: &str, replicas: usize, e: impl std::fmt::Display) -> Error {
    Error::Nats(format!("create bucket {bucket} with {replicas} replica(s): the server refused: {e}"))
}

/// The audit log (issue #13): one entry per key, written once, never updated.
pub const AUDIT_BUCKET: &str = "harmony-audit";
/// Entries the audit log keeps; the oldest go first.
pub const AUDIT_MAX_ENTRIES: i64 = 1_000_000;
/// Finished rollout jobs, kept when a newer rollout replaces a device's job.
pub const JOB_ARCHIVE_BUCKET: &str = "harmony-job-archive";
/// Job records the archive keeps; the oldest go first.
pub const JOB_ARCHIVE_MAX: i64 = 1_000_000;

/// An append-only KV bucket bounded by a message count, dropping its oldest
/// entries (a KV bucket refuses new writes once full; a log must not).
async fn create_log_bucket(
    js: &jetstream::Context,
    name: &str,
    description: &str,
    max_messages: i64,
    limits: &BucketLimits,
) -> Result<()> {
    let store = js
        .create_or_update_key_value(kv::Config {
            bucket: name.into(),
            description: description.into(),
            history: 1,
            max_value_size: 1024 * 1024,
            num_replicas: limits.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| refused(name, limits.replicas, e))?;
    let mut stream = store.stream.clone();
    let info = stream.info().await.map_err(|e| refused(name, limits.replicas, e))?;
    if info.config.max_messages != max_messages || info.config.discard != jetstream::stream::DiscardPolicy::Old {
        let mut config = info.config.clone();
        config.max_messages = max_messages;
        config.discard = jetstream::stream::DiscardPolicy::Old;
        js.update_stream(config).await.map_err(|e| refused(name, limits.replicas, e))?;
    }
    Ok(())
}
