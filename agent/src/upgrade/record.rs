//! The persisted upgrade record. Written atomically (temp file, fsync,
//! rename, fsync of the directory) so a power cut leaves either the old or
//! the new record, never a torn one.

use super::machine::State;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot read upgrade record {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("upgrade record {path} is corrupt: {source}")]
    Corrupt { path: PathBuf, source: serde_json::Error },
    #[error("cannot write upgrade record {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Where the upgrade record lives. The service loads it once at start and
/// saves it after every transition that changed it, before acting.
pub trait RecordStore: Send + Sync + std::fmt::Debug {
    fn load(&self) -> Result<Option<State>, RecordError>;
    fn save(&self, state: &State) -> Result<(), RecordError>;
}

#[derive(Debug, Clone)]
pub struct FileRecordStore {
    path: PathBuf,
}

impl FileRecordStore {
    pub fn in_dir(state_dir: &Path) -> Self {
        Self { path: state_dir.join("upgrade-record.json") }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl RecordStore for FileRecordStore {
    fn load(&self) -> Result<Option<State>, RecordError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(RecordError::Read { path: self.path.clone(), source }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| RecordError::Corrupt { path: self.path.clone(), source })
    }

    fn save(&self, state: &State) -> Result<(), RecordError> {
        let err = |source| RecordError::Write { path: self.path.clone(), source };
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| err(std::io::Error::other(e)))?;
        write_atomically(&self.path, &bytes).map_err(err)
    }
}

/// Replace `path` with `bytes` so that a crash at any point leaves the old
/// or the new content.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::durable::write_atomically(path, bytes, 0o644)
}

/// For tests: keeps the record in memory.
#[derive(Debug, Default)]
pub struct MemoryRecordStore {
    state: Mutex<Option<State>>,
}

impl RecordStore for MemoryRecordStore {
    fn load(&self) -> Result<Option<State>, RecordError> {
        Ok(self.state.lock().map(|g| g.clone()).unwrap_or(None))
    }
    fn save(&self, state: &State) -> Result<(), RecordError> {
        if let Ok(mut g) = self.state.lock() {
            *g = Some(state.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use harmony_protocol::time::UnixMillis;

    #[test]
    fn round_trips_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileRecordStore::in_dir(dir.path());
        assert_eq!(store.load().unwrap(), None);
        let mut s = State::initial(UnixMillis(5));
        s.last_accepted_seq = 9;
        store.save(&s).unwrap();
        assert_eq!(store.load().unwrap(), Some(s.clone()));
        s.last_accepted_seq = 10;
        store.save(&s).unwrap();
        assert_eq!(store.load().unwrap().unwrap().last_accepted_seq, 10);
        assert!(!crate::durable::temp_path(store.path()).exists(), "no temp file left behind");
    }

    #[test]
    fn a_torn_record_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileRecordStore::in_dir(dir.path());
        std::fs::write(store.path(), b"{\"phase\":").unwrap();
        assert!(matches!(store.load(), Err(RecordError::Corrupt { .. })));
    }
}
