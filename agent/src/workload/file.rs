//! `File` resources: a regular file with exact content, mode and owner,
//! only below the configured roots.
//!
//! The core has already refused paths outside the roots and the protocol
//! paths with `..`; here the filesystem is checked as it is: no component
//! between the root and the file may be a symlink (it could lead out of the
//! root), and the file itself must be a regular file or absent — a
//! symlink, device, FIFO or directory in its place is refused, never
//! followed or replaced. The new content is written to a temp file in the
//! same directory (created exclusively, so never through a planted link)
//! and renamed over the target.

use super::objects::ObjectCache;
use super::reconciler::{Observed, Reconciler};
use crate::durable;
use crate::file_hash::sha256_file;
use futures::future::BoxFuture;
use harmony_protocol::workload::{FileContent, FileSpec};
use sha2::{Digest, Sha256};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

#[derive(Debug)]
pub struct FileReconciler {
    pub roots: Vec<PathBuf>,
    pub objects: Arc<ObjectCache>,
    pub passwd_file: PathBuf,
    pub group_file: PathBuf,
}

impl FileReconciler {
    /// The root `path` lies under, after checking every directory between
    /// them. `create`: make missing directories (0755).
    fn checked_parent(&self, path: &Path, create: bool) -> Result<(), String> {
        let root = self
            .roots
            .iter()
            .find(|r| path != r.as_path() && path.starts_with(r))
            .ok_or_else(|| format!("{} is outside the managed roots", path.display()))?;
        if create {
            std::fs::create_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
        }
        let rest = path.strip_prefix(root).map_err(|_| format!("{} is outside {}", path.display(), root.display()))?;
        let mut dir = root.clone();
        let components: Vec<_> = rest.components().collect();
        for c in components.iter().take(components.len().saturating_sub(1)) {
            let Component::Normal(name) = c else { return Err(format!("{}: not a plain path", path.display())) };
            dir.push(name);
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(format!("{} is a symlink; refusing to follow it", dir.display()))
                }
                Ok(m) if !m.is_dir() => return Err(format!("{} is not a directory", dir.display())),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                    std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                        .map_err(|e| format!("{}: {e}", dir.display()))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(format!("{}: {e}", dir.display())),
            }
        }
        Ok(())
    }

    fn ids(&self, spec: &FileSpec) -> Result<(u32, u32), String> {
        let uid = match &spec.owner {
            None => 0,
            Some(name) => resolve(&self.passwd_file, name, 2)?,
        };
        let gid = match &spec.group {
            None => 0,
            Some(name) => resolve(&self.group_file, name, 2)?,
        };
        Ok((uid, gid))
    }

    fn desired_hash(spec: &FileSpec) -> (String, u64) {
        match &spec.content {
            FileContent::Inline(text) => (hex::encode(Sha256::digest(text.as_bytes())), text.len() as u64),
            FileContent::Object { sha256, size } => (sha256.clone(), *size),
        }
    }

    fn observe_now(&self, spec: &FileSpec) -> Result<Observed, String> {
        let path = Path::new(&spec.path);
        self.checked_parent(path, false)?;
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Observed::Drifted { what: format!("{} is missing", spec.path) })
            }
            Err(e) => return Err(format!("{}: {e}", spec.path)),
        };
        if !meta.file_type().is_file() {
            // Never replaced: something else owns that name.
            return Err(format!(
                "{} exists and is not a regular file (a symlink, device, FIFO or directory)",
                spec.path
            ));
        }
        let (want_hash, want_size) = Self::desired_hash(spec);
        let (uid, gid) = self.ids(spec)?;
        let mut drift = Vec::new();
        if meta.len() != want_size || sha256_file(path).map_err(|e| format!("{}: {e}", spec.path))?.0 != want_hash {
            drift.push("content differs".to_string());
        }
        if meta.mode() & 0o7777 != spec.mode {
            drift.push(format!("mode is {:o}, not {:o}", meta.mode() & 0o7777, spec.mode));
        }
        if (meta.uid(), meta.gid()) != (uid, gid) {
            drift.push(format!("owner is {}:{}, not {uid}:{gid}", meta.uid(), meta.gid()));
        }
        if drift.is_empty() {
            Ok(Observed::InSync { details: format!("sha256 {}", &want_hash[..12]) })
        } else {
            Ok(Observed::Drifted { what: format!("{}: {}", spec.path, drift.join(", ")) })
        }
    }

    async fn reconcile_now(&self, spec: &FileSpec) -> Result<(), String> {
        let path = Path::new(&spec.path);
        self.checked_parent(path, true)?;
        if let Ok(m) = std::fs::symlink_metadata(path) {
            if !m.file_type().is_file() {
                return Err(format!("{} exists and is not a regular file; leaving it alone", spec.path));
            }
        }
        let (uid, gid) = self.ids(spec)?;
        let bytes = match &spec.content {
            FileContent::Inline(text) => text.as_bytes().to_vec(),
            FileContent::Object { sha256, size } => {
                let cached = self.objects.get(sha256, *size).await?;
                std::fs::read(&cached).map_err(|e| format!("{}: {e}", cached.display()))?
            }
        };
        // Created 0600 and root-owned; mode and owner are set before the
        // rename, so the file never appears with other permissions.
        let tmp = durable::temp_path(path);
        let staged = (|| {
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new();
            std::os::unix::fs::OpenOptionsExt::mode(&mut f, 0o600);
            let mut f = f.write(true).create_new(true).open(&tmp)?;
            std::io::Write::write_all(&mut f, &bytes)?;
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
            f.set_permissions(std::fs::Permissions::from_mode(spec.mode))?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = staged {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!("{}: {e}", spec.path));
        }
        if let Some(dir) = path.parent() {
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }

    fn delete_now(&self, spec: &FileSpec) -> Result<(), String> {
        let path = Path::new(&spec.path);
        self.checked_parent(path, false)?;
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("{}: {e}", spec.path)),
            Ok(m) if !m.file_type().is_file() => {
                // Not ours (we only ever write regular files): leave it.
                log::warn!("{} is no longer a regular file; not removing it", spec.path);
                Ok(())
            }
            Ok(_) => durable::remove_durably(path).map_err(|e| format!("{}: {e}", spec.path)),
        }
    }
}

impl Reconciler for FileReconciler {
    type Spec = FileSpec;

    fn observe<'a>(&'a self, _id: &'a str, spec: &'a FileSpec) -> BoxFuture<'a, Result<Observed, String>> {
        Box::pin(async move { self.observe_now(spec) })
    }

    fn reconcile<'a>(&'a self, _id: &'a str, spec: &'a FileSpec) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(self.reconcile_now(spec))
    }

    fn delete<'a>(&'a self, _id: &'a str, spec: &'a FileSpec) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { self.delete_now(spec) })
    }
}

/// A user or group by number or by name in an `/etc/passwd`-style file
/// (`name:x:id:...`; `field` is the id's position).
fn resolve(db: &Path, name: &str, field: usize) -> Result<u32, String> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    let text = std::fs::read_to_string(db).map_err(|e| format!("{}: {e}", db.display()))?;
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&name))
        .and_then(|f| f.get(field).and_then(|id| id.parse().ok()))
        .ok_or_else(|| format!("no user or group {name:?} in {}", db.display()))
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
