//! Locating the external programs `scripts/setup` installs.

use std::path::{Path, PathBuf};

/// Repository root (this crate lives at `<root>/testkit`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Find `name`: `$HARMONY_<NAME>` first, then the project's tool venv, then PATH.
/// Panics with the fix when missing: a test without its real component must
/// fail loudly, never pass by skipping.
pub fn find_tool(name: &str) -> PathBuf {
    let var = format!("HARMONY_{}", name.to_ascii_uppercase().replace('-', "_"));
    if let Some(p) = std::env::var_os(&var) {
        return PathBuf::from(p);
    }
    let venv = repo_root().join(".tools/venv/bin").join(name);
    if venv.is_file() {
        return venv;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!("{name} not found (set {var}, or run scripts/setup to install it)");
}
