//! Zero-touch enrollment (issue #14; docs/adr/0005-enrollment-by-auth-callout.md).
//!
//! A flashed card carries an enrollment token; the device makes its own
//! nkey, connects with it and the token, and the operator's NATS auth
//! callout lets it ask to enroll and nothing else. The enrollment service
//! records it (or holds it for approval); from then on the callout admits
//! its key with ordinary device permissions. Revocation flips the record
//! and disconnects the device through the system account.

pub mod callout;
pub mod cli;
pub mod decide;
pub mod directory;
pub mod jwt;
pub mod server_config;
pub mod service;
pub mod system;
pub mod token;

use crate::config::EnrollConfig;
use crate::error::{Error, Result};
use std::path::Path;

/// Reads an nkey seed file (one line), or makes a new key there (0600)
/// when `create` is set and the file is missing.
pub fn seed_file(path: &Path, kind: SeedKind, create: bool) -> Result<nkeys::KeyPair> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let kp = nkeys::KeyPair::from_seed(text.trim())
                .map_err(|e| Error::Key { path: path.into(), detail: e.to_string() })?;
            let want = match kind {
                SeedKind::Account => nkeys::KeyPairType::Account,
                SeedKind::User => nkeys::KeyPairType::User,
            };
            if kp.key_pair_type() != want {
                return Err(Error::Key { path: path.into(), detail: format!("not an {kind:?} nkey seed") });
            }
            Ok(kp)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let kp = match kind {
                SeedKind::Account => nkeys::KeyPair::new_account(),
                SeedKind::User => nkeys::KeyPair::new_user(),
            };
            let seed = kp.seed().map_err(|e| Error::Invalid(format!("nkey: {e}")))?;
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| Error::io(path, e))?;
            f.write_all(format!("{seed}\n").as_bytes()).and_then(|()| f.sync_all()).map_err(|e| Error::io(path, e))?;
            Ok(kp)
        }
        Err(e) => Err(Error::io(path, e)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedKind {
    Account,
    User,
}

/// The callout's issuer key, as `serve` needs it (never created there).
pub fn issuer(cfg: &EnrollConfig) -> Result<nkeys::KeyPair> {
    seed_file(&cfg.issuer_seed_file, SeedKind::Account, false)
}

/// The running callout and enrollment service of one operator process;
/// dropping it stops both.
#[derive(Debug)]
pub struct Gate {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Gate {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts the gate: loads the directory (so the first connections are
/// decided on the full record), then answers the callout and enrollment
/// requests. Every operator process runs one, leader or not: admission
/// must not wait for an election.
pub async fn start(
    cfg: &EnrollConfig,
    buckets: &crate::bus::Buckets,
    clock: std::sync::Arc<dyn crate::clock::Clock>,
) -> Result<Gate> {
    use std::sync::Arc;
    let issuer = issuer(cfg)?;
    let dir = Arc::new(directory::Directory::default());
    let revision = directory::load(&buckets.state, &dir).await?;
    let callout = Arc::new(callout::Callout::new(
        issuer,
        cfg.account.clone(),
        cfg.grant_ttl_secs,
        dir.clone(),
        buckets.state.clone(),
        clock.clone(),
    ));
    let service = Arc::new(service::EnrollService { dir: dir.clone(), state: buckets.state.clone(), clock });
    let client = buckets.client.clone();
    let per_sec = cfg.max_requests_per_sec;
    let mut tasks = vec![tokio::spawn(directory::follow(buckets.state.clone(), dir, revision))];
    let c = client.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = callout::serve(c, callout).await {
            log::error!("auth callout stopped: {e}");
        }
    }));
    tasks.push(tokio::spawn(async move {
        if let Err(e) = service::serve(client, service, per_sec).await {
            log::error!("enrollment service stopped: {e}");
        }
    }));
    Ok(Gate { tasks })
}
