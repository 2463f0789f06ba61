//! How the agent makes its workload reconcilers: the real ones (the
//! filesystem, systemd over D-Bus, podman) or a test's.

use super::container::ContainerReconciler;
use super::file::FileReconciler;
use super::objects::{NatsObjects, ObjectCache};
use super::reconciler::Reconcilers;
use super::store::WorkloadStore;
use super::unit::UnitReconciler;
use crate::config::AgentConfig;
use std::sync::Arc;
use std::time::Duration;

pub trait WorkloadEffects: Send + Sync + std::fmt::Debug {
    /// The reconcilers, and the object cache they share (for clean-up).
    fn build(&self, cfg: &AgentConfig, client: &async_nats::Client) -> (Reconcilers, Option<Arc<ObjectCache>>);
}

/// The device's own filesystem, systemd and podman.
#[derive(Debug, Default)]
pub struct RealWorkloads {
    /// The bus systemd is on; the system bus when None. (Tests of the unit
    /// reconciler point it at a private bus.)
    pub systemd_bus: Option<String>,
}

impl WorkloadEffects for RealWorkloads {
    fn build(&self, cfg: &AgentConfig, client: &async_nats::Client) -> (Reconcilers, Option<Arc<ObjectCache>>) {
        let w = &cfg.workloads;
        let objects = Arc::new(ObjectCache::new(
            WorkloadStore::in_dir(&cfg.state_dir).objects_dir(),
            Box::new(NatsObjects { js: async_nats::jetstream::new(client.clone()) }),
        ));
        let reconcilers = Reconcilers {
            file: Arc::new(FileReconciler {
                roots: w.file_roots.clone(),
                objects: objects.clone(),
                passwd_file: w.passwd_file.clone(),
                group_file: w.group_file.clone(),
            }),
            unit: Arc::new(UnitReconciler::new(
                w.unit_dir.clone(),
                Duration::from_millis(w.unit_settle_ms),
                self.systemd_bus.clone(),
            )),
            container: Arc::new(ContainerReconciler { podman: w.podman.clone(), objects: objects.clone() }),
        };
        (reconcilers, Some(objects))
    }
}
