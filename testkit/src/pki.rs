//! A throwaway CA and a server certificate signed by it, made with the
//! `openssl` CLI (scripts/setup installs it): what an operator does by hand
//! for a private fleet (docs/operator.md), so tests exercise real PEM files.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The files [`TestPki::create`] wrote.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate a client trusts.
    pub ca: PathBuf,
    /// The server's certificate (PEM), signed by the CA.
    pub cert: PathBuf,
    /// The server's private key (PEM, PKCS#8).
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl TestPki {
    /// A P-256 CA and a server certificate whose subjectAltName is `san`
    /// (e.g. `IP:127.0.0.1`), both valid for a day, written into `dir`.
    pub fn create(dir: &Path, san: &str) -> Self {
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        let ca_args = ["-subj", "/CN=harmony-test-ca", "-days", "1", "-keyout", "ca.key", "-out", "ca.pem"];
        openssl(dir, &[&["req", "-x509"][..], &ec, &ca_args].concat());
        let csr_args = ["-subj", "/CN=harmony-test-server", "-keyout", "srv.key", "-out", "srv.csr"];
        openssl(dir, &[&["req"][..], &ec, &csr_args].concat());
        let ext = format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n");
        std::fs::write(dir.join("ext.cnf"), ext).expect("write ext.cnf");
        let sign = ["x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial"];
        openssl(dir, &[&sign[..], &["-days", "1", "-extfile", "ext.cnf", "-out", "srv.pem"]].concat());
        Self { ca: dir.join("ca.pem"), cert: dir.join("srv.pem"), key: dir.join("srv.key") }
    }
}
