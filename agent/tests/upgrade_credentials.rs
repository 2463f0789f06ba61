//! The upgrade path under device credentials: the agent watches its offer,
//! downloads the bundle from the object store and reports progress while its
//! NATS user may only touch its own subjects and keys. The permission list
//! mirrors `device_permissions` in operator/src/provision.rs (the operator
//! writes it into the server config for each device).
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod upgrade_common;

use harmony_protocol::DeviceId;
use harmony_testkit::NatsServer;
use std::time::Duration;
use upgrade_common::*;

/// The permissions `harmony-operator init --device` grants.
fn device_permissions(id: &DeviceId) -> (Vec<String>, Vec<String>) {
    let p = harmony_protocol::permissions::device_permissions(id);
    (p.publish, p.subscribe)
}

fn quoted(items: &[String]) -> String {
    items.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installs_under_credentials_limited_to_the_device() {
    let device_key = nkeys::KeyPair::new_user();
    let admin_key = nkeys::KeyPair::new_user();
    let id = DeviceId::new(DEVICE).unwrap();
    let (publish, subscribe) = device_permissions(&id);
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("auth.conf");
    std::fs::write(
        &conf,
        format!(
            "authorization {{ users = [\n {{ nkey: \"{}\" }}\n {{ nkey: \"{}\", permissions: {{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [{}] }}, allow_responses: true }} }}\n] }}\n",
            admin_key.public_key(),
            device_key.public_key(),
            quoted(&publish),
            quoted(&subscribe),
        ),
    )
    .unwrap();
    let nats = NatsServer::start_with_config(Some(&conf));
    let admin = async_nats::ConnectOptions::with_nkey(admin_key.seed().unwrap()).connect(nats.url()).await.unwrap();
    let mut rig = Rig::start_with(nats, admin).await;
    std::fs::write(rig.path("device.nk"), device_key.seed().unwrap() + "\n").unwrap();
    rig.nkey_seed_file = Some(rig.path("device.nk"));

    let b = bundle(trusted_ca(), &rig.path("bundles"), "v2", "2.0.0", 1024 * 1024);
    rig.push_bundle("v2.raucb", &b).await;
    let agent = rig.start_agent(30);
    rig.wait_heartbeat(Duration::from_secs(30), |hb| hb.booted_slot.as_deref() == Some("A")).await;
    rig.send_offer(&rig.offer(1, "v2.raucb", &b)).await;
    let hb = rig.wait_phase(Duration::from_secs(60), "rebooting").await;
    assert_eq!(hb.upgrade.target_slot.as_deref(), Some("B"));
    agent.stop().await;
}
