//! A small HTTP/1.1 client for the dashboard benchmark: loopback only, one
//! request per connection, cookies carried by the caller, and a reader for
//! a server-sent-events stream. (The operator has no HTTP client crate, and
//! this needs none.)

use harmony_operator::sim::http::{parse, Response};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn head(method: &str, port: u16, path: &str, cookie: &str, extra: &str, body_len: usize) -> String {
    let cookie = if cookie.is_empty() { String::new() } else { format!("Cookie: {cookie}\r\n") };
    format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{cookie}{extra}Content-Length: {body_len}\r\nConnection: close\r\n\r\n"
    )
}

pub async fn get(port: u16, path: &str, cookie: &str) -> Res<Response> {
    request(port, &head("GET", port, path, cookie, "", 0), &[]).await
}

pub async fn post_form(port: u16, path: &str, cookie: &str, fields: &[(&str, &str)]) -> Res<Response> {
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect();
    let body = body.join("&");
    let extra = "Content-Type: application/x-www-form-urlencoded\r\n";
    request(port, &head("POST", port, path, cookie, extra, body.len()), body.as_bytes()).await
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn request(port: u16, head: &str, body: &[u8]) -> Res<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut raw)).await??;
    Ok(parse(&raw)?)
}

/// Opens `path` as an event stream and calls `on_event` for every event
/// (a block ending in a blank line) until the connection ends.
pub async fn sse(port: u16, path: &str, cookie: &str, mut on_event: impl FnMut(usize)) -> Res<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let head = head("GET", port, path, cookie, "Accept: text/event-stream\r\n", 0);
    stream.write_all(head.as_bytes()).await?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut in_body = false;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        pending.extend_from_slice(&buf[..n]);
        if !in_body {
            let Some(split) = pending.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let status = String::from_utf8_lossy(&pending[..split]);
            if !status.starts_with("HTTP/1.1 200") {
                return Err(format!("SSE {path}: {}", status.lines().next().unwrap_or("")).into());
            }
            pending.drain(..split + 4);
            in_body = true;
        }
        // Events end with a blank line; chunk framing lines never contain "data:".
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            if event.windows(5).any(|w| w == b"data:") {
                on_event(event.len());
            }
        }
    }
}
