//! Signing offers: the fleet key, and with `[bundle_http]` the HTTP source
//! (URL and download token) put into each offer before it is signed.

use crate::bundle_http::offer::HttpSource;
use crate::coordinator::State;
use crate::error::{Error, Result};
use ed25519_dalek::SigningKey;
use harmony_protocol::{SignedEnvelope, UpgradeOffer};

#[derive(Debug, Clone)]
pub struct OfferSigner {
    fleet: SigningKey,
    http: Option<HttpSource>,
}

impl OfferSigner {
    pub fn new(fleet: SigningKey, http: Option<HttpSource>) -> Self {
        Self { fleet, http }
    }

    /// The offer as devices get it. The job keeps the offer without the
    /// HTTP source: it is derived again, identically, whenever the offer
    /// is signed (the token expires with the offer, ed25519 is
    /// deterministic), so a re-put offer is the same bytes.
    pub fn sign(&self, offer: &UpgradeOffer, state: &State) -> Result<SignedEnvelope> {
        let signed = match &self.http {
            Some(http) => {
                let limit = offer
                    .rollout_id
                    .as_ref()
                    .and_then(|id| state.rollouts.get(id))
                    .and_then(|r| r.policy.max_concurrent_downloads);
                SignedEnvelope::sign(&self.fleet, &http.attach(offer, limit))
            }
            None => SignedEnvelope::sign(&self.fleet, offer),
        };
        signed.map_err(|e| Error::Invalid(e.to_string()))
    }
}
