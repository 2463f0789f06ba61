//! NATS connection and the JetStream handles the operator uses.

use crate::config::NatsConfig;
use crate::error::{Error, Result};
use async_nats::jetstream::{self, kv, object_store};
use harmony_protocol::names::{BUNDLE_OBJECT_BUCKET, HEARTBEAT_BUCKET, OFFER_BUCKET, OPERATOR_STATE_BUCKET};
use std::time::Duration;

/// Connects for the long-running server: keeps retrying until NATS is up.
pub async fn connect(cfg: &NatsConfig) -> Result<async_nats::Client> {
    options(cfg)
        .await?
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(cfg.url.as_str())
        .await
        .map_err(Error::nats)
}

/// Connects once, for a CLI command: an unreachable server is reported at
/// once, by URL, instead of every later request timing out.
pub async fn connect_once(cfg: &NatsConfig) -> Result<async_nats::Client> {
    options(cfg)
        .await?
        .connection_timeout(Duration::from_secs(3))
        .connect(cfg.url.as_str())
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
    Ok(opts.name("harmony-operator"))
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
        self.js
            .get_object_store(BUNDLE_OBJECT_BUCKET)
            .await
            .map_err(|e| Error::Nats(format!("object store {BUNDLE_OBJECT_BUCKET}: {e} (run `harmony-operator init`)")))
    }
}

/// Limits for the buckets `init` creates.
#[derive(Debug, Clone)]
pub struct BucketLimits {
    /// Heartbeats of devices silent this long disappear from the registry.
    pub heartbeat_ttl: Duration,
    /// Cap of the bundle object store; `None`: as much as the server allows.
    pub max_bundle_bytes: Option<i64>,
}

impl Default for BucketLimits {
    fn default() -> Self {
        Self { heartbeat_ttl: Duration::from_secs(7 * 24 * 3600), max_bundle_bytes: None }
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
            ..Default::default()
        },
        kv::Config {
            bucket: OFFER_BUCKET.into(),
            description: "signed upgrade offers, key = device id".into(),
            history: 1,
            max_value_size: 64 * 1024,
            ..Default::default()
        },
        kv::Config {
            bucket: OPERATOR_STATE_BUCKET.into(),
            description: "operator state: rollouts, jobs, offer sequence numbers, leader lease".into(),
            history: 1,
            max_value_size: 8 * 1024 * 1024,
            ..Default::default()
        },
    ];
    for cfg in kvs {
        let name = cfg.bucket.clone();
        js.create_or_update_key_value(cfg).await.map_err(|e| Error::Nats(format!("create bucket {name}: {e}")))?;
    }
    if js.get_object_store(BUNDLE_OBJECT_BUCKET).await.is_err() {
        js.create_object_store(object_store::Config {
            bucket: BUNDLE_OBJECT_BUCKET.into(),
            description: Some("RAUC bundles".into()),
            max_bytes: limits.max_bundle_bytes.unwrap_or(-1),
            ..Default::default()
        })
        .await
        .map_err(|e| Error::Nats(format!("create object store {BUNDLE_OBJECT_BUCKET}: {e}")))?;
    }
    Ok(())
}
