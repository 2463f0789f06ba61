//! The fleet signing key: generate, rotate, load. Key material is written as
//! one line of hex with mode 0600 and is never logged or printed.

use crate::error::{Error, Result};
use ed25519_dalek::SigningKey;
use harmony_protocol::signing::{signing_key_from_hex, verifying_key_from_hex};
use harmony_protocol::KeyId;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

fn fresh_key() -> Result<SigningKey> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| Error::Invalid(format!("no randomness: {e}")))?;
    Ok(SigningKey::from_bytes(&seed))
}

fn write_secret(path: &Path, text: &str, overwrite: bool) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(0o600);
    if overwrite {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(path).map_err(|e| Error::io(path, e))?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| Error::io(path, e))
}

/// `<key>.pub`: the public half, one line of hex.
pub fn public_path(signing_key: &Path) -> PathBuf {
    let mut p = signing_key.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// `<key>.old`: the previous key during a rotation.
pub fn old_path(signing_key: &Path) -> PathBuf {
    let mut p = signing_key.as_os_str().to_owned();
    p.push(".old");
    PathBuf::from(p)
}

/// Writes a new signing key (refuses to overwrite) and its `.pub` next to it.
pub fn generate(path: &Path) -> Result<KeyId> {
    let key = fresh_key()?;
    write_secret(path, &format!("{}\n", hex::encode(key.to_bytes())), false)?;
    let public = hex::encode(key.verifying_key().to_bytes());
    std::fs::write(public_path(path), format!("{public}\n")).map_err(|e| Error::io(public_path(path), e))?;
    Ok(KeyId::of(&key.verifying_key()))
}

pub fn load(path: &Path) -> Result<SigningKey> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    signing_key_from_hex(&text).map_err(|e| Error::Key { path: path.to_path_buf(), detail: e.to_string() })
}

/// The download-token key of `[bundle_http]`: loaded, or created (0600) on
/// first use. A key of its own, so nothing signed for downloads can pass
/// for an offer signed with the fleet key, and the fleet key is never
/// spread for a lesser purpose.
pub fn load_or_create_token_key(path: &Path) -> Result<SigningKey> {
    if !path.exists() {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let key = fresh_key()?;
        match write_secret(path, &format!("{}\n", hex::encode(key.to_bytes())), false) {
            Ok(()) => log::info!("created the bundle download token key {}", path.display()),
            // Another operator on this host created it first: use theirs.
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    load(path)
}

pub fn load_public(path: &Path) -> Result<KeyId> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let key =
        verifying_key_from_hex(&text).map_err(|e| Error::Key { path: path.to_path_buf(), detail: e.to_string() })?;
    Ok(KeyId::of(&key))
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rotation {
    pub old_key_id: KeyId,
    pub new_key_id: KeyId,
    /// The old public key, kept so devices can still verify pending offers.
    pub old_public: PathBuf,
    pub new_public: PathBuf,
}

/// Rotation step 1: the old key moves to `<key>.old` (and `<key>.old.pub`), a
/// new key takes its place. Ship BOTH `.pub` files to every device's
/// `fleet_keys_dir`; once all devices have the new one, remove the old `.pub`
/// from devices with `keys retire`.
pub fn rotate(path: &Path) -> Result<Rotation> {
    let old = load(path)?;
    let old_path = old_path(path);
    if old_path.exists() {
        return Err(Error::Invalid(format!(
            "{} exists: a rotation is already in progress (run `keys retire` first)",
            old_path.display()
        )));
    }
    std::fs::rename(path, &old_path).map_err(|e| Error::io(path, e))?;
    let old_public = public_path(&old_path);
    let _ = std::fs::rename(public_path(path), &old_public);
    if !old_public.exists() {
        std::fs::write(&old_public, format!("{}\n", hex::encode(old.verifying_key().to_bytes())))
            .map_err(|e| Error::io(&old_public, e))?;
    }
    let new_key_id = generate(path)?;
    Ok(Rotation { old_key_id: KeyId::of(&old.verifying_key()), new_key_id, old_public, new_public: public_path(path) })
}

/// Rotation step 2: drop the old key pair after every device trusts the new key.
pub fn retire(path: &Path) -> Result<Option<KeyId>> {
    let old_path = old_path(path);
    if !old_path.exists() {
        return Ok(None);
    }
    let id = load(&old_path).map(|k| KeyId::of(&k.verifying_key()))?;
    std::fs::remove_file(&old_path).map_err(|e| Error::io(&old_path, e))?;
    let _ = std::fs::remove_file(public_path(&old_path));
    Ok(Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use harmony_protocol::{SignedEnvelope, TrustedKeys};

    #[test]
    fn generate_rotate_retire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.key");
        let id1 = generate(&path).unwrap();
        assert!(generate(&path).is_err(), "never overwrites a key");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_public(&public_path(&path)).unwrap(), id1);
        let old_key = load(&path).unwrap();

        let rot = rotate(&path).unwrap();
        assert_eq!(rot.old_key_id, id1);
        assert_ne!(rot.new_key_id, id1);
        // A device trusting both .pub files accepts offers signed by either key.
        let mut trusted = TrustedKeys::new();
        for p in [&rot.old_public, &rot.new_public] {
            let text = std::fs::read_to_string(p).unwrap();
            trusted.insert(verifying_key_from_hex(&text).unwrap());
        }
        let new_key = load(&path).unwrap();
        for k in [&old_key, &new_key] {
            let env = SignedEnvelope::sign(k, &1u32).unwrap();
            assert_eq!(trusted.verify::<u32>(&env).unwrap(), 1);
        }
        assert!(rotate(&path).is_err(), "one rotation at a time");
        assert_eq!(retire(&path).unwrap(), Some(id1));
        assert!(rotate(&path).is_ok());
    }

    #[test]
    fn token_key_is_created_once_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/bundle-token.key");
        let first = load_or_create_token_key(&path).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create_token_key(&path).unwrap().to_bytes(), first.to_bytes());
    }
}
