//! A minimal HTTP/1.1 GET with `Range` over a tokio TCP stream: enough to
//! fetch a bundle from a plain `http://` mirror and resume it. HTTPS is not
//! supported here (the NATS object store, which rides the agent's TLS
//! connection, is the authenticated path); the bundle hash and RAUC's
//! signature check protect integrity either way.

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("unsupported URL {0} (only http:// is supported; use the object store otherwise)")]
    Unsupported(String),
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
    pub body: BufReader<TcpStream>,
}

/// `(host, port, path)` of an `http://` URL.
pub fn parse_url(url: &str) -> Result<(String, u16, String), HttpError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| HttpError::Unsupported(url.to_string()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| HttpError::Unsupported(url.to_string()))?),
        None => (authority, 80),
    };
    if host.is_empty() {
        return Err(HttpError::Unsupported(url.to_string()));
    }
    Ok((host.to_string(), port, path.to_string()))
}

pub async fn open(url: &str, offset: u64) -> Result<Response, HttpError> {
    let (host, port, path) = parse_url(url)?;
    let io = |source| HttpError::Io { url: url.to_string(), source };
    let mut stream = TcpStream::connect((host.as_str(), port)).await.map_err(io)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nRange: bytes={offset}-\r\nUser-Agent: harmony-agent\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut body = BufReader::new(stream);
    let mut line = String::new();
    body.read_line(&mut line).await.map_err(io)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| HttpError::Malformed { url: url.to_string(), detail: format!("status line {line:?}") })?;
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
    }
    match status {
        206 => Ok(Response { partial: true, body }),
        200 => Ok(Response { partial: false, body }),
        other => Err(HttpError::Status { url: url.to_string(), status: other }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_urls_and_refuses_others() {
        assert_eq!(parse_url("http://mirror:8080/b/x.raucb").unwrap(), ("mirror".into(), 8080, "/b/x.raucb".into()));
        assert_eq!(parse_url("http://mirror").unwrap(), ("mirror".into(), 80, "/".into()));
        assert!(matches!(parse_url("https://mirror/x"), Err(HttpError::Unsupported(_))));
        assert!(matches!(parse_url("ftp://mirror/x"), Err(HttpError::Unsupported(_))));
    }
}
