//! A minimal HTTP/1.1 GET with `Range`, over plain TCP (`http://`) or TLS
//! (`https://`, rustls with the system's CA store plus an optional extra
//! CA): enough to fetch a bundle from a mirror and resume it. The bundle hash
//! and RAUC's signature check protect integrity either way; TLS adds privacy
//! and keeps a broken mirror from wasting a download.

use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

/// A byte stream to the server: TCP or TLS over TCP.
pub trait Connection: AsyncRead + AsyncWrite + Send + Unpin + std::fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + std::fmt::Debug> Connection for T {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("unsupported URL {0} (http:// and https:// are supported)")]
    Unsupported(String),
    #[error("{url}: TLS: {detail}")]
    Tls { url: String, detail: String },
    #[error("{url}: {source}")]
    Io { url: String, source: std::io::Error },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: malformed response: {detail}")]
    Malformed { url: String, detail: String },
}

#[derive(Debug)]
pub struct Response {
    /// 206: the body starts at the requested offset.
    pub partial: bool,
    pub body: BufReader<Box<dyn Connection>>,
}

/// `(scheme, host, port, path)` of an `http://` or `https://` URL.
pub fn parse_url(url: &str) -> Result<(Scheme, String, u16, String), HttpError> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else {
        return Err(HttpError::Unsupported(url.to_string()));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| HttpError::Unsupported(url.to_string()))?),
        None => (authority, if scheme == Scheme::Https { 443 } else { 80 }),
    };
    if host.is_empty() {
        return Err(HttpError::Unsupported(url.to_string()));
    }
    Ok((scheme, host.to_string(), port, path.to_string()))
}

/// rustls client config: the system's trusted CAs plus `extra_ca` (PEM), if
/// given, for a fleet's private mirror.
fn tls_config(url: &str, extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, HttpError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let tls = |detail: String| HttpError::Tls { url: url.to_string(), detail };
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A system certificate rustls cannot parse is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    if let Some(path) = extra_ca {
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| tls(format!("{}: {e}", path.display())))?;
        for cert in certs {
            roots.add(cert.map_err(|e| tls(format!("{}: {e}", path.display())))?).map_err(|e| tls(e.to_string()))?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// What this agent trusts for `https://` (the system's CAs plus
/// `extra_ca`), as one PEM file: RAUC is handed it (`tls-ca`) for a streamed
/// install, because naming only the extra CA would make libcurl forget the
/// system's, and naming none would forget the extra one. So RAUC trusts
/// exactly the servers the agent's own signature check trusted.
pub fn trust_pem(extra_ca: &Path) -> std::io::Result<String> {
    use base64::Engine as _;
    let extra = std::fs::read_to_string(extra_ca)?;
    let mut pem = String::new();
    for cert in rustls_native_certs::load_native_certs().certs {
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        // Every chunk of an ASCII string is valid UTF-8.
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    pem.push_str(&extra);
    if !extra.ends_with('\n') {
        pem.push('\n');
    }
    Ok(pem)
}

async fn connect(
    url: &str,
    scheme: Scheme,
    host: &str,
    port: u16,
    extra_ca: Option<&Path>,
) -> Result<Box<dyn Connection>, HttpError> {
    let tcp =
        TcpStream::connect((host, port)).await.map_err(|source| HttpError::Io { url: url.to_string(), source })?;
    match scheme {
        Scheme::Http => Ok(Box::new(tcp)),
        Scheme::Https => {
            let config = tls_config(url, extra_ca)?;
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| HttpError::Tls { url: url.to_string(), detail: e.to_string() })?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| HttpError::Tls { url: url.to_string(), detail: e.to_string() })?;
            Ok(Box::new(tls))
        }
    }
}

pub async fn open(url: &str, offset: u64, extra_ca: Option<&Path>) -> Result<Response, HttpError> {
    let (status, _, body) = request(url, &format!("bytes={offset}-"), &[], extra_ca).await?;
    match status {
        206 => Ok(Response { partial: true, body }),
        200 => Ok(Response { partial: false, body }),
        other => Err(HttpError::Status { url: url.to_string(), status: other }),
    }
}

/// A part of a file: exactly `range` of it, and the file's size as the
/// server gave it in `Content-Range`.
#[derive(Debug)]
pub struct Part {
    pub bytes: Vec<u8>,
    pub total: u64,
}

/// GETs `range` (end exclusive) with extra request `headers`
/// (`Name: value`). Anything but a 206 with a `Content-Range` for exactly
/// that range, and a body of exactly its length, is an error.
pub async fn get_part(
    url: &str,
    range: std::ops::Range<u64>,
    headers: &[String],
    extra_ca: Option<&Path>,
) -> Result<Part, HttpError> {
    use tokio::io::AsyncReadExt;
    let malformed = |detail: String| HttpError::Malformed { url: url.to_string(), detail };
    if range.is_empty() {
        return Err(malformed("empty range requested".into()));
    }
    let last = range.end - 1;
    let (status, content_range, mut body) =
        request(url, &format!("bytes={}-{last}", range.start), headers, extra_ca).await?;
    if status != 206 {
        return Err(HttpError::Status { url: url.to_string(), status });
    }
    let content_range = content_range.ok_or_else(|| malformed("206 without Content-Range".into()))?;
    let (first, end, total) =
        parse_content_range(&content_range).ok_or_else(|| malformed(format!("Content-Range {content_range:?}")))?;
    if (first, end) != (range.start, last) {
        return Err(malformed(format!("asked for bytes {}-{last}, got {content_range:?}", range.start)));
    }
    let len = usize::try_from(range.end - range.start).map_err(|_| malformed("range too large".into()))?;
    let mut bytes = vec![0u8; len];
    body.read_exact(&mut bytes)
        .await
        .map_err(|e| malformed(format!("body shorter than the {len} bytes of its Content-Range: {e}")))?;
    Ok(Part { bytes, total })
}

/// `bytes FIRST-LAST/TOTAL` -> (first, last, total).
fn parse_content_range(value: &str) -> Option<(u64, u64, u64)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let (first, last, total) = (first.parse().ok()?, last.parse().ok()?, total.parse().ok()?);
    (first <= last && last < total).then_some((first, last, total))
}

/// Sends one GET; returns the status, the `Content-Range` header (if any)
/// and the body after the headers.
async fn request(
    url: &str,
    range: &str,
    headers: &[String],
    extra_ca: Option<&Path>,
) -> Result<(u16, Option<String>, BufReader<Box<dyn Connection>>), HttpError> {
    let (scheme, host, port, path) = parse_url(url)?;
    let io = |source| HttpError::Io { url: url.to_string(), source };
    if headers.iter().any(|h| h.contains(['\r', '\n'])) {
        return Err(HttpError::Malformed { url: url.to_string(), detail: "a request header spans lines".into() });
    }
    let mut stream = connect(url, scheme, &host, port, extra_ca).await?;
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nRange: {range}\r\n{extra}User-Agent: harmony-agent\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let mut body = BufReader::new(stream);
    let mut line = String::new();
    body.read_line(&mut line).await.map_err(io)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| HttpError::Malformed { url: url.to_string(), detail: format!("status line {line:?}") })?;
    let mut content_range = None;
    loop {
        line.clear();
        let n = body.read_line(&mut line).await.map_err(io)?;
        if n == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            return Err(HttpError::Malformed {
                url: url.to_string(),
                detail: "chunked encoding is not supported".into(),
            });
        }
        if let Some(value) = lower.strip_prefix("content-range:") {
            content_range = Some(value.trim().to_string());
        }
    }
    Ok((status, content_range, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_and_https_urls_and_refuses_others() {
        assert_eq!(
            parse_url("http://mirror:8080/b/x.raucb").unwrap(),
            (Scheme::Http, "mirror".into(), 8080, "/b/x.raucb".into())
        );
        assert_eq!(parse_url("http://mirror").unwrap(), (Scheme::Http, "mirror".into(), 80, "/".into()));
        assert_eq!(parse_url("https://mirror/x").unwrap(), (Scheme::Https, "mirror".into(), 443, "/x".into()));
        assert!(matches!(parse_url("ftp://mirror/x"), Err(HttpError::Unsupported(_))));
    }

    #[test]
    fn content_ranges_parse_and_impossible_ones_do_not() {
        assert_eq!(parse_content_range("bytes 0-7/100"), Some((0, 7, 100)));
        assert_eq!(parse_content_range(" bytes 92-99/100 "), Some((92, 99, 100)));
        for bad in ["bytes 8-7/100", "bytes 0-100/100", "bytes */100", "0-7/100", "bytes 0-7/", "bytes 0-7/x"] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }
}
