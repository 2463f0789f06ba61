//! The operator's TOML config file.
//!
//! ```toml
//! [nats]
//! url = "nats://127.0.0.1:4222"
//! # credentials_file = "/etc/harmony-operator/operator.creds"
//! # nkey_seed_file = "/etc/harmony-operator/operator.nk"
//! [keys]
//! signing_key = "/etc/harmony-operator/fleet.key"
//! [fleet]
//! stale_after_secs = 30
//! offline_after_secs = 120
//! [coordinator]
//! operator_id = "op-1"
//! lease_ttl_secs = 15
//! tick_millis = 1000
//! commit_retry_secs = 5
//! [rollout]   # defaults for `rollout start`
//! canary = 1
//! waves = [10, 50, 100]
//! max_in_flight = 10
//! device_timeout_secs = 1800
//! reboot_timeout_secs = 600
//! halt_after_failures = 1
//! offer_ttl_secs = 86400
//! [dashboard]  # `serve --http ADDR` overrides listen
//! listen = "127.0.0.1:8080"
//! session_idle_secs = 28800
//! secure_cookie = false   # true behind a TLS reverse proxy
//! [[dashboard.users]]
//! name = "alice"
//! password_hash = "$argon2id$v=19$..."   # `harmony-operator dashboard hash-password`
//! role = "admin"          # or "viewer"
//! [bundle_http]   # bundles over HTTP with Range (issue #16)
//! listen = "0.0.0.0:8443"
//! public_url = "https://operator.example:8443"
//! cache_dir = "/var/cache/harmony-operator/bundles"
//! token_key = "/etc/harmony-operator/bundle-token.key"
//! download_idle_secs = 10
//! tls_cert = "/etc/harmony-operator/bundles.pem"   # both or neither: HTTPS, HTTP/2 by ALPN
//! tls_key = "/etc/harmony-operator/bundles.key"
//! http2 = true                                     # with TLS: offer h2 by ALPN
//! ```

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub nats: NatsConfig,
    #[serde(default)]
    pub keys: KeysConfig,
    #[serde(default)]
    pub fleet: FleetConfig,
    #[serde(default)]
    pub coordinator: CoordinatorConfig,
    #[serde(default)]
    pub rollout: RolloutDefaults,
    #[serde(default)]
    pub dashboard: DashboardConfig,
    /// Zero-touch enrollment (issue #14): when present, `serve` answers the
    /// NATS server's auth callout and devices' enrollment requests.
    #[serde(default)]
    pub enroll: Option<EnrollConfig>,
    /// Bundles over HTTP with Range (issue #16): when present, `serve`
    /// answers `GET /v1/bundles/<id>` and offers carry the URL and a token.
    #[serde(default)]
    pub bundle_http: Option<BundleHttpConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    pub url: String,
    pub credentials_file: Option<PathBuf>,
    pub nkey_seed_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// Hex ed25519 seed of the fleet signing key. Never logged.
    pub signing_key: PathBuf,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self { signing_key: PathBuf::from("/etc/harmony-operator/fleet.key") }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    pub stale_after_secs: u64,
    pub offline_after_secs: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self { stale_after_secs: 30, offline_after_secs: 120 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorConfig {
    /// Name in the leader lease; default `<hostname>-<pid>`.
    pub operator_id: Option<String>,
    pub lease_ttl_secs: u64,
    pub tick_millis: u64,
    pub commit_retry_secs: u64,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self { operator_id: None, lease_ttl_secs: 15, tick_millis: 1000, commit_retry_secs: 5 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutDefaults {
    pub canary: usize,
    pub waves: Vec<u8>,
    pub max_in_flight: usize,
    pub device_timeout_secs: u64,
    pub reboot_timeout_secs: u64,
    pub halt_after_failures: Option<u32>,
    pub halt_after_percent: Option<u8>,
    pub offer_ttl_secs: u64,
}

impl Default for RolloutDefaults {
    fn default() -> Self {
        Self {
            canary: 1,
            waves: vec![10, 50, 100],
            max_in_flight: 10,
            device_timeout_secs: 1800,
            reboot_timeout_secs: 600,
            halt_after_failures: Some(1),
            halt_after_percent: None,
            offer_ttl_secs: 86_400,
        }
    }
}

/// The web dashboard served by `serve` (issue 13). Off unless `listen` is
/// set here or `serve --http` is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardConfig {
    /// Address to listen on, e.g. `127.0.0.1:8080`.
    pub listen: Option<String>,
    /// Sessions end after this long without a request.
    pub session_idle_secs: u64,
    /// Sessions end this long after login, however busy.
    pub session_max_secs: u64,
    /// Mark the session cookie `Secure` (set when a TLS proxy is in front).
    pub secure_cookie: bool,
    /// Largest bundle upload, in MiB.
    pub max_upload_mib: u64,
    /// Live updates are coalesced over this window, so a busy rollout sends
    /// each viewer at most one refresh per window.
    pub live_coalesce_millis: u64,
    pub users: Vec<DashboardUser>,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        Self {
            listen: None,
            session_idle_secs: 8 * 3600,
            session_max_secs: 24 * 3600,
            secure_cookie: false,
            max_upload_mib: 4096,
            live_coalesce_millis: 1000,
            users: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardUser {
    pub name: String,
    /// PHC string of an argon2 hash. Never logged.
    pub password_hash: String,
    pub role: DashboardRole,
}

/// Viewers read; admins also act (rollouts, bundles, ping, reboot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DashboardRole {
    Viewer,
    Admin,
}

/// The auth callout and the enrollment service (see docs/adr/0005).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrollConfig {
    /// Seed of the account nkey (`SA...`) that signs the callout's answers;
    /// its public key is the `issuer` in nats-server's `auth_callout` block.
    pub issuer_seed_file: PathBuf,
    /// Seed of the operator's user in the system account (`SYS`), used to
    /// disconnect a revoked device at once.
    pub system_seed_file: PathBuf,
    /// The account devices and the operator share (JetStream is in it).
    pub account: String,
    /// Enrollment requests answered per second, all operators together
    /// divided by how many run; more are answered `busy`.
    pub max_requests_per_sec: u32,
    /// Admitted devices are disconnected and admitted afresh after this
    /// long, so a revocation holds even if the disconnect was missed.
    pub grant_ttl_secs: u64,
}

impl Default for EnrollConfig {
    fn default() -> Self {
        Self {
            issuer_seed_file: PathBuf::from("/etc/harmony-operator/callout-issuer.nk"),
            system_seed_file: PathBuf::from("/etc/harmony-operator/system.nk"),
            account: "HARMONY".into(),
            max_requests_per_sec: 20,
            grant_ttl_secs: 24 * 3600,
        }
    }
}

/// The bundle server (see docs/operator.md, "Serving bundles over HTTP").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleHttpConfig {
    /// Address to listen on, e.g. `0.0.0.0:8443`.
    pub listen: String,
    /// Base URL devices reach it at, put into offers, e.g. `http://op-1:8443`.
    pub public_url: String,
    /// Verified local copies of served bundles, named by SHA-256.
    #[serde(default = "default_bundle_cache_dir")]
    pub cache_dir: PathBuf,
    /// Hex ed25519 seed that signs download tokens (created 0600 on first
    /// `serve`); every operator behind the same `public_url` needs the same.
    #[serde(default = "default_token_key")]
    pub token_key: PathBuf,
    /// A device keeps its download slot this long after its last request
    /// ended, so a streaming client's next Range request finds it again.
    #[serde(default = "default_download_idle_secs")]
    pub download_idle_secs: u64,
    /// The server's certificate chain (PEM). With `tls_key`, bundles are
    /// served over HTTPS, HTTP/2 offered first (ALPN); `public_url` must
    /// then be `https://`. Re-read when the files change, so a renewed
    /// certificate needs no restart.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Offer HTTP/2 over TLS (ALPN). Off, clients get HTTP/1.1 only: what a
    /// device whose libcurl lacks nghttp2 speaks anyway (the Yocto image's
    /// default, ADR 0007), or a way round a client's HTTP/2 trouble.
    #[serde(default = "default_true")]
    pub http2: bool,
}

impl BundleHttpConfig {
    /// The certificate and key files when TLS is configured.
    pub fn tls(&self) -> Option<(&Path, &Path)> {
        Some((self.tls_cert.as_deref()?, self.tls_key.as_deref()?))
    }

    fn check(&self) -> std::result::Result<(), String> {
        let https = self.public_url.starts_with("https://");
        if !https && !self.public_url.starts_with("http://") {
            return Err(format!("bundle_http.public_url {:?} must start with http:// or https://", self.public_url));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) | (None, Some(_)) => Err("bundle_http: set both tls_cert and tls_key, or neither".into()),
            (Some(_), Some(_)) if !https => Err(format!(
                "bundle_http.public_url {:?} must be https:// when tls_cert and tls_key are set",
                self.public_url
            )),
            // An https:// URL without tls_*: TLS ends at a proxy in front.
            _ => Ok(()),
        }
    }
}

fn default_bundle_cache_dir() -> PathBuf {
    PathBuf::from("/var/cache/harmony-operator/bundles")
}

fn default_token_key() -> PathBuf {
    PathBuf::from("/etc/harmony-operator/bundle-token.key")
}

fn default_true() -> bool {
    true
}

fn default_download_idle_secs() -> u64 {
    10
}

impl Config {
    pub fn for_url(url: &str, signing_key: &Path) -> Self {
        Self {
            nats: NatsConfig { url: url.to_string(), credentials_file: None, nkey_seed_file: None },
            keys: KeysConfig { signing_key: signing_key.to_path_buf() },
            fleet: FleetConfig::default(),
            coordinator: CoordinatorConfig::default(),
            rollout: RolloutDefaults::default(),
            dashboard: DashboardConfig::default(),
            enroll: None,
            bundle_http: None,
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let cfg: Self =
            toml::from_str(text).map_err(|e| Error::Config { path: path.to_path_buf(), detail: e.to_string() })?;
        if cfg.nats.credentials_file.is_some() && cfg.nats.nkey_seed_file.is_some() {
            return Err(Error::Config {
                path: path.to_path_buf(),
                detail: "set nats.credentials_file or nats.nkey_seed_file, not both".into(),
            });
        }
        if cfg.fleet.offline_after_secs < cfg.fleet.stale_after_secs {
            return Err(Error::Config {
                path: path.to_path_buf(),
                detail: "fleet.offline_after_secs must be >= fleet.stale_after_secs".into(),
            });
        }
        for user in &cfg.dashboard.users {
            if argon2::PasswordHash::new(&user.password_hash).is_err() {
                return Err(Error::Config {
                    path: path.to_path_buf(),
                    detail: format!("dashboard user {:?}: password_hash is not a PHC hash string", user.name),
                });
            }
        }
        if let Some(http) = &cfg.bundle_http {
            http.check().map_err(|detail| Error::Config { path: path.to_path_buf(), detail })?;
        }
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path)
    }

    pub fn operator_id(&self) -> String {
        self.coordinator.operator_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "operator".into());
            format!("{}-{}", host.trim(), std::process::id())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse("[nats]\nurl = \"nats://h:4222\"\n", Path::new("x")).unwrap();
        assert_eq!(c.fleet.stale_after_secs, 30);
        assert_eq!(c.rollout.waves, vec![10, 50, 100]);
    }

    #[test]
    fn unknown_keys_and_both_credentials_are_errors() {
        assert!(Config::parse("[nats]\nurl = \"x\"\nbogus = 1\n", Path::new("x")).is_err());
        let both = "[nats]\nurl = \"x\"\ncredentials_file = \"a\"\nnkey_seed_file = \"b\"\n";
        assert!(Config::parse(both, Path::new("x")).is_err());
    }

    #[test]
    fn dashboard_users_parse_and_bad_hashes_are_errors() {
        let ok = "[nats]\nurl = \"x\"\n[dashboard]\nlisten = \"127.0.0.1:8080\"\n[[dashboard.users]]\nname = \"a\"\n\
                  password_hash = \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$ZXhhbXBsZWhhc2hleGFtcGxlaGFzaA\"\nrole = \"viewer\"\n";
        let c = Config::parse(ok, Path::new("x")).unwrap();
        assert_eq!(c.dashboard.users[0].role, DashboardRole::Viewer);
        let bad = ok.replace("$argon2id$v=19", "plain");
        assert!(Config::parse(&bad, Path::new("x")).is_err());
    }

    #[test]
    fn bundle_http_needs_listen_and_public_url() {
        let ok = "[nats]\nurl = \"x\"\n[bundle_http]\nlisten = \"0.0.0.0:8443\"\npublic_url = \"http://h:8443\"\n";
        let c = Config::parse(ok, Path::new("x")).unwrap().bundle_http.unwrap();
        assert_eq!(c.download_idle_secs, 10);
        assert_eq!(c.token_key, default_token_key());
        assert!(Config::parse("[nats]\nurl = \"x\"\n[bundle_http]\nlisten = \"0.0.0.0:1\"\n", Path::new("x")).is_err());
        assert!(Config::parse(&format!("{ok}bogus = 1\n"), Path::new("x")).is_err());
    }

    #[test]
    fn bundle_http_tls_needs_both_files_and_an_https_url() {
        let base = "[nats]\nurl = \"x\"\n[bundle_http]\nlisten = \"0.0.0.0:8443\"\n";
        let parse = |rest: &str| Config::parse(&format!("{base}{rest}"), Path::new("x"));
        let tls = "tls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\n";
        let c = parse(&format!("public_url = \"https://h:8443\"\n{tls}")).unwrap().bundle_http.unwrap();
        assert_eq!(c.tls(), Some((Path::new("/c.pem"), Path::new("/k.pem"))));
        assert!(c.http2, "HTTP/2 is offered unless turned off");
        let off = parse(&format!("public_url = \"https://h:8443\"\n{tls}http2 = false\n")).unwrap();
        assert!(!off.bundle_http.unwrap().http2);
        let err = parse(&format!("public_url = \"http://h:8443\"\n{tls}")).unwrap_err().to_string();
        assert!(err.contains("must be https://"), "{err}");
        let err = parse("public_url = \"https://h\"\ntls_cert = \"/c.pem\"\n").unwrap_err().to_string();
        assert!(err.contains("both tls_cert and tls_key"), "{err}");
        assert!(parse("public_url = \"ftp://h\"\n").is_err());
        // TLS ended by a proxy in front: an https:// URL, no files here.
        assert_eq!(parse("public_url = \"https://h\"\n").unwrap().bundle_http.unwrap().tls(), None);
    }
}
