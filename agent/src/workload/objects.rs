//! Workload content addressed by SHA-256 (file contents, container image
//! archives), fetched from the fleet's object store into a local cache on
//! /data. Nothing is used before its hash and size check out, so a changed
//! or truncated object can never be written to a managed path.

use crate::file_hash::sha256_file;
use futures::future::BoxFuture;
use harmony_protocol::workload::{is_sha256_hex, OBJECT_BUCKET};
use std::io::Write;
use std::path::{Path, PathBuf};
use tokio::io::AsyncReadExt;

/// Where objects come from.
pub trait ObjectSource: Send + Sync {
    /// Write the object named `sha256` into `dest` (a new file), at most
    /// `max` bytes; the caller checks the hash.
    fn fetch<'a>(&'a self, sha256: &'a str, max: u64, dest: &'a Path) -> BoxFuture<'a, Result<(), String>>;
}

/// The fleet's JetStream object store.
pub struct NatsObjects {
    pub js: async_nats::jetstream::Context,
}

impl ObjectSource for NatsObjects {
    fn fetch<'a>(&'a self, sha256: &'a str, max: u64, dest: &'a Path) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let store = self.js.get_object_store(OBJECT_BUCKET).await.map_err(|e| format!("object store: {e}"))?;
            let mut object = store.get(sha256).await.map_err(|e| format!("object {sha256}: {e}"))?;
            let mut file = std::fs::File::create(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0u64;
            loop {
                let n = object.read(&mut buf).await.map_err(|e| format!("object {sha256}: {e}"))?;
                if n == 0 {
                    break;
                }
                total += n as u64;
                if total > max {
                    return Err(format!("object {sha256} is larger than the {max} bytes the manifest says"));
                }
                file.write_all(&buf[..n]).map_err(|e| format!("{}: {e}", dest.display()))?;
            }
            file.sync_all().map_err(|e| format!("{}: {e}", dest.display()))
        })
    }
}

impl std::fmt::Debug for NatsObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NatsObjects")
    }
}

impl std::fmt::Debug for ObjectCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectCache").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// A verified, content-addressed cache of objects.
pub struct ObjectCache {
    dir: PathBuf,
    source: Box<dyn ObjectSource>,
}

impl ObjectCache {
    pub fn new(dir: PathBuf, source: Box<dyn ObjectSource>) -> Self {
        Self { dir, source }
    }

    /// The local path of object `sha256` of `size` bytes, fetched and
    /// verified first if it is not cached (or the cached copy is damaged).
    pub async fn get(&self, sha256: &str, size: u64) -> Result<PathBuf, String> {
        if !is_sha256_hex(sha256) {
            return Err(format!("{sha256:?} is not a SHA-256"));
        }
        let path = self.dir.join(sha256);
        if matches!(sha256_file(&path), Ok((h, n)) if h == sha256 && n == size) {
            return Ok(path);
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let tmp = crate::durable::temp_path(&path);
        let _ = std::fs::remove_file(&tmp);
        let fetched = async {
            self.source.fetch(sha256, size, &tmp).await?;
            let (hash, n) = sha256_file(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
            if n != size {
                return Err(format!("object {sha256} is {n} bytes, the manifest says {size}"));
            }
            if hash != sha256 {
                return Err(format!("object content hashes to {hash}, not {sha256}: digest mismatch"));
            }
            std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))
        };
        let result = fetched.await;
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map(|()| path)
    }

    /// Drop cached objects no longer referenced.
    pub fn retain(&self, keep: &std::collections::BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// Serves fixed bytes for any name.
    struct Fixed(Vec<u8>);
    impl ObjectSource for Fixed {
        fn fetch<'a>(&'a self, _: &'a str, _: u64, dest: &'a Path) -> BoxFuture<'a, Result<(), String>> {
            Box::pin(async move { std::fs::write(dest, &self.0).map_err(|e| e.to_string()) })
        }
    }

    fn sha(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    #[tokio::test]
    async fn verified_objects_are_cached_and_mismatches_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ObjectCache::new(dir.path().join("objects"), Box::new(Fixed(b"hello".to_vec())));
        let good = sha(b"hello");
        let path = cache.get(&good, 5).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello");
        let other = sha(b"other");
        let err = cache.get(&other, 5).await.unwrap_err();
        assert!(err.contains("digest mismatch"), "{err}");
        assert!(!dir.path().join("objects").join(&other).exists());
        let err = cache.get(&good, 4).await.unwrap_err();
        assert!(err.contains("5 bytes"), "{err}");
        cache.retain(&Default::default());
        assert!(!path.exists());
    }
}
