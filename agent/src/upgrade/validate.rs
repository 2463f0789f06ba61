//! Offer validation: may this (signature-verified) offer start an upgrade?
//! Pure; the order of checks decides which reason the operator sees first.

use super::machine::{Env, State};
use super::version;
use harmony_protocol::time::UnixMillis;
use harmony_protocol::{RefusalReason, UpgradeOffer, UpgradePhase};
use std::cmp::Ordering;

/// How far the device clock may lag the operator's before a fresh offer
/// counts as "not valid yet". The operator stamps `not_before` with its own
/// clock at offer time; a device a few hundred milliseconds (or, before NTP,
/// minutes) behind must still take it. Expiry gets no allowance: it would
/// only lengthen an offer's life.
pub const NOT_BEFORE_ALLOWANCE_MS: u64 = 5 * 60 * 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// The offer already being worked on (or finished, or kept while busy,
    /// or refused for a reason the clock cannot change), delivered again —
    /// e.g. the KV watch replays the current value after a restart.
    AlreadyKnown,
    Refuse(RefusalReason),
}

pub fn judge(env: &Env, state: &State, offer: &UpgradeOffer, now: UnixMillis) -> Verdict {
    match check(env, state, offer, now) {
        Ok(()) => Verdict::Accept,
        Err(None) => Verdict::AlreadyKnown,
        Err(Some(reason)) => Verdict::Refuse(reason),
    }
}

fn check(env: &Env, state: &State, offer: &UpgradeOffer, now: UnixMillis) -> Result<(), Option<RefusalReason>> {
    if offer.device_id != env.device_id {
        return Err(Some(RefusalReason::WrongDevice { offered_to: offer.device_id.to_string() }));
    }
    let current_job = state.job.as_ref().map(|j| j.offer.offer_seq);
    // A refusal for the validity window is a verdict on the clock as much
    // as on the offer: the same offer delivered again is judged again.
    let refused_for_time =
        matches!(&state.phase, UpgradePhase::Refused { reason: RefusalReason::NotYetValid | RefusalReason::Expired });
    let final_refusal = state.refused.as_ref().filter(|_| !refused_for_time).map(|o| o.offer_seq);
    let kept = state.pending.as_ref().map(|o| o.offer_seq);
    if [current_job, final_refusal, kept].contains(&Some(offer.offer_seq)) {
        return Err(None);
    }
    if !state.is_settled() {
        return Err(Some(RefusalReason::Busy));
    }
    if offer.offer_seq <= state.last_accepted_seq {
        return Err(Some(RefusalReason::Replay { offered: offer.offer_seq, last_accepted: state.last_accepted_seq }));
    }
    if now.saturating_add_ms(NOT_BEFORE_ALLOWANCE_MS) < offer.not_before {
        return Err(Some(RefusalReason::NotYetValid));
    }
    if now >= offer.expires_at {
        return Err(Some(RefusalReason::Expired));
    }
    if offer.compatible != env.compatible {
        return Err(Some(RefusalReason::Incompatible {
            offered: offer.compatible.clone(),
            device: env.compatible.clone(),
        }));
    }
    let current = env.current_version.as_deref().unwrap_or("0");
    if version::compare(&offer.target_version, current) != Ordering::Greater && !offer.allow_downgrade {
        return Err(Some(RefusalReason::Downgrade {
            current: current.to_string(),
            target: offer.target_version.clone(),
        }));
    }
    if offer.bundle.size > env.max_bundle_bytes {
        return Err(Some(RefusalReason::TooLarge { size: offer.bundle.size, limit: env.max_bundle_bytes }));
    }
    if offer.bundle.object.is_none() && offer.bundle.url.is_none() {
        return Err(Some(RefusalReason::Malformed { detail: "bundle has neither an object name nor a URL".into() }));
    }
    if offer.bundle.sha256.len() != 64 || !offer.bundle.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Some(RefusalReason::Malformed { detail: "bundle sha256 is not 64 hex digits".into() }));
    }
    Ok(())
}
