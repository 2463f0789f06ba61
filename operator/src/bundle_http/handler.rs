//! `GET`/`HEAD /v1/bundles/{id}`: authorize, admit, then send the asked
//! bytes of the cached file. Every refusal is a status with a one-line text
//! body saying why.

use super::admission::Verdict;
use super::cache::CacheError;
use super::pace;
use super::range::{self, Span};
use super::token::{self, Claims, TokenError};
use super::Server;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::io::SeekFrom;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

const CHUNK: usize = 64 * 1024;

/// Why a request gets no bundle bytes.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("{0}")]
    Cache(#[from] CacheError),
    #[error("rollout {rollout} has its {limit} concurrent downloads running; retry after {retry_after_secs} s")]
    Busy { rollout: String, limit: u32, retry_after_secs: u64 },
    #[error("bundle file {0}")]
    Io(std::io::Error),
    #[error("{0}")]
    BadRequest(String),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::Token(e) if e.is_forbidden() => StatusCode::FORBIDDEN,
            Self::Token(_) => StatusCode::UNAUTHORIZED,
            Self::Cache(CacheError::NotFound(_)) => StatusCode::NOT_FOUND,
            Self::Cache(CacheError::Changed { .. }) => StatusCode::GONE,
            Self::Cache(CacheError::Corrupt { .. } | CacheError::Store(_)) => StatusCode::BAD_GATEWAY,
            Self::Cache(CacheError::Io { .. }) | Self::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
        };
        let mut response = (status, format!("{self}\n")).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::Token(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"harmony-bundles\""));
            }
            Self::Busy { retry_after_secs, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        response
    }
}

pub(super) async fn bundle(
    State(server): State<Arc<Server>>,
    Path(id): Path<String>,
    method: Method,
    version: Version,
    headers: HeaderMap,
) -> Response {
    match serve(&server, &id, &method, version, &headers).await {
        Ok(response) => response,
        Err(refusal) => {
            log::info!("bundle {id}: {} refused: {refusal}", method.as_str());
            refusal.into_response()
        }
    }
}

async fn serve(
    server: &Arc<Server>,
    id: &str,
    method: &Method,
    version: Version,
    headers: &HeaderMap,
) -> Result<Response, Refusal> {
    let auth = headers.get(header::AUTHORIZATION).map(|v| v.to_str().unwrap_or(""));
    let token = token::from_header(auth)?;
    let claims = token::verify(&server.token_key, token, id, server.clock.now())?;
    let rate =
        pace::requested(headers.get(pace::HEADER).map(|v| v.to_str().unwrap_or("?"))).map_err(Refusal::BadRequest)?;
    let path = server.cache.file(id, &claims.sha256).await?;
    let mut file = tokio::fs::File::open(&path).await.map_err(Refusal::Io)?;
    let size = file.metadata().await.map_err(Refusal::Io)?.len();
    let span = range::resolve(headers.get(header::RANGE).and_then(|v| v.to_str().ok()), size);
    let mut builder = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, "application/octet-stream");
    let (offset, length) = span.bytes(size);
    builder = match span {
        Span::Unsatisfiable => {
            log::info!("bundle {id}: {} unsatisfiable range of {size} bytes for {}", method.as_str(), claims.device);
            let response = builder
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                .body(Body::empty());
            return Ok(response.unwrap_or_default());
        }
        Span::Whole => builder.status(StatusCode::OK),
        Span::Part { start, end } => builder
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}")),
    };
    builder = builder.header(header::CONTENT_LENGTH, length);
    let what = match span {
        Span::Part { start, end } => format!("bytes {start}-{end}/{size}"),
        _ => format!("all {size} bytes"),
    };
    if method == Method::HEAD {
        log::info!("bundle {id}: HEAD {what} for {}", claims.device);
        return Ok(builder.body(Body::empty()).unwrap_or_default());
    }
    let slot = admit(server, &claims)?;
    let capped = rate.map(|r| format!(", capped at {r} bytes/s")).unwrap_or_default();
    // Protocol and client in the log: what shows RAUC streamed over HTTP/2.
    let client = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("-");
    log::info!(
        "bundle {id}: {what} to {} (rollout {}, {version:?}, {client}{capped})",
        claims.device,
        claims.rollout.as_deref().unwrap_or("-")
    );
    file.seek(SeekFrom::Start(offset)).await.map_err(Refusal::Io)?;
    Ok(builder.body(Body::from_stream(body(file, length, slot, rate))).unwrap_or_default())
}

fn admit(server: &Arc<Server>, claims: &Claims) -> Result<Slot, Refusal> {
    let rollout = claims.rollout.clone().unwrap_or_default();
    match server.admit(&rollout, &claims.device, claims.max_concurrent) {
        Verdict::Admitted => Ok(Slot { server: server.clone(), rollout, device: claims.device.clone() }),
        Verdict::Busy { retry_after_secs } => {
            Err(Refusal::Busy { rollout, limit: claims.max_concurrent.unwrap_or(0), retry_after_secs })
        }
    }
}

/// A held download slot, given back when the body is dropped: when the
/// last byte was sent, or the client went away.
struct Slot {
    server: Arc<Server>,
    rollout: String,
    device: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.server.release(&self.rollout, &self.device);
    }
}

/// `length` bytes of `file` from its current position, in chunks, no faster
/// than `rate` bytes/s for the slot's device when it asked for a cap.
fn body(
    file: tokio::fs::File,
    length: u64,
    slot: Slot,
    rate: Option<u64>,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures::stream::try_unfold((file, length, slot), move |(mut file, left, slot)| async move {
        if left == 0 {
            return Ok(None);
        }
        let want = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
        if let Some(rate) = rate {
            let at = slot.server.pace(&slot.device, want as u64, rate);
            tokio::time::sleep_until(at.into()).await;
        }
        let mut buf = vec![0u8; want];
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "bundle file shorter than its size"));
        }
        buf.truncate(n);
        Ok(Some((Bytes::from(buf), (file, left - n as u64, slot))))
    })
}
