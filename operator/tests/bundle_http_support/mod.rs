//! Requests over a raw TCP socket (the lockfile has no HTTP client crate):
//! one request per connection, `Connection: close`; the response is read
//! by `harmony_operator::sim::http`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use harmony_operator::config::BundleHttpConfig;
use harmony_operator::sim::http::parse;
pub use harmony_operator::sim::http::Response;
use std::net::SocketAddr;
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends the request and returns the open socket, nothing read yet.
pub async fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

/// Reads a whole response (to EOF: the server closes after it).
pub async fn read(mut s: TcpStream) -> Response {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    parse(&raw).unwrap()
}

pub async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    read(send(addr, method, path, headers).await).await
}

/// The bundle server on `listen` over plain HTTP, its cache and token key in
/// `dir`.
pub fn http_config(dir: &Path, listen: &str) -> BundleHttpConfig {
    BundleHttpConfig {
        listen: listen.into(),
        public_url: format!("http://{listen}"),
        cache_dir: dir.join("bundle-cache"),
        token_key: dir.join("bundle-token.key"),
        // A slot frees the moment its transfer ends: the cap test waits on that.
        download_idle_secs: 0,
        tls_cert: None,
        tls_key: None,
        http2: true,
    }
}
