//! The fleet as one domain API: what the dashboard, the CLI and the tests
//! all go through. [`FleetService`] is the contract; [`KvFleet`] is the real
//! implementation over the operator's KV buckets.
//!
//! Everything here is plain data (serde) and carries no presentation: every
//! string a device reported (ids, versions, failed-check names, refusal
//! reasons) is hostile and must be rendered as text by whoever shows it.

mod archive;
mod audit;
pub mod enrollment;
mod index;
mod kv;
mod live;
mod query;
mod stage;
mod timeline;
mod types;
mod workloads;

pub use kv::KvFleet;
pub use query::{health_name, selector_matches};
pub use stage::Stage;
pub use types::*;

use crate::enroll::token::TokenRecord;
use crate::error::Result;
use crate::model::{BundleRecord, Rollout};
use crate::provision::DeviceUser;
use crate::workloads::{ApplyReport, DeviceWorkloads, WorkloadSpec};
use harmony_protocol::DeviceId;
use std::future::Future;
use tokio::sync::broadcast;

/// One domain API over the fleet. Reads answer from an in-memory index where
/// the implementation keeps one; every state-changing call (and `ping`) is
/// written to the audit log with its result, whether it succeeded or not.
///
/// The futures are `Send` so axum handlers can await them.
pub trait FleetService: Send + Sync + 'static {
    /// Counts by presence, OS version, upgrade phase and health, and the
    /// rollouts that are not finished, with their progress.
    fn overview(&self) -> impl Future<Output = Result<Overview>> + Send;

    /// One page of devices matching `query`, sorted, with the total that match.
    fn devices(&self, query: &DeviceQuery) -> impl Future<Output = Result<DevicePage>> + Send;

    /// One device: its last heartbeat, labels, current job and the timeline
    /// of every upgrade transition across rollouts.
    /// [`crate::Error::NoSuchDevice`] if it is neither provisioned nor seen.
    fn device(&self, id: &DeviceId) -> impl Future<Output = Result<DeviceDetail>> + Send;

    /// Every rollout, newest first.
    fn rollouts(&self) -> impl Future<Output = Result<Vec<RolloutSummary>>> + Send;

    /// One rollout with per-wave stage counts and its jobs.
    /// [`crate::Error::NoSuchRollout`] if unknown.
    fn rollout(&self, id: &str) -> impl Future<Output = Result<RolloutDetail>> + Send;

    /// Every bundle with the unfinished rollouts that use it.
    fn bundles(&self) -> impl Future<Output = Result<Vec<BundleView>>> + Send;

    /// Uploads a RAUC bundle file (version and compatible from its manifest).
    fn push_bundle(&self, actor: &Actor, push: &BundlePush) -> impl Future<Output = Result<BundleRecord>> + Send;

    /// Removes a bundle; refused while an unfinished rollout uses it.
    fn remove_bundle(&self, actor: &Actor, id: &str) -> impl Future<Output = Result<()>> + Send;

    /// Creates a rollout record; the leading operator picks it up.
    fn start_rollout(&self, actor: &Actor, args: &StartArgs) -> impl Future<Output = Result<Rollout>> + Send;

    /// Requests pause / resume / abort; the leading operator applies it.
    fn control_rollout(&self, actor: &Actor, id: &str, control: Control) -> impl Future<Output = Result<()>> + Send;

    /// Pings a device over its command subject.
    fn ping(&self, actor: &Actor, id: &DeviceId) -> impl Future<Output = Result<PingReport>> + Send;

    /// Asks a device to reboot (the agent refuses during an install).
    fn reboot(&self, actor: &Actor, id: &DeviceId) -> impl Future<Output = Result<()>> + Send;

    /// Devices enrolled with an approval token, waiting for a verdict,
    /// longest waiting first.
    fn pending_devices(&self) -> impl Future<Output = Result<Vec<DeviceUser>>> + Send;

    /// Accepts or rejects a pending device, or revokes a device. Reject and
    /// revoke also disconnect it through the system account, and fail
    /// (changing nothing) without the config's `[enroll]`.
    fn judge_device(
        &self,
        actor: &Actor,
        id: &DeviceId,
        verdict: Verdict,
    ) -> impl Future<Output = Result<Judgement>> + Send;

    /// Every enrollment token's record (never a token's text), newest first.
    fn tokens(&self) -> impl Future<Output = Result<Vec<TokenRecord>>> + Send;

    /// Creates an enrollment token. Its text is in the answer only: shown
    /// once to its creator, never stored, logged or audited.
    fn create_token(&self, actor: &Actor, spec: &TokenSpec) -> impl Future<Output = Result<CreatedToken>> + Send;

    /// Revokes a token: no device can enroll with it any more (devices
    /// enrolled with it keep their identity).
    fn revoke_token(&self, actor: &Actor, id: &str) -> impl Future<Output = Result<TokenRecord>> + Send;

    /// Signs `spec` for every selected device whose record is active and
    /// writes it as that device's next manifest generation; a device whose
    /// manifest already asks for exactly this is left alone. Each device's
    /// outcome is in the report (one failing does not stop the others) and
    /// in the audit log. Fails as a whole, writing nothing, when the spec
    /// would be refused by devices, nothing is selected, or its objects
    /// cannot be stored.
    fn apply_workloads(
        &self,
        actor: &Actor,
        target: &Target,
        spec: &WorkloadSpec,
    ) -> impl Future<Output = Result<ApplyReport>> + Send;

    /// Gives every selected device a manifest without resources at its next
    /// generation, so it deletes what it manages. Audited like apply.
    fn remove_workloads(&self, actor: &Actor, target: &Target) -> impl Future<Output = Result<ApplyReport>> + Send;

    /// Desired and reported workloads of one device (none if it has neither
    /// a manifest nor a status), or of every device that has either, by id.
    fn workloads(&self, device: Option<&DeviceId>) -> impl Future<Output = Result<Vec<DeviceWorkloads>>> + Send;

    /// One page of the audit log, newest first.
    fn audit(&self, query: &AuditQuery) -> impl Future<Output = Result<AuditPage>> + Send;

    /// What changed, as it changes (for server-sent events). A receiver that
    /// lags behind gets `RecvError::Lagged`: treat it like [`Change::Resync`].
    fn subscribe(&self) -> broadcast::Receiver<Change>;
}
