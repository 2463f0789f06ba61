//! The agent binary killed (SIGKILL) while RAUC installs, against a real
//! `rauc service` whose pre-install hook counts its runs and holds the
//! install until the test releases it. The restarted agent must take over
//! the install already started, never run a second one: the hook runs once.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod upgrade_common;

use harmony_testkit::rauc::RaucService;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use upgrade_common::*;

const WAIT: Duration = Duration::from_secs(60);

/// The rig with a RAUC whose pre-install hook appends a line to `hook-runs`
/// and then waits until `hook-release` exists.
fn rig_with_counting_hook(rig: &mut Rig) -> (PathBuf, PathBuf) {
    let runs = rig.path("hook-runs");
    let release = rig.path("hook-release");
    let hook = rig.path("pre-install-hook");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho run >> '{}'\nwhile [ ! -e '{}' ]; do sleep 0.05; done\n",
            runs.display(),
            release.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    rig.rauc = RaucService::start_with_handlers(trusted_ca(), &format!("pre-install={}", hook.display()));
    (runs, release)
}

fn hook_runs(runs: &PathBuf) -> usize {
    std::fs::read_to_string(runs).map(|t| t.lines().count()).unwrap_or(0)
}

/// The harmony-agent binary with the rig's config; the reboot is delayed
/// far beyond the test so the job rests in `installed` (the real reboot
/// effect would go to logind, which a test host must not obey).
fn spawn_agent(rig: &Rig, run: usize) -> Child {
    let text = rig.config_text(30).replace("reboot_delay_ms = 200", "reboot_delay_ms = 600000");
    let conf = rig.path("agent.toml");
    std::fs::write(&conf, text).unwrap();
    let log = std::fs::File::create(rig.path(&format!("agent-{run}.log"))).unwrap();
    Command::new(env!("CARGO_BIN_EXE_harmony-agent"))
        .arg("--config")
        .arg(&conf)
        .env_remove("JOURNAL_STREAM")
        .env("HARMONY_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn harmony-agent")
}

fn agent_log(rig: &Rig, run: usize) -> String {
    std::fs::read_to_string(rig.path(&format!("agent-{run}.log"))).unwrap_or_default()
}

async fn wait_for(what: &str, rig: &Rig, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}\nagent 1:\n{}\nagent 2:\n{}\nrauc:\n{}",
            agent_log(rig, 1),
            agent_log(rig, 2),
            rig.rauc.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Offer v2 to a fresh agent binary and kill it while the hook holds the install.
async fn kill_mid_install(rig: &Rig, runs: &PathBuf) -> Bundle {
    let b = bundle(trusted_ca(), &rig.path("bundles"), "v2", "2.0.0", 1024 * 1024);
    rig.push_bundle("v2.raucb", &b).await;
    let mut agent = spawn_agent(rig, 1);
    rig.wait_heartbeat(WAIT, |hb| hb.booted_slot.as_deref() == Some("A")).await;
    rig.send_offer(&rig.offer(1, "v2.raucb", &b)).await;
    wait_for("the pre-install hook to start", rig, || hook_runs(runs) == 1).await;
    assert_eq!(rig.rauc.operation(), "installing");
    agent.kill().unwrap(); // SIGKILL: no orderly shutdown
    agent.wait().unwrap();
    b
}

async fn installed_once(rig: &Rig, runs: &PathBuf, b: &Bundle) {
    let hb = rig.wait_phase(WAIT, "installed").await;
    assert_eq!(hb.upgrade.target_slot.as_deref(), Some("B"));
    assert_eq!(hb.upgrade.target_version.as_deref(), Some("2.0.0"));
    assert_eq!(hook_runs(runs), 1, "the pre-install hook ran once: RAUC installed once");
    // RAUC logs "installing <bundle>: started" once per InstallBundle.
    let log = rig.rauc.log();
    let installs = log.lines().filter(|l| l.contains("installing ") && l.ends_with(": started")).count();
    assert_eq!(installs, 1, "one InstallBundle in RAUC's log:\n{log}");
    assert_eq!(rig.rauc.backend(&["get-primary"]), "B");
    let slot_b = std::fs::read(rig.rauc.slot_image("B")).unwrap();
    assert_eq!(&slot_b[..b.payload.len()], &b.payload[..], "the bundle's payload is in slot B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_while_rauc_installs_adopts_the_running_install() {
    let mut rig = Rig::start().await;
    let (runs, release) = rig_with_counting_hook(&mut rig);
    let b = kill_mid_install(&rig, &runs).await;

    let mut agent = spawn_agent(&rig, 2);
    // The new agent found RAUC busy and took the install over; only then
    // let RAUC finish.
    // ("RAUC is busy" is what the agent before the fix logged when it waited
    // for the running install, only to start another one after it: the
    // test then sees the hook run twice.)
    wait_for("the restarted agent to see RAUC's install", &rig, || {
        let log = agent_log(&rig, 2);
        log.contains("adopting it") || log.contains("RAUC is busy")
    })
    .await;
    std::fs::write(&release, "go").unwrap();
    installed_once(&rig, &runs, &b).await;
    agent.kill().unwrap();
    agent.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_before_recording_a_finished_install_does_not_install_again() {
    let mut rig = Rig::start().await;
    let (runs, release) = rig_with_counting_hook(&mut rig);
    let b = kill_mid_install(&rig, &runs).await;

    // RAUC finishes while no agent runs: the record still says installing.
    std::fs::write(&release, "go").unwrap();
    wait_for("RAUC to finish the install", &rig, || rig.rauc.operation() == "idle").await;
    let record = std::fs::read_to_string(rig.path("state/upgrade-record.json")).unwrap();
    assert!(record.contains("installing"), "{record}");
    eprintln!("rauc status after the install:\n{}", rig.rauc.status_json());

    let mut agent = spawn_agent(&rig, 2);
    installed_once(&rig, &runs, &b).await;
    assert!(agent_log(&rig, 2).contains("not installing again"), "{}", agent_log(&rig, 2));
    agent.kill().unwrap();
    agent.wait().unwrap();
}
