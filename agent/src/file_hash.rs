//! SHA-256 of a file, streamed: the bundle check before install and the
//! workload objects and managed files use this one helper.

use sha2::{Digest, Sha256};
use std::path::Path;

/// Lower-case hex SHA-256 and length of the file at `path`.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h)?;
    Ok((hex::encode(h.finalize()), n))
}
