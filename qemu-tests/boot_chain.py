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
  8 boot files over the air (ADR 0004): a bundle's boot image goes into the
    half of the boot region not in use, MBR entry 0 is switched to it; the
    next boot runs the new boot files (their boot.scr prints its version) and
    the new slot's trial countdown is intact; a second update switches back
  9 power cut while RAUC writes the boot image into the other half: the old
    boot files boot the old, committed slot; the boot state is intact; a
    retried install works
 10 power cut right after the switch of MBR entry 0 reached the disk, while
    the rootfs slot is written: the new boot files boot the old committed
    slot, never the half-written one
 11 Wi-Fi-only Pi (issue 11 item 2): harmony-wifi.conf (CRLF) on the boot
    partition is moved to /data (0600, no CR) by harmony-wifi-import at boot;
    the product's wpa_supplicant@wlan0 associates with a WPA2 access point
    the test runs with hostapd on the other mac80211_hwsim radio and
    systemd-networkd gets wlan0 a DHCP address from it; the next boot does
    not import again and associates again from /data; a harmony-wifi.conf
    without a network={ block is left in place, /data untouched, the unit
    fails with its message

The boot script alone (no image) is tested by boot_script.py
(qemu-tests/run script).

--ci runs 2 and 3 (2 starts with 1's checks), --all (the default) 1-11. Every run writes the serial console
of every boot and a summary to qemu-tests/artifacts/<timestamp>-boot-chain/. The last
line printed is "N passed, N failed".
"""

import re
import sys
import time

import suite
from disk import host_run, mbr_entry, put_boot_file, put_ext4_file
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
# Scenario 2 begins with all of scenario 1's checks (check_fresh_image_on_a).
CI = [2, 3]

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
    check_fresh_image_on_a(ctx, g)


def check_fresh_image_on_a(ctx, g):
    """What a freshly flashed image must show on its first boot: slot A
    booted and good, v1, the boot order A B, rauc.slot=A. Scenario 1 is
    only this; scenario 2 starts with it, which is why CI skips 1."""
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
    check_fresh_image_on_a(ctx, g)
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


# ---------------------------------------------------------------------------
# boot files over the air (ADR 0004): boot-mbr-switch
# ---------------------------------------------------------------------------

def boot_files(uboot):
    """The version the boot.scr that ran printed ("harmony-boot-files: X")."""
    found = re.findall(r"harmony-boot-files: (\S+)", uboot)
    return found[-1] if found else None


def halves(ctx):
    """First-sector numbers of the two halves of the boot region."""
    r = ctx.manifest["boot_region"]
    return r["start"] // 512, (r["start"] + r["size"] // 2) // 512


def guest_entry0(g):
    """(start, sectors) of MBR entry 0 as the running guest reads /dev/vda."""
    _, out = g.sh("dd if=/dev/vda bs=512 count=1 status=none | od -An -tu4 -j454 -N8")
    start, sectors = (int(x) for x in out.split()[-2:])
    return start, sectors



def kernel_boot_start(g):
    """Where the running kernel's /dev/vda1 starts (the partition table it read at boot)."""
    _, out = g.sh("cat /sys/class/block/vda1/start")
    return int(out.split()[-1])


def rauc_steps(g):
    """RAUC's own messages of the last install (journal), in order."""
    _, out = g.sh("journalctl -u rauc -o cat --no-pager 2>/dev/null | "
                  "grep -E 'half of boot partition region|^Updating /dev/' ; true")
    return [l.strip() for l in out.splitlines() if l.strip()]


def timed_install(ctx, g, bundle, label):
    _, out = g.sh("s=$(date +%s.%N); "
                  f"rauc install {bundle} >/tmp/install.log 2>&1; rc=$?; e=$(date +%s.%N); "
                  "tail -n 3 /tmp/install.log; echo INST=$(busybox awk \"BEGIN{print $e - $s}\") RC=$rc",
                  timeout=1200)
    rc = int(re.search(r"RC=(\d+)", out).group(1))
    check(rc == 0, f"rauc install {bundle} failed:\n{out}")
    secs = float(re.search(r"INST=([\d.]+)", out).group(1))
    ctx.metric(f"{label}: rauc install, boot image + rootfs (s)", round(secs, 1))
    return secs


def power_cut_when(g, cond, timeout, what):
    """Poll cond() (every 20 ms) while the guest runs; SIGKILL QEMU the
    moment it is true. Returns (seconds waited, cond's value)."""
    t0 = time.monotonic()
    while True:
        v = cond()
        if v:
            g.kill()
            return time.monotonic() - t0, v
        if g.proc is None or g.proc.poll() is not None:
            raise Fail(f"QEMU exited while waiting for {what}")
        if time.monotonic() - t0 > timeout:
            raise Fail(f"timeout ({timeout}s) waiting for {what}")
        time.sleep(0.02)


def image_on_disk(disk, offset, image):
    """How much of a boot image reached the disk at offset: (non-zero 64 KiB
    chunks of the image found there, non-zero chunks of the image)."""
    chunk = 64 * 1024
    have = total = 0
    with open(disk, "rb") as d, open(image, "rb") as i:
        d.seek(offset)
        while True:
            a = i.read(chunk)
            if not a:
                break
            b = d.read(len(a))
            if any(a):
                total += 1
                have += a == b
    return have, total


def fresh_on_raw_disk(ctx, name):
    """A guest on a raw copy of the fresh disk, booted into A and settled:
    (first half, second half, boot_files markers, guest, boot state)."""
    first, second = halves(ctx)
    g = ctx.guest(name, raw=True)
    g.boot(expect_slot="A")
    g.wait_running()
    return first, second, ctx.manifest["boot_files"], g, g.env()


@scenario(8, "new boot files in a bundle: other half written, MBR switched; they boot, trial countdown intact")
def s8(ctx):
    first, second = halves(ctx)
    files = ctx.manifest["boot_files"]
    g = ctx.guest("s8")
    _, uboot = g.boot(expect_slot="A")
    check(boot_files(uboot) == files["v1"], f"fresh image booted boot files {boot_files(uboot)}, want {files['v1']}")
    g.wait_running()
    check(guest_entry0(g)[0] == first, f"fresh image: MBR entry 0 at {guest_entry0(g)}, want sector {first}")
    st = g.rauc_status()
    names = [n for e in st["slots"] for n in e]
    check("bootloader.0" in names, f"rauc status lists no bootloader.0 slot: {names}")
    timed_install(ctx, g, ctx.bundle("v2"), "first update")
    steps = rauc_steps(g)
    ctx.note(f"RAUC: {steps}")
    boot_i = next((i for i, l in enumerate(steps) if l.startswith("Updating /dev/vda with")), None)
    switch_i = next((i for i, l in enumerate(steps) if l.startswith("Setting second half")), None)
    root_i = next((i for i, l in enumerate(steps) if l.startswith("Updating /dev/vda3")), None)
    check(None not in (boot_i, switch_i, root_i) and boot_i < switch_i < root_i,
          "RAUC did not write the boot image, switch, then write the rootfs slot")
    entry = guest_entry0(g)
    check(entry == (second, second - first), f"after the install MBR entry 0 is {entry}, want ({second}, {second - first})")
    check(kernel_boot_start(g) == first, "the running kernel already uses the new half (it must keep the old one)")
    env = g.env()
    check(env.get("BOOT_ORDER", "").startswith("B") and env.get("BOOT_B_LEFT") == "2" and env.get("BOOT_A_LEFT") == "3",
          f"after the install: {env}")
    t, uboot = g.reboot(expect_slot="B")
    ctx.metric("reboot into the new slot with the new boot files -> root shell (s)", round(t, 1))
    check(boot_files(uboot) == files["v2"], f"booted boot files {boot_files(uboot)}, want the bundle's {files['v2']}")
    check("harmony: saving boot state" in uboot, "the trial boot of B was not counted")
    g.wait_running()
    env = boot_env(g)
    check(env.get("BOOT_B_LEFT") == "1" and env.get("BOOT_ORDER", "").startswith("B") and env.get("BOOT_A_LEFT") == "3",
          f"the trial countdown is not intact: {env}")
    check(g.os_version() == ctx.versions["v2"], "not running v2")
    check(kernel_boot_start(g) == second, "/dev/vda1 is not the new half after the reboot")
    _, scr = g.sh("grep -a -o 'harmony-boot-files: [^\"]*' /boot/firmware/boot.scr")
    check(files["v2"] in scr, f"/boot/firmware/boot.scr is not the bundle's: {scr}")
    g.sh("rauc status mark-good")
    env = g.env()
    check(env.get("BOOT_B_LEFT") == "3", f"after mark-good: {env}")
    # the next update writes the first half and switches back
    timed_install(ctx, g, ctx.bundle("v2"), "second update")
    check(guest_entry0(g)[0] == first, f"second update: MBR entry 0 at {guest_entry0(g)}, want sector {first}")
    t, uboot = g.reboot(expect_slot="A")
    check(boot_files(uboot) == files["v2"], f"second update booted boot files {boot_files(uboot)}")
    g.wait_running()
    env = boot_env(g)
    check(env.get("BOOT_A_LEFT") == "1" and env.get("BOOT_B_LEFT") == "3", f"second update, trial of A: {env}")
    check(kernel_boot_start(g) == first, "/dev/vda1 is not the first half after the second update")


@scenario(9, "power cut while the boot image is written: old boot files boot the old slot; state intact; retry works")
def s9(ctx):
    first, second, files, g, env0 = fresh_on_raw_disk(ctx, "s9")
    inactive = second * 512
    check(image_on_disk(g.overlay, inactive, ctx.manifest["boot_images"]["v2"])[0] == 0,
          "the new boot image is already in the inactive half")
    since = g.mark()
    t0 = time.monotonic()
    g.send(f"rauc install {ctx.bundle('v2')} 2>&1 | tee /tmp/install.log\n")
    g.wait_for(r"Copying image to bootloader\.0", 900, since)
    t_step = time.monotonic() - t0

    def landing():
        with open(g.overlay, "rb") as f:
            f.seek(inactive)
            return any(f.read(512))
    waited, _ = power_cut_when(g, landing, 600, "the new boot image reaching the disk")
    with g.lock:
        console = g.buf[since:]
    g.log.write("\n===== harness: power cut (SIGKILL) while the boot image was written =====\n")
    have, total = image_on_disk(g.overlay, inactive, ctx.manifest["boot_images"]["v2"])
    entry = mbr_entry(g.overlay, 0)
    ctx.metric("install start -> RAUC's step 'Copying image to bootloader.0' (s)", round(t_step, 1))
    ctx.metric("that step -> first sector of the new boot image on the disk, power cut (s)", round(waited, 2))
    ctx.note(f"at the power cut: {have} of {total} non-empty 64 KiB chunks of the new boot image on the disk, "
             f"MBR entry 0 = {entry}")
    check("Copying image to rootfs.1" not in console, "RAUC had already moved on to the rootfs slot")
    check(entry[0] == first, f"MBR entry 0 already switched at the power cut: {entry}")
    g.start()
    _, uboot = g.boot(expect_slot="A")
    check(boot_files(uboot) == files["v1"], f"booted boot files {boot_files(uboot)}, want the old {files['v1']}")
    g.wait_running()
    check(g.os_version() == ctx.versions["v1"], "the old slot is not v1")
    env1 = g.env()
    ctx.note(f"boot state before the install {env0}, after the power cut {env1}")
    check(env1.get("BOOT_ORDER", "").split()[:1] == ["A"] and env1.get("BOOT_A_LEFT") == env0.get("BOOT_A_LEFT"),
          f"the interrupted install changed A's boot state: {env0} -> {env1}")
    check(env1.get("BOOT_B_LEFT") == "0", f"the half-installed B is bootable: {env1}")
    check(kernel_boot_start(g) == first, "the kernel does not use the old half")
    check(g.rauc_status().get("booted") == "A", "rauc status: not booted from A")
    timed_install(ctx, g, ctx.bundle("v2"), "retried install")
    check(guest_entry0(g)[0] == second, "the retried install did not switch to the second half")
    _, uboot = g.reboot(expect_slot="B")
    check(boot_files(uboot) == files["v2"], f"after the retried install boot files {boot_files(uboot)}")
    check(g.os_version() == ctx.versions["v2"], "the retried install did not boot v2")


@scenario(10, "power cut right after the MBR switch reached the disk: new boot files boot the old committed slot")
def s10(ctx):
    first, second, files, g, env0 = fresh_on_raw_disk(ctx, "s10")
    check(mbr_entry(g.overlay, 0)[0] == first, "MBR entry 0 not at the first half")
    since = g.mark()
    t0 = time.monotonic()
    g.send(f"rauc install {ctx.bundle('v2')} 2>&1 | tee /tmp/install.log\n")
    seen = {}

    def switched():
        with g.lock:
            console = g.buf[since:]
        if "rootfs" not in seen and "Copying image to rootfs.1" in console:
            seen["rootfs"] = time.monotonic() - t0
        return mbr_entry(g.overlay, 0)[0] != first

    waited, _ = power_cut_when(g, switched, 900, "MBR entry 0 switched on the disk")
    with g.lock:
        console = g.buf[since:]
    g.log.write("\n===== harness: power cut (SIGKILL) right after the MBR switch reached the disk =====\n")
    entry = mbr_entry(g.overlay, 0)
    ctx.metric("install start -> MBR switch on the disk, power cut (s)", round(waited, 2))
    if "rootfs" in seen:
        ctx.metric("RAUC's step 'Copying image to rootfs.1' -> MBR switch on the disk (s)",
                   round(waited - seen["rootfs"], 2))
    last = re.findall(r"(\d+)% ([^\n]*)", console)
    ctx.note(f"at the power cut: MBR entry 0 = {entry}; RAUC's last progress line: {last[-1] if last else None}")
    check(entry == (second, second - first), f"MBR entry 0 on the disk is {entry}")
    check(not re.search(r"succeeded|Installing .* done|100% ", console),
          "the install had finished before the switch reached the disk: this is not a cut before the rootfs is written")
    g.start()
    _, uboot = g.boot(expect_slot="A")
    check(boot_files(uboot) == files["v2"], f"booted boot files {boot_files(uboot)}, want the new {files['v2']}")
    g.wait_running()
    check(g.os_version() == ctx.versions["v1"], "not the old committed v1 on A")
    env1 = boot_env(g)
    ctx.note(f"boot state before the install {env0}, after the power cut {env1}")
    check(env1.get("BOOT_ORDER", "").split()[:1] == ["A"] and env1.get("BOOT_A_LEFT") == env0.get("BOOT_A_LEFT"),
          f"A's boot state changed: {env0} -> {env1}")
    check(env1.get("BOOT_B_LEFT") == "0", f"the half-written B is bootable: {env1}")
    check(env1.get("BOOT_A_UNCONFIRMED") == "0", f"the boot of A was not confirmed: {env1}")
    check(kernel_boot_start(g) == second, "/dev/vda1 is not the new half")
    st = g.rauc_status()
    check(st.get("booted") == "A", f"rauc status booted={st.get('booted')}")
    check(slot_state(st, "B")[1].get("boot_status") == "bad", "RAUC does not report B bad")


# --- scenario 11: Wi-Fi ------------------------------------------------------
WIFI_SSID = "harmony-test-ap"
WIFI_PSK = "correct horse battery"
# As a Windows user's editor saves it: CRLF line endings.
WIFI_CONF = f'network={{\r\n    ssid="{WIFI_SSID}"\r\n    psk="{WIFI_PSK}"\r\n}}\r\n'
WIFI_DATA = "/data/harmony/wifi/wpa_supplicant-wlan0.conf"
# Test fixtures, never product files: written into the raw disk before the
# first boot (modules-load.d: the radios exist at boot, as a Pi's brcmfmac
# does) or in the guest at test time (the access point and its DHCP server,
# /run only). 10- sorts before the layer's 25-wireless.network (wl*).
HWSIM_LOAD = "mac80211_hwsim\n"
HWSIM_OPTS = "options mac80211_hwsim radios=2\n"
AP_NETWORK = ("[Match]\nName=wlan1\n\n[Network]\nAddress=192.168.77.1/24\nDHCPServer=yes\n"
              "ConfigureWithoutCarrier=yes\n\n[DHCPServer]\nPoolOffset=100\nPoolSize=20\n")
AP_HOSTAPD = (f"interface=wlan1\ndriver=nl80211\nssid={WIFI_SSID}\nhw_mode=g\nchannel=6\n"
              f"wpa=2\nwpa_key_mgmt=WPA-PSK\nrsn_pairwise=CCMP\nwpa_passphrase={WIFI_PSK}\n")





def start_ap(g):
    """The test's access point on wlan1: hostapd (WPA2-PSK) and a DHCP server
    (systemd-networkd) in /run; returns when hostapd reports AP-ENABLED."""
    g.sh(f"mkdir -p /run/systemd/network && printf '{AP_NETWORK}' >/run/systemd/network/10-harmony-test-ap.network"
         " && networkctl reload")
    g.sh(f"printf '{AP_HOSTAPD}' >/run/harmony-test-ap.conf && "
         "systemd-run -q --unit=harmony-test-ap /usr/sbin/hostapd /run/harmony-test-ap.conf")
    rc, _ = g.sh("timeout 60 sh -c 'until iw dev wlan1 info | grep -q \"type AP\"; do sleep 0.5; done'",
                 timeout=90, ok=False)
    if rc != 0:
        _, out = g.sh("systemctl status --no-pager -n 40 harmony-test-ap; iw dev; true")
        check(False, f"the test's hostapd did not bring up the AP on wlan1: {out[-2500:]}")


def wifi_associated(ctx, g, what):
    """wlan0 associated with the test's AP by the product's wpa_supplicant@wlan0,
    with a DHCP address from the AP side; returns seconds waited."""
    t0 = time.monotonic()
    rc, _ = g.sh(f"timeout 120 sh -c 'until iw dev wlan0 link | grep -q \"SSID: {WIFI_SSID}\"; do sleep 0.5; done'",
                 timeout=150, ok=False)
    _, out = g.sh("systemctl status --no-pager -n 30 wpa_supplicant@wlan0; true")
    check(rc == 0, f"{what}: wlan0 did not associate with the AP: {out[-2500:]}")
    _, out = g.sh("timeout 30 sh -c 'until journalctl -b -u wpa_supplicant@wlan0 -o cat | "
                  "grep -q CTRL-EVENT-CONNECTED; do sleep 0.5; done'; "
                  "journalctl -b -u wpa_supplicant@wlan0 -o cat | grep -E 'CTRL-EVENT-CONNECTED' ; true", timeout=60)
    check("CTRL-EVENT-CONNECTED" in out, f"{what}: wpa_supplicant@wlan0 never reported CTRL-EVENT-CONNECTED: {out}")
    _, link = g.sh("iw dev wlan0 link")
    check(f"SSID: {WIFI_SSID}" in link, f"{what}: iw dev wlan0 link: {link}")
    _, addr = g.sh("timeout 90 sh -c 'until ip -4 -o addr show dev wlan0 | grep -q \"inet 192.168.77.\"; "
                   "do sleep 0.5; done'; ip -4 -o addr show dev wlan0", timeout=120)
    m = re.search(r"inet (192\.168\.77\.(\d+))/24", addr)
    check(m and 100 <= int(m.group(2)) < 120, f"{what}: wlan0 has no DHCP address from the AP: {addr}")
    _, ping = g.sh("busybox ping -c 1 -W 5 192.168.77.1 >/dev/null && echo PING-OK; true", timeout=30)
    check("PING-OK" in ping, f"{what}: the AP at 192.168.77.1 does not answer over wlan0")
    waited = round(time.monotonic() - t0, 1)
    ctx.note(f"{what}: {link.splitlines()[0] if link else ''}; wlan0 {m.group(1)}")
    return waited


@scenario(11, "Wi-Fi: harmony-wifi.conf imported to /data, wpa_supplicant@wlan0 associates (hwsim), DHCP; "
              "no second import; bad file left")
def s11(ctx):
    g = ctx.guest("s11", raw=True)
    put_boot_file(g.overlay, "harmony-wifi.conf", WIFI_CONF)
    put_ext4_file(g.overlay, 1, "/etc/modules-load.d/harmony-test-hwsim.conf", HWSIM_LOAD)
    put_ext4_file(g.overlay, 1, "/etc/modprobe.d/harmony-test-hwsim.conf", HWSIM_OPTS)
    t, _ = g.boot(expect_slot="A")
    ctx.metric("boot 1: QEMU start -> root shell (s)", round(t, 1))
    g.wait_running()
    _, ifs = g.sh("ls /sys/class/ieee80211/*/device/net/ 2>/dev/null; ls /sys/class/net")
    check(re.search(r"\bwlan0\b", ifs) and re.search(r"\bwlan1\b", ifs), f"hwsim radios are not wlan0/wlan1: {ifs}")
    _, log = g.sh("journalctl -b -u harmony-wifi-import -o cat")
    check(f"harmony-wifi-import: Wi-Fi credentials moved to {WIFI_DATA}" in log, f"no import line in the journal: {log}")
    rc, _ = g.sh("test -e /boot/firmware/harmony-wifi.conf", ok=False)
    check(rc != 0, "/boot/firmware/harmony-wifi.conf is still there")
    _, st = g.sh(f"stat -c 'MODE=%a OWNER=%U' {WIFI_DATA}; echo CR=$(tr -cd '\\r' <{WIFI_DATA} | wc -c); "
                 f"grep -c 'ssid=\"{WIFI_SSID}\"' {WIFI_DATA}")
    check("MODE=600 OWNER=root" in st, f"{WIFI_DATA}: {st}")
    check("CR=0" in st, f"{WIFI_DATA} has CR bytes: {st}")
    start_ap(g)
    ctx.metric("boot 1: AP up -> wlan0 associated with a DHCP address (s)", wifi_associated(ctx, g, "boot 1"))

    # second boot: nothing to import, the credentials are on /data
    _, sum1 = g.sh(f"sha256sum {WIFI_DATA}")
    g.reboot(expect_slot="A")
    g.wait_running()
    _, cond = g.sh("systemctl show -p ConditionResult -p ActiveEnterTimestampMonotonic harmony-wifi-import; "
                   "journalctl -b -u harmony-wifi-import -o cat | grep -c 'moved to' ; true")
    check("ConditionResult=no" in cond, f"boot 2: harmony-wifi-import ran again: {cond}")
    _, sum2 = g.sh(f"sha256sum {WIFI_DATA}")
    check(sum1.split()[0] == sum2.split()[0], "boot 2: the credentials on /data changed")
    start_ap(g)
    ctx.metric("boot 2: AP up -> wlan0 associated with a DHCP address (s)", wifi_associated(ctx, g, "boot 2"))

    # bad input: no network={ block
    g.sh("printf 'ssid=\"forgot-the-block\"\\r\\n' >/boot/firmware/harmony-wifi.conf && sync")
    _, stat1 = g.sh(f"stat -c '%Y %s' {WIFI_DATA}; ls -a /data/harmony/wifi")
    g.reboot(expect_slot="A")
    g.wait_running()
    _, state = g.sh("systemctl is-failed harmony-wifi-import; journalctl -b -u harmony-wifi-import -o cat; true")
    check(re.search(r"^failed$", state, re.M), f"bad file: harmony-wifi-import did not fail: {state}")
    check("harmony-wifi-import: /boot/firmware/harmony-wifi.conf has no network={...} block; left as it is" in state,
          f"bad file: no clear message: {state}")
    _, left = g.sh("cat /boot/firmware/harmony-wifi.conf")
    check("forgot-the-block" in left, f"bad file: not left in place: {left}")
    _, stat2 = g.sh(f"stat -c '%Y %s' {WIFI_DATA}; ls -a /data/harmony/wifi")
    check(stat1 == stat2, f"bad file: /data/harmony/wifi changed: {stat1} -> {stat2}")


if __name__ == "__main__":
    sys.exit(suite.main(__doc__, REGISTRY, CI, "boot-chain"))
