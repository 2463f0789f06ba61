//! OS upgrades through RAUC: offer validation, download, install, reboot,
//! commit and fallback. The decision core is a pure state machine; every
//! effect sits behind a trait.
//!
//! - `machine`: `step(env, state, event, now) -> (state, actions)`, pure.
//! - `validate`, `version`: may an offer start an upgrade (pure).
//! - `service`: the loop that feeds the machine, persists, publishes the
//!   status and carries out actions; `UpgradeContext` is what it needs.
//! - `reconcile`: on start, the record against RAUC's slot states (pure).
//! - `record`: the atomically written upgrade record (`RecordStore`).
//! - `download`, `http_get`: resumable object-store / http:// download.
//! - `installer`: the install/mark effect, implemented by `crate::rauc`.
//! - `stream`: may RAUC stream here, and the signature check of a streamed bundle.
//! - `health`: systemd units + check executables after the new boot.

pub mod config;
pub mod download;
pub mod health;
pub mod http_get;
pub mod installer;
pub mod machine;
pub mod reconcile;
pub mod record;
pub mod service;
pub mod stream;
pub mod validate;
pub mod version;

pub use config::UpgradeConfig;

use harmony_protocol::command::{CommitArgs, ReplyBody};
use harmony_protocol::CommandError;
use tokio::sync::{mpsc, oneshot};

/// Commands that the command server hands to the upgrade service, because
/// only it knows whether they are allowed in the current upgrade state.
#[derive(Debug)]
pub enum UpgradeRequest {
    Commit { args: CommitArgs, reply: oneshot::Sender<Result<ReplyBody, CommandError>> },
    Reboot { reply: oneshot::Sender<Result<ReplyBody, CommandError>> },
}

/// Cheap, cloneable sender side used by the command server.
#[derive(Debug, Clone)]
pub struct UpgradeHandle {
    tx: mpsc::Sender<UpgradeRequest>,
}

impl UpgradeHandle {
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<UpgradeRequest>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self { tx }, rx)
    }

    async fn ask(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<ReplyBody, CommandError>>) -> UpgradeRequest,
    ) -> Result<ReplyBody, CommandError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| CommandError::Internal { detail: "upgrade service is not running".into() })?;
        answer.await.map_err(|_| CommandError::Internal { detail: "upgrade service dropped the request".into() })?
    }

    pub async fn commit(&self, args: CommitArgs) -> Result<ReplyBody, CommandError> {
        self.ask(|reply| UpgradeRequest::Commit { args, reply }).await
    }

    pub async fn reboot(&self) -> Result<ReplyBody, CommandError> {
        self.ask(|reply| UpgradeRequest::Reboot { reply }).await
    }
}
