//! The bundle store: read a RAUC bundle's manifest, upload it to the object
//! store with a progress bar, list and remove bundles.

use crate::bus::Buckets;
use crate::error::{Error, Result};
use crate::model::{keys, valid_name, BundleRecord};
use crate::store;
use harmony_protocol::time::UnixMillis;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

/// What `manifest.raucm` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub compatible: String,
    pub version: String,
}

/// Parses the `[update]` section of a RAUC manifest (a GKeyFile/INI file).
pub fn parse_manifest(text: &str) -> std::result::Result<Manifest, String> {
    let mut section = "";
    let (mut compatible, mut version) = (None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name;
            continue;
        }
        if section != "update" {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            match k.trim() {
                "compatible" => compatible = Some(v.trim().to_string()),
                "version" => version = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    match (compatible, version) {
        (Some(c), Some(v)) if !c.is_empty() && !v.is_empty() => Ok(Manifest { compatible: c, version: v }),
        _ if text.contains("[update]") => Err("manifest.raucm has no compatible and version in [update]".into()),
        _ => Err("manifest.raucm has no [update] section".into()),
    }
}

/// Reads `manifest.raucm` out of the bundle's squashfs with `unsquashfs -cat`.
/// A file that is not a squashfs, or has no manifest, is not a bundle.
pub fn read_manifest(path: &Path) -> Result<Manifest> {
    let not = |detail: String| Error::NotABundle { path: path.to_path_buf(), detail };
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).map_err(|e| Error::io(path, e))?;
    if &magic != b"hsqs" {
        return Err(not("no squashfs header".into()));
    }
    let unsquashfs = std::env::var_os("HARMONY_UNSQUASHFS").unwrap_or_else(|| "unsquashfs".into());
    let out = std::process::Command::new(unsquashfs)
        .arg("-cat")
        .arg(path)
        .arg("manifest.raucm")
        .output()
        .map_err(|e| not(format!("cannot run unsquashfs: {e}")))?;
    if !out.status.success() {
        return Err(not(format!("no manifest.raucm: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    parse_manifest(&String::from_utf8_lossy(&out.stdout)).map_err(not)
}

pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// SHA-256 of the bundle's signature block (`harmony_protocol::bundle_layout`),
/// what a streaming agent checks in place of the whole file's hash.
pub fn signature_sha256(path: &Path, size: u64) -> Result<String> {
    use harmony_protocol::bundle_layout::{signature_range, trailer_range};
    use std::io::{Seek, SeekFrom};
    let not = |detail: String| Error::NotABundle { path: path.to_path_buf(), detail };
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut trailer = [0u8; 8];
    let at = trailer_range(size).map_err(|e| not(e.to_string()))?.start;
    f.seek(SeekFrom::Start(at)).and_then(|_| f.read_exact(&mut trailer)).map_err(|e| Error::io(path, e))?;
    let range = signature_range(size, trailer).map_err(|e| not(e.to_string()))?;
    let mut block = vec![0u8; (range.end - range.start) as usize];
    f.seek(SeekFrom::Start(range.start)).and_then(|_| f.read_exact(&mut block)).map_err(|e| Error::io(path, e))?;
    Ok(hex::encode(Sha256::digest(&block)))
}

/// Wraps a reader and advances a progress bar.
struct Progress<R> {
    inner: R,
    bar: indicatif::ProgressBar,
}

impl<R: AsyncRead + Unpin> AsyncRead for Progress<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.bar.inc(n as u64);
        r
    }
}

/// Uploads a bundle. `id` defaults to the manifest version. Pushing the same
/// content again is a no-op; a different file under an existing id is refused.
pub async fn push(
    b: &Buckets,
    path: &Path,
    id: Option<&str>,
    show_progress: bool,
    now: UnixMillis,
) -> Result<BundleRecord> {
    let manifest = read_manifest(path)?;
    let (sha256, size) = sha256_file(path)?;
    let signature_sha256 = signature_sha256(path, size)?;
    let id = id.map(str::to_string).unwrap_or_else(|| manifest.version.clone());
    if !valid_name(&id) {
        return Err(Error::Invalid(format!("bundle id {id:?}: use letters, digits, '_', '-', '.'")));
    }
    if let Some(mut existing) = store::get_json::<BundleRecord>(&b.state, &keys::bundle(&id)).await? {
        if existing.sha256 == sha256 {
            if existing.signature_sha256.is_none() {
                // Recorded before streaming: the same file adds what a
                // streaming agent checks.
                existing.signature_sha256 = Some(signature_sha256);
                store::put_json(&b.state, &keys::bundle(&id), &existing).await?;
            }
            return Ok(existing);
        }
        return Err(Error::BundleExists(id));
    }
    let file = tokio::fs::File::open(path).await.map_err(|e| Error::io(path, e))?;
    let bar = if show_progress {
        let bar = indicatif::ProgressBar::new(size);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(id.clone());
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut reader = Progress { inner: file, bar: bar.clone() };
    let objects = b.bundles().await?;
    let meta = async_nats::jetstream::object_store::ObjectMetadata {
        name: id.clone(),
        description: Some(format!("{} {}", manifest.compatible, manifest.version)),
        chunk_size: Some(256 * 1024),
        ..Default::default()
    };
    objects.put(meta, &mut reader).await.map_err(|e| Error::Nats(format!("upload {id}: {e}")))?;
    bar.finish();
    let record = BundleRecord {
        id: id.clone(),
        version: manifest.version,
        compatible: manifest.compatible,
        sha256,
        size,
        pushed_at: now,
        signature_sha256: Some(signature_sha256),
    };
    store::put_json(&b.state, &keys::bundle(&id), &record).await?;
    Ok(record)
}

pub async fn get(b: &Buckets, id: &str) -> Result<BundleRecord> {
    store::get_json(&b.state, &keys::bundle(id)).await?.ok_or_else(|| Error::NoSuchBundle(id.into()))
}

/// Removes a bundle unless a rollout that is not finished uses it.
pub async fn remove(b: &Buckets, id: &str) -> Result<()> {
    get(b, id).await?;
    if let Some(r) = store::rollouts(&b.state).await?.good.into_iter().find(|r| r.uses_bundle(id)) {
        return Err(Error::BundleInUse { bundle: id.into(), rollout: r.id });
    }
    let objects = b.bundles().await?;
    if let Err(e) = objects.delete(id).await {
        log::warn!("object {id}: {e}");
    }
    b.state.delete(keys::bundle(id)).await.map_err(Error::nats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_update_section() {
        let m =
            parse_manifest("[update]\ncompatible=harmony-rpi4\nversion=2.1.0\n\n[bundle]\nformat=verity\n").unwrap();
        assert_eq!(m, Manifest { compatible: "harmony-rpi4".into(), version: "2.1.0".into() });
        assert!(parse_manifest("[bundle]\nformat=plain\n").is_err());
        assert!(parse_manifest("[update]\ncompatible=x\n").is_err());
        // keys of other sections do not leak into [update]
        assert!(parse_manifest("[image.rootfs]\nversion=1\n[update]\ncompatible=x\n").is_err());
    }

    #[test]
    fn a_non_squashfs_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v2.raucb");
        std::fs::write(&p, b"this is not a bundle, whatever its name says").unwrap();
        assert!(matches!(read_manifest(&p), Err(Error::NotABundle { .. })));
    }
}
