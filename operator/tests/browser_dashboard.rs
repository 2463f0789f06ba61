//! The dashboard in a real headless Chromium, against the real operator
//! binary (`serve --http`), a real nats-server and simulated devices that
//! speak the real protocol: log in, watch a rollout progress live (server-
//! sent events, no reload), see a device fail and the rollout halt with its
//! reason, pause and resume, and see hostile device-reported strings
//! rendered as text with no script run.
//!
//! Element ids and classes: docs/dashboard.md. Screenshots:
//! target/browser-artifacts/dashboard/.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod browser;
mod common;

use browser::Browser;
use common::sim::{Behavior, SimState};
use common::{dev, Env};
use harmony_operator::config::{DashboardRole, DashboardUser};
use harmony_operator::model::HaltThreshold;
use harmony_testkit::rauc_bundle::{build_bundle, TestCa};
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const HOSTILE_LABEL: &str = "<script>alert(1)</script>";
const HOSTILE_CHECK: &str = "<img src=x onerror=alert(2)>disk";
const PASSWORD: &str = "correct horse battery staple";
const WAIT: Duration = Duration::from_secs(60);

/// The operator binary serving the dashboard; killed on drop.
struct Served(Child);
impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn serve_dashboard(env: &Env, artifacts: &std::path::Path) -> (Served, String) {
    let mut cfg = env.cfg.clone();
    cfg.dashboard.users.push(DashboardUser {
        name: "ada".into(),
        password_hash: harmony_operator::dashboard::hash_password(PASSWORD).unwrap(),
        role: DashboardRole::Admin,
    });
    cfg.dashboard.live_coalesce_millis = 200;
    let path = env.dir.path().join("operator.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    let port = free_port();
    let log = std::fs::File::create(artifacts.join("operator.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_harmony-operator"))
        .arg("--config")
        .arg(&path)
        .args(["serve", "--http", &format!("127.0.0.1:{port}")])
        .env("HARMONY_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let served = Served(child);
    common::eventually(30, "the dashboard listening", || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
    })
    .await;
    (served, format!("http://127.0.0.1:{port}"))
}

/// `count` of a stage in the `wave`-th wave (0: canary), 0 when not shown.
fn stage_count(wave: usize, stage: &str) -> String {
    format!(
        "Number((document.querySelectorAll('.wave')[{wave}]?.querySelector('.segment[data-stage={stage}]')?.dataset.count) || 0)"
    )
}

fn status_is(status: &str) -> String {
    format!("document.querySelector('#rollout-status')?.dataset.status === '{status}'")
}

const NO_RELOAD_MARK: &str = "window.__harmonyNoReload === 42";

#[test]
fn a_rollout_watched_live_halts_on_a_failure_and_resumes() {
    // The scenario's future overflows the test thread's 2 MiB stack in a
    // debug build: run it on a thread of its own with room.
    let run = std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(|| {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
            rt.block_on(scenario());
        })
        .unwrap();
    if let Err(panic) = run.join() {
        std::panic::resume_unwind(panic);
    }
}

/// Clicks a button whose htmx request asks for confirmation (`hx-confirm`,
/// the browser's own dialog), sees the question and confirms. Fails if no
/// question comes: the action did nothing (as it did when a live region's
/// `hx-swap` leaked into its buttons and the first action removed `#flash`).
async fn click_confirmed(b: &Browser, css: &str, question: &str) {
    b.click_css(css, WAIT).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let asked = loop {
        if let Some(text) = b.alert_text().await {
            break text;
        }
        if tokio::time::Instant::now() > deadline {
            b.screenshot("no-confirm-dialog").await;
            panic!("clicking {css} asked nothing");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(asked.contains(question), "clicking {css} asked {asked:?}");
    b.accept_alert().await;
}

async fn scenario() {
    let Some(b) = Browser::start("dashboard").await else { return };
    let env = Env::start().await;
    env.fleet.set_install_delay(Duration::from_millis(1500));
    // Rollout order: one canary, then half, then the rest; the failure is in wave 2.
    let rollout_devices = ["canary-1", "kiosk-1", "kiosk-bad", "kiosk-2", "kiosk-3", "kiosk-4", "kiosk-5", "kiosk-6"];
    for name in rollout_devices {
        let behavior = if name == "kiosk-bad" { Behavior::FailInstall } else { Behavior::Happy };
        let mut d = SimState::new(dev(name), "1.0", behavior);
        d.labels.insert("site".into(), "harbour".into());
        env.fleet.add(d);
    }
    let mut hostile = SimState::new(dev("kiosk-hostile"), "1.0", Behavior::Manual);
    hostile.labels.insert("note".into(), HOSTILE_LABEL.into());
    hostile.failed_checks = vec![HOSTILE_CHECK.into()];
    hostile.health = harmony_protocol::HealthStatus::Unhealthy;
    env.fleet.add(hostile);
    let _beats = env.fleet.spawn_heartbeats(Duration::from_secs(1));
    let (_served, base) = serve_dashboard(&env, &b.artifacts).await;

    // Log in: a wrong password is refused, the right one lands on the overview.
    b.goto(&format!("{base}/login")).await;
    let user = b.wait_for("input[name=username]", WAIT).await;
    b.type_into(&user, "ada").await;
    b.type_into(&b.find("input[name=password]").await.unwrap(), "wrong").await;
    b.click(&b.find("#login-submit").await.unwrap()).await;
    b.wait_for(".flash-error", WAIT).await;
    let user = b.wait_for("input[name=username]", WAIT).await;
    b.type_into(&user, "ada").await;
    b.type_into(&b.find("input[name=password]").await.unwrap(), PASSWORD).await;
    b.click(&b.find("#login-submit").await.unwrap()).await;
    let whoami = b.wait_for("#whoami", WAIT).await;
    assert_eq!(b.attr(&whoami, "data-role").await.as_deref(), Some("admin"));
    b.wait_until(
        "nine devices online on the overview",
        "Number(document.querySelector('#counts-presence tr[data-key=online] td.count')?.textContent) === 9",
        WAIT,
    )
    .await;
    b.screenshot("overview").await;

    // A rollout started as the CLI does; watched on its page from the start.
    let mut args = env.start_args(&rollout_devices);
    args.canary = 1;
    args.waves = vec![50, 100];
    args.policy.max_in_flight = 2;
    args.policy.halt = HaltThreshold::Count(1);
    env.rollout(&args).await;
    b.goto(&format!("{base}/rollouts/r1")).await;
    b.wait_for("#rollout-detail[data-rollout-id=r1]", WAIT).await;
    b.execute("window.__harmonyNoReload = 42", json!([])).await.unwrap();

    // Pause, then resume, from the page (htmx POSTs with the CSRF header).
    b.click_css("#pause-button", WAIT).await;
    b.wait_until("paused", &status_is("paused"), WAIT).await;
    click_confirmed(&b, "#resume-button", "Resume this rollout?").await;
    b.wait_until("running again", &status_is("running"), WAIT).await;

    // Live progress: the canary commits, the next wave starts, a device fails
    // and the rollout halts itself with its reason — all without a reload.
    b.wait_until("the canary committed, live", &format!("{} === 1", stage_count(0, "committed")), WAIT).await;
    b.wait_until("halted", &status_is("halted"), WAIT).await;
    let reason = b.wait_until("the halt reason", "document.querySelector('#halt-reason')?.textContent", WAIT).await;
    assert!(reason.as_str().unwrap_or_default().contains("failed"), "halt reason shown: {reason}");
    b.wait_until(
        "kiosk-bad shown failed",
        "document.querySelector('tr.job-row[data-device-id=\"kiosk-bad\"]')?.dataset.state === 'failed'",
        WAIT,
    )
    .await;
    assert!(b
        .wait_until("the failure counted in wave 2", &format!("{} >= 1", stage_count(1, "failed")), WAIT)
        .await
        .as_bool()
        .unwrap_or(false));
    assert_eq!(b.execute(&format!("return {NO_RELOAD_MARK}"), json!([])).await.unwrap(), json!(true), "no reload");
    b.screenshot("rollout-halted").await;

    // Resume: the rest of the fleet upgrades; the failed device stays failed.
    click_confirmed(&b, "#resume-button", "Resume a halted rollout?").await;
    b.wait_until("completed", &status_is("completed"), WAIT).await;
    b.wait_until(
        "seven committed across the waves",
        &format!(
            "{} + {} + {} === 7",
            stage_count(0, "committed"),
            stage_count(1, "committed"),
            stage_count(2, "committed")
        ),
        WAIT,
    )
    .await;
    assert_eq!(b.execute(&format!("return {NO_RELOAD_MARK}"), json!([])).await.unwrap(), json!(true), "no reload");
    b.screenshot("rollout-completed").await;

    // Hostile device-reported strings are text: shown literally, no element, no alert.
    b.goto(&format!("{base}/devices/kiosk-hostile")).await;
    b.wait_for("#device-labels li.label", WAIT).await;
    let labels: Vec<String> = {
        let mut out = Vec::new();
        for e in b.find_all("#device-labels li.label").await {
            out.push(b.text(&e).await);
        }
        out
    };
    assert!(labels.iter().any(|l| l.contains(HOSTILE_LABEL)), "label shown as text: {labels:?}");
    let heartbeat = b.text(&b.wait_for("#device-heartbeat", WAIT).await).await;
    assert!(heartbeat.contains(HOSTILE_CHECK), "failed check shown as text: {heartbeat:?}");
    let injected = b
        .execute("return document.querySelectorAll('#device-detail script, #device-detail img').length", json!([]))
        .await
        .unwrap();
    assert_eq!(injected, json!(0), "no element made from device data");
    assert_eq!(b.alert_text().await, None, "no alert fired");
    b.screenshot("device-hostile-label").await;
    // Reboot (confirmed in the dialog), then ping, from the same page: the
    // second action still has its target.
    click_confirmed(&b, "#reboot-button", "Reboot this device now?").await;
    b.wait_for("#device-action-result #reboot-result", WAIT).await;
    b.click_css("#ping-button", WAIT).await;
    b.wait_for("#device-action-result #ping-result", WAIT).await;
    b.goto(&format!("{base}/devices")).await;
    b.wait_for("tr.device-row[data-device-id=kiosk-hostile]", WAIT).await;
    assert_eq!(b.alert_text().await, None, "no alert fired on the devices page");
    b.screenshot("devices").await;

    // A real RAUC bundle uploaded from the page: the bar follows the request
    // body to its end (not the answer's bytes), the bundle is listed live;
    // then removed from the same page (a second action there still works).
    let ca = TestCa::create(env.dir.path());
    // 2 MiB that squashfs cannot compress, so the upload takes many chunks.
    let payload = harmony_testkit::rauc_bundle::incompressible(2 << 20);
    let bundle = build_bundle(&ca, env.dir.path(), "upload", "harmony-sim", "3.0.0", "plain", &payload);
    let size = std::fs::metadata(&bundle).unwrap().len();
    b.goto(&format!("{base}/bundles")).await;
    let file = b.wait_for("#upload-form input[type=file][name=bundle]", WAIT).await;
    b.type_into(&file, &bundle.display().to_string()).await;
    b.type_into(&b.find("#upload-form input[name=id]").await.unwrap(), "from-browser").await;
    b.execute(
        "window.__progress = []; document.body.addEventListener('htmx:xhr:progress', e => \
         window.__progress.push([e.detail.lengthComputable, e.detail.loaded, e.detail.total]))",
        json!([]),
    )
    .await
    .unwrap();
    b.click_css("#upload-button", WAIT).await;
    b.wait_for("#upload-ok[data-bundle-id=from-browser]", WAIT).await;
    let bar =
        b.execute("const p = document.querySelector('#upload-progress'); return [p.value, p.max]", json!([])).await;
    let bar = bar.unwrap();
    let (value, max) = (bar[0].as_f64().unwrap_or(0.0), bar[1].as_f64().unwrap_or(0.0));
    let events = b.execute("return window.__progress", json!([])).await.unwrap();
    assert!(
        max >= size as f64 && value == max,
        "progress bar at {value} of {max} for a {size}-byte bundle; progress events {events}"
    );
    b.wait_for("tr.bundle-row[data-bundle-id=from-browser]", WAIT).await;
    b.screenshot("bundle-uploaded").await;
    click_confirmed(&b, "tr.bundle-row[data-bundle-id=from-browser] button.remove-bundle", "Remove this bundle?").await;
    b.wait_until(
        "the uploaded bundle removed from the list",
        "document.querySelector('tr.bundle-row[data-bundle-id=from-browser]') === null",
        WAIT,
    )
    .await;
}
