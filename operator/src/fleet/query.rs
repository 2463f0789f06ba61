//! Reads over the index, as pure functions: filter, sort and page the
//! devices, tally the overview, count a rollout's stages per wave.

use super::index::{DeviceEntry, Index};
use super::{
    DevicePage, DeviceQuery, DeviceSort, DeviceSummary, JobRef, Overview, Presence, RolloutSummary, Stage, StageCounts,
    Tally, WaveProgress, WaveState,
};
use crate::config::FleetConfig;
use crate::model::{Rollout, RolloutStatus};
use crate::registry::{matches_selector, presence, Labels};
use harmony_protocol::time::UnixMillis;
use harmony_protocol::{DeviceId, HealthStatus};
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

/// A device's presence now.
pub fn presence_of(e: &DeviceEntry, now: UnixMillis, cfg: &FleetConfig) -> Presence {
    e.heartbeat.as_ref().map_or(Presence::Unseen, |hb| presence(hb.stored_at, now, cfg).into())
}

pub fn health_name(h: HealthStatus) -> &'static str {
    match h {
        HealthStatus::Healthy => "healthy",
        HealthStatus::Unhealthy => "unhealthy",
        HealthStatus::Unknown => "unknown",
    }
}

/// The row of one device.
pub fn summary(id: &DeviceId, e: &DeviceEntry, now: UnixMillis, cfg: &FleetConfig) -> DeviceSummary {
    let hb = e.heartbeat.as_ref();
    DeviceSummary {
        device_id: id.clone(),
        presence: presence_of(e, now, cfg),
        last_seen: hb.map(|h| h.stored_at),
        os_version: hb.and_then(|h| h.os_version.clone()),
        agent_version: hb.map(|h| h.agent_version.clone()),
        booted_slot: hb.and_then(|h| h.booted_slot.clone()),
        boot_id: hb.map(|h| h.boot_id.clone()),
        health: hb.map(|h| h.health.status),
        phase: hb.map(|h| h.upgrade.phase.name().to_string()),
        boot_mismatch: hb.and_then(|h| h.upgrade.boot_mismatch.as_ref().map(ToString::to_string)),
        labels: e.labels.clone().unwrap_or_default(),
        provisioned: e.labels.is_some(),
        status: e.status,
        job: e.job.as_ref().map(|j| JobRef {
            rollout_id: j.rollout_id.clone(),
            wave: j.wave,
            stage: Stage::of(&j.state),
        }),
    }
}

/// `key=value` / `key` terms joined by `,`, all of which must match the
/// operator's labels (an empty selector matches every device).
pub fn selector_matches(labels: &Labels, selector: &str) -> bool {
    selector_terms(selector).iter().all(|t| matches_selector(labels, t))
}

fn selector_terms(selector: &str) -> Vec<&str> {
    selector.split(',').map(str::trim).filter(|t| !t.is_empty()).collect()
}

fn matches(
    id: &DeviceId,
    e: &DeviceEntry,
    q: &DeviceQuery,
    selector: Option<&[&str]>,
    search: Option<&str>,
    now: UnixMillis,
    cfg: &FleetConfig,
) -> bool {
    // Read the entry only for the filters asked for: the plain list of
    // 100,000 devices then never touches their records.
    let hb = || e.heartbeat.as_ref();
    if let Some(terms) = selector {
        let none = Labels::new();
        let labels = e.labels.as_ref().unwrap_or(&none);
        if !terms.iter().all(|t| matches_selector(labels, t)) {
            return false;
        }
    }
    if !q.presence.is_empty() && !q.presence.contains(&presence_of(e, now, cfg)) {
        return false;
    }
    if let Some(v) = &q.os_version {
        let has = hb().and_then(|h| h.os_version.as_deref()).unwrap_or("");
        if has != v {
            return false;
        }
    }
    if let Some(p) = &q.phase {
        if hb().map(|h| h.upgrade.phase.name()) != Some(p.as_str()) {
            return false;
        }
    }
    if let Some(h) = q.health {
        if hb().map(|x| x.health.status) != Some(h) {
            return false;
        }
    }
    if let Some(s) = q.status {
        if e.status != Some(s) {
            return false;
        }
    }
    if let Some(s) = search {
        if !contains_ascii_lowercase(id.as_str(), s) {
            return false;
        }
    }
    true
}

/// `hay` contains `needle` (already lower case), ignoring ASCII case,
/// without allocating.
fn contains_ascii_lowercase(hay: &str, needle: &str) -> bool {
    let (hay, needle) = (hay.as_bytes(), needle.as_bytes());
    needle.is_empty() || hay.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}

type Hit<'a> = (&'a DeviceId, &'a DeviceEntry);

/// Orders `hits` (in id order) by `key`, keeping id order among equal
/// keys. Each record is read once, for its key; the sort then moves small
/// (key, position) pairs instead of following 100,000 references on every
/// comparison. For keys that compare without following a pointer.
fn order_by<'a, K: Ord + Copy>(hits: &mut Vec<Hit<'a>>, key: impl Fn(&'a DeviceEntry) -> K) {
    let keys: Vec<K> = hits.iter().map(|(_, e)| key(e)).collect();
    reorder(hits, keys);
}

/// Puts `hits` in the order of `keys` (one per hit), ties in their order.
fn reorder<K: Ord + Copy>(hits: &mut Vec<Hit<'_>>, keys: Vec<K>) {
    let mut order: Vec<(K, usize)> = keys.into_iter().zip(0..).collect();
    order.sort_unstable();
    let old = std::mem::take(hits);
    hits.extend(order.into_iter().map(|(_, at)| old[at]));
}

/// [`order_by`] for string keys: each key is first replaced by its rank
/// among the distinct keys, so the sort compares numbers. The distinct keys
/// are found by dropping repeats of the key before (neighbouring devices
/// mostly run the same version or phase), then hashing what is left.
fn order_by_rank<'a>(hits: &mut Vec<Hit<'a>>, key: impl Fn(&'a DeviceEntry) -> Option<&'a str>) {
    let keys: Vec<Option<&str>> = hits.iter().map(|(_, e)| key(e)).collect();
    let mut runs = keys.clone();
    runs.dedup();
    let mut distinct: Vec<Option<&str>> = runs.into_iter().collect::<HashSet<_>>().into_iter().collect();
    distinct.sort_unstable();
    let ranks: Vec<usize> = keys.iter().map(|k| distinct.binary_search(k).unwrap_or_else(|slot| slot)).collect();
    reorder(hits, ranks);
}

/// One page of the devices matching `q`. Only the page's rows are built;
/// the filter walks the index once (in id order) and the sort is stable.
pub fn devices(index: &Index, q: &DeviceQuery, now: UnixMillis, cfg: &FleetConfig) -> DevicePage {
    let search = q.search.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_ascii_lowercase);
    let selector = q.selector.as_deref().map(selector_terms);
    let mut hits: Vec<Hit<'_>> = index
        .devices
        .iter()
        .filter(|(id, e)| matches(id, e, q, selector.as_deref(), search.as_deref(), now, cfg))
        .collect();
    match q.sort {
        DeviceSort::Id => {}
        DeviceSort::LastSeen => order_by(&mut hits, |e| e.heartbeat.as_ref().map(|h| h.stored_at)),
        DeviceSort::Version => order_by_rank(&mut hits, |e| e.heartbeat.as_ref().and_then(|h| h.os_version.as_deref())),
        DeviceSort::Phase => order_by_rank(&mut hits, |e| e.heartbeat.as_ref().map(|h| h.upgrade.phase.name())),
    }
    if q.descending {
        hits.reverse();
    }
    let limit = q.page_size();
    let devices = hits.iter().skip(q.offset).take(limit).map(|(id, e)| summary(id, e, now, cfg)).collect();
    DevicePage { devices, total: hits.len(), offset: q.offset, limit, fleet_size: index.devices.len(), at: now }
}

fn tallies(counts: HashMap<&str, usize>) -> Vec<Tally> {
    let mut out: Vec<Tally> =
        counts.into_iter().map(|(value, count)| Tally { value: value.to_string(), count }).collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
    out
}

/// Devices per value of one fact. Neighbouring devices mostly report the
/// same value (a fleet runs few versions), so a run of equal values is
/// counted with one string comparison each and hashed once.
#[derive(Default)]
struct Counts<'a> {
    run: Option<(&'a str, usize)>,
    all: HashMap<&'a str, usize>,
}

impl<'a> Counts<'a> {
    fn add(&mut self, value: &'a str) {
        match &mut self.run {
            Some((last, n)) if *last == value => *n += 1,
            _ => {
                self.end_run();
                self.run = Some((value, 1));
            }
        }
    }

    fn end_run(&mut self) {
        if let Some((value, n)) = self.run.take() {
            *self.all.entry(value).or_insert(0) += n;
        }
    }

    fn tallies(mut self) -> Vec<Tally> {
        self.end_run();
        tallies(self.all)
    }
}

pub fn overview(index: &Index, now: UnixMillis, cfg: &FleetConfig) -> Overview {
    let (mut presence, mut version, mut phase, mut health) =
        (Counts::default(), Counts::default(), Counts::default(), Counts::default());
    for e in index.devices.values() {
        let hb = e.heartbeat.as_ref();
        presence.add(presence_of(e, now, cfg).name());
        version.add(hb.and_then(|h| h.os_version.as_deref()).unwrap_or(""));
        phase.add(hb.map_or("", |h| h.upgrade.phase.name()));
        health.add(hb.map_or("", |h| health_name(h.health.status)));
    }
    let mut active: Vec<RolloutSummary> =
        index.rollouts.values().filter(|r| !r.status.is_final()).map(|r| rollout_summary(index, r)).collect();
    active.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.id.cmp(&b.id)));
    Overview {
        devices: index.devices.len(),
        by_presence: presence.tallies(),
        by_os_version: version.tallies(),
        by_phase: phase.tallies(),
        by_health: health.tallies(),
        active_rollouts: active,
        at: now,
    }
}

/// Per wave: devices per stage. `stage` says where a device stands in this
/// rollout; `None` (its job record is gone or belongs to a newer rollout and
/// was not found in the archive) counts as pending while the wave is still
/// ahead, as `superseded` otherwise.
pub fn wave_progress(r: &Rollout, stage: impl Fn(&DeviceId) -> Option<Stage>) -> Vec<WaveProgress> {
    r.waves
        .iter()
        .enumerate()
        .map(|(index, devices)| {
            let mut counts = StageCounts::default();
            for d in devices {
                match stage(d) {
                    Some(s) => counts.add(s),
                    None if index >= r.current_wave && !r.status.is_final() => counts.add(Stage::Pending),
                    None => counts.superseded += 1,
                }
            }
            let state = match index.cmp(&r.current_wave) {
                Ordering::Less => WaveState::Done,
                Ordering::Equal if !matches!(r.status, RolloutStatus::Completed) => WaveState::Current,
                Ordering::Equal => WaveState::Done,
                Ordering::Greater => WaveState::Waiting,
            };
            WaveProgress { index, devices: devices.len(), state, counts }
        })
        .collect()
}

pub fn summary_of(r: &Rollout, waves: &[WaveProgress]) -> RolloutSummary {
    let mut counts = StageCounts::default();
    for w in waves {
        counts.merge(&w.counts);
    }
    RolloutSummary {
        id: r.id.clone(),
        bundle_id: r.bundle.id.clone(),
        target_version: r.bundle.version.clone(),
        status: r.status.name().to_string(),
        halt_reason: match &r.status {
            RolloutStatus::Halted { reason } => Some(reason.clone()),
            _ => None,
        },
        created_at: r.created_at,
        current_wave: r.current_wave,
        waves: r.waves.len(),
        devices: r.devices().count(),
        counts,
    }
}

/// A rollout's summary from the current jobs in the index.
pub fn rollout_summary(index: &Index, r: &Rollout) -> RolloutSummary {
    summary_of(r, &wave_progress(r, |d| index.stage_in(d, &r.id)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::StoredHeartbeat;
    use harmony_protocol::Heartbeat;

    fn heartbeat(id: &str, version: &str, stored_at: u64) -> StoredHeartbeat {
        let mut heartbeat: Heartbeat =
            serde_json::from_str(include_str!("../../../protocol/tests/data/heartbeat.json"))
                .expect("the protocol's heartbeat fixture");
        heartbeat.device_id = DeviceId::new(id).expect("id");
        heartbeat.os_version = (!version.is_empty()).then(|| version.to_string());
        StoredHeartbeat { heartbeat, revision: stored_at, stored_at: UnixMillis(stored_at) }
    }

    /// 300 devices: pi-000..pi-299; every third on 2.0 (else 1.0), every
    /// tenth silent for 10 minutes, the first 50 provisioned with site=lab,
    /// the odd ones of those also rack=1; pi-299 reports no version; x-1
    /// is provisioned but never seen.
    fn index() -> Index {
        let mut index = Index::default();
        for i in 0..300u64 {
            let id = DeviceId::new(format!("pi-{i:03}")).expect("id");
            let version = match i {
                299 => "",
                i if i % 3 == 0 => "2.0",
                _ => "1.0",
            };
            let seen = if i % 10 == 0 { 1_000_000 - 600_000 } else { 1_000_000 - i };
            let mut e = DeviceEntry { heartbeat: Some(heartbeat(id.as_str(), version, seen)), ..Default::default() };
            if i < 50 {
                let mut labels = Labels::from([("site".to_string(), "lab".to_string())]);
                if i % 2 == 1 {
                    labels.insert("rack".into(), "1".into());
                }
                e.labels = Some(labels);
            }
            index.devices.insert(id, e);
        }
        index.devices.insert(
            DeviceId::new("x-1").expect("id"),
            DeviceEntry { labels: Some(Labels::new()), ..Default::default() },
        );
        index
    }

    fn ids(p: &DevicePage) -> Vec<&str> {
        p.devices.iter().map(|d| d.device_id.as_str()).collect()
    }

    #[test]
    fn filters_sorts_and_pages() {
        let index = index();
        let cfg = FleetConfig { stale_after_secs: 30, offline_after_secs: 120 };
        let now = UnixMillis(1_000_000);
        let q = |f: &dyn Fn(&mut DeviceQuery)| {
            let mut q = DeviceQuery::default();
            f(&mut q);
            devices(&index, &q, now, &cfg)
        };
        struct Case {
            name: &'static str,
            page: DevicePage,
            total: usize,
            first: &'static [&'static str],
        }
        let cases = [
            Case { name: "everything, default page", page: q(&|_| {}), total: 301, first: &["pi-000", "pi-001"] },
            Case {
                name: "selector",
                page: q(&|q| q.selector = Some("site=lab".into())),
                total: 50,
                first: &["pi-000", "pi-001"],
            },
            Case {
                name: "selector, two terms",
                page: q(&|q| q.selector = Some("site=lab, rack".into())),
                total: 25,
                first: &["pi-001", "pi-003"],
            },
            Case {
                name: "offline",
                page: q(&|q| q.presence = vec![Presence::Offline]),
                total: 30,
                first: &["pi-000", "pi-010"],
            },
            Case { name: "unseen", page: q(&|q| q.presence = vec![Presence::Unseen]), total: 1, first: &["x-1"] },
            Case {
                name: "version 2.0",
                page: q(&|q| q.os_version = Some("2.0".into())),
                total: 100,
                first: &["pi-000", "pi-003"],
            },
            Case {
                name: "no version",
                page: q(&|q| q.os_version = Some(String::new())),
                total: 2,
                first: &["pi-299", "x-1"],
            },
            Case { name: "search", page: q(&|q| q.search = Some("PI-29".into())), total: 10, first: &["pi-290"] },
            Case {
                name: "phase and health of the fixture",
                page: q(&|q| {
                    q.phase = Some("awaiting_commit".into());
                    q.health = Some(HealthStatus::Healthy);
                }),
                total: 300,
                first: &["pi-000"],
            },
            Case {
                name: "page 3 of 7",
                page: q(&|q| {
                    q.offset = 14;
                    q.limit = 7;
                }),
                total: 301,
                first: &["pi-014", "pi-015"],
            },
            Case {
                name: "last seen, newest first",
                page: q(&|q| {
                    q.sort = DeviceSort::LastSeen;
                    q.descending = true;
                }),
                total: 301,
                first: &["pi-001", "pi-002"],
            },
            Case {
                name: "version descending, ties by id",
                page: q(&|q| {
                    q.sort = DeviceSort::Version;
                    q.descending = true;
                    q.limit = 1000;
                }),
                total: 301,
                first: &["pi-297", "pi-294"],
            },
        ];
        for c in &cases {
            assert_eq!(c.page.total, c.total, "{}", c.name);
            assert_eq!(&ids(&c.page)[..c.first.len()], c.first, "{}", c.name);
            assert_eq!(c.page.fleet_size, 301, "{}", c.name);
        }
        let page = q(&|q| {
            q.offset = 299;
            q.limit = 5;
        });
        assert_eq!(ids(&page), ["pi-299", "x-1"], "the last page is short");
        assert_eq!(q(&|q| q.limit = 5000).limit, DeviceQuery::MAX_LIMIT);
        assert_eq!(q(&|_| {}).devices.len(), DeviceQuery::DEFAULT_LIMIT);
        let row = &q(&|q| q.search = Some("pi-001".into())).devices[0];
        assert_eq!(row.labels.get("rack").map(String::as_str), Some("1"));
        assert!(row.provisioned);
    }

    #[test]
    fn overview_tallies_largest_first() {
        let cfg = FleetConfig { stale_after_secs: 30, offline_after_secs: 120 };
        let o = overview(&index(), UnixMillis(1_000_000), &cfg);
        assert_eq!(o.devices, 301);
        let t = |v: &[Tally]| v.iter().map(|t| (t.value.clone(), t.count)).collect::<Vec<_>>();
        assert_eq!(t(&o.by_presence), [("online".into(), 270), ("offline".into(), 30), ("unseen".into(), 1)]);
        assert_eq!(t(&o.by_os_version), [("1.0".into(), 199), ("2.0".into(), 100), (String::new(), 2)]);
    }
}
