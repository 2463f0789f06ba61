//! One reconciler per resource kind, behind one trait: observe what is on
//! the device, make it so, delete it. Idempotent by contract: each may be
//! called again at any point, after a crash half-way included.

use futures::future::BoxFuture;
use harmony_protocol::workload::ResourceSpec;
use std::sync::Arc;
use std::time::Duration;

/// What `observe` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// As desired; `details` is shown in the status (e.g. "active (running)").
    InSync { details: String },
    /// Differs; `what` says how (logged and shown when it cannot be fixed).
    Drifted { what: String },
}

pub trait Reconciler: Send + Sync {
    type Spec;
    fn observe<'a>(&'a self, id: &'a str, spec: &'a Self::Spec) -> BoxFuture<'a, Result<Observed, String>>;
    fn reconcile<'a>(&'a self, id: &'a str, spec: &'a Self::Spec) -> BoxFuture<'a, Result<(), String>>;
    fn delete<'a>(&'a self, id: &'a str, spec: &'a Self::Spec) -> BoxFuture<'a, Result<(), String>>;
}

/// The reconciler of each kind.
#[derive(Clone)]
pub struct Reconcilers {
    pub file: Arc<dyn Reconciler<Spec = harmony_protocol::workload::FileSpec>>,
    pub unit: Arc<dyn Reconciler<Spec = harmony_protocol::workload::UnitSpec>>,
    pub container: Arc<dyn Reconciler<Spec = harmony_protocol::workload::ContainerSpec>>,
}

impl std::fmt::Debug for Reconcilers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reconcilers")
    }
}

/// Observe; if it drifted, reconcile and observe again.
async fn ensure_with<S>(r: &dyn Reconciler<Spec = S>, id: &str, spec: &S) -> Result<super::core::Ensured, String> {
    match r.observe(id, spec).await? {
        Observed::InSync { details } => Ok(super::core::Ensured { repaired: false, details }),
        Observed::Drifted { what } => {
            log::info!("workload {id}: {what}; reconciling");
            r.reconcile(id, spec).await?;
            match r.observe(id, spec).await? {
                Observed::InSync { details } => Ok(super::core::Ensured { repaired: true, details }),
                Observed::Drifted { what } => Err(what),
            }
        }
    }
}

impl Reconcilers {
    pub async fn ensure(
        &self,
        id: &str,
        spec: &ResourceSpec,
        timeout: Duration,
    ) -> Result<super::core::Ensured, String> {
        let work = async {
            match spec {
                ResourceSpec::File(s) => ensure_with(self.file.as_ref(), id, s).await,
                ResourceSpec::SystemdUnit(s) => ensure_with(self.unit.as_ref(), id, s).await,
                ResourceSpec::Container(s) => ensure_with(self.container.as_ref(), id, s).await,
            }
        };
        tokio::time::timeout(timeout, work).await.unwrap_or_else(|_| Err(format!("timed out after {timeout:?}")))
    }

    pub async fn delete(&self, id: &str, spec: &ResourceSpec, timeout: Duration) -> Result<(), String> {
        let work = async {
            match spec {
                ResourceSpec::File(s) => self.file.delete(id, s).await,
                ResourceSpec::SystemdUnit(s) => self.unit.delete(id, s).await,
                ResourceSpec::Container(s) => self.container.delete(id, s).await,
            }
        };
        tokio::time::timeout(timeout, work).await.unwrap_or_else(|_| Err(format!("timed out after {timeout:?}")))
    }
}
