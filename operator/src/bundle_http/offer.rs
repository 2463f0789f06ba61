//! Putting the HTTP source into an offer: the URL of its bundle and a token
//! that reads that bundle alone, for that device alone, until the offer
//! expires. Pure, and deterministic, so an offer re-put after a takeover
//! is the same bytes.

use super::token::{self, Claims};
use ed25519_dalek::SigningKey;
use harmony_protocol::UpgradeOffer;

#[derive(Debug, Clone)]
pub struct HttpSource {
    /// Base URL devices reach the bundle server at, e.g. `http://op:8443`.
    pub public_url: String,
    pub token_key: SigningKey,
}

impl HttpSource {
    /// `offer` with `url` and `authorization` set (an offer without a
    /// bundle object is left as it is). The object stays: agents that
    /// predate HTTP serving download it from the object store.
    pub fn attach(&self, offer: &UpgradeOffer, max_concurrent: Option<u32>) -> UpgradeOffer {
        let mut offer = offer.clone();
        let Some(id) = offer.bundle.object.clone() else { return offer };
        let claims = Claims {
            device: offer.device_id.as_str().to_string(),
            bundle: id.clone(),
            sha256: offer.bundle.sha256.clone(),
            rollout: offer.rollout_id.clone(),
            max_concurrent,
            // A token lives as long as the offer it came in: a device may
            // start any time the offer is valid.
            expires_at: offer.expires_at,
        };
        offer.bundle.url = Some(format!("{}/v1/bundles/{id}", self.public_url.trim_end_matches('/')));
        offer.bundle.authorization = Some(format!("Bearer {}", token::issue(&self.token_key, &claims)));
        offer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use harmony_protocol::time::UnixMillis;
    use harmony_protocol::{BundleSource, DeviceId, SCHEMA_VERSION};

    fn offer(object: Option<&str>) -> UpgradeOffer {
        UpgradeOffer {
            schema: SCHEMA_VERSION,
            offer_seq: 5,
            device_id: DeviceId::new("pi-1").unwrap(),
            rollout_id: Some("r1".into()),
            target_version: "2.0".into(),
            compatible: "c".into(),
            bundle: BundleSource {
                object: object.map(Into::into),
                url: None,
                sha256: "cd".repeat(32),
                size: 10,
                authorization: None,
                signature_sha256: None,
            },
            not_before: UnixMillis(100),
            expires_at: UnixMillis(5_000),
            allow_downgrade: false,
        }
    }

    #[test]
    fn the_token_grants_this_bundle_to_this_device_until_the_offer_expires() {
        let src = HttpSource { public_url: "http://op:8443/".into(), token_key: SigningKey::from_bytes(&[3; 32]) };
        let out = src.attach(&offer(Some("2.0")), Some(4));
        assert_eq!(out.bundle.url.as_deref(), Some("http://op:8443/v1/bundles/2.0"));
        assert_eq!(out.bundle.object.as_deref(), Some("2.0"), "older agents still find the object");
        let auth = out.bundle.authorization.clone().unwrap();
        let t = token::from_header(Some(&auth)).unwrap();
        let claims = token::verify(&src.token_key.verifying_key(), t, "2.0", UnixMillis(4_999)).unwrap();
        assert_eq!(
            claims,
            Claims {
                device: "pi-1".into(),
                bundle: "2.0".into(),
                sha256: "cd".repeat(32),
                rollout: Some("r1".into()),
                max_concurrent: Some(4),
                expires_at: UnixMillis(5_000),
            }
        );
        assert_eq!(src.attach(&offer(Some("2.0")), Some(4)), out, "deterministic");
        assert_eq!(src.attach(&offer(None), None), offer(None), "no object, nothing to serve");
    }
}
