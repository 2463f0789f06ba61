//! Streaming installs: whether this device can stream, and the check that
//! stands in for the whole file's SHA-256 when RAUC reads the bundle over
//! HTTP and the agent never holds it.
//!
//! What binds a streamed install to the signed offer: the agent fetches the
//! bundle's signature block (with the offer's token, as RAUC will) and
//! compares its SHA-256 with the offer's `signature_sha256`; that block
//! holds the manifest, which holds the verity root hash of the rest, and
//! RAUC checks the block's signature and every payload block it reads
//! against that hash. A server that answers the agent with one bundle and
//! RAUC with another still needs a bundle signed for this fleet, and a
//! bundle other than the offered one never reports the target version from
//! its new boot, so the operator never commits it (the commit deadline
//! then falls back).

use super::http_get::{self, HttpError};
use harmony_protocol::bundle_layout::{self, LayoutError};
use harmony_protocol::BundleSource;
use sha2::{Digest, Sha256};
use std::path::Path;

/// `Ok` when RAUC may stream here; `Err` says why not, for the status.
pub fn support(enabled: bool, nbd: bool) -> Result<(), String> {
    if !enabled {
        Err("streaming is turned off in the agent's config (upgrade.streaming)".into())
    } else if !nbd {
        Err("the kernel has no NBD (none of the agent's system.nbd paths exists)".into())
    } else {
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the offer has no bundle URL")]
    NoUrl,
    #[error("reading the bundle's signature: {0}")]
    Http(#[from] HttpError),
    #[error("the server says the bundle has {served} bytes; the offer says {offered}")]
    SizeMismatch { served: u64, offered: u64 },
    #[error("the bundle's trailer: {0}")]
    Layout(#[from] LayoutError),
}

/// The header a device names its bandwidth cap in; the operator's bundle
/// server paces all of that device's reads to it (RAUC's reads cannot be
/// paced by the agent).
pub const MAX_RATE_HEADER: &str = "Harmony-Max-Bytes-Per-Sec";

/// The request headers RAUC and the agent send for `source`: the offer's
/// token, and the device's cap when it has one (`max_bytes_per_sec` > 0).
pub fn headers(source: &BundleSource, max_bytes_per_sec: u64) -> Vec<String> {
    let mut h: Vec<String> = source.authorization.iter().map(|a| format!("Authorization: {a}")).collect();
    if max_bytes_per_sec > 0 {
        h.push(format!("{MAX_RATE_HEADER}: {max_bytes_per_sec}"));
    }
    h
}

/// SHA-256 of the signature block of the bundle at `source.url`, read with
/// two Range requests; the server must agree with the offer on the size.
pub async fn signature_sha256(
    source: &BundleSource,
    headers: &[String],
    extra_ca: Option<&Path>,
) -> Result<String, StreamError> {
    let url = source.url.as_deref().ok_or(StreamError::NoUrl)?;
    let trailer = http_get::get_part(url, bundle_layout::trailer_range(source.size)?, headers, extra_ca).await?;
    if trailer.total != source.size {
        return Err(StreamError::SizeMismatch { served: trailer.total, offered: source.size });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&trailer.bytes);
    let range = bundle_layout::signature_range(source.size, len)?;
    let signature = http_get::get_part(url, range, headers, extra_ca).await?;
    if signature.total != source.size {
        return Err(StreamError::SizeMismatch { served: signature.total, offered: source.size });
    }
    Ok(hex::encode(Sha256::digest(&signature.bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(authorization: Option<&str>) -> BundleSource {
        BundleSource {
            object: None,
            url: Some("http://op/v1/bundles/b".into()),
            sha256: String::new(),
            size: 1,
            authorization: authorization.map(Into::into),
            signature_sha256: None,
        }
    }

    #[test]
    fn the_token_and_the_devices_cap_travel_as_headers() {
        assert_eq!(headers(&source(Some("Bearer t")), 0), vec!["Authorization: Bearer t".to_string()]);
        assert_eq!(
            headers(&source(Some("Bearer t")), 262_144),
            vec!["Authorization: Bearer t".to_string(), "Harmony-Max-Bytes-Per-Sec: 262144".to_string()]
        );
        assert!(headers(&source(None), 0).is_empty());
    }

    #[test]
    fn streaming_needs_the_config_and_nbd() {
        assert!(support(true, true).is_ok());
        assert!(support(false, true).unwrap_err().contains("upgrade.streaming"));
        assert!(support(true, false).unwrap_err().contains("no NBD"));
    }
}
