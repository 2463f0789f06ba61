//! Loading the fleet's trusted public keys from `fleet_keys_dir`.
//! Several `*.pub` files may be present at once: that is how keys rotate.

use harmony_protocol::signing::{verifying_key_from_hex, SigningError};
use harmony_protocol::TrustedKeys;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FleetKeysError {
    #[error("cannot read fleet key directory {path}: {source}")]
    ReadDir { path: PathBuf, source: std::io::Error },
    #[error("cannot read fleet key {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("fleet key {path} is not a hex ed25519 public key: {source}")]
    Malformed { path: PathBuf, source: SigningError },
    #[error("no fleet keys (*.pub) in {path}: every offer would be refused")]
    None { path: PathBuf },
}

pub fn load(dir: &Path) -> Result<TrustedKeys, FleetKeysError> {
    let entries =
        std::fs::read_dir(dir).map_err(|source| FleetKeysError::ReadDir { path: dir.to_path_buf(), source })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pub"))
        .collect();
    paths.sort();
    let mut keys = TrustedKeys::new();
    for path in paths {
        let text =
            std::fs::read_to_string(&path).map_err(|source| FleetKeysError::Read { path: path.clone(), source })?;
        let key =
            verifying_key_from_hex(&text).map_err(|source| FleetKeysError::Malformed { path: path.clone(), source })?;
        let id = keys.insert(key);
        log::info!("trusting fleet key {id} from {}", path.display());
    }
    if keys.is_empty() {
        return Err(FleetKeysError::None { path: dir.to_path_buf() });
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    #[test]
    fn loads_every_pub_file_and_ignores_others() {
        let dir = tempfile::tempdir().unwrap();
        for seed in [1u8, 2] {
            let k = SigningKey::from_bytes(&[seed; 32]).verifying_key();
            std::fs::write(dir.path().join(format!("k{seed}.pub")), hex::encode(k.as_bytes()) + "\n").unwrap();
        }
        std::fs::write(dir.path().join("README"), "not a key").unwrap();
        assert_eq!(load(dir.path()).unwrap().len(), 2);
    }

    #[test]
    fn empty_dir_and_bad_key_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(load(dir.path()), Err(FleetKeysError::None { .. })));
        std::fs::write(dir.path().join("bad.pub"), "zz").unwrap();
        assert!(matches!(load(dir.path()), Err(FleetKeysError::Malformed { .. })));
        assert!(matches!(load(&dir.path().join("missing")), Err(FleetKeysError::ReadDir { .. })));
    }
}
