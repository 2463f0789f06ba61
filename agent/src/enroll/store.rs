//! Enrollment's files: the device's own nkey seed, the enrollment file
//! (on the boot partition, then staged on the data partition), the CA and
//! the drop-in written once the operator has enrolled the device.
//!
//! Every file here is written atomically with mode 0600 (temp file in the
//! same directory, fsync, rename, fsync of the directory), so a power cut
//! leaves the old content or the new, never a torn seed or drop-in.

use super::EnrollError;
use crate::config::AgentConfig;
use harmony_protocol::enroll::{EnrollFile, TOKEN_PREFIX};
use harmony_protocol::DeviceId;
use std::path::{Path, PathBuf};

/// The device's seed, in the state dir (on the data partition).
pub const SEED_FILE: &str = "device.nk";
/// The staged enrollment file, in the state dir.
pub const STAGED_FILE: &str = "enroll.toml";
/// The CA from the enrollment file, in the state dir.
pub const CA_FILE: &str = "nats-ca.pem";
/// The drop-in naming the enrolled identity, in the drop-in dir.
pub const DROP_IN_FILE: &str = "20-enrolled.toml";

/// Where enrollment keeps its files, from the agent's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollPaths {
    pub import_from: PathBuf,
    pub seed: PathBuf,
    pub staged: PathBuf,
    pub ca: PathBuf,
    /// `None` when the config has no `drop_in_dir` (then the device cannot
    /// enroll: the result would not survive a restart).
    pub drop_in: Option<PathBuf>,
}

impl EnrollPaths {
    pub fn from_config(cfg: &AgentConfig) -> Self {
        Self {
            import_from: cfg.enroll.import_from.clone(),
            seed: cfg.state_dir.join(SEED_FILE),
            staged: cfg.state_dir.join(STAGED_FILE),
            ca: cfg.state_dir.join(CA_FILE),
            drop_in: cfg.drop_in_dir.as_ref().map(|d| d.join(DROP_IN_FILE)),
        }
    }
}

/// Replace `path` with `bytes`, mode 0600 from the first byte on.
pub fn write_private_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::durable::write_atomically(path, bytes, 0o600)
}

pub use crate::durable::remove_durably;

/// The device's nkey: loaded if the seed file exists, generated (and
/// written) only if it does not. An unreadable, empty or invalid seed is an
/// error: silently making a new identity would orphan the enrolled one.
/// Returns the key pair and whether it was just generated.
pub fn load_or_create_seed(path: &Path) -> Result<(nkeys::KeyPair, bool), EnrollError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((parse_seed(path, &text)?, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = nkeys::KeyPair::new_user();
            let seed = key.seed().map_err(|e| EnrollError::Seed { path: path.to_path_buf(), detail: e.to_string() })?;
            write_private_atomically(path, format!("{seed}\n").as_bytes())
                .map_err(|source| EnrollError::Write { path: path.to_path_buf(), source })?;
            log::info!("generated this device's nkey {} in {}", key.public_key(), path.display());
            Ok((key, true))
        }
        Err(source) => Err(EnrollError::Read { path: path.to_path_buf(), source }),
    }
}

fn parse_seed(path: &Path, text: &str) -> Result<nkeys::KeyPair, EnrollError> {
    let bad = |detail: String| EnrollError::Seed { path: path.to_path_buf(), detail };
    let seed = text.trim();
    if seed.is_empty() {
        return Err(bad("the file is empty; restore it or, to enroll as a new device, delete it".into()));
    }
    let key = nkeys::KeyPair::from_seed(seed).map_err(|e| bad(format!("not an nkey seed ({e})")))?;
    if key.key_pair_type() != nkeys::KeyPairType::User {
        return Err(bad(format!("a {:?} seed, not a user seed", key.key_pair_type())));
    }
    Ok(key)
}

/// What is at the boot partition's import path.
#[derive(Debug)]
pub enum ImportFile {
    Absent,
    Valid {
        file: EnrollFile,
        text: String,
    },
    /// Unreadable or not a valid enrollment file: left where it is.
    Malformed(String),
}

pub fn read_import(path: &Path) -> ImportFile {
    match std::fs::read_to_string(path) {
        Ok(text) => match parse_enroll_file(&text) {
            Ok(file) => ImportFile::Valid { file, text },
            Err(detail) => ImportFile::Malformed(detail),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ImportFile::Absent,
        Err(e) => ImportFile::Malformed(format!("cannot read it: {e}")),
    }
}

/// Parse and check an enrollment file's text.
pub fn parse_enroll_file(text: &str) -> Result<EnrollFile, String> {
    let file: EnrollFile = toml::from_str(text).map_err(|e| e.to_string())?;
    if !file.token.starts_with(TOKEN_PREFIX) || file.token.len() <= TOKEN_PREFIX.len() {
        return Err(format!("token is not an enrollment token (expected {TOKEN_PREFIX}...)"));
    }
    if file.nats_urls.is_empty() {
        return Err("nats_urls must name at least one server".into());
    }
    for url in &file.nats_urls {
        url.parse::<async_nats::ServerAddr>().map_err(|e| format!("invalid NATS server URL {url:?}: {e}"))?;
    }
    if let Some(pem) = &file.nats_ca_pem {
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err("nats_ca_pem holds no PEM certificate".into());
        }
    }
    Ok(file)
}

/// Read the staged enrollment file.
pub fn read_staged(path: &Path) -> Result<EnrollFile, EnrollError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| EnrollError::Read { path: path.to_path_buf(), source })?;
    parse_enroll_file(&text).map_err(|detail| EnrollError::StagedInvalid { path: path.to_path_buf(), detail })
}

/// Copy a valid boot-partition file to the data partition (and its CA, if
/// any), then delete it from the boot partition. A failed delete is logged,
/// not fatal: the file is staged, and the next start tries again.
pub fn stage(paths: &EnrollPaths, file: &EnrollFile, text: &str) -> Result<(), EnrollError> {
    write_ca(paths, file)?;
    write_private_atomically(&paths.staged, text.as_bytes())
        .map_err(|source| EnrollError::Write { path: paths.staged.clone(), source })?;
    log::info!("moved the enrollment file {} to {}", paths.import_from.display(), paths.staged.display());
    if let Err(e) = remove_durably(&paths.import_from) {
        log::error!(
            "cannot delete {} from the boot partition ({e}); its token stays readable to anyone with the card",
            paths.import_from.display()
        );
    }
    Ok(())
}

/// Write the file's CA, if it has one; returns its path.
pub fn write_ca(paths: &EnrollPaths, file: &EnrollFile) -> Result<Option<PathBuf>, EnrollError> {
    let Some(pem) = &file.nats_ca_pem else { return Ok(None) };
    write_private_atomically(&paths.ca, pem.as_bytes())
        .map_err(|source| EnrollError::Write { path: paths.ca.clone(), source })?;
    Ok(Some(paths.ca.clone()))
}

/// A TOML basic string. JSON's escapes (`\"`, `\\`, `\n`, `\uXXXX`) are
/// TOML's too; the result is parsed back before it is written.
fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// The drop-in that turns this device into an ordinary, provisioned agent.
pub fn drop_in_text(device: &DeviceId, urls: &[String], seed: &Path, ca: Option<&Path>) -> String {
    let urls: Vec<String> = urls.iter().map(|u| toml_string(u)).collect();
    let mut text = format!(
        "# Written by harmony-agent when the operator enrolled this device (issue 14).\n\
         device_id = {}\n\n[nats]\nurls = [{}]\nnkey_seed_file = {}\n",
        toml_string(device.as_str()),
        urls.join(", "),
        toml_string(&seed.to_string_lossy()),
    );
    if let Some(ca) = ca {
        text.push_str(&format!("ca_file = {}\n", toml_string(&ca.to_string_lossy())));
    }
    text
}

pub fn write_drop_in(path: &Path, text: &str) -> Result<(), EnrollError> {
    toml::from_str::<toml::Table>(text)
        .map_err(|e| EnrollError::Write { path: path.to_path_buf(), source: std::io::Error::other(e) })?;
    write_private_atomically(path, text.as_bytes())
        .map_err(|source| EnrollError::Write { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn seed_is_generated_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/device.nk");
        let (a, created) = load_or_create_seed(&path).unwrap();
        assert!(created);
        assert_eq!(mode(&path), 0o600);
        let (b, created) = load_or_create_seed(&path).unwrap();
        assert!(!created);
        assert_eq!(a.public_key(), b.public_key());
        assert!(harmony_protocol::enroll::is_user_nkey(&a.public_key()));
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file left: {leftovers:?}");
    }

    #[test]
    fn a_corrupt_or_empty_seed_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.nk");
        let account = nkeys::KeyPair::new_account().seed().unwrap();
        for (text, needle) in
            [("", "empty"), ("  \n", "empty"), ("SUNOTASEED", "not an nkey seed"), (&account, "not a user")]
        {
            std::fs::write(&path, text).unwrap();
            let err = load_or_create_seed(&path).unwrap_err().to_string();
            assert!(err.contains(needle) && err.contains("device.nk"), "{text:?}: {err}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "left untouched");
        }
    }

    #[test]
    fn enroll_file_checks() {
        let ok = "token = \"hfe1_abc\"\nnats_urls = [\"nats://fleet:4222\"]\n";
        assert!(parse_enroll_file(ok).is_ok());
        for (text, needle) in [
            ("token = \"abc\"\nnats_urls = [\"nats://x:4222\"]", "enrollment token"),
            ("token = \"hfe1_a\"\nnats_urls = []", "at least one"),
            ("token = \"hfe1_a\"\nnats_urls = [\"nats://x:4222\"]\nnats_ca_pem = \"x\"", "PEM"),
            ("token = \"hfe1_a\"\nnats_urls = [\"nats://x:4222\"]\ncolour = 1", "unknown field"),
            ("token = ", "TOML parse error"),
        ] {
            let err = parse_enroll_file(text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn drop_in_round_trips_through_toml() {
        let text = drop_in_text(
            &DeviceId::new("dev-1").unwrap(),
            &["nats://a:4222".into(), "tls://b\"q:4222".into()],
            Path::new("/data/harmony/device.nk"),
            Some(Path::new("/data/harmony/nats-ca.pem")),
        );
        let t: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(t["device_id"].as_str(), Some("dev-1"));
        assert_eq!(t["nats"]["urls"][1].as_str(), Some("tls://b\"q:4222"));
        assert_eq!(t["nats"]["nkey_seed_file"].as_str(), Some("/data/harmony/device.nk"));
        assert_eq!(t["nats"]["ca_file"].as_str(), Some("/data/harmony/nats-ca.pem"));
    }
}
