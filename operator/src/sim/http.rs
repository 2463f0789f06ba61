//! Reading an HTTP/1.1 response off a raw socket, for the clients of the
//! benchmarks (`fleet-sim`) and the tests: the lockfile has no HTTP client
//! crate, and one request per connection (`Connection: close`, read to the
//! end) needs none.

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("HTTP response without end of headers")]
    NoEndOfHeaders,
    #[error("HTTP response without a status")]
    NoStatus,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// `name=value` of every Set-Cookie.
    pub fn cookies(&self) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .filter_map(|(_, v)| v.split(';').next().map(|c| c.trim().to_string()))
            .collect()
    }

    /// The body as text (lossy), for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A whole response as read to the end of the connection; a chunked body
/// is de-chunked.
pub fn parse(raw: &[u8]) -> Result<Response, HttpError> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or(HttpError::NoEndOfHeaders)?;
    let text = String::from_utf8_lossy(&raw[..split]);
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or(HttpError::NoStatus)?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))).collect();
    let rest = &raw[split + 4..];
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked { dechunk(rest) } else { rest.to_vec() };
    Ok(Response { status, headers, body })
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or(0);
        rest = &rest[eol + 2..];
        if size == 0 || rest.len() < size {
            break;
        }
        out.extend_from_slice(&rest[..size]);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_chunked_bodies() {
        let plain =
            parse(b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-1/9\r\nSet-Cookie: a=b; Path=/\r\n\r\nab")
                .unwrap();
        assert_eq!(
            (plain.status, plain.header("content-range"), plain.body.as_slice()),
            (206, Some("bytes 0-1/9"), &b"ab"[..])
        );
        assert_eq!(plain.cookies(), vec!["a=b".to_string()]);
        let chunked =
            parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(chunked.text(), "abcde");
        assert!(matches!(parse(b"HTTP/1.1 200 OK\r\n"), Err(HttpError::NoEndOfHeaders)));
        assert!(matches!(parse(b"garbage\r\n\r\n"), Err(HttpError::NoStatus)));
    }
}
