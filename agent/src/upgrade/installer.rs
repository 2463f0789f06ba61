//! The install/mark effect the upgrade service needs, implemented by the
//! RAUC D-Bus client. Errors are plain strings here because they travel into
//! the state machine and on to the operator as text (RAUC's `LastError`).

use crate::rauc::{RaucClient, RaucError};
use futures::future::BoxFuture;
use std::path::Path;
use tokio::sync::watch;

pub trait Installer: Send + Sync + std::fmt::Debug {
    /// Install the bundle into the inactive slot; returns the bootname made
    /// primary. `Err` carries RAUC's `LastError` verbatim.
    fn install<'a>(
        &'a self,
        bundle: &'a Path,
        progress: &'a watch::Sender<u8>,
    ) -> BoxFuture<'a, Result<String, String>>;
    /// Mark the booted slot good (`true`) or bad; returns its bootname.
    fn mark_booted(&self, good: bool) -> BoxFuture<'_, Result<String, String>>;
}

impl Installer for RaucClient {
    fn install<'a>(
        &'a self,
        bundle: &'a Path,
        progress: &'a watch::Sender<u8>,
    ) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            RaucClient::install(self, bundle, progress).await.map_err(|e| match e {
                RaucError::InstallFailed { last_error } => last_error,
                other => other.to_string(),
            })
        })
    }

    fn mark_booted(&self, good: bool) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            let r = if good { self.mark_booted_good().await } else { self.mark_booted_bad().await };
            r.map_err(|e| e.to_string())
        })
    }
}
