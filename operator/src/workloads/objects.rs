//! Workload content in the object store, named by its SHA-256 (file
//! contents too large to inline, container image archives). Devices check
//! the hash of what they fetch; the operator makes sure that what it stores
//! under a name really has that hash, so a file that changed between
//! reading the manifest and uploading is caught here, not on every device.

use super::LocalObject;
use crate::error::{Error, Result};
use async_nats::jetstream::object_store::{ObjectMetadata, ObjectStore};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// Stores `object` unless an object of that name, size and digest is
/// already there. Returns whether it uploaded.
pub async fn ensure(store: &ObjectStore, object: &LocalObject) -> Result<bool> {
    let name = object.sha256.as_str();
    if let Ok(info) = store.info(name).await {
        if !info.deleted && info.size as u64 == object.size && digest_is(info.digest.as_deref(), name) {
            return Ok(false);
        }
    }
    let mut file = tokio::fs::File::open(&object.path).await.map_err(|e| Error::io(&object.path, e))?;
    let meta = ObjectMetadata {
        name: name.to_string(),
        description: object.path.file_name().map(|n| n.to_string_lossy().into_owned()),
        chunk_size: Some(256 * 1024),
        ..Default::default()
    };
    let info = store.put(meta, &mut file).await.map_err(|e| Error::Nats(format!("upload {name}: {e}")))?;
    if info.size as u64 != object.size || !digest_is(info.digest.as_deref(), name) {
        // Never leave content under a name that is not its hash.
        let _ = store.delete(name).await;
        return Err(Error::Invalid(format!(
            "{} changed while it was uploaded (it no longer has SHA-256 {name}); apply again",
            object.path.display()
        )));
    }
    log::info!("workloads: stored object {name} ({} bytes) from {}", object.size, object.path.display());
    Ok(true)
}

/// Whether the object store's digest (`SHA-256=<base64url>`) is `sha256_hex`.
fn digest_is(digest: Option<&str>, sha256_hex: &str) -> bool {
    let Some(b64) = digest.and_then(|d| d.strip_prefix("SHA-256=")) else { return false };
    match (URL_SAFE_NO_PAD.decode(b64.trim_end_matches('=')), hex::decode(sha256_hex)) {
        (Ok(got), Ok(want)) => got == want,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn object_store_digests_compare_with_hex() {
        let sum = Sha256::digest(b"abc");
        let padded = format!("SHA-256={}", base64::engine::general_purpose::URL_SAFE.encode(sum));
        assert!(digest_is(Some(&padded), &hex::encode(sum)));
        assert!(!digest_is(Some(&padded), &hex::encode(Sha256::digest(b"abd"))));
        assert!(!digest_is(None, &hex::encode(sum)));
        assert!(!digest_is(Some("MD5=xyz"), &hex::encode(sum)));
    }
}
