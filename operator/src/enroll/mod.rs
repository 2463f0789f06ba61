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
