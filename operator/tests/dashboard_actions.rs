//! What an admin does from the dashboard, end to end on a real fleet
//! (nats-server, the operator loop, simulated devices, KvFleet): ping,
//! start a rollout and watch it complete, upload a real RAUC bundle, and
//! find devices with filters and pages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod dashboard_support;

use axum::http::StatusCode;
use common::sim::{Behavior, SimState};
use common::{dev, eventually};
use dashboard_support::{login, start, ADMIN, VIEWER};
use harmony_testkit::rauc_bundle::{build_bundle, TestCa};

#[tokio::test]
async fn admin_pings_and_rolls_out_from_the_pages() {
    let d = start().await;
    d.env.devices(&["d1", "d2"], Behavior::Happy).await;
    let admin = login(&d.router, ADMIN.0, ADMIN.1).await;
    eventually(10, "both devices listed", || async {
        admin.get(&d.router, "/devices").await.body.contains(r#"data-total="2""#)
    })
    .await;

    let r = admin.post(&d.router, "/devices/d1/ping", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("Pong from") && r.body.contains("ping-result"));
    // A reboot: scheduled, and the device comes back with a new boot id,
    // which its page shows.
    let r = admin.post(&d.router, "/devices/d1/reboot", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("reboot-result"), "{}", r.body);
    eventually(10, "d1's heartbeat from its new boot", || async {
        admin.get(&d.router, "/devices/d1").await.body.contains("d1-boot-1")
    })
    .await;
    // A device that does not answer: the failure comes back as an error fragment.
    let r = admin.post(&d.router, "/devices/ghost/reboot", &[]).await;
    assert!(r.status.is_server_error() || r.status.is_client_error(), "{}", r.body);
    assert!(r.body.contains("flash-error"), "{}", r.body);
    let r = admin.post(&d.router, "/devices/not%20a%20device/ping", &[]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let form =
        [("bundle", "2.0"), ("selector", ""), ("canary", "1"), ("waves", "100"), ("halt_after", "1"), ("id", "web1")];
    let r = admin.post(&d.router, "/rollouts", &form).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.headers["hx-redirect"], "/rollouts/web1");
    eventually(30, "rollout web1 completed on the page", || async {
        admin.get(&d.router, "/rollouts/web1").await.body.contains(r#"id="rollout-status" data-status="completed""#)
    })
    .await;
    let page = admin.get(&d.router, "/rollouts/web1").await.body;
    assert!(page.contains(r#"data-wave="0""#) && page.contains(r#"data-wave="1""#), "{page}");
    assert!(page.contains(r#"data-stage="committed" data-count="1""#), "{page}");
    assert!(page.contains(r#"data-stage="failed" data-count="0""#));
    assert!(!page.contains("pause-button"), "a finished rollout offers no controls");
    let device = admin.get(&d.router, "/devices/d2").await.body;
    assert!(device.contains(r#"data-state="committed""#), "{device}");

    let audit = admin.get(&d.router, "/audit").await.body;
    for action in ["rollout start", "device ping", "device reboot"] {
        assert!(audit.contains(action), "{action} not in the audit page");
    }
    d.op.stop().await;
}

#[tokio::test]
async fn bundle_upload_stores_a_real_bundle_and_refuses_junk() {
    let d = start().await;
    let ca = TestCa::create(d.env.dir.path());
    let path = build_bundle(&ca, d.env.dir.path(), "up", "harmony-sim", "3.0.0", "plain", &[7u8; 4096]);
    let bytes = std::fs::read(&path).unwrap();
    let admin = login(&d.router, ADMIN.0, ADMIN.1).await;
    let viewer = login(&d.router, VIEWER.0, VIEWER.1).await;

    let r = viewer.post_multipart(&d.router, "/bundles", &[("bundle", Some("up.raucb"), &bytes)]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = admin.post_multipart(&d.router, "/bundles", &[("bundle", Some("junk.raucb"), b"not a bundle")]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let r = admin.post_multipart(&d.router, "/bundles", &[("id", None, b"")]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);

    let r = admin
        .post_multipart(&d.router, "/bundles", &[("id", None, b"spring"), ("bundle", Some("up.raucb"), &bytes)])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains(r#"data-bundle-id="spring""#) && r.body.contains("3.0.0"), "{}", r.body);
    let page = admin.get(&d.router, "/bundles").await.body;
    assert!(page.contains(r#"data-bundle-id="spring""#), "{page}");
    assert!(page.contains("harmony-sim"));
    d.op.stop().await;
}

#[tokio::test]
async fn device_list_filters_sorts_and_pages() {
    let d = start().await;
    for i in 0..60 {
        let mut s =
            SimState::new(dev(&format!("dev-{i:02}")), if i % 3 == 0 { "1.1" } else { "1.0" }, Behavior::Manual);
        s.labels.insert("rack".into(), (i % 2).to_string());
        d.env.fleet.add(s);
        d.env.fleet.beat(&dev(&format!("dev-{i:02}"))).await.unwrap();
    }
    let admin = login(&d.router, ADMIN.0, ADMIN.1).await;
    eventually(15, "60 devices indexed", || async {
        admin.get(&d.router, "/devices").await.body.contains(r#"data-total="60""#)
    })
    .await;
    let rows = |body: &str| body.matches(r#"class="device-row""#).count();
    let first = admin.get(&d.router, "/devices").await.body;
    assert_eq!(rows(&first), 50);
    assert!(first.contains("page-next") && !first.contains("page-prev"));
    assert!(first.find("dev-00").unwrap() < first.find("dev-01").unwrap());
    let second = admin.get(&d.router, "/devices?offset=50").await.body;
    assert_eq!(rows(&second), 10);
    assert!(second.contains("page-prev") && !second.contains("page-next"));
    let search = admin.get(&d.router, "/devices?q=DEV-1").await.body;
    assert_eq!(rows(&search), 10, "case-insensitive id search");
    let version = admin.get(&d.router, "/devices?version=1.1").await.body;
    assert_eq!(rows(&version), 20);
    let online = admin.get(&d.router, "/devices?presence=offline").await.body;
    assert_eq!(rows(&online), 0);
    let desc = admin.get(&d.router, "/devices?sort=id&desc=1").await.body;
    assert!(desc.find("dev-59").unwrap() < desc.find("dev-58").unwrap());
    // An htmx request gets only the region, not the page.
    let fragment = dashboard_support::send(
        &d.router,
        axum::http::Request::builder()
            .uri("/devices?version=1.1")
            .header(axum::http::header::COOKIE, &admin.cookie)
            .header("hx-request", "true")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .body;
    assert!(fragment.starts_with(r#"<div id="devices-region""#), "{fragment}");
    assert_eq!(admin.get(&d.router, "/devices?presence=bogus").await.status, StatusCode::BAD_REQUEST);
    // The overview counts them.
    let overview = admin.get(&d.router, "/").await.body;
    assert!(overview.contains(r#"id="stat-devices">60<"#), "{overview}");
    assert!(
        overview.contains(r#"<tr data-key="1.1"><td><code>1.1</code></td><td class="count">20</td>"#),
        "{overview}"
    );
    d.op.stop().await;
}

#[tokio::test]
async fn a_failed_device_halts_the_rollout_and_the_page_says_why() {
    let d = start().await;
    d.env.devices(&["ok1"], Behavior::Happy).await;
    d.env.devices(&["bad1"], Behavior::FailInstall).await;
    d.env.devices(&["ok2"], Behavior::Happy).await;
    let mut args = d.env.start_args(&["bad1", "ok1", "ok2"]);
    args.canary = 1;
    d.env.rollout(&args).await;
    let admin = login(&d.router, ADMIN.0, ADMIN.1).await;
    eventually(30, "rollout r1 halted on the page", || async {
        admin.get(&d.router, "/rollouts/r1").await.body.contains(r#"id="rollout-status" data-status="halted""#)
    })
    .await;
    let page = admin.get(&d.router, "/rollouts/r1").await.body;
    assert!(page.contains(r#"id="halt-reason""#), "{page}");
    assert!(page.contains(r#"data-stage="failed" data-count="1""#), "{page}");
    assert!(page.contains(r#"data-device-id="bad1" data-state="failed""#), "{page}");
    assert!(page.contains("resume-button") && !page.contains("pause-button"));
    let device = admin.get(&d.router, "/devices/bad1").await.body;
    assert!(device.contains(r#"class="transition" data-state="failed""#) && device.contains("Reason: "), "{device}");
    // Resuming accepts the failure: the other devices get their offers.
    assert_eq!(admin.post(&d.router, "/rollouts/r1/resume", &[]).await.status, StatusCode::OK);
    eventually(30, "rollout r1 completed after the resume", || async {
        admin.get(&d.router, "/rollouts/r1").await.body.contains(r#"data-status="completed""#)
    })
    .await;
    d.op.stop().await;
}

/// A device record as the enrollment service writes it for a token that
/// requires approval.
fn pending_record(id: &str) -> harmony_operator::provision::DeviceUser {
    use harmony_operator::provision::{DeviceStatus, DeviceUser, Enrollment};
    DeviceUser {
        device: dev(id),
        nkey: nkeys::KeyPair::new_user().public_key(),
        labels: [("site".to_string(), "lab".to_string())].into(),
        status: DeviceStatus::Pending,
        enrollment: Some(Enrollment {
            at: common::now().0 / 1000,
            token: "0123456789ab".into(),
            agent_version: "0.1.0".into(),
            os_version: Some("1.0.0".into()),
        }),
    }
}

#[tokio::test]
async fn enrollment_admin_pending_devices_and_tokens_from_the_pages() {
    use harmony_operator::model::keys;
    use harmony_operator::provision::{DeviceStatus, DeviceUser};
    let d = start().await;
    let state = &d.env.buckets.state;
    for id in ["pi-wait", "pi-two"] {
        harmony_operator::store::put_json(state, &keys::device(&dev(id)), &pending_record(id)).await.unwrap();
    }
    let status_of = |id: &'static str| async move {
        let r: DeviceUser = harmony_operator::store::get_json(state, &keys::device(&dev(id))).await.unwrap().unwrap();
        r.status
    };
    let admin = login(&d.router, ADMIN.0, ADMIN.1).await;
    let viewer = login(&d.router, VIEWER.0, VIEWER.1).await;

    // Both are listed as pending, with their token id, labels and OS; only
    // the admin gets buttons.
    eventually(10, "both pending devices listed", || async {
        admin.get(&d.router, "/pending").await.body.contains(r#"data-total="2""#)
    })
    .await;
    let page = admin.get(&d.router, "/pending").await.body;
    assert!(page.contains(r#"tr class="pending-row" data-device-id="pi-wait""#), "{page}");
    assert!(page.contains("0123456789ab") && page.contains("site=lab") && page.contains("1.0.0"), "{page}");
    assert!(page.contains(r#"hx-post="/devices/pi-wait/accept""#) && page.contains("reject-device"), "{page}");
    let seen = viewer.get(&d.router, "/pending").await.body;
    assert!(seen.contains("pi-wait") && !seen.contains("accept-device") && !seen.contains("reject-device"));
    // The device list shows them with their status, and filters on it; no
    // rollout selector matches a pending device (it has no labels).
    let list = admin.get(&d.router, "/devices?status=pending").await.body;
    assert!(list.contains(r#"data-total="2""#) && list.contains(r#"data-status="pending""#), "{list}");
    let page = admin.get(&d.router, "/devices/pi-two").await.body;
    assert!(page.contains(r#"id="device-status" data-status="pending""#), "{page}");
    assert!(page.contains("revoke-button") && page.contains("accept-button"), "{page}");
    assert!(!viewer.get(&d.router, "/devices/pi-two").await.body.contains("revoke-button"));
    let r = admin
        .post(&d.router, "/rollouts", &[("bundle", "2.0"), ("selector", "site=lab"), ("canary", "1"), ("waves", "100")])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "a selector matched a pending device: {}", r.body);

    // A viewer's verdict is refused and changes nothing.
    for verdict in ["accept", "reject", "revoke"] {
        let r = viewer.post(&d.router, &format!("/devices/pi-wait/{verdict}"), &[]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{verdict}: {}", r.body);
    }
    assert_eq!(status_of("pi-wait").await, DeviceStatus::Pending);
    // The admin accepts one.
    let r = admin.post(&d.router, "/devices/pi-wait/accept", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains(r#"data-verdict="accept" data-status="active""#), "{}", r.body);
    assert_eq!(status_of("pi-wait").await, DeviceStatus::Active);
    eventually(10, "pi-wait no longer pending", || async {
        admin.get(&d.router, "/pending").await.body.contains(r#"data-total="1""#)
    })
    .await;
    // Accepting twice is refused with the reason.
    let r = admin.post(&d.router, "/devices/pi-wait/accept", &[]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.body.contains("cannot accept a device that is active"), "{}", r.body);
    // Rejecting needs the system account ([enroll]), which this config has
    // not: a clear error, and the record is untouched.
    let r = admin.post(&d.router, "/devices/pi-two/reject", &[]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(r.body.contains("flash-error") && r.body.contains("[enroll]"), "{}", r.body);
    assert_eq!(status_of("pi-two").await, DeviceStatus::Pending);

    // Tokens: a viewer can neither create nor revoke, nor sees the form.
    let form = [("labels", "site=lab,room=2"), ("max_uses", "3"), ("expires", "1d"), ("require_approval", "1")];
    assert_eq!(viewer.post(&d.router, "/tokens", &form).await.status, StatusCode::FORBIDDEN);
    let seen = viewer.get(&d.router, "/tokens").await.body;
    assert!(!seen.contains("token-form") && !seen.contains("revoke-token"), "{seen}");
    // Bad input is refused.
    let bad = [("labels", ""), ("max_uses", "0"), ("expires", "1d")];
    assert_eq!(admin.post(&d.router, "/tokens", &bad).await.status, StatusCode::BAD_REQUEST);
    let bad = [("labels", ""), ("max_uses", "1"), ("expires", "forever")];
    assert_eq!(admin.post(&d.router, "/tokens", &bad).await.status, StatusCode::BAD_REQUEST);
    // The admin creates one: its text is on the answer, once.
    let r = admin.post(&d.router, "/tokens", &form).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("token-created") && r.body.contains("shown only this once"), "{}", r.body);
    assert!(r.body.contains(r#"id="token-text""#), "{}", r.body);
    let marker = r#"value=""#;
    let start_at = r.body.find(marker).map(|i| i + marker.len()).unwrap_or_else(|| panic!("{}", r.body));
    let token = &r.body[start_at..start_at + r.body[start_at..].find('"').unwrap()];
    assert!(token.starts_with("hfe1_"), "{token}");
    let id = token.split('_').nth(1).unwrap().to_string();
    eventually(10, "the token listed", || async {
        admin.get(&d.router, "/tokens").await.body.contains(&format!(r#"data-token-id="{id}" data-state="valid""#))
    })
    .await;
    let list = admin.get(&d.router, "/tokens").await.body;
    assert!(list.contains("room=2") && list.contains("0/3"), "{list}");
    assert!(!list.contains(token), "the token's text is shown only once");
    let r = viewer.post(&d.router, &format!("/tokens/{id}/revoke"), &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = admin.post(&d.router, &format!("/tokens/{id}/revoke"), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("token-revoked"), "{}", r.body);
    eventually(10, "the token revoked on the page", || async {
        admin.get(&d.router, "/tokens").await.body.contains(&format!(r#"data-token-id="{id}" data-state="revoked""#))
    })
    .await;
    assert_eq!(admin.post(&d.router, "/tokens/nonsense/revoke", &[]).await.status, StatusCode::BAD_REQUEST);

    // Every action is in the audit log under the admin's name, the
    // refused reject with its reason; the token's text nowhere.
    let audit = admin.get(&d.router, "/audit").await.body;
    for action in ["device accept", "device reject", "token create", "token revoke"] {
        assert!(audit.contains(action), "{action} not in the audit page");
    }
    assert!(audit.contains(&id) && !audit.contains(token) && !audit.contains(token.rsplit('_').next().unwrap()));
    d.op.stop().await;
}
