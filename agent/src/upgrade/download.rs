//! Resumable bundle download into the state directory, hashing as it writes.
//!
//! Files: `bundle.raucb.part` (bytes so far), `bundle.resume.json` (how far
//! the part file is known-good, which bundle it belongs to, and for the
//! object store the stream sequence of the last chunk written). The sidecar
//! is written after the part file is fsynced, so after a power cut the part
//! file is at least as long as the sidecar says; it is truncated to that
//! length and the download continues from there.

use futures::StreamExt;
use harmony_protocol::BundleSource;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::http_get;
use super::record::write_atomically;

/// Persist the resume point at most this often (each costs two fsyncs).
const CHECKPOINT_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("not enough free space: need {needed} bytes, have {available}")]
    NoSpace { needed: u64, available: u64 },
    /// The source refused or does not match the offer: retrying will not help.
    #[error("{0}")]
    Source(String),
    /// The network or the server went away mid-way: worth a retry from the
    /// checkpoint.
    #[error("{0}")]
    Interrupted(String),
    #[error("local file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("bundle source has neither an object name nor a URL")]
    NoSource,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
struct ResumePoint {
    sha256: String,
    bytes: u64,
    /// Object-store object version (nuid) and last chunk's stream sequence.
    nuid: Option<String>,
    stream_seq: Option<u64>,
}

/// Result of a finished download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    pub path: PathBuf,
    /// Lower-case hex SHA-256 of the whole file.
    pub sha256: String,
    /// Bytes fetched over the network by this call (less than the size when
    /// it resumed).
    pub fetched: u64,
    /// Offsets at which this call resumed after an interruption, in order.
    pub resumed_at: Vec<u64>,
}

/// How a download rides out interruptions within one run: retry from the
/// checkpoint with exponential backoff; give up after `attempts` attempts in
/// a row that each added no byte (an attempt that made progress resets the
/// count, so a link that keeps dropping but keeps delivering still finishes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// No byte for this long counts as an interruption.
    pub stall_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // Worst case before `download_failed`: 1+2+4+8+16 s of backoff plus
        // six stalls; a few minutes of outage does not cost the job.
        Self {
            attempts: 6,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Wait before retry number `failures` (1-based).
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.saturating_sub(1)).unwrap_or(u32::MAX);
        self.first_backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

#[derive(Debug, Clone)]
pub struct BundleFiles {
    dir: PathBuf,
}

impl BundleFiles {
    pub fn new(state_dir: &Path) -> Self {
        Self { dir: state_dir.join("download") }
    }
    pub fn part(&self) -> PathBuf {
        self.dir.join("bundle.raucb.part")
    }
    pub fn resume(&self) -> PathBuf {
        self.dir.join("bundle.resume.json")
    }
    /// The complete, not yet verified bundle.
    pub fn complete(&self) -> PathBuf {
        self.dir.join("bundle.raucb")
    }
    /// The CAs RAUC trusts for a streamed `https://` bundle (written just
    /// before the install; see `http_get::trust_pem`).
    pub fn stream_trust(&self) -> PathBuf {
        self.dir.join("stream-trust.pem")
    }
    pub fn remove_all(&self) {
        for p in [self.part(), self.resume(), self.complete(), self.stream_trust()] {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Where bundles come from: the JetStream context for the object store and
/// the bucket name.
#[derive(Debug, Clone)]
pub struct Downloader {
    pub js: async_nats::jetstream::Context,
    pub bucket: String,
    pub files: BundleFiles,
    /// 0 = unlimited. Spares metered links; also lets tests interrupt mid-way.
    pub max_bytes_per_sec: u64,
    /// Extra CA (PEM) trusted for https:// bundle URLs, besides the system's.
    pub https_ca_file: Option<PathBuf>,
    pub retry: RetryPolicy,
}

struct Sink<'a> {
    file: std::fs::File,
    path: PathBuf,
    hasher: Sha256,
    point: ResumePoint,
    resume_path: PathBuf,
    last_checkpoint: u64,
    fetched: u64,
    total: u64,
    started: Instant,
    max_rate: u64,
    progress: &'a mut (dyn FnMut(u64, u64) + Send),
}

impl Sink<'_> {
    async fn write(&mut self, chunk: &[u8], stream_seq: Option<u64>) -> Result<(), DownloadError> {
        self.file.write_all(chunk).map_err(|source| DownloadError::Io { path: self.path.clone(), source })?;
        self.hasher.update(chunk);
        let n = chunk.len() as u64;
        self.point.bytes += n;
        self.fetched += n;
        if stream_seq.is_some() {
            self.point.stream_seq = stream_seq;
        }
        if self.point.bytes - self.last_checkpoint >= CHECKPOINT_BYTES {
            self.checkpoint()?;
        }
        (self.progress)(self.point.bytes, self.total);
        if self.max_rate > 0 {
            let due = Duration::from_secs_f64(self.fetched as f64 / self.max_rate as f64);
            let elapsed = self.started.elapsed();
            if due > elapsed {
                tokio::time::sleep(due - elapsed).await;
            }
        }
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<(), DownloadError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DownloadError::Io { path, source }
        };
        self.file.sync_data().map_err(io(&self.path))?;
        let bytes = serde_json::to_vec(&self.point).map_err(|e| io(&self.resume_path)(std::io::Error::other(e)))?;
        write_atomically(&self.resume_path, &bytes).map_err(io(&self.resume_path))?;
        self.last_checkpoint = self.point.bytes;
        Ok(())
    }
}

impl Downloader {
    /// Download (or finish downloading) `source` to `files.complete()`.
    /// `progress(done, total)` is called after every chunk; throttle it there.
    pub async fn fetch(
        &self,
        source: &BundleSource,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<Downloaded, DownloadError> {
        let complete = self.files.complete();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DownloadError::Io { path, source }
        };
        std::fs::create_dir_all(&self.files.dir).map_err(io(&self.files.dir))?;
        let mut point = self.load_resume_point(source);
        let part = self.files.part();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&part)
            .map_err(io(&part))?;
        file.set_len(point.bytes).map_err(io(&part))?;
        // Rebuild the hash state from what is already on disk.
        let mut hasher = Sha256::new();
        file.seek(SeekFrom::Start(0)).map_err(io(&part))?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf).map_err(io(&part))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let needed = source.size.saturating_sub(point.bytes);
        let available = free_bytes(&self.files.dir).map_err(io(&self.files.dir))?;
        if needed > available {
            return Err(DownloadError::NoSpace { needed, available });
        }
        if point.bytes > 0 {
            log::info!("resuming bundle download at {} of {} bytes", point.bytes, source.size);
        } else {
            log::info!("downloading bundle ({} bytes) from the start", source.size);
        }
        point.sha256 = source.sha256.clone();
        let mut sink = Sink {
            file,
            path: part.clone(),
            hasher,
            last_checkpoint: point.bytes,
            point,
            resume_path: self.files.resume(),
            fetched: 0,
            total: source.size,
            started: Instant::now(),
            max_rate: self.max_bytes_per_sec,
            progress,
        };
        let mut resumed_at = Vec::new();
        let mut failures = 0u32;
        let fetched = loop {
            let before = sink.point.bytes;
            let attempt = if let Some(object) = &source.object {
                self.fetch_object(object, &mut sink).await
            } else if let Some(url) = &source.url {
                fetch_http(url, self.https_ca_file.as_deref(), &mut sink, self.retry.stall_timeout).await
            } else {
                Err(DownloadError::NoSource)
            };
            let e = match attempt {
                Err(DownloadError::Interrupted(e)) => e,
                other => break other,
            };
            // Keep what arrived: the retry (or a later run) starts there.
            sink.checkpoint()?;
            failures = if sink.point.bytes > before { 1 } else { failures + 1 };
            if failures >= self.retry.attempts {
                break Err(DownloadError::Interrupted(format!(
                    "{e} (gave up after {failures} attempts in a row without progress)"
                )));
            }
            let wait = self.retry.backoff(failures);
            log::warn!(
                "bundle download interrupted at {} of {} bytes: {e}; resuming in {wait:?} (attempt {} of {})",
                sink.point.bytes,
                sink.total,
                failures + 1,
                self.retry.attempts
            );
            tokio::time::sleep(wait).await;
            resumed_at.push(sink.point.bytes);
        };
        if let Err(e) = fetched {
            // What was written is good: keep it as the resume point.
            if let Err(c) = sink.checkpoint() {
                log::warn!("could not save the download resume point: {c}");
            }
            return Err(e);
        }
        sink.checkpoint()?;
        drop(sink.file);
        std::fs::rename(&part, &complete).map_err(io(&complete))?;
        let _ = std::fs::remove_file(self.files.resume());
        Ok(Downloaded {
            path: complete,
            sha256: hex::encode(sink.hasher.finalize()),
            fetched: sink.fetched,
            resumed_at,
        })
    }

    fn load_resume_point(&self, source: &BundleSource) -> ResumePoint {
        let saved: Option<ResumePoint> =
            std::fs::read(self.files.resume()).ok().and_then(|b| serde_json::from_slice(&b).ok());
        match saved {
            Some(p) if p.sha256 == source.sha256 && p.bytes <= source.size => p,
            _ => {
                // Different bundle or no usable record: start over.
                self.files.remove_all();
                ResumePoint::default()
            }
        }
    }

    async fn fetch_object(&self, object: &str, sink: &mut Sink<'_>) -> Result<(), DownloadError> {
        use async_nats::jetstream::consumer::{push::OrderedConfig, DeliverPolicy};
        // NATS away, a stream or consumer not reachable: all transient.
        let src =
            |what: &str, e: &dyn std::fmt::Display| DownloadError::Interrupted(format!("object store {what}: {e}"));
        let store = self.js.get_object_store(&self.bucket).await.map_err(|e| src("bucket", &e))?;
        let info = store.info(object).await.map_err(|e| src(&format!("object {object}"), &e))?;
        if info.size as u64 != sink.total {
            return Err(DownloadError::Source(format!(
                "object {object} is {} bytes, the offer says {}",
                info.size, sink.total
            )));
        }
        if sink.point.nuid.as_deref() != Some(info.nuid.as_str()) {
            // A different upload under the same name: the saved chunks do not apply.
            if sink.point.bytes > 0 {
                log::warn!("object {object} was replaced since the download started; starting over");
                sink.file.set_len(0).map_err(|source| DownloadError::Io { path: sink.path.clone(), source })?;
                sink.file
                    .seek(SeekFrom::Start(0))
                    .map_err(|source| DownloadError::Io { path: sink.path.clone(), source })?;
                sink.hasher = Sha256::new();
                sink.point.bytes = 0;
                sink.point.stream_seq = None;
            }
            sink.point.nuid = Some(info.nuid.clone());
        }
        sink.file.seek(SeekFrom::End(0)).map_err(|source| DownloadError::Io { path: sink.path.clone(), source })?;
        if sink.point.bytes == sink.total {
            return Ok(());
        }
        let deliver_policy = match sink.point.stream_seq {
            Some(seq) if sink.point.bytes > 0 => DeliverPolicy::ByStartSequence { start_sequence: seq + 1 },
            _ => DeliverPolicy::All,
        };
        let stream = self.js.get_stream(format!("OBJ_{}", self.bucket)).await.map_err(|e| src("stream", &e))?;
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_subject: self.js.client().new_inbox(),
                filter_subject: format!("$O.{}.C.{}", self.bucket, info.nuid),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| src("consumer", &e))?;
        let mut messages = consumer.messages().await.map_err(|e| src("subscribe", &e))?;
        while sink.point.bytes < sink.total {
            let stall = self.retry.stall_timeout;
            let msg = match tokio::time::timeout(stall, messages.next()).await {
                Err(_) => return Err(DownloadError::Interrupted(format!("object store: no data for {stall:?}"))),
                Ok(None) => return Err(DownloadError::Interrupted("object store: stream ended early".into())),
                Ok(Some(Err(e))) => return Err(src("read", &e)),
                Ok(Some(Ok(m))) => m,
            };
            let seq = msg.info().map(|i| i.stream_sequence).ok();
            sink.write(&msg.payload, seq).await?;
        }
        if sink.point.bytes > sink.total {
            return Err(DownloadError::Source(format!(
                "object store sent {} bytes, more than {}",
                sink.point.bytes, sink.total
            )));
        }
        Ok(())
    }
}

/// HTTP or HTTPS with a `Range` request to resume. A server that ignores the
/// range (200 instead of 206) sends everything again: start over.
async fn fetch_http(
    url: &str,
    extra_ca: Option<&Path>,
    sink: &mut Sink<'_>,
    stall: Duration,
) -> Result<(), DownloadError> {
    use tokio::io::AsyncReadExt;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DownloadError::Io { path, source }
    };
    if sink.point.bytes == sink.total {
        return Ok(());
    }
    let mut response = http_get::open(url, sink.point.bytes, extra_ca).await.map_err(|e| match e {
        // A refused or dropped connection, or a server error: retry.
        http_get::HttpError::Io { .. } => DownloadError::Interrupted(e.to_string()),
        http_get::HttpError::Status { status, .. } if status >= 500 => DownloadError::Interrupted(e.to_string()),
        other => DownloadError::Source(other.to_string()),
    })?;
    if !response.partial && sink.point.bytes > 0 {
        log::warn!("{url} ignored the range request; downloading from the start");
        sink.file.set_len(0).map_err(io(&sink.path))?;
        sink.hasher = Sha256::new();
        sink.point.bytes = 0;
    }
    sink.file.seek(SeekFrom::End(0)).map_err(io(&sink.path))?;
    let mut buf = vec![0u8; 64 * 1024];
    while sink.point.bytes < sink.total {
        let n = tokio::time::timeout(stall, response.body.read(&mut buf))
            .await
            .map_err(|_| DownloadError::Interrupted(format!("{url}: no data for {stall:?}")))?
            .map_err(|e| DownloadError::Interrupted(format!("{url}: {e}")))?;
        if n == 0 {
            return Err(DownloadError::Interrupted(format!(
                "{url}: connection closed at {} of {} bytes",
                sink.point.bytes, sink.total
            )));
        }
        let take = n.min(usize::try_from(sink.total - sink.point.bytes).unwrap_or(n));
        sink.write(&buf[..take], None).await?;
    }
    Ok(())
}

/// Bytes available to unprivileged writers on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}
