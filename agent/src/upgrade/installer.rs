//! The install/mark effect the upgrade service needs, implemented by the
//! RAUC D-Bus client. Errors are plain strings here because they travel into
//! the state machine and on to the operator as text (RAUC's `LastError`).

use super::reconcile::SlotFacts;
use crate::rauc::{Adoption, InstallClaim, RaucClient, RaucError};
use futures::future::BoxFuture;
use std::path::PathBuf;
use tokio::sync::watch;

/// What RAUC installs from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleRef {
    /// A downloaded, hash-checked bundle file.
    File(PathBuf),
    /// A bundle RAUC streams from `url`, sending `headers` (the offer's
    /// token) with every Range request, trusting the CAs in `tls_ca` (a PEM
    /// file) for `https://` when given, else the system's.
    Stream { url: String, headers: Vec<String>, tls_ca: Option<PathBuf> },
}

impl BundleRef {
    fn source(&self) -> crate::rauc::InstallSource<'_> {
        match self {
            Self::File(path) => crate::rauc::InstallSource::File(path),
            Self::Stream { url, headers, tls_ca } => {
                crate::rauc::InstallSource::Stream { url, http_headers: headers, tls_ca: tls_ca.as_deref() }
            }
        }
    }
}

pub trait Installer: Send + Sync + std::fmt::Debug {
    /// Install the bundle into the inactive slot; returns the bootname made
    /// primary. `Err` carries RAUC's `LastError` verbatim.
    fn install<'a>(
        &'a self,
        bundle: &'a BundleRef,
        progress: &'a watch::Sender<u8>,
    ) -> BoxFuture<'a, Result<String, String>>;
    /// Mark the booted slot good (`true`) or bad; returns its bootname.
    fn mark_booted(&self, good: bool) -> BoxFuture<'_, Result<String, String>>;
    /// After a restart mid-install: the outcome of the install a previous
    /// agent started (waiting for it if it still runs), and only when RAUC
    /// has not installed `claim` install `bundle` now. Same result as
    /// `install`.
    fn adopt_install<'a>(
        &'a self,
        bundle: &'a BundleRef,
        progress: &'a watch::Sender<u8>,
        claim: &'a InstallClaim,
    ) -> BoxFuture<'a, Result<String, String>>;
    /// Read only: each slot's boot status and the primary slot, for
    /// checking the upgrade record on start.
    fn slot_facts(&self) -> BoxFuture<'_, Result<SlotFacts, String>>;
}

fn rauc_text(e: RaucError) -> String {
    match e {
        RaucError::InstallFailed { last_error } => last_error,
        other => other.to_string(),
    }
}

impl Installer for RaucClient {
    fn install<'a>(
        &'a self,
        bundle: &'a BundleRef,
        progress: &'a watch::Sender<u8>,
    ) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move { RaucClient::install(self, bundle.source(), progress).await.map_err(rauc_text) })
    }

    fn adopt_install<'a>(
        &'a self,
        bundle: &'a BundleRef,
        progress: &'a watch::Sender<u8>,
        claim: &'a InstallClaim,
    ) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            match self.adopt_install(claim, progress).await.map_err(rauc_text)? {
                Adoption::Finished(slot) => Ok(slot),
                Adoption::Failed(last_error) => Err(last_error),
                Adoption::NotInstalled => RaucClient::install(self, bundle.source(), progress).await.map_err(rauc_text),
            }
        })
    }

    fn slot_facts(&self) -> BoxFuture<'_, Result<SlotFacts, String>> {
        Box::pin(async move {
            let slots = self.slots().await.map_err(|e| e.to_string())?;
            // No primary (GetPrimary fails when no slot is bootable) is a
            // fact of its own, not a reason to skip the boot-status check.
            let primary = match self.primary_bootname().await {
                Ok(p) => Some(p),
                Err(e) => {
                    log::warn!("{e}; the primary slot is unknown");
                    None
                }
            };
            let boot_status = slots.into_iter().filter_map(|s| Some((s.bootname?, s.boot_status?))).collect();
            Ok(SlotFacts { primary, boot_status })
        })
    }

    fn mark_booted(&self, good: bool) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            let r = if good { self.mark_booted_good().await } else { self.mark_booted_bad().await };
            r.map_err(|e| e.to_string())
        })
    }
}
