//! The live fleet index (issue #13) against a real nats-server: device
//! queries over a few hundred devices, following KV changes, and records it
//! must not believe.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::sim::{Behavior, SimState};
use common::{dev, Env};
use harmony_operator::fleet::{Change, DeviceQuery, DeviceSort, FleetService, KvFleet, Presence};
use harmony_operator::model::keys;
use harmony_operator::provision::DeviceUser;
use harmony_operator::store;
use harmony_protocol::HealthStatus;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::broadcast::{self, error::RecvError};

/// Waits, on the fleet's change events (never a sleep), until `check`
/// holds; `check` runs first and after every change.
async fn until<F, Fut>(rx: &mut broadcast::Receiver<Change>, secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(_)) | Ok(Err(RecvError::Lagged(_))) => {}
            Ok(Err(RecvError::Closed)) => panic!("change channel closed while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

fn query(f: impl FnOnce(&mut DeviceQuery)) -> DeviceQuery {
    let mut q = DeviceQuery::default();
    f(&mut q);
    q
}

async fn provision(env: &Env, id: &str, labels: &[(&str, &str)]) {
    let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let user = DeviceUser::provisioned(dev(id), format!("U{id}"), labels);
    store::put_json(&env.buckets.state, &keys::device(&dev(id)), &user).await.unwrap();
}

/// pi-000..pi-299: every third on 2.0 (else 1.0), every seventh unhealthy,
/// the first 100 provisioned with site=lab; new-0..4 provisioned, never seen.
async fn add_device(env: &Env, i: usize) {
    let id = format!("pi-{i:03}");
    let mut s = SimState::new(dev(&id), if i.is_multiple_of(3) { "2.0" } else { "1.0" }, Behavior::Manual);
    if i.is_multiple_of(7) {
        s.health = HealthStatus::Unhealthy;
    }
    // What the device says about itself is never a selector's business.
    s.labels = [("site".to_string(), "kitchen".to_string())].into();
    env.fleet.add(s);
    env.fleet.beat(&dev(&id)).await.unwrap();
    if i < 100 {
        provision(env, &id, &[("site", "lab")]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_filtered_sorted_and_paged_over_hundreds_of_devices() {
    let env = Env::start().await;
    for i in 0..250 {
        add_device(&env, i).await;
    }
    for n in 0..5 {
        provision(&env, &format!("new-{n}"), &[("site", "lab")]).await;
    }
    // Loaded from a snapshot, then kept current by the watches.
    let fleet = KvFleet::live(env.buckets.clone(), env.cfg.fleet.clone()).await.unwrap();
    assert_eq!(fleet.devices(&DeviceQuery::default()).await.unwrap().total, 255);
    let mut rx = fleet.subscribe();
    for i in 250..300 {
        add_device(&env, i).await;
    }
    until(&mut rx, 20, "all 305 devices", || async {
        fleet.devices(&DeviceQuery::default()).await.unwrap().total == 305
    })
    .await;

    let page = |q: DeviceQuery| {
        let fleet = fleet.clone();
        async move { fleet.devices(&q).await.unwrap() }
    };
    let ids =
        |p: &harmony_operator::fleet::DevicePage| p.devices.iter().map(|d| d.device_id.to_string()).collect::<Vec<_>>();

    let lab = page(query(|q| q.selector = Some("site=lab".into()))).await;
    assert_eq!(lab.total, 105, "provisioning labels select");
    assert_eq!(page(query(|q| q.selector = Some("site=kitchen".into()))).await.total, 0, "device labels do not");
    let lab_new = page(query(|q| {
        q.selector = Some("site=lab".into());
        q.os_version = Some("2.0".into());
    }))
    .await;
    assert_eq!(lab_new.total, 34, "site=lab and 2.0: pi-000, pi-003 .. pi-099");
    let unseen = page(query(|q| q.presence = vec![Presence::Unseen])).await;
    assert_eq!(ids(&unseen), ["new-0", "new-1", "new-2", "new-3", "new-4"]);
    assert_eq!(page(query(|q| q.presence = vec![Presence::Online])).await.total, 300);
    assert_eq!(page(query(|q| q.health = Some(HealthStatus::Unhealthy))).await.total, 43);
    assert_eq!(page(query(|q| q.os_version = Some("2.0".into()))).await.total, 100);
    assert_eq!(page(query(|q| q.phase = Some("idle".into()))).await.total, 300);
    let search = page(query(|q| q.search = Some("PI-29".into()))).await;
    assert_eq!(search.total, 10);
    assert_eq!(ids(&search)[0], "pi-290");

    let third = page(query(|q| {
        q.offset = 100;
        q.limit = 25;
    }))
    .await;
    assert_eq!((third.total, third.offset, third.limit, third.fleet_size), (305, 100, 25, 305));
    // new-0..new-4 sort before pi-000.
    assert_eq!(ids(&third).first().map(String::as_str), Some("pi-095"));
    assert_eq!(ids(&third).last().map(String::as_str), Some("pi-119"));

    let by_version = page(query(|q| {
        q.sort = DeviceSort::Version;
        q.descending = true;
    }))
    .await;
    assert_eq!(ids(&by_version)[..2], ["pi-297", "pi-294"], "2.0 first, ties by id (descending)");
    assert_eq!(by_version.devices[0].os_version.as_deref(), Some("2.0"));

    // Walking every page of 40 yields each device once.
    let mut seen = Vec::new();
    let mut offset = 0;
    loop {
        let p = page(query(|q| {
            q.offset = offset;
            q.limit = 40;
            q.sort = DeviceSort::LastSeen;
        }))
        .await;
        if p.devices.is_empty() {
            break;
        }
        seen.extend(ids(&p));
        offset += 40;
    }
    let unique: std::collections::BTreeSet<&String> = seen.iter().collect();
    assert_eq!((seen.len(), unique.len()), (305, 305));

    let overview = fleet.overview().await.unwrap();
    assert_eq!(overview.devices, 305);
    assert_eq!(overview.by_os_version[0].value, "1.0");
    assert_eq!(overview.by_os_version[0].count, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_follows_kv_skips_what_it_cannot_believe_and_survives_a_server_restart() {
    let mut env = Env::start().await;
    env.devices(&["pi-1", "pi-2", "pi-3"], Behavior::Manual).await;
    let fleet = KvFleet::live(env.buckets.clone(), env.cfg.fleet.clone()).await.unwrap();
    let mut rx = fleet.subscribe();
    let version = |id: &'static str| {
        let fleet = fleet.clone();
        async move {
            let p = fleet.devices(&query(|q| q.search = Some(id.into()))).await.unwrap();
            p.devices.first().and_then(|d| d.os_version.clone())
        }
    };

    // A new version shows after its change event.
    env.fleet.with(&dev("pi-1"), |s| s.os_version = "3.0".into());
    env.fleet.beat(&dev("pi-1")).await.unwrap();
    until(&mut rx, 10, "pi-1 on 3.0", || async { version("pi-1").await.as_deref() == Some("3.0") }).await;

    // Garbage under pi-2's key: pi-2 has no believable heartbeat, and says why.
    env.fleet.heartbeat_store().put("pi-2", "garbage".into()).await.unwrap();
    until(&mut rx, 10, "pi-2 not believed", || async {
        fleet.device(&dev("pi-2")).await.unwrap().heartbeat_error.is_some()
    })
    .await;
    let d2 = fleet.device(&dev("pi-2")).await.unwrap();
    assert!(d2.heartbeat.is_none() && d2.heartbeat_error.as_deref().unwrap().contains("undecodable"), "{d2:?}");
    assert_eq!(d2.summary.presence, Presence::Unseen);

    // pi-3 speaks for pi-1: ignored for both.
    let mut forged = env.fleet.with(&dev("pi-3"), |s| s.heartbeat(common::now())).unwrap();
    forged.device_id = dev("pi-1");
    forged.os_version = Some("6.6.6".into());
    env.fleet.heartbeat_store().put("pi-3", serde_json::to_vec(&forged).unwrap().into()).await.unwrap();
    until(&mut rx, 10, "pi-3 not believed", || async {
        fleet.device(&dev("pi-3")).await.unwrap().heartbeat_error.is_some()
    })
    .await;
    assert!(fleet.device(&dev("pi-3")).await.unwrap().heartbeat_error.unwrap().contains("names another device"));
    assert_eq!(version("pi-1").await.as_deref(), Some("3.0"), "pi-1 is not what pi-3 says");

    // A key that is no device id, then a good write: the watch delivers in
    // order, so once the second is seen the first was handled (and skipped).
    env.fleet.heartbeat_store().put("not.a.device", "{}".into()).await.unwrap();
    env.fleet.with(&dev("pi-1"), |s| s.os_version = "3.1".into());
    env.fleet.beat(&dev("pi-1")).await.unwrap();
    until(&mut rx, 10, "pi-1 on 3.1", || async { version("pi-1").await.as_deref() == Some("3.1") }).await;
    assert_eq!(fleet.devices(&DeviceQuery::default()).await.unwrap().total, 3);

    // Corrupt operator records: skipped, reported, never fatal.
    env.buckets.state.put(keys::job(&dev("pi-1")), "not json".into()).await.unwrap();
    env.buckets.state.put(keys::rollout("broken"), "{".into()).await.unwrap();
    until(&mut rx, 10, "the corrupt records", || async { fleet.corrupt_records().await.unwrap().len() == 2 }).await;
    let keys: Vec<String> = fleet.corrupt_records().await.unwrap().into_iter().map(|c| c.key).collect();
    assert_eq!(keys, ["rollout.broken", "job.pi-1"]);
    assert!(fleet.rollouts().await.unwrap().is_empty());
    let d1 = fleet.device(&dev("pi-1")).await.unwrap();
    assert!(d1.job.is_none() && d1.job_error.unwrap().contains("job.pi-1"));
    // A job record under another device's key is not that device's job.
    let misfiled = harmony_operator::model::Job::pending(dev("pi-3"), "r9", 0, common::now());
    store::put_json(&env.buckets.state, &keys::job(&dev("pi-2")), &misfiled).await.unwrap();
    store::put_json(&env.buckets.state, &keys::job(&dev("pi-3")), &misfiled).await.unwrap();
    until(&mut rx, 10, "pi-3's job", || async { fleet.device(&dev("pi-3")).await.unwrap().job.is_some() }).await;
    assert!(fleet.device(&dev("pi-2")).await.unwrap().job.is_none(), "pi-2's key holds pi-3's job");
    let rows = fleet.devices(&DeviceQuery::default()).await.unwrap().devices;
    let jobs: Vec<(String, Option<String>)> =
        rows.iter().map(|d| (d.device_id.to_string(), d.job.as_ref().map(|j| j.rollout_id.clone()))).collect();
    assert_eq!(jobs, [("pi-1".into(), None), ("pi-2".into(), None), ("pi-3".into(), Some("r9".into()))]);

    // The server restarts under the watches: they come back (or reload),
    // and later writes still reach the index.
    env.nats.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        env.fleet.with(&dev("pi-1"), |s| s.os_version = "4.0".into());
        let _ = env.fleet.beat(&dev("pi-1")).await;
        let seen = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match rx.recv().await {
                    Ok(Change::Device(d)) if d == dev("pi-1") => return,
                    Ok(Change::Resync) | Err(RecvError::Lagged(_)) => return,
                    Ok(_) => {}
                    Err(RecvError::Closed) => panic!("closed"),
                }
            }
        })
        .await;
        if seen.is_ok() && version("pi-1").await.as_deref() == Some("4.0") {
            break;
        }
        assert!(Instant::now() < deadline, "the index never saw pi-1's write after the restart");
    }
}

/// A watch that ends for good (here its bucket is deleted and created
/// again, as a re-`init` after a mistake would) is started again from a
/// fresh read, and subscribers are told to re-read everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_watch_is_restarted_from_a_fresh_read() {
    let env = Env::start().await;
    env.devices(&["pi-1", "pi-2"], Behavior::Manual).await;
    let fleet = KvFleet::live(env.buckets.clone(), env.cfg.fleet.clone()).await.unwrap();
    let mut rx = fleet.subscribe();
    assert_eq!(fleet.devices(&DeviceQuery::default()).await.unwrap().total, 2);
    env.buckets.js.delete_key_value(harmony_protocol::names::HEARTBEAT_BUCKET).await.unwrap();
    harmony_operator::bus::create_buckets(&env.buckets.js, &harmony_operator::bus::BucketLimits::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut resynced = false;
    loop {
        env.fleet.with(&dev("pi-1"), |s| s.os_version = "5.0".into());
        let _ = env.fleet.beat(&dev("pi-1")).await;
        if let Ok(change) = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
            resynced |= matches!(change, Ok(Change::Resync) | Err(RecvError::Lagged(_)));
        }
        let page = fleet.devices(&DeviceQuery::default()).await.unwrap();
        let ids: Vec<String> = page.devices.iter().map(|d| d.device_id.to_string()).collect();
        if resynced && ids == ["pi-1"] && page.devices[0].os_version.as_deref() == Some("5.0") {
            break;
        }
        assert!(Instant::now() < deadline, "no fresh read after the bucket came back: {ids:?}, resynced {resynced}");
    }
}
