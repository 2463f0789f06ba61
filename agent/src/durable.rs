//! Files that survive a power cut: written whole or not at all, removed for
//! good. Shared by the upgrade record, the download's resume point and the
//! enrollment files.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where [`write_atomically`] stages `path`: beside it, hidden and ending in
/// `.tmp`, so a drop-in being written (`*.toml`) is never merged, and two
/// files with the same stem never share a temp file.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Replace `path` with `bytes` (created with `mode` from the first byte on)
/// so that a crash at any point leaves the old or the new content.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = temp_path(path);
    let written = (|| {
        // A temp file left by a crash: start afresh (create_new keeps `mode`).
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        // A full disk must not also leave a temp file behind.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename is durable only once the directory entry is.
    std::fs::File::open(dir)?.sync_all()
}

/// Remove `path` (absent is fine) and make the removal durable.
pub fn remove_durably(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // FAT directories may refuse an fsync; the unlink itself succeeded.
        if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
            log::debug!("fsync of {} after removing {}: {e}", dir.display(), path.display());
        }
    }
    Ok(())
}
