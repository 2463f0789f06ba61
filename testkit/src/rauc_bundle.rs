//! Build real RAUC bundles in tests with Debian's `rauc bundle` and a
//! throw-away self-signed test CA (openssl).

use crate::tools::find_tool;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A test signing identity: `cert.pem` (self-signed CA) and `key.pem`.
#[derive(Debug)]
pub struct TestCa {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn create(dir: &Path) -> Self {
        let cert = dir.join("ca.cert.pem");
        let key = dir.join("ca.key.pem");
        let status = Command::new(find_tool("openssl"))
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=harmony-test-ca"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl");
        assert!(status.status.success(), "openssl: {}", String::from_utf8_lossy(&status.stderr));
        Self { cert, key }
    }
}

/// Builds `<dir>/<name>.raucb` with one rootfs image of `payload` bytes.
/// `format` is `plain` or `verity`.
pub fn build_bundle(
    ca: &TestCa,
    dir: &Path,
    name: &str,
    compatible: &str,
    version: &str,
    format: &str,
    payload: &[u8],
) -> PathBuf {
    let content = dir.join(format!("{name}-content"));
    std::fs::create_dir_all(&content).expect("content dir");
    std::fs::write(content.join("rootfs.img"), payload).expect("rootfs image");
    std::fs::write(
        content.join("manifest.raucm"),
        format!("[update]\ncompatible={compatible}\nversion={version}\n\n[bundle]\nformat={format}\n\n[image.rootfs]\nfilename=rootfs.img\n"),
    )
    .expect("manifest");
    let out = dir.join(format!("{name}.raucb"));
    let _ = std::fs::remove_file(&out);
    let result = Command::new(find_tool("rauc"))
        .arg("bundle")
        .arg("--cert")
        .arg(&ca.cert)
        .arg("--key")
        .arg(&ca.key)
        .arg("--keyring")
        .arg(&ca.cert)
        .arg(&content)
        .arg(&out)
        .output()
        .expect("run rauc bundle");
    assert!(result.status.success(), "rauc bundle: {}", String::from_utf8_lossy(&result.stderr));
    out
}

/// `len` pseudo-random bytes (xorshift64, fixed seed) squashfs cannot
/// compress, so a bundle built from them is as big as asked.
pub fn incompressible(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
