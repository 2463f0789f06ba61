//! A small HTTP/1.1 Range server for the streamed-install tests that can
//! lie: about the bundle's size, with another (validly signed) bundle, or by
//! refusing the token. Plain TCP, or TLS with the operator's own rustls
//! configuration (its certificate files; HTTP/1.1 only, as this server
//! speaks nothing else). The operator's real server and its tokens are
//! tested in operator/tests/bundle_http*.rs.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The only `Authorization` the server accepts.
pub const TOKEN: &str = "Bearer for-this-device";

/// What the server does.
#[derive(Clone)]
struct Serve {
    bytes: Arc<Vec<u8>>,
    /// The size it claims in `Content-Range` (a liar's), else the true one.
    claimed_total: Option<u64>,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub range: Option<String>,
    pub authorization: Option<String>,
    pub user_agent: Option<String>,
    pub status: u16,
}

pub struct RangeServer {
    pub url: String,
    serve: Arc<Mutex<Serve>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// TCP connections accepted, whether or not a request followed (a
    /// client that distrusts the certificate connects, then hangs up).
    connections: Arc<AtomicUsize>,
}

impl RangeServer {
    /// Plain HTTP.
    pub async fn start(bytes: Vec<u8>) -> Self {
        Self::start_with(bytes, None).await
    }

    /// HTTPS with the certificate and key (PEM) an operator would configure.
    pub async fn start_tls(bytes: Vec<u8>, cert: &Path, key: &Path) -> Self {
        let config = harmony_operator::bundle_http::tls::server_config(cert, key, false).unwrap();
        Self::start_with(bytes, Some(TlsAcceptor::from(config))).await
    }

    async fn start_with(bytes: Vec<u8>, tls: Option<TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}/v1/bundles/b", listener.local_addr().unwrap());
        let serve = Arc::new(Mutex::new(Serve { bytes: Arc::new(bytes), claimed_total: None }));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (serve2, seen2, connections2) = (serve.clone(), seen.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                connections2.fetch_add(1, Ordering::SeqCst);
                let serve = serve2.lock().unwrap().clone();
                let seen = seen2.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let _ = match tls {
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(stream) => answer(stream, serve, seen).await,
                            Err(e) => Err(e),
                        },
                        None => answer(stream, serve, seen).await,
                    };
                });
            }
        });
        Self { url, serve, seen, connections }
    }

    pub fn set(&self, bytes: Vec<u8>, claimed_total: Option<u64>) {
        *self.serve.lock().unwrap() = Serve { bytes: Arc::new(bytes), claimed_total };
    }

    /// The requests answered since the last call.
    pub fn take_seen(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    serve: Serve,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let mut s = Seen { range: None, authorization: None, user_agent: None, status: 0 };
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let value = Some(value.trim().to_string());
            match name.trim().to_ascii_lowercase().as_str() {
                "range" => s.range = value,
                "authorization" => s.authorization = value,
                "user-agent" => s.user_agent = value,
                _ => {}
            }
        }
    }
    let total = serve.bytes.len() as u64;
    let span = s.range.as_deref().and_then(|r| r.strip_prefix("bytes=")).and_then(|r| {
        let (a, b) = r.split_once('-')?;
        let a: u64 = a.parse().ok()?;
        let b: u64 = if b.is_empty() { total - 1 } else { b.parse::<u64>().ok()?.min(total - 1) };
        (a <= b).then_some((a, b))
    });
    let mut stream = reader.into_inner();
    let head = if s.authorization.as_deref() != Some(TOKEN) {
        s.status = 403;
        "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
    } else if let Some((a, b)) = span {
        s.status = 206;
        let claimed = serve.claimed_total.unwrap_or(total);
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{claimed}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            b - a + 1
        )
    } else {
        s.status = 416;
        format!("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    };
    seen.lock().unwrap().push(s.clone());
    stream.write_all(head.as_bytes()).await?;
    if let (206, Some((a, b))) = (s.status, span) {
        stream.write_all(&serve.bytes[a as usize..=b as usize]).await?;
    }
    stream.shutdown().await
}
