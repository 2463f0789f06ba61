//! Table-style tests of the workload core: every event against the states
//! where it matters, including the ones it must refuse.

use super::*;
use harmony_protocol::workload::{FileContent, FileSpec, Mount, Resource, UnitSpec};

const T0: UnixMillis = UnixMillis(1_000_000);

fn env() -> Env {
    Env {
        device_id: DeviceId::new("pi-1").unwrap(),
        file_roots: vec![PathBuf::from("/data/workloads")],
        mount_sources: vec![PathBuf::from("/data/workloads")],
        retry_initial_ms: 5_000,
        retry_max_ms: 40_000,
    }
}

fn file(path: &str, text: &str) -> ResourceSpec {
    ResourceSpec::File(FileSpec {
        path: path.into(),
        mode: 0o644,
        owner: None,
        group: None,
        content: FileContent::Inline(text.into()),
    })
}

fn unit(name: &str) -> ResourceSpec {
    ResourceSpec::SystemdUnit(UnitSpec {
        name: name.into(),
        content: "[Service]\n".into(),
        enabled: true,
        active: true,
    })
}

fn manifest(generation: u64, resources: &[(&str, ResourceSpec)]) -> AgentManifest {
    AgentManifest {
        schema: 1,
        device_id: DeviceId::new("pi-1").unwrap(),
        generation,
        issued_at: T0,
        gate_upgrades: true,
        resources: resources.iter().map(|(id, spec)| Resource { id: id.to_string(), spec: spec.clone() }).collect(),
    }
}

fn ok(repaired: bool) -> Result<Ensured, String> {
    Ok(Ensured { repaired, details: String::new() })
}

fn ensures(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Ensure { id, .. } => Some(id.clone()),
            _ => None,
        })
        .collect()
}

fn removes(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Remove { id, .. } => Some(id.clone()),
            _ => None,
        })
        .collect()
}

/// Apply a manifest and answer every ensure with `result`.
fn converged_on(m: AgentManifest) -> State {
    let e = env();
    let (mut s, actions) = step(&e, State::default(), Event::ManifestReceived(Ok(m.clone())), T0);
    for r in &m.resources {
        assert!(ensures(&actions).contains(&r.id));
        s = step(&e, s, Event::Ensured { id: r.id.clone(), spec: r.spec.clone(), result: ok(true) }, T0).0;
    }
    s
}

#[test]
fn a_new_manifest_is_saved_then_owned_then_ensured_in_order() {
    let m = manifest(1, &[("conf", file("/data/workloads/a.conf", "x")), ("web", unit("web.service"))]);
    let (s, actions) = step(&env(), State::default(), Event::ManifestReceived(Ok(m)), T0);
    assert_eq!(actions[0], Action::SaveApplied);
    assert_eq!(actions[1], Action::SaveOwned, "ownership is persisted before the first attempt");
    assert_eq!(ensures(&actions), vec!["conf", "web"], "manifest order");
    assert_eq!(s.resources["conf"], ResourceState::Reconciling { since: T0 });
    assert_eq!(s.gate(), Gate::Waiting);
    assert!(!s.converged());
}

#[test]
fn all_ensured_converges_and_opens_the_gate() {
    let s = converged_on(manifest(1, &[("conf", file("/data/workloads/a.conf", "x")), ("web", unit("web.service"))]));
    assert!(s.converged());
    assert_eq!(s.passes_done, 1);
    assert_eq!(s.gate(), Gate::Open);
    assert!(s.in_flight.is_empty());
    let st = s.status(&env().device_id, "boot-1", T0);
    assert_eq!(st.observed_generation, Some(1));
    assert!(st.conditions.converged);
}

#[test]
fn failure_backs_off_doubling_to_the_cap_and_closes_the_gate() {
    let e = env();
    let spec = unit("web.service");
    let (mut s, _) = step(&e, State::default(), Event::ManifestReceived(Ok(manifest(1, &[("web", spec.clone())]))), T0);
    let mut now = T0;
    let mut waits = vec![];
    for attempt in 1..=6u32 {
        s = step(&e, s, Event::Ensured { id: "web".into(), spec: spec.clone(), result: Err("exit 1".into()) }, now).0;
        let ResourceState::Failed { since, attempts, retry_after, .. } = s.resources["web"].clone() else {
            panic!("{:?}", s.resources["web"])
        };
        assert_eq!((since, attempts), (T0, attempt), "since is the first failure");
        waits.push(retry_after.saturating_since(now));
        // Before the retry time a pass leaves it alone ...
        let (next, actions) = step(&e, s, Event::PassDue, now.saturating_add_ms(1));
        assert!(ensures(&actions).is_empty());
        // ... after it, it is tried again.
        now = retry_after;
        let (next, actions) = step(&e, next, Event::PassDue, now);
        assert_eq!(ensures(&actions), vec!["web"]);
        s = next;
    }
    assert_eq!(waits, vec![5_000, 10_000, 20_000, 40_000, 40_000, 40_000]);
    s = step(&e, s, Event::Ensured { id: "web".into(), spec, result: Err("exit 1".into()) }, now).0;
    assert_eq!(s.gate(), Gate::Closed(vec!["workload web: exit 1".into()]));
}

#[test]
fn drift_pass_keeps_ready_since_unless_repaired() {
    let e = env();
    let spec = file("/data/workloads/a.conf", "x");
    let s = converged_on(manifest(1, &[("conf", spec.clone())]));
    let later = T0.saturating_add_ms(60_000);
    let (s, actions) = step(&e, s, Event::PassDue, later);
    assert_eq!(actions, vec![Action::Ensure { id: "conf".into(), spec: spec.clone() }], "no save: nothing new owned");
    assert!(matches!(s.resources["conf"], ResourceState::Ready { since: T0, .. }), "a check does not flap the state");
    let (s2, _) =
        step(&e, s.clone(), Event::Ensured { id: "conf".into(), spec: spec.clone(), result: ok(false) }, later);
    assert!(matches!(s2.resources["conf"], ResourceState::Ready { since: T0, .. }));
    let (s3, _) = step(&e, s, Event::Ensured { id: "conf".into(), spec, result: ok(true) }, later);
    assert!(matches!(s3.resources["conf"], ResourceState::Ready { since, .. } if since == later), "drift corrected");
}

#[test]
fn removed_resources_are_deleted_first_and_forgotten_once_gone() {
    let e = env();
    let web = unit("web.service");
    let s = converged_on(manifest(1, &[("conf", file("/data/workloads/a.conf", "x")), ("web", web.clone())]));
    let (s, actions) =
        step(&e, s, Event::ManifestReceived(Ok(manifest(2, &[("conf", file("/data/workloads/a.conf", "x"))]))), T0);
    assert_eq!(actions[0], Action::SaveApplied);
    assert_eq!(actions[1], Action::Remove { id: "web".into(), spec: web });
    assert_eq!(ensures(&actions), vec!["conf"]);
    assert!(matches!(s.resources["conf"], ResourceState::Ready { .. }), "unchanged resources keep their state");
    let (s, _) = step(
        &e,
        s,
        Event::Ensured { id: "conf".into(), spec: file("/data/workloads/a.conf", "x"), result: ok(false) },
        T0,
    );
    assert!(!s.converged(), "web is still owned");
    let (s, actions) = step(&e, s, Event::Removed { id: "web".into(), result: Ok(()) }, T0);
    assert_eq!(actions, vec![Action::SaveOwned]);
    assert!(!s.owned.contains_key("web"));
    assert!(s.converged());
}

#[test]
fn a_failed_removal_is_reported_and_retried() {
    let e = env();
    let s = converged_on(manifest(1, &[("web", unit("web.service"))]));
    let (s, _) = step(&e, s, Event::ManifestReceived(Ok(manifest(2, &[]))), T0);
    let (s, _) = step(&e, s, Event::Removed { id: "web".into(), result: Err("stop timed out".into()) }, T0);
    assert!(!s.converged());
    let st = s.status(&e.device_id, "b", T0);
    assert!(
        matches!(&st.resources["web"], ResourceState::Failed { error, .. } if error == "not removed: stop timed out")
    );
    let (_, actions) = step(&e, s, Event::PassDue, T0);
    assert_eq!(removes(&actions), vec!["web"]);
}

#[test]
fn a_changed_identity_removes_the_old_thing_before_making_the_new() {
    let e = env();
    let s = converged_on(manifest(1, &[("conf", file("/data/workloads/a.conf", "x"))]));
    let moved = file("/data/workloads/b.conf", "x");
    let (s, actions) = step(&e, s, Event::ManifestReceived(Ok(manifest(2, &[("conf", moved.clone())]))), T0);
    assert_eq!(removes(&actions), vec!["conf"]);
    assert!(ensures(&actions).is_empty(), "not while the old path is still owned");
    let (s, actions) = step(&e, s, Event::Removed { id: "conf".into(), result: Ok(()) }, T0);
    assert_eq!(actions[0], Action::SaveOwned);
    assert_eq!(ensures(&actions), vec!["conf"], "the new path in the next pass");
    assert_eq!(s.owned["conf"], moved);
}

#[test]
fn an_edited_spec_with_the_same_identity_is_reconciled_in_place() {
    let e = env();
    let s = converged_on(manifest(1, &[("conf", file("/data/workloads/a.conf", "x"))]));
    let (s, actions) =
        step(&e, s, Event::ManifestReceived(Ok(manifest(2, &[("conf", file("/data/workloads/a.conf", "y"))]))), T0);
    assert!(removes(&actions).is_empty());
    assert_eq!(ensures(&actions), vec!["conf"]);
    assert_eq!(s.resources["conf"], ResourceState::Reconciling { since: T0 });
}

#[test]
fn refusals_change_nothing_but_the_refused_condition() {
    let e = env();
    let base = converged_on(manifest(5, &[("conf", file("/data/workloads/a.conf", "x"))]));
    let mut other_device = manifest(6, &[]);
    other_device.device_id = DeviceId::new("pi-2").unwrap();
    let outside = manifest(6, &[("x", file("/etc/shadow", "x"))]);
    let at_root = manifest(6, &[("x", file("/data/workloads", "x"))]);
    let mut container = harmony_protocol::workload::ContainerSpec {
        image: "app".into(),
        digest: format!("sha256:{}", "a".repeat(64)),
        archive: None,
        command: vec![],
        env: Default::default(),
        mounts: vec![Mount { source: "/etc".into(), target: "/x".into(), read_only: true }],
        restart: Default::default(),
    };
    let bad_mount = manifest(6, &[("app", ResourceSpec::Container(container.clone()))]);
    container.mounts[0].source = "/data/workloads-evil".into();
    let prefix_trick = manifest(6, &[("app", ResourceSpec::Container(container))]);
    let cases: Vec<(Result<AgentManifest, ManifestRefusal>, ManifestRefusal)> = vec![
        (Err(ManifestRefusal::BadSignature), ManifestRefusal::BadSignature),
        (Ok(other_device), ManifestRefusal::WrongDevice { device: "pi-2".into() }),
        (Ok(manifest(4, &[])), ManifestRefusal::StaleGeneration { applied: 5, got: 4 }),
        (
            Ok(outside),
            ManifestRefusal::Invalid {
                id: "x".into(),
                problem: SpecProblem::OutsideRoots { path: "/etc/shadow".into() },
            },
        ),
        (
            Ok(at_root),
            ManifestRefusal::Invalid {
                id: "x".into(),
                problem: SpecProblem::OutsideRoots { path: "/data/workloads".into() },
            },
        ),
        (
            Ok(bad_mount),
            ManifestRefusal::Invalid {
                id: "app".into(),
                problem: SpecProblem::MountNotAllowed { source_path: "/etc".into() },
            },
        ),
        (
            Ok(prefix_trick),
            ManifestRefusal::Invalid {
                id: "app".into(),
                problem: SpecProblem::MountNotAllowed { source_path: "/data/workloads-evil".into() },
            },
        ),
    ];
    for (received, want) in cases {
        let (s, actions) = step(&e, base.clone(), Event::ManifestReceived(received), T0);
        assert!(actions.is_empty(), "{want:?}");
        assert_eq!(s.refused.as_ref().map(|r| &r.reason), Some(&want));
        let mut without = s.clone();
        without.refused = None;
        assert_eq!(without, base, "{want:?}: nothing else changed");
    }
}

#[test]
fn the_same_generation_again_is_ignored_and_a_newer_one_clears_the_refusal() {
    let e = env();
    let m = manifest(3, &[("conf", file("/data/workloads/a.conf", "x"))]);
    let s = converged_on(m.clone());
    let (same, actions) = step(&e, s.clone(), Event::ManifestReceived(Ok(m)), T0);
    assert!(actions.is_empty());
    assert_eq!(same, s);
    let (refused, _) = step(&e, s, Event::ManifestReceived(Err(ManifestRefusal::BadSignature)), T0);
    assert!(refused.refused.is_some());
    let (next, _) = step(&e, refused, Event::ManifestReceived(Ok(manifest(4, &[]))), T0);
    assert_eq!(next.refused, None);
}

#[test]
fn a_manifest_during_a_pass_waits_for_it_then_passes_again() {
    let e = env();
    let a = file("/data/workloads/a.conf", "x");
    let (s, _) = step(&e, State::default(), Event::ManifestReceived(Ok(manifest(1, &[("conf", a.clone())]))), T0);
    let b = file("/data/workloads/a.conf", "y");
    let (s, actions) = step(&e, s, Event::ManifestReceived(Ok(manifest(2, &[("conf", b.clone())]))), T0);
    assert_eq!(actions, vec![Action::SaveApplied], "no second pass beside the running one");
    // The old spec's answer does not make the new spec ready.
    let (s, actions) = step(&e, s, Event::Ensured { id: "conf".into(), spec: a, result: ok(true) }, T0);
    assert_eq!(s.resources["conf"], ResourceState::Reconciling { since: T0 }, "not ready: the next pass runs");
    assert_eq!(ensures(&actions), vec!["conf"]);
    let (s, _) = step(&e, s, Event::Ensured { id: "conf".into(), spec: b, result: ok(true) }, T0);
    assert!(s.converged());
    assert_eq!(s.gate(), Gate::Open);
}

#[test]
fn everything_else_is_refused() {
    let e = env();
    let a = file("/data/workloads/a.conf", "x");
    let idle = converged_on(manifest(1, &[("conf", a.clone())]));
    // Answers nobody asked for.
    for event in [
        Event::Ensured { id: "conf".into(), spec: a.clone(), result: ok(true) },
        Event::Ensured { id: "ghost".into(), spec: a.clone(), result: Err("x".into()) },
        Event::Removed { id: "conf".into(), result: Ok(()) },
    ] {
        let (s, actions) = step(&e, idle.clone(), event.clone(), T0);
        assert_eq!((s, actions), (idle.clone(), vec![]), "{event:?}");
    }
    // A pass while one runs.
    let (busy, _) = step(&e, idle, Event::PassDue, T0);
    let (s, actions) = step(&e, busy.clone(), Event::PassDue, T0);
    assert_eq!((s, actions), (busy, vec![]));
}

#[test]
fn gate_states() {
    let e = env();
    assert_eq!(State::default().gate(), Gate::Open, "no manifest: nothing to wait for");
    let spec = unit("web.service");
    let mut m = manifest(1, &[("web", spec.clone())]);
    m.gate_upgrades = false;
    let (s, _) = step(&e, State::default(), Event::ManifestReceived(Ok(m)), T0);
    let (s, _) = step(&e, s, Event::Ensured { id: "web".into(), spec, result: Err("boom".into()) }, T0);
    assert_eq!(s.gate(), Gate::Open, "opted out");
    let restored = State::restored(Some(manifest(1, &[("web", unit("web.service"))])), BTreeMap::new());
    assert_eq!(restored.gate(), Gate::Waiting, "after a restart, until the first pass");
    let empty = State::restored(Some(manifest(1, &[])), BTreeMap::new());
    let (empty, actions) = step(&e, empty, Event::PassDue, T0);
    assert!(actions.is_empty());
    assert_eq!(empty.gate(), Gate::Open, "an empty pass finishes at once");
    assert_eq!(empty.next_retry(), None);
}

#[test]
fn after_a_restart_owned_leftovers_are_removed() {
    let e = env();
    let owned = BTreeMap::from([("old".to_string(), unit("old.service"))]);
    let s = State::restored(Some(manifest(1, &[])), owned);
    assert!(!s.converged());
    let (_, actions) = step(&e, s, Event::PassDue, T0);
    assert_eq!(removes(&actions), vec!["old"]);
}
