//! The workload decision core: desired state (the applied manifest) against
//! what the agent has put on the device (`owned`) and what it observed,
//! turned into reconciler actions. A plain `step(state, event, now)`: no
//! clock, no I/O; the service carries out the actions one at a time, in
//! order, and feeds each outcome back as an event.
//!
//! A pass removes what the manifest no longer names, then ensures every
//! desired resource in manifest order (a config file before the unit that
//! reads it). A failed resource is retried with backoff; the others go on.

use harmony_protocol::time::UnixMillis;
use harmony_protocol::workload::{
    AgentManifest, AgentStatus, Conditions, ManifestRefusal, RefusedManifest, ResourceSpec, ResourceState, SpecProblem,
};
use harmony_protocol::{DeviceId, SCHEMA_VERSION};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Fixed for the agent's lifetime.
#[derive(Debug, Clone)]
pub struct Env {
    pub device_id: DeviceId,
    pub file_roots: Vec<PathBuf>,
    pub mount_sources: Vec<PathBuf>,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
}

impl Env {
    fn backoff_ms(&self, attempts: u32) -> u64 {
        let doublings = attempts.saturating_sub(1).min(20);
        self.retry_initial_ms.saturating_mul(1 << doublings).min(self.retry_max_ms)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct State {
    pub applied: Option<AgentManifest>,
    /// What the agent may have put on the device, by resource id: written
    /// before the first attempt, so a half-done attempt is still cleaned up
    /// when the resource leaves the manifest.
    pub owned: BTreeMap<String, ResourceSpec>,
    /// Per desired resource, on this boot.
    pub resources: BTreeMap<String, ResourceState>,
    /// Owned resources that could not be removed (id → error).
    pub removal_errors: BTreeMap<String, String>,
    pub refused: Option<RefusedManifest>,
    /// Actions handed out and not yet answered.
    pub in_flight: BTreeSet<Work>,
    /// Another pass is wanted as soon as this one ends.
    pub pass_again: bool,
    /// Passes finished for the applied generation since the agent started.
    pub passes_done: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Work {
    Ensure(String),
    Remove(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A manifest from the bus (signature and parse already checked: an
    /// `Err` is what that check refused).
    ManifestReceived(Result<AgentManifest, ManifestRefusal>),
    /// Drift interval or a retry time reached.
    PassDue,
    Ensured {
        id: String,
        spec: ResourceSpec,
        result: Result<Ensured, String>,
    },
    Removed {
        id: String,
        result: Result<(), String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ensured {
    /// The resource differed and was put right (else it was already so).
    pub repaired: bool,
    pub details: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Persist this manifest as the applied one (the service keeps its
    /// signed envelope and writes that).
    SaveApplied,
    /// Persist `owned`.
    SaveOwned,
    Remove {
        id: String,
        spec: ResourceSpec,
    },
    Ensure {
        id: String,
        spec: ResourceSpec,
    },
}

/// The upgrade health gate's view of the workloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Nothing to wait for: no manifest, opted out, or converged.
    Open,
    /// The first pass of the current manifest has not finished on this boot.
    Waiting,
    /// Not converged: what failed.
    Closed(Vec<String>),
}

impl State {
    pub fn restored(applied: Option<AgentManifest>, owned: BTreeMap<String, ResourceSpec>) -> Self {
        let resources =
            applied.iter().flat_map(|m| &m.resources).map(|r| (r.id.clone(), ResourceState::Pending)).collect();
        Self { applied, owned, resources, ..Self::default() }
    }

    fn desired(&self) -> impl Iterator<Item = &harmony_protocol::workload::Resource> {
        self.applied.iter().flat_map(|m| &m.resources)
    }

    fn desired_spec(&self, id: &str) -> Option<&ResourceSpec> {
        self.desired().find(|r| r.id == id).map(|r| &r.spec)
    }

    pub fn converged(&self) -> bool {
        let leftovers = self.owned.keys().any(|id| self.desired_spec(id).is_none());
        !leftovers
            && self.removal_errors.is_empty()
            && self.desired().all(|r| matches!(self.resources.get(&r.id), Some(ResourceState::Ready { .. })))
    }

    pub fn gate(&self) -> Gate {
        let Some(m) = &self.applied else { return Gate::Open };
        if !m.gate_upgrades {
            return Gate::Open;
        }
        if self.passes_done == 0 {
            return Gate::Waiting;
        }
        if self.converged() {
            return Gate::Open;
        }
        let mut failed: Vec<String> = self
            .desired()
            .filter_map(|r| match self.resources.get(&r.id) {
                Some(ResourceState::Ready { .. }) => None,
                Some(ResourceState::Failed { error, .. }) => Some(format!("workload {}: {error}", r.id)),
                Some(other) => Some(format!("workload {}: {}", r.id, other.name())),
                None => Some(format!("workload {}: pending", r.id)),
            })
            .collect();
        failed.extend(self.removal_errors.iter().map(|(id, e)| format!("workload {id}: not removed: {e}")));
        if failed.is_empty() {
            failed.push("workloads: resources left over from an earlier manifest".into());
        }
        Gate::Closed(failed)
    }

    /// The earliest retry time of a failed resource.
    pub fn next_retry(&self) -> Option<UnixMillis> {
        self.resources
            .values()
            .filter_map(|s| match s {
                ResourceState::Failed { retry_after, .. } => Some(*retry_after),
                _ => None,
            })
            .min()
    }

    pub fn status(&self, device: &DeviceId, boot_id: &str, now: UnixMillis) -> AgentStatus {
        let mut resources = self.resources.clone();
        for (id, error) in &self.removal_errors {
            if self.desired_spec(id).is_none() {
                resources.insert(
                    id.clone(),
                    ResourceState::Failed {
                        since: now,
                        error: format!("not removed: {error}"),
                        attempts: 1,
                        retry_after: now,
                    },
                );
            }
        }
        AgentStatus {
            schema: SCHEMA_VERSION,
            device_id: device.clone(),
            observed_generation: self.applied.as_ref().map(|m| m.generation),
            boot_id: boot_id.to_string(),
            resources,
            conditions: Conditions { converged: self.converged(), refused: self.refused.clone() },
            updated_at: now,
        }
    }
}

/// Checks that depend on this device's configuration.
pub fn check_local(env: &Env, m: &AgentManifest) -> Result<(), ManifestRefusal> {
    for r in &m.resources {
        let invalid = |problem| ManifestRefusal::Invalid { id: r.id.clone(), problem };
        match &r.spec {
            ResourceSpec::File(f) => {
                if !under_any(&f.path, &env.file_roots) {
                    return Err(invalid(SpecProblem::OutsideRoots { path: f.path.clone() }));
                }
            }
            ResourceSpec::Container(c) => {
                for mount in &c.mounts {
                    if !under_any(&mount.source, &env.mount_sources) && !is_any(&mount.source, &env.mount_sources) {
                        return Err(invalid(SpecProblem::MountNotAllowed { source_path: mount.source.clone() }));
                    }
                }
            }
            ResourceSpec::SystemdUnit(_) => {}
        }
    }
    Ok(())
}

/// Strictly below one of `roots`, by whole components (the protocol has
/// already refused `..` and empty components).
fn under_any(path: &str, roots: &[PathBuf]) -> bool {
    let path = Path::new(path);
    roots.iter().any(|root| path != root && path.starts_with(root))
}

fn is_any(path: &str, roots: &[PathBuf]) -> bool {
    roots.iter().any(|root| Path::new(path) == root)
}

/// Two specs manage the same thing on the device (the same path, unit or
/// container), so an edit is a reconcile, not a remove-and-create.
fn same_identity(a: &ResourceSpec, b: &ResourceSpec) -> bool {
    match (a, b) {
        (ResourceSpec::File(x), ResourceSpec::File(y)) => x.path == y.path,
        (ResourceSpec::SystemdUnit(x), ResourceSpec::SystemdUnit(y)) => x.name == y.name,
        (ResourceSpec::Container(_), ResourceSpec::Container(_)) => true,
        _ => false,
    }
}

pub fn step(env: &Env, mut s: State, event: Event, now: UnixMillis) -> (State, Vec<Action>) {
    match event {
        Event::ManifestReceived(Err(reason)) => {
            s.refused = Some(RefusedManifest { generation: None, reason, at: now });
            (s, vec![])
        }
        Event::ManifestReceived(Ok(m)) => {
            let applied = s.applied.as_ref().map(|a| a.generation);
            let refusal = if m.device_id != env.device_id {
                Some(ManifestRefusal::WrongDevice { device: m.device_id.to_string() })
            } else if applied.is_some_and(|a| m.generation < a) {
                Some(ManifestRefusal::StaleGeneration { applied: applied.unwrap_or(0), got: m.generation })
            } else {
                check_local(env, &m).err()
            };
            if let Some(reason) = refusal {
                s.refused = Some(RefusedManifest { generation: Some(m.generation), reason, at: now });
                return (s, vec![]);
            }
            if applied == Some(m.generation) {
                // The same manifest again (the watch restarted): nothing new.
                return (s, vec![]);
            }
            // Unchanged resources keep their state; new or changed ones
            // start over.
            let old = s.applied.take();
            let mut resources = BTreeMap::new();
            for r in &m.resources {
                let unchanged = old.iter().flat_map(|o| &o.resources).any(|o| o.id == r.id && o.spec == r.spec);
                let state = match s.resources.remove(&r.id) {
                    Some(state) if unchanged => state,
                    _ => ResourceState::Pending,
                };
                resources.insert(r.id.clone(), state);
            }
            s.resources = resources;
            s.applied = Some(m);
            s.refused = None;
            s.passes_done = 0;
            let mut actions = vec![Action::SaveApplied];
            if s.in_flight.is_empty() {
                let (next, pass) = start_pass(s, now, true);
                s = next;
                actions.extend(pass);
            } else {
                s.pass_again = true;
            }
            (s, actions)
        }
        Event::PassDue => {
            if !s.in_flight.is_empty() {
                // A pass is running: it observes everything anyway.
                return (s, vec![]);
            }
            start_pass(s, now, false)
        }
        Event::Ensured { id, spec, result } => {
            if !s.in_flight.remove(&Work::Ensure(id.clone())) {
                // Not asked for (a stale or duplicate answer): refused.
                return (s, vec![]);
            }
            // The manifest may have changed while this ran: the outcome
            // counts only for the spec that is still desired.
            if s.desired_spec(&id) == Some(&spec) {
                let previous = s.resources.get(&id).cloned();
                let next = match result {
                    Ok(Ensured { repaired, details }) => match previous {
                        Some(ResourceState::Ready { since, .. }) if !repaired => {
                            ResourceState::Ready { since, details }
                        }
                        _ => ResourceState::Ready { since: now, details },
                    },
                    Err(error) => {
                        let (since, attempts) = match previous {
                            Some(ResourceState::Failed { since, attempts, .. }) => (since, attempts.saturating_add(1)),
                            _ => (now, 1),
                        };
                        let retry_after = now.saturating_add_ms(env.backoff_ms(attempts));
                        ResourceState::Failed { since, error, attempts, retry_after }
                    }
                };
                s.resources.insert(id, next);
            }
            finish_work(s, now)
        }
        Event::Removed { id, result } => {
            if !s.in_flight.remove(&Work::Remove(id.clone())) {
                return (s, vec![]);
            }
            let mut actions = vec![];
            match result {
                Ok(()) => {
                    s.owned.remove(&id);
                    s.removal_errors.remove(&id);
                    actions.push(Action::SaveOwned);
                    // Removed to make way for a new identity under the same
                    // id: ensure it in a pass of its own.
                    if s.desired_spec(&id).is_some() {
                        s.pass_again = true;
                    }
                }
                Err(e) => {
                    s.removal_errors.insert(id, e);
                }
            }
            let (s, more) = finish_work(s, now);
            actions.extend(more);
            (s, actions)
        }
    }
}

fn finish_work(mut s: State, now: UnixMillis) -> (State, Vec<Action>) {
    if !s.in_flight.is_empty() {
        return (s, vec![]);
    }
    s.passes_done = s.passes_done.saturating_add(1);
    if std::mem::take(&mut s.pass_again) {
        return start_pass(s, now, true);
    }
    (s, vec![])
}

/// `forced`: after a manifest change, failed resources are tried at once
/// instead of waiting for their retry time.
fn start_pass(mut s: State, now: UnixMillis, forced: bool) -> (State, Vec<Action>) {
    let mut actions = Vec::new();
    let mut removing = BTreeSet::new();
    for (id, spec) in &s.owned {
        let keep = s.desired_spec(id).is_some_and(|d| same_identity(d, spec));
        if !keep {
            actions.push(Action::Remove { id: id.clone(), spec: spec.clone() });
            removing.insert(id.clone());
        }
    }
    let mut owned_changed = false;
    let desired: Vec<_> = s.desired().cloned().collect();
    for r in desired {
        if removing.contains(&r.id) {
            // Its old identity goes first; ensured once that is gone.
            continue;
        }
        let state = s.resources.get(&r.id).cloned().unwrap_or(ResourceState::Pending);
        if let ResourceState::Failed { retry_after, .. } = state {
            if !forced && retry_after > now {
                continue;
            }
        }
        // A failed resource stays failed (with its attempt count) while it
        // is retried; a ready one stays ready while it is checked.
        if state == ResourceState::Pending {
            s.resources.insert(r.id.clone(), ResourceState::Reconciling { since: now });
        }
        if s.owned.get(&r.id) != Some(&r.spec) {
            s.owned.insert(r.id.clone(), r.spec.clone());
            owned_changed = true;
        }
        actions.push(Action::Ensure { id: r.id, spec: r.spec });
    }
    for a in &actions {
        match a {
            Action::Remove { id, .. } => s.in_flight.insert(Work::Remove(id.clone())),
            Action::Ensure { id, .. } => s.in_flight.insert(Work::Ensure(id.clone())),
            _ => false,
        };
    }
    if owned_changed {
        // Before any Ensure runs (actions run in order).
        let first_ensure = actions.iter().position(|a| matches!(a, Action::Ensure { .. })).unwrap_or(actions.len());
        actions.insert(first_ensure, Action::SaveOwned);
    }
    if s.in_flight.is_empty() {
        s.passes_done = s.passes_done.saturating_add(1);
    }
    (s, actions)
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
