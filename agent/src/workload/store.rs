//! What the workload service keeps on /data: the applied manifest, as the
//! signed envelope it arrived in (verified again on every start, so a file
//! edited on the card is not obeyed), and what the agent owns on the device.

use crate::durable::write_atomically;
use harmony_protocol::workload::{AgentManifest, ResourceSpec};
use harmony_protocol::{SignedEnvelope, TrustedKeys};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct WorkloadStore {
    dir: PathBuf,
}

impl WorkloadStore {
    pub fn in_dir(state_dir: &Path) -> Self {
        Self { dir: state_dir.join("workloads") }
    }

    pub fn objects_dir(&self) -> PathBuf {
        self.dir.join("objects")
    }

    fn manifest_path(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }

    fn owned_path(&self) -> PathBuf {
        self.dir.join("owned.json")
    }

    pub fn save_manifest(&self, envelope: &SignedEnvelope) -> std::io::Result<()> {
        write_atomically(&self.manifest_path(), &envelope.encode(), 0o600)
    }

    /// The applied manifest, if there is one that still verifies.
    pub fn load_manifest(&self, keys: &TrustedKeys) -> Option<(SignedEnvelope, AgentManifest)> {
        let bytes = match std::fs::read(self.manifest_path()) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                log::error!(
                    "{}: {e}; no workloads until the operator's manifest arrives",
                    self.manifest_path().display()
                );
                return None;
            }
        };
        match super::service::decode_manifest(keys, &bytes) {
            Ok(decoded) => Some(decoded),
            Err(e) => {
                log::error!("saved workload manifest refused: {e}; waiting for the operator's");
                None
            }
        }
    }

    pub fn save_owned(&self, owned: &BTreeMap<String, ResourceSpec>) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(owned).map_err(std::io::Error::other)?;
        write_atomically(&self.owned_path(), &json, 0o600)
    }

    /// An unreadable file loses track of what to delete, never what to run:
    /// logged, and the next manifest's resources are owned again.
    pub fn load_owned(&self) -> BTreeMap<String, ResourceSpec> {
        match std::fs::read(self.owned_path()) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                log::error!("{}: {e}; starting with nothing owned", self.owned_path().display());
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        }
    }
}
