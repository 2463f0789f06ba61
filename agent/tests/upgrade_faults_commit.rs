//! A commit whose `Mark(good)` hangs past the commit deadline and then
//! fails, through the real agent against real nats-server and `rauc
//! service`: the test freezes the RAUC process (SIGSTOP) so the call hangs,
//! then kills it so the call fails. The device must still fall back by itself.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod log_capture;
mod upgrade_common;

use harmony_protocol::command::{Command, CommitArgs};
use std::process::Command as Process;
use std::time::Duration;
use upgrade_common::*;

const WAIT: Duration = Duration::from_secs(60);

/// Pid of the process owning RAUC's bus name (the `rauc service` the rig started).
fn rauc_pid(rig: &Rig) -> String {
    let out = Process::new("dbus-send")
        .arg(format!("--bus={}", rig.rauc.address()))
        .args([
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.GetConnectionUnixProcessID",
            "string:de.pengutronix.rauc",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace().last().filter(|p| p.chars().all(|c| c.is_ascii_digit())).expect("rauc pid").to_string()
}

fn signal(pid: &str, sig: &str) {
    assert!(Process::new("kill").args([sig, pid]).status().unwrap().success(), "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mark_good_that_fails_after_the_deadline_passed_still_falls_back() {
    log_capture::init();
    let mut rig = Rig::start().await;
    let v2 = bundle(trusted_ca(), &rig.path("bundles"), "v2", "2.0.0", 64 * 1024);
    rig.push_bundle("v2.raucb", &v2).await;
    let agent = rig.start_agent(4);
    rig.wait_heartbeat(WAIT, |hb| hb.booted_slot.as_deref() == Some("A")).await;
    install_into_b_and_reboot(&mut rig, agent, 1, &v2, "boot-2").await;
    let logged = log_capture::mark();
    let agent = rig.start_agent(4);
    rig.wait_phase(WAIT, "awaiting_commit").await;
    // The agent says when its deadline is: "commit deadline in N ms".
    let (armed_at, line) = log_capture::wait_line(logged, WAIT, &["commit deadline in"]).await;
    let ms: u64 = line.rsplit("in ").next().and_then(|t| t.trim_end_matches(" ms").parse().ok()).expect("ms");
    let deadline = armed_at + Duration::from_millis(ms);
    let pid = rauc_pid(&rig);
    signal(&pid, "-STOP");
    let commit = rig.command(Command::Commit(CommitArgs { target_version: "2.0.0".into(), boot_id: "boot-2".into() }));
    let fault = async {
        // The window passes while Mark(good) hangs on the frozen RAUC. The
        // deadline is a moment on the clock and a deadline reached while the
        // Mark is in flight is ignored without a trace, so that moment (as
        // the agent announced it) plus a margin is the definite point.
        tokio::time::sleep_until(deadline + Duration::from_millis(500)).await;
        assert_eq!(rig.reboot.count(), 1, "no fallback while the Mark is in flight");
        signal(&pid, "-KILL");
    };
    let (reply, ()) = tokio::join!(commit, fault);
    assert!(reply.into_result().is_err(), "the commit failed");
    // Falls back by itself: Mark(bad) fails too (RAUC is gone), and the agent
    // reboots anyway so the bootloader's attempt counter runs out.
    rig.wait_heartbeat(Duration::from_secs(20), |_| rig.reboot.count() == 2).await;
    let hb = rig.wait_phase(WAIT, "rebooting").await;
    assert_eq!(hb.upgrade.offer_seq, Some(1));
    agent.stop().await;
}
