//! HTTPS for the bundle server: rustls with ALPN `h2` then `http/1.1`, so
//! RAUC's libcurl (which asks for HTTP/2 over TLS by default) multiplexes its
//! Range requests over one connection, and the agent's HTTP/1.1 client still
//! works. The certificate is re-read when its files change (a renewal needs
//! no restart); a renewal that does not load keeps the last good one.

use crate::error::{Error, Result};
use axum::serve::Listener;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A client that has not finished its handshake by then is dropped, so a
/// stalled one cannot hold a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// What identifies a version of the two files on disk.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Reads the chain and key and checks that they belong together.
fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey> {
    let bad = |path: &Path, detail: String| Error::Invalid(format!("bundle_http TLS {}: {detail}", path.display()));
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, e.to_string()))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(cert, "no CERTIFICATE in the file".into()));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
    CertifiedKey::from_der(chain, der, provider).map_err(|e| bad(key, format!("does not fit the certificate: {e}")))
}

/// The server's certificate, reloaded when the files' stamps change.
#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Mutex<(Stamp, Stamp, Arc<CertifiedKey>)>,
}

impl Reloading {
    fn new(cert: &Path, key: &Path, provider: Arc<CryptoProvider>) -> Result<Self> {
        let stamps = (stamp(cert), stamp(key));
        let loaded = Arc::new(load(cert, key, &provider)?);
        Ok(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            current: Mutex::new((stamps.0, stamps.1, loaded)),
        })
    }

    fn certified_key(&self) -> Arc<CertifiedKey> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let stamps = (stamp(&self.cert), stamp(&self.key));
        if (stamps.0, stamps.1) != (current.0, current.1) {
            // Stamps first: a half-written pair is tried once per change,
            // not on every handshake, and the next write retries it.
            current.0 = stamps.0;
            current.1 = stamps.1;
            match load(&self.cert, &self.key, &self.provider) {
                Ok(k) => {
                    log::info!("bundle server: TLS certificate {} reloaded", self.cert.display());
                    current.2 = Arc::new(k);
                }
                Err(e) => log::warn!("{e}; still serving the previous certificate"),
            }
        }
        current.2.clone()
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certified_key())
    }
}

/// The rustls server configuration: the reloading certificate; HTTP/2
/// offered before HTTP/1.1 when `http2`, else HTTP/1.1 alone.
pub fn server_config(cert: &Path, key: &Path, http2: bool) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(ring::default_provider());
    let resolver = Reloading::new(cert, key, provider.clone())?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Invalid(format!("bundle_http TLS: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = if http2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    Ok(Arc::new(config))
}

/// Accepted TLS connections for `axum::serve`. Handshakes run in their own
/// tasks, so one slow or hostile client does not hold up the others.
pub struct TlsListener {
    addr: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> Result<Self> {
        let addr = tcp.local_addr().map_err(|e| Error::io("bundle_http listener", e))?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        let accepting = tokio::spawn(async move {
            loop {
                let (tcp_stream, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: pause, not spin.
                        log::warn!("bundle server: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp_stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => log::info!("bundle server: TLS handshake with {peer}: {e}"),
                        Err(_) => log::info!("bundle server: TLS handshake with {peer} timed out"),
                    }
                });
            }
        });
        Ok(Self { addr, ready, accepting })
    }
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accepting task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
