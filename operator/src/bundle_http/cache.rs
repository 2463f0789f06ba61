//! A local copy of each served bundle, so a Range request is a seek in a
//! file rather than a walk through the object store's 256 KiB chunks.
//!
//! Files are named by the bundle's SHA-256 and appear only by an atomic
//! rename after their content hashed to the bundle's recorded SHA-256 and
//! size: a file in the cache is a verified bundle. The first requests for a
//! bundle fetch it once; the others wait for that fetch. A bundle removed
//! while this process runs is still served to tokens issued for it (the
//! same bytes they were issued for) until they expire.

use crate::bus::Buckets;
use crate::model::BundleRecord;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("bundle {0} not found")]
    NotFound(String),
    /// The bundle under this name is not the one the token was issued for
    /// (removed and pushed again with other content).
    #[error("bundle {bundle} changed since the offer: it now hashes to {now}, the offer named {offered}")]
    Changed { bundle: String, offered: String, now: String },
    #[error("bundle {bundle} from the object store hashes to {actual} ({size} bytes), its record says {expected}")]
    Corrupt { bundle: String, expected: String, actual: String, size: u64 },
    #[error("object store: {0}")]
    Store(String),
    #[error("bundle cache {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl CacheError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_path_buf(), source }
    }
}

#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
    buckets: Buckets,
    /// One cell per bundle name and SHA-256: whoever comes first checks
    /// the record and fetches, the rest wait for that.
    fetches: Mutex<HashMap<String, Arc<OnceCell<PathBuf>>>>,
    /// Bundles fetched from the object store (logged, and checked by the
    /// tests: concurrent first requests fetch once).
    fetched: AtomicU64,
}

impl Cache {
    pub fn new(dir: PathBuf, buckets: Buckets) -> Self {
        Self { dir, buckets, fetches: Mutex::new(HashMap::new()), fetched: AtomicU64::new(0) }
    }

    /// How many bundles this process fetched from the object store.
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// The verified local file of bundle `id` whose content must hash to
    /// `sha256` (from the token), fetched on first use.
    pub async fn file(&self, id: &str, sha256: &str) -> Result<PathBuf, CacheError> {
        // The name becomes a file name: only a SHA-256 may.
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(CacheError::Changed { bundle: id.into(), offered: sha256.into(), now: "?".into() });
        }
        let cell = {
            let mut fetches = self.fetches.lock().unwrap_or_else(|p| p.into_inner());
            fetches.entry(format!("{id}/{sha256}")).or_default().clone()
        };
        cell.get_or_try_init(|| self.fetch(id, sha256)).await.cloned()
    }

    async fn fetch(&self, id: &str, sha256: &str) -> Result<PathBuf, CacheError> {
        // Asked once per name and content in this process, even when the
        // file is there: a token names a bundle, and only a bundle that
        // exists under that name with that content is served.
        let record: BundleRecord = crate::bundle::get(&self.buckets, id).await.map_err(|e| match e {
            crate::Error::NoSuchBundle(_) => CacheError::NotFound(id.into()),
            other => CacheError::Store(other.to_string()),
        })?;
        if record.sha256 != sha256 {
            return Err(CacheError::Changed { bundle: id.into(), offered: sha256.into(), now: record.sha256 });
        }
        let path = self.dir.join(format!("{sha256}.raucb"));
        if tokio::fs::try_exists(&path).await.map_err(|e| CacheError::io(&path, e))? {
            return Ok(path); // verified before it was renamed there
        }
        tokio::fs::create_dir_all(&self.dir).await.map_err(|e| CacheError::io(&self.dir, e))?;
        let part = self.dir.join(format!("{sha256}.part-{}", std::process::id()));
        self.fetched.fetch_add(1, Ordering::Relaxed);
        let result = self.download(&record, &part).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&part).await;
        }
        result?;
        tokio::fs::rename(&part, &path).await.map_err(|e| CacheError::io(&path, e))?;
        log::info!("bundle {id}: cached at {} ({} bytes, sha256 verified)", path.display(), record.size);
        Ok(path)
    }

    async fn download(&self, record: &BundleRecord, part: &Path) -> Result<(), CacheError> {
        let store = self.buckets.bundles().await.map_err(|e| CacheError::Store(e.to_string()))?;
        let mut object =
            store.get(&record.id).await.map_err(|e| CacheError::Store(format!("get {}: {e}", record.id)))?;
        let mut file = tokio::fs::File::create(part).await.map_err(|e| CacheError::io(part, e))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = object.read(&mut buf).await.map_err(|e| CacheError::Store(format!("read {}: {e}", record.id)))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
            file.write_all(&buf[..n]).await.map_err(|e| CacheError::io(part, e))?;
        }
        let actual = hex::encode(hasher.finalize());
        if actual != record.sha256 || size != record.size {
            return Err(CacheError::Corrupt {
                bundle: record.id.clone(),
                expected: record.sha256.clone(),
                actual,
                size,
            });
        }
        // Durable before the rename makes it visible as verified.
        file.sync_all().await.map_err(|e| CacheError::io(part, e))
    }
}
