#!/usr/bin/env python3
"""Harmony Fleet QEMU boot-chain tests (issue 6).

    qemu-tests/run [--ci | --all] [--only N,N] [--image DIR]

Boots build/qemu/disk.img (image/qemu/build) with Debian's qemu_arm64 U-Boot
under qemu-system-aarch64 -M virt (TCG), drives a root shell on the serial
console, and proves the A/B boot chain with real U-Boot, RAUC and Linux:

  1 fresh image boots slot A, rauc status: A booted, good
  2 install v2, reboot -> B; mark-good -> B stays over a reboot, and that
    normal boot of the committed slot does not rewrite the U-Boot environment
  3 install the broken bundle, reboot -> U-Boot counts down and falls back to
    A by itself; RAUC reports B bad
  4 bundle signed by an untrusted CA -> rauc install refuses; nothing changes
  5 power cut (QEMU killed) in the middle of an install -> the old slot boots
    and works; a retried install succeeds
  6 torn boot state (issue 11 item 7): the raw copy of the boot state
    just written is damaged and the power cut, at each point where it is
    written: install's set-primary, U-Boot's countdown of a trial boot,
    mark-good. Never an unverified slot booted as committed, never a jump
    back to the old slot
  7 a committed slot made unbootable (its ext4 zeroed) while the other slot
    is good (issue 11 item 8): U-Boot counts its unconfirmed boots and
    leaves it after 3; RAUC reports it bad

The boot script alone (no image) is tested by boot_script.py
(qemu-tests/run script).

--ci runs 1-3, --all (the default) 1-7. Every run writes the serial console
of every boot and a summary to qemu-tests/artifacts/<timestamp>-boot-chain/. The last
line printed is "N passed, N failed".
"""

import re
import sys
import time

import suite
from guest import check, slot_state


def env_copies(g):
    """[(device, offset, size)] of the two raw copies of the boot state, as
    the layer's /etc/fw_env.config in the guest names them."""
    _, out = g.sh("grep '^/dev/' /etc/fw_env.config")
    copies = [(d, int(o, 16), int(s, 16))
              for d, o, s in re.findall(r"^(/dev/\S+)\s+(0x[0-9a-fA-F]+)\s+(0x[0-9a-fA-F]+)", out, re.M)]
    check(len(copies) == 2, f"/etc/fw_env.config does not name two raw copies: {out}")
    return copies


def boot_env(g):
    """Every boot-state variable as fw_printenv (libubootenv) reads it."""
    _, out = g.sh("fw_printenv 2>/dev/null | grep -E '^BOOT_' ; true")
    return dict(l.split("=", 1) for l in out.splitlines() if "=" in l)


def env_flags(g):
    """The flags byte (save counter) of each copy of the boot state."""
    cmds = "; ".join(f"echo \"F=$(od -An -tu1 -j{off + 4} -N1 {dev} | tr -d ' ')\"" for dev, off, _ in env_copies(g))
    _, out = g.sh(cmds)
    return [int(v) for v in re.findall(r"F=(\d+)", out)]


def env_writes(before, after):
    """How many saves happened between two env_flags() readings (each save
    writes one copy with the newest flags + 1)."""
    return (max(after) - max(before)) % 256


def tear_and_cut(ctx, g, how, what):
    """A power cut while the newest copy was written: damage that copy (only
    the copy being written can be torn; the other is the previous state),
    then kill QEMU. "truncate": only its first 32 bytes reached the disk, the
    rest reads as zeros; "flip": bytes inside its variables overwritten."""
    copies = env_copies(g)
    flags = env_flags(g)
    n = flags.index(max(flags))
    dev, off, size = copies[n]
    if how == "truncate":
        g.sh(f"head -c {size - 32} /dev/zero | dd of={dev} bs={size - 32} seek={off + 32} oflag=seek_bytes "
             "conv=notrunc,fsync status=none; sync")
    else:
        g.sh(f"printf 'TORN-BY-A-POWER-CUT' | dd of={dev} bs=1 seek={off + 8} conv=notrunc,fsync status=none; sync")
    ctx.note(f"{what}: copy {n + 1} ({dev} at {off:#x}) {how}, then power cut; flags before {flags}")
    g.kill()
    g.log.write(f"\n===== harness: {what}: copy {n + 1} torn, power cut =====\n")
    g.start()


REGISTRY = suite.Registry()
scenario = REGISTRY.scenario
CI = [1, 2, 3]

# ---------------------------------------------------------------------------
# scenarios
# ---------------------------------------------------------------------------

@scenario(1, "fresh image boots slot A; rauc status: A booted, good")
def s1(ctx):
    g = ctx.guest("s1")
    t, _ = g.boot(expect_slot="A")
    analyze = g.wait_running()
    ctx.metric("boot: QEMU start -> root shell (s)", round(t, 1))
    ctx.metric("boot: systemd-analyze", analyze)
    _, out = g.sh("systemctl is-active multi-user.target")
    check(out.strip().endswith("active"), f"multi-user.target not active: {out}")
    st = g.rauc_status()
    check(st.get("booted") == "A", f"rauc status booted={st.get('booted')}")
    _, a = slot_state(st, "A")
    check(a.get("state") == "booted", f"slot A state {a.get('state')}")
    check(a.get("boot_status") == "good", f"slot A boot_status {a.get('boot_status')}")
    check(g.os_version() == ctx.versions["v1"], "not running v1")
    env = g.env()
    check(env.get("BOOT_ORDER") == "A B", f"BOOT_ORDER={env.get('BOOT_ORDER')}")
    _, cmdline = g.sh("cat /proc/cmdline")
    check("rauc.slot=A" in cmdline, f"kernel command line lacks rauc.slot=A: {cmdline}")


def measure_install(ctx, g, bundle):
    """dd of the bundle's own slot image to the slot device, then rauc install
    of the bundle, in the same boot; returns install seconds."""
    g.sh("mkdir -p /mnt/b && mount -o loop,ro %s /mnt/b" % bundle, timeout=60)
    _, out = g.sh("sync; echo 3 > /proc/sys/vm/drop_caches; s=$(date +%s.%N); "
                  "dd if=/mnt/b/rootfs.ext4 of=/dev/vda3 bs=1M conv=fsync status=none; "
                  "e=$(date +%s.%N); echo DD=$(busybox awk \"BEGIN{print $e - $s}\")", timeout=900)
    dd_s = float(re.search(r"DD=([\d.]+)", out).group(1))
    _, size = g.sh("stat -c %s /mnt/b/rootfs.ext4")
    g.sh("umount /mnt/b")
    _, out = g.sh("sync; echo 3 > /proc/sys/vm/drop_caches; s=$(date +%s.%N); "
                  f"rauc install {bundle} >/tmp/install.log 2>&1; rc=$?; e=$(date +%s.%N); "
                  "tail -n 3 /tmp/install.log; echo INST=$(busybox awk \"BEGIN{print $e - $s}\") RC=$rc", timeout=1200)
    rc = int(re.search(r"RC=(\d+)", out).group(1))
    check(rc == 0, f"rauc install {bundle} failed:\n{out}")
    inst = float(re.search(r"INST=([\d.]+)", out).group(1))
    mib = int(size.strip().splitlines()[-1]) / 2 ** 20
    ctx.metric("slot image size (MiB)", round(mib, 1))
    ctx.metric("raw dd of the slot image to /dev/vda3 (s)", round(dd_s, 1))
    ctx.metric("rauc install, verity bundle (s)", round(inst, 1))
    ctx.metric("install / dd ratio", round(inst / dd_s, 2) if dd_s > 0 else None)
    return inst


@scenario(2, "install v2 -> B; mark-good -> B stays; committed boot writes no env")
def s2(ctx):
    g = ctx.guest("s2")
    g.boot(expect_slot="A")
    g.wait_running()
    measure_install(ctx, g, ctx.bundle("v2"))
    env = g.env()
    check(env.get("BOOT_ORDER", "").startswith("B"), f"after install BOOT_ORDER={env.get('BOOT_ORDER')}")
    check(env.get("BOOT_B_LEFT") == "2", f"after install BOOT_B_LEFT={env.get('BOOT_B_LEFT')} (want 2 trials)")
    t, uboot = g.reboot(expect_slot="B")
    ctx.metric("reboot into the new slot -> root shell (s)", round(t, 1))
    check("harmony: saving boot state" in uboot, "trial boot of B did not count down (no env save)")
    check(g.os_version() == ctx.versions["v2"], "not running v2 after the reboot")
    st = g.rauc_status()
    check(st.get("booted") == "B", f"rauc status booted={st.get('booted')}")
    env = g.env()
    check(env.get("BOOT_B_LEFT") == "1", f"on trial: BOOT_B_LEFT={env.get('BOOT_B_LEFT')} (want 1)")
    g.wait_running()
    g.sh("rauc status mark-good")
    env = g.env()
    check(env.get("BOOT_B_LEFT") == "3", f"after mark-good BOOT_B_LEFT={env.get('BOOT_B_LEFT')}")
    f0 = env_flags(g)
    t, uboot = g.reboot(expect_slot="B")
    ctx.metric("boot of the committed slot -> root shell (s)", round(t, 1))
    # Item 8: the committed boot is counted before the kernel starts ...
    check("harmony: saving boot state" in uboot, "U-Boot did not count the boot of the committed slot")
    g.wait_running()
    # ... and confirmed by harmony-boot-confirm once the system is up.
    env = boot_env(g)
    check(env.get("BOOT_B_UNCONFIRMED") == "0", f"the committed boot was not confirmed: {env}")
    check(env.get("BOOT_B_LEFT") == "3", f"the confirmation touched the commit: {env}")
    writes = env_writes(f0, env_flags(g))
    ctx.metric("boot-state writes per boot of the committed slot (16 KiB each)", writes)
    check(writes == 2, f"{writes} writes of the boot state for one committed boot (want 2: count, confirm)")
    st = g.rauc_status()
    check(st.get("booted") == "B", f"after commit + reboot booted={st.get('booted')}")
    _, b = slot_state(st, "B")
    check(b.get("boot_status") == "good", f"B boot_status {b.get('boot_status')}")
    check(g.os_version() == ctx.versions["v2"], "not v2 after the second reboot")


@scenario(3, "broken bundle -> U-Boot counts down and falls back to A; B reported bad")
def s3(ctx):
    g = ctx.guest("s3")
    g.boot(expect_slot="A")
    g.sh(f"rauc install {ctx.bundle('broken')} >/tmp/install.log 2>&1 || (cat /tmp/install.log; false)",
         timeout=1200)
    env = g.env()
    check(env.get("BOOT_ORDER", "").startswith("B"), f"after install BOOT_ORDER={env.get('BOOT_ORDER')}")
    t0 = time.monotonic()
    with g.lock:
        g.buf = ""
    g.send("systemctl reboot\n")
    t, uboot = g.boot(timeout=900)
    ctx.metric("broken slot -> fallback to a root shell (s)", round(time.monotonic() - t0, 1))
    tries = re.findall(r"harmony: slot (\w) \(order", uboot)
    check(tries[-1] == "A", f"U-Boot's choices {tries}: did not end on A")
    check(tries.count("B") >= 1, f"U-Boot never tried B: {tries}")
    check("no /sbin/init" in uboot, "the broken slot did not fail the way it should (no init)")
    ctx.metric("attempts on the broken slot", tries.count("B"))
    check(g.os_version() == ctx.versions["v1"], "not running v1 after the fallback")
    st = g.rauc_status()
    check(st.get("booted") == "A", f"rauc status booted={st.get('booted')}")
    _, b = slot_state(st, "B")
    check(b.get("boot_status") == "bad", f"RAUC reports B boot_status={b.get('boot_status')}, want bad")
    env = g.env()
    check(env.get("BOOT_B_LEFT") == "0", f"BOOT_B_LEFT={env.get('BOOT_B_LEFT')}")
    # and A keeps booting, its boots confirmed
    g.reboot(expect_slot="A")
    g.wait_running()
    env = boot_env(g)
    check(env.get("BOOT_A_UNCONFIRMED") == "0", f"the boot of A was not confirmed: {env}")


@scenario(4, "untrusted bundle -> rauc install refuses; nothing changes")
def s4(ctx):
    g = ctx.guest("s4")
    g.boot(expect_slot="A")
    env0 = g.env()
    _, h0 = g.sh("dd if=/dev/vda3 bs=1M count=64 status=none | sha256sum | cut -c1-64")
    st0 = g.rauc_status()
    rc, out = g.sh(f"rauc install {ctx.bundle('untrusted')} 2>&1", ok=False, timeout=600)
    check(rc != 0, "rauc install accepted a bundle signed by an untrusted CA")
    check(re.search(r"signature|verif|certificate", out, re.I), f"refusal does not name the signature: {out[-500:]}")
    why = [l for l in out.splitlines() if re.search(r"signature|verif|certificate", l, re.I)]
    ctx.note(f"refusal: {why[0].strip()[:200]}")
    check(g.env() == env0, f"U-Boot env changed: {env0} -> {g.env()}")
    _, h1 = g.sh("dd if=/dev/vda3 bs=1M count=64 status=none | sha256sum | cut -c1-64")
    check(h0 == h1, "slot B was written")
    st1 = g.rauc_status()
    check(slot_state(st1, "B")[1].get("boot_status") == slot_state(st0, "B")[1].get("boot_status"),
          "slot B's boot status changed")
    g.reboot(expect_slot="A")


@scenario(5, "power cut during install -> old slot boots and works; retried install succeeds")
def s5(ctx):
    g = ctx.guest("s5")
    g.boot(expect_slot="A")
    g.wait_running()
    env0 = g.env()
    since = g.mark()
    g.send(f"rauc install {ctx.bundle('v2')} 2>&1 | tee /tmp/install.log\n")
    # kill once RAUC is writing the slot
    g.wait_for(r"Copying image to rootfs\.1|(?:[4-9]\d)% ", 900, since)
    time.sleep(3)
    ctx.note("power cut while RAUC copied the image to rootfs.1")
    g.kill()
    g.log.write("\n===== harness: power cut (SIGKILL) =====\n")
    g.start()
    g.boot(expect_slot="A")
    g.wait_running()
    check(g.os_version() == ctx.versions["v1"], "the old slot is not v1")
    env1 = g.env()
    # Before writing, RAUC marks the target slot bad (its uboot backend drops
    # B from BOOT_ORDER); A must still be first with its attempts untouched.
    ctx.note(f"U-Boot env before the install {env0}, after the power cut {env1}")
    check(env1.get("BOOT_ORDER", "").split()[:1] == ["A"] and env1.get("BOOT_A_LEFT") == env0.get("BOOT_A_LEFT"),
          f"the interrupted install changed A's boot state: {env0} -> {env1}")
    _, out = g.sh("systemctl is-system-running || true")
    check(out.strip().splitlines()[-1] in ("running", "degraded"), f"system state {out}")
    st = g.rauc_status()
    check(st.get("booted") == "A", f"booted={st.get('booted')}")
    g.sh(f"rauc install {ctx.bundle('v2')} >/tmp/install.log 2>&1 || (cat /tmp/install.log; false)",
         timeout=1200)
    g.reboot(expect_slot="B")
    check(g.os_version() == ctx.versions["v2"], "the retried install did not boot v2")


@scenario(6, "torn boot state at install, countdown and mark-good: no unverified committed slot, no jump back")
def s6(ctx):
    g = ctx.guest("s6")
    g.boot(expect_slot="A")
    g.wait_running()
    # 1. install: RAUC marks B bad (one write), writes B, makes B primary
    #    (the next write); that last write is torn.
    g.sh(f"rauc install {ctx.bundle('v2')} >/tmp/install.log 2>&1 || (cat /tmp/install.log; false)", timeout=1200)
    tear_and_cut(ctx, g, "truncate", "install's set-primary write")
    g.boot(expect_slot="A")
    g.wait_running()
    env = boot_env(g)
    ctx.note(f"after the torn install: {env}")
    check(env.get("BOOT_B_LEFT") != "3", f"the never-booted slot B counts as committed: {env}")
    check(slot_state(g.rauc_status(), "B")[1].get("boot_status") == "bad", "RAUC does not report B bad")
    # 2. install again, boot B on trial; U-Boot's countdown write is torn.
    g.sh(f"rauc install {ctx.bundle('v2')} >/tmp/install.log 2>&1 || (cat /tmp/install.log; false)", timeout=1200)
    g.reboot(expect_slot="B")
    env = boot_env(g)
    check(env.get("BOOT_B_LEFT") == "1", f"first trial boot of B: {env}")
    tear_and_cut(ctx, g, "flip", "U-Boot's countdown write")
    t, uboot = g.boot(expect_slot="B")
    g.wait_running()
    env = boot_env(g)
    ctx.note(f"after the torn countdown: {env}")
    check("harmony: saving boot state" in uboot, "the trial boot after the torn countdown was not counted")
    check(env.get("BOOT_B_LEFT") in ("0", "1"), f"B is not on a counted trial: {env}")
    # 3. the operator's commit (mark-good) is torn: B stays on trial.
    g.sh("rauc status mark-good")
    tear_and_cut(ctx, g, "flip", "mark-good's write")
    t, uboot = g.boot(timeout=900)
    tries = re.findall(r"harmony: slot (\w) \(order", uboot)
    g.wait_running()
    env = boot_env(g)
    ctx.note(f"after the torn mark-good: U-Boot chose {tries}, {env}")
    check(tries[0] == "B", f"after the torn mark-good U-Boot went straight back to A: {tries}")
    check(env.get("BOOT_B_LEFT") != "3" or env.get("BOOT_ORDER", "").startswith("B"), f"state: {env}")


@scenario(7, "committed slot made unbootable while A is good -> left after 3 unconfirmed boots; RAUC: bad")
def s7(ctx):
    g = ctx.guest("s7")
    g.boot(expect_slot="A")
    g.wait_running()
    # B (v1, like A) committed and primary, as after an OTA; then its ext4
    # is destroyed: the kernel cannot mount it and panics (panic=5 resets).
    g.sh("fw_setenv BOOT_ORDER 'B A' && fw_setenv BOOT_B_LEFT 3 && fw_setenv BOOT_B_UNCONFIRMED 0")
    g.sh("dd if=/dev/zero of=/dev/vda3 bs=1M count=8 conv=fsync status=none")
    ctx.note(f"B committed and primary, its first 8 MiB zeroed: {boot_env(g)}")
    t0 = time.monotonic()
    with g.lock:
        g.buf = ""
    g.send("systemctl reboot\n")
    t, uboot = g.boot(timeout=1500)
    ctx.metric("committed slot unbootable -> root shell on A (s)", round(time.monotonic() - t0, 1))
    tries = re.findall(r"harmony: slot (\w) \(order", uboot)
    ctx.note(f"U-Boot's choices: {tries}")
    check(tries[-1] == "A", f"did not end on A: {tries}")
    check(tries.count("B") == 3, f"{tries.count('B')} attempts on the unbootable committed B (want 3)")
    check("committed slot B was not confirmed" in uboot, "U-Boot did not say why it left B")
    g.wait_running()
    env = boot_env(g)
    check(env.get("BOOT_B_LEFT") == "0", f"B not exhausted: {env}")
    check(env.get("BOOT_A_UNCONFIRMED") == "0", f"A's boot not confirmed: {env}")
    check(slot_state(g.rauc_status(), "B")[1].get("boot_status") == "bad", "RAUC does not report B bad")


if __name__ == "__main__":
    sys.exit(suite.main(__doc__, REGISTRY, CI, "boot-chain"))
