#!/usr/bin/env python3
"""The boot script under the real U-Boot, one boot at a time (issue 11 items
7 and 8, issue 12's boot-backend parity, ADR 0004 decision 3).

    qemu-tests/run script [--only N,N] [--script-rev REV] [--backend PATH] [--u-boot BIN]

Needs no image: each boot runs Debian's qemu_arm64 U-Boot
(/usr/lib/u-boot/qemu_arm64/u-boot.bin) under qemu-system-aarch64 -M virt
(TCG) on a 40 MiB disk laid out like the layer's qemuarm64 wks: the two raw
copies of the boot state between the MBR and the first partition (offsets
from the wks rawcopy lines, initially the layer's harmony-boot-env.bin made
with mkenvimage as the recipe does), partition 1 (vfat, at 4 MiB) holding
boot.scr compiled with mkimage from meta-harmony's boot.cmd.in (or from git
REV with --script-rev); partitions 2 and 3 are empty. The script chooses a
slot, saves the boot state, finds no kernel and resets; -no-reboot ends QEMU
there. The chosen slot is read from the console ("harmony: slot X"), the
state from the disk with the real libubootenv (fw_printenv -c with the
layer's qemuarm64 fw_env.config, its device replaced by the disk image).
What userspace writes (RAUC's uboot backend, harmony-boot-confirm) is written
with the real fw_setenv / the layer's harmony-boot-confirm on the same disk.
A torn write is a power cut while a copy is written; between two boots the
copy last written is damaged in one of three ways: "truncate" (the write
stopped after 32 bytes: the new CRC and flags, then zeros), "flip" (bytes
flipped inside the variables), "zero" (the whole copy reads as zeros).

  1 parity: testkit/data/boot-backend.sh (the Rust tests' stand-in) and the
    real boot script go through the same sequence of boots, RAUC writes and
    confirmations; the state and the booted slot agree after every step
  2 install's set-primary write torn on a device committed on B: B boots, the
    new slot is never booted as committed (each tear mode)
  3 mark-good's write torn: the slot stays on trial (counted), the device does
    not jump back to the old slot at once (each tear mode)
  4 U-Boot's own countdown write torn on a trial boot: the trial slot is still
    counted down and the committed slot is reached (each tear mode)
  5 both copies lost (flipped, zeroed): both slots on trial, BOOT_STATE_LOST=1
  6 a committed slot that stops booting (never confirmed) is left for the good
    other slot after 3 boots; a confirmed one is never left
  7 a fresh disk with the layer's initial state: both committed, A boots,
    the first save goes to copy 2
  8 a disk with zeros where the copies belong (no initial state): both slots
    on trial, BOOT_STATE_LOST=1, never a silent committed boot

--script-rev REV runs the same scenarios with an older boot.cmd.in; the disk
is always the raw-copy layout, so a script that keeps the state in files on
the boot partition (before ADR 0004 decision 3) fails them. --backend PATH
compares another boot-backend.sh in scenario 1. --u-boot BIN boots another
qemu_arm64 U-Boot (one built with CONFIG_ENV_REDUNDANT, as the Pi's is, runs
the script's other `env import/export -c` layout).
The last line printed is "N passed, N failed".
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYER = REPO / "meta-harmony"
sys.path.insert(0, str(LAYER / "checks" / "lib"))
import bootenv  # noqa: E402  (the layer's definition of the boot state's place and content)
import wks  # noqa: E402
BOOT_CMD = "meta-harmony/recipes-bsp/u-boot/files/boot.cmd.in"
CONFIRM = LAYER / "recipes-bsp/u-boot/files/harmony-boot-confirm"
WKS = LAYER / "files/wic/harmony-qemuarm64.wks"
FW_ENV = LAYER / "recipes-bsp/libubootenv/files/qemuarm64/fw_env.config"
UBOOT = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
VFAT_START = 8192  # sectors: 4 MiB, where the wks aligns the first partition
VFAT_SECTORS = 32768  # 16 MiB
STATE_VARS = ["BOOT_ORDER", "BOOT_A_LEFT", "BOOT_B_LEFT", "BOOT_A_UNCONFIRMED", "BOOT_B_UNCONFIRMED"]
RAUC_VARS = ["BOOT_ORDER", "BOOT_A_LEFT", "BOOT_B_LEFT"]
TEARS = ["truncate", "flip", "zero"]


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def layer_copies():
    """[(offset, size)] of the two raw copies: the wks rawcopy offsets, and
    fw_env.config must name the same ones (the layer's checks insist)."""
    _, parts = wks.read_wks(WKS)
    offsets = bootenv.copy_offsets(parts)
    size = bootenv.recipe_size(LAYER)
    lines = [ln.split("#", 1)[0].split() for ln in FW_ENV.read_text().splitlines()]
    cfg = [(int(w[1], 0), int(w[2], 0)) for w in lines if len(w) >= 3]
    check(cfg == [(o, size) for o in offsets], f"fw_env.config {cfg} != wks/recipe {offsets}, {size:#x}")
    return cfg


class Disk:
    """A disk laid out like the qemuarm64 wks, booted by the real U-Boot."""

    def __init__(self, work: Path, script_text: str, initial=True, uboot=UBOOT):
        self.work = work
        self.uboot = uboot
        self.copies = layer_copies()
        self.size = self.copies[0][1]
        cmd = (script_text.replace("@@KERNEL_IMAGETYPE@@", "Image").replace("@@KERNEL_BOOTCMD@@", "booti")
               .replace("@@BOOT_FILES_VERSION@@", "boot-script-test"))
        (work / "boot.cmd").write_text(cmd)
        run(["mkimage", "-A", "arm64", "-T", "script", "-C", "none", "-d", str(work / "boot.cmd"),
             str(work / "boot.scr")])
        self.img = work / "disk.img"
        vfat = work / "vfat.img"
        run(["truncate", "-s", "40M", str(self.img)])
        subprocess.run(["sfdisk", "-q", str(self.img)],
                       input=f"label: dos\nstart={VFAT_START}, size={VFAT_SECTORS}, type=c, bootable\n,8M,83\n,8M,83\n",
                       text=True, check=True, capture_output=True)
        run(["truncate", "-s", f"{VFAT_SECTORS * 512}", str(vfat)])
        run(["mkfs.vfat", "-n", "BOOT", str(vfat)])
        run(["mcopy", "-i", str(vfat), str(work / "boot.scr"), "::boot.scr"])
        run(["dd", f"if={vfat}", f"of={self.img}", "bs=512", f"seek={VFAT_START}", "conv=notrunc"])
        vfat.unlink()
        if initial:  # what wic writes with the rawcopy lines
            bootenv.place(self.img, bootenv.make_blob(LAYER, work / bootenv.BLOB), [o for o, _ in self.copies])
        self.cfg = work / "fw_env.config"
        self.cfg.write_text("".join(f"{self.img} {o:#x} {s:#x}\n" for o, s in self.copies))
        self.boots = 0
        self.log = open(work / "console.log", "w")

    def boot(self):
        """One power-on: returns the slot U-Boot chose."""
        self.boots += 1
        p = subprocess.run(
            ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a57", "-m", "512", "-nographic", "-nic", "none",
             "-bios", str(self.uboot), "-drive", f"if=none,file={self.img},format=raw,id=d",
             "-device", "virtio-blk-device,drive=d", "-no-reboot"],
            capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
        self.log.write(f"\n===== boot {self.boots} =====\n{p.stdout}")
        self.log.flush()
        slots = re.findall(r"harmony: slot (\w) \(order", p.stdout)
        check(slots, f"boot {self.boots}: the script chose no slot:\n{p.stdout[-1500:]}")
        self.console = p.stdout
        return slots[-1]

    def env(self):
        """The state as libubootenv reads it; None if it cannot."""
        p = subprocess.run(["fw_printenv", "-c", str(self.cfg)], capture_output=True, text=True)
        if p.returncode != 0:
            return None
        return dict(ln.split("=", 1) for ln in p.stdout.splitlines() if "=" in ln)

    def setenv(self, values: dict):
        """One fw_setenv (one write of one copy), as RAUC's uboot backend does."""
        script = self.work / "fw_setenv.script"
        script.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        run(["fw_setenv", "-c", str(self.cfg), "-s", str(script)])

    def confirm(self, slot):
        """harmony-boot-confirm as the booted system runs it."""
        cmdline = self.work / "cmdline"
        cmdline.write_text(f"root=PARTUUID=x rauc.slot={slot}\n")
        env = dict(os.environ, HARMONY_FW_ENV_CONFIG=str(self.cfg), HARMONY_CMDLINE=str(cmdline))
        run([str(CONFIRM)], env=env)

    def raw(self, n):
        """Copy n (1 or 2) as it is on the disk."""
        off, size = self.copies[n - 1]
        with open(self.img, "rb") as f:
            f.seek(off)
            return f.read(size)

    def write_raw(self, n, data: bytes):
        off, size = self.copies[n - 1]
        assert len(data) == size
        with open(self.img, "r+b") as f:
            f.seek(off)
            f.write(data)

    def valid(self, n):
        b = self.raw(n)
        return zlib.crc32(b[5:]) == int.from_bytes(b[:4], "little")

    def flags(self, n):
        return self.raw(n)[4]

    def newest_copy(self):
        """The copy the last write went to (the valid one with the newer flags)."""
        best, flags = None, None
        for n in (1, 2):
            if not self.valid(n):
                continue
            if flags is None or (self.flags(n) - flags) % 256 in range(1, 128):
                best, flags = n, self.flags(n)
        return best

    def tear(self, n, how):
        """A power cut while copy n was written."""
        b = bytearray(self.raw(n))
        if how == "truncate":  # only the first 32 bytes reached the card
            b[32:] = bytes(len(b) - 32)
        elif how == "flip":
            for i in range(8, 40):
                b[i] ^= 0x5A
        elif how == "zero":
            b[:] = bytes(len(b))
        else:
            raise ValueError(how)
        self.write_raw(n, bytes(b))
        check(not self.valid(n), f"tearing copy {n} ({how}) left it valid")


def state(env):
    return {k: (env or {}).get(k, "") for k in STATE_VARS}


class Backend:
    """testkit/data/boot-backend.sh with its own state file."""

    def __init__(self, work: Path, script: Path):
        self.script = script
        self.state = work / "backend-state"

    def __call__(self, *args):
        p = subprocess.run([str(self.script), *args], env=dict(os.environ, HARMONY_BOOT_STATE=str(self.state)),
                           capture_output=True, text=True)
        check(p.returncode == 0, f"boot-backend.sh {args}: {p.stderr}")
        return p.stdout.strip()

    def vars(self):
        out = {}
        for ln in self.state.read_text().splitlines():
            k, v = ln.split("=", 1)
            out[k] = v.strip('"')
        return {k: out.get(k, "") for k in STATE_VARS}


# ---------------------------------------------------------------------------
# scenarios
# ---------------------------------------------------------------------------

def committed_on_b(d: Disk):
    """A device whose B is committed and A is the good old slot."""
    d.boot()
    d.setenv({"BOOT_ORDER": "B A", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "3",
              "BOOT_A_UNCONFIRMED": "0", "BOOT_B_UNCONFIRMED": "0"})
    check(d.boot() == "B", "setup: the device committed on B did not boot B")
    d.confirm("B")


def s1(d: Disk, opts):
    be = Backend(d.work, opts.backend)
    steps = (["boot", "confirm", "boot", "confirm",
              # install into B: RAUC marks the target bad, writes it, makes it primary
              ("set-state", "B", "bad"), ("set-primary", "B"),
              "boot", "boot", "boot", "confirm",  # two trial attempts spent, back on A
              ("set-state", "B", "bad"), ("set-primary", "B"), "boot", "confirm",
              ("set-state", "B", "good"),  # the operator's commit (mark-good)
              "boot", "confirm", "boot", "confirm",
              "boot", "boot", "boot", "boot", "confirm",  # committed B stops booting: left for A
              ("set-state", "A", "bad"), "boot",  # nothing left: both get another trial
              "boot", "boot", "boot"])
    for i, step in enumerate(steps, 1):
        if step == "boot":
            got, want = d.boot(), be("simulate-boot")
            check(got == want, f"step {i} boot: U-Boot booted {got}, boot-backend.sh {want}")
            booted = got
        elif step == "confirm":
            d.confirm(booted)
            be("confirm")
        else:
            be(*step)
            # What RAUC's uboot backend writes for that call, in one fw_setenv.
            d.setenv({k: v for k, v in be.vars().items() if k in RAUC_VARS})
        real, stand_in = state(d.env()), be.vars()
        check(real == stand_in, f"step {i} {step}: U-Boot {real} != boot-backend.sh {stand_in}")
        print(f"    {i:2} {str(step):28} booted {booted if step == 'boot' else '-'}  {real}", flush=True)


def s2(d: Disk, opts, how):
    committed_on_b(d)
    d.setenv({"BOOT_ORDER": "B", "BOOT_A_LEFT": "0"})  # rauc: set-state A bad
    d.setenv({"BOOT_ORDER": "A B", "BOOT_A_LEFT": "2"})  # rauc: set-primary A
    torn = d.newest_copy()
    d.tear(torn, how)
    print(f"    tore copy {torn} ({how}) after set-primary A", flush=True)
    for n in range(1, 4):
        slot = d.boot()
        env = state(d.env())
        check(slot == "B", f"boot {n} after the torn install chose {slot} ({env}); the device is committed on B")
        check(env["BOOT_A_LEFT"] != "3", f"the never-verified slot A counts as committed: {env}")
        d.confirm(slot)


def s3(d: Disk, opts, how):
    d.boot()
    d.confirm("A")
    d.setenv({"BOOT_ORDER": "A", "BOOT_B_LEFT": "0"})  # rauc: set-state B bad
    d.setenv({"BOOT_ORDER": "B A", "BOOT_B_LEFT": "2"})  # rauc: set-primary B
    check(d.boot() == "B", "the installed slot B did not boot")
    d.setenv({"BOOT_B_LEFT": "3"})  # rauc status mark-good: the operator's commit
    torn = d.newest_copy()
    d.tear(torn, how)
    print(f"    tore copy {torn} ({how}) after mark-good", flush=True)
    slot = d.boot()
    env = state(d.env())
    check(slot == "B", f"after the torn mark-good U-Boot chose {slot} ({env}): back to the old slot at once")
    check(env["BOOT_B_LEFT"] == "0", f"B is not counted as a trial any more: {env}")
    slot = d.boot()
    check(slot == "A", f"with B's trial spent U-Boot chose {slot}")


def s4(d: Disk, opts, how):
    committed_on_b(d)
    d.setenv({"BOOT_ORDER": "B", "BOOT_A_LEFT": "0"})  # rauc: set-state A bad
    d.setenv({"BOOT_ORDER": "A B", "BOOT_A_LEFT": "2"})  # rauc: set-primary A
    check(d.boot() == "A", "the installed slot A did not boot")
    torn = d.newest_copy()
    d.tear(torn, how)
    print(f"    tore copy {torn} ({how}) after U-Boot's countdown write", flush=True)
    seen = []
    for _ in range(4):
        slot = d.boot()
        seen.append((slot, state(d.env())["BOOT_A_LEFT"]))
        if slot == "B":
            break
    print(f"    boots after the tear: {seen}", flush=True)
    check(all(left != "3" for s, left in seen if s == "A"), f"the trial slot A booted as committed: {seen}")
    check(seen[-1][0] == "B", f"the never-confirmed trial slot A kept booting: {seen}")


def boot_with_state_lost(d: Disk, what):
    """One boot with no valid copy: both slots on trial, the loss recorded,
    both copies rewritten. Returns (slot, BOOT_* variables)."""
    slot = d.boot()
    env = {k: v for k, v in (d.env() or {}).items() if k.startswith("BOOT_")}
    print(f"    {what}: booted {slot}, {env}", flush=True)
    check("BOOT STATE LOST" in d.console, "U-Boot did not report the lost state")
    check(env.get("BOOT_A_LEFT") not in (None, "3") and env.get("BOOT_B_LEFT") not in (None, "3"),
          f"with the state lost a slot counts as committed: {env}")
    check(env.get("BOOT_STATE_LOST") == "1", f"the loss is not recorded for userspace: {env}")
    check(d.valid(1) and d.valid(2), "both copies are not rewritten after the loss")
    return slot, env


def s5(d: Disk, opts):
    committed_on_b(d)
    d.tear(1, "flip")
    d.tear(2, "zero")
    boot_with_state_lost(d, "both copies damaged")


def s6(d: Disk, opts):
    committed_on_b(d)
    for n in range(6):  # confirmed boots: B stays
        check(d.boot() == "B", f"confirmed boot {n + 1} of committed B chose another slot")
        d.confirm("B")
    seen = [d.boot() for _ in range(5)]  # B never comes up again: nobody confirms
    print(f"    unconfirmed boots: {seen}", flush=True)
    check("A" in seen, f"committed B that stopped booting was never left: {seen}")
    check(seen.index("A") <= 3, f"left only after {seen.index('A')} boots: {seen}")
    env = state(d.env())
    check(env["BOOT_B_LEFT"] == "0", f"B not marked exhausted (RAUC would report it good): {env}")


def s7(d: Disk, opts):
    env = state(d.env())
    want = {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "3",
            "BOOT_A_UNCONFIRMED": "0", "BOOT_B_UNCONFIRMED": "0"}
    check(env == want, f"the layer's initial state reads as {env}, want {want}")
    check((d.flags(1), d.flags(2)) == (1, 1), f"initial flags {d.flags(1)}, {d.flags(2)}")
    slot = d.boot()
    env = {k: v for k, v in (d.env() or {}).items() if k.startswith("BOOT_")}
    layout = re.findall(r"harmony: (env -c layout [^\n]*)", d.console)
    print(f"    fresh disk: booted {slot}, {env}; U-Boot's {layout[-1] if layout else 'env -c layout: not reported'}",
          flush=True)
    check("boot state from copy 1" in d.console, "U-Boot did not read the initial state from copy 1")
    check(slot == "A", f"a fresh disk booted {slot}")
    check(env.get("BOOT_A_LEFT") == "3" and env.get("BOOT_B_LEFT") == "3", f"not both committed: {env}")
    check(env.get("BOOT_A_UNCONFIRMED") == "1", f"the committed boot of A was not counted: {env}")
    check("BOOT_STATE_LOST" not in env, f"a fresh disk reports a lost state: {env}")
    check((d.flags(1), d.flags(2)) == (1, 2), f"the first save did not go to copy 2 with flags 2: "
                                               f"{d.flags(1)}, {d.flags(2)}")
    d.confirm("A")
    check(d.boot() == "A", "the confirmed committed A was not booted again")


def s8(d: Disk, opts):
    check(d.raw(1) == bytes(d.size) and d.raw(2) == bytes(d.size), "the copies are not zeros")
    check(d.env() is None, "libubootenv reads a state from zeros")
    slot, env = boot_with_state_lost(d, "zeros where the state belongs")
    check(slot == "A" and env.get("BOOT_A_LEFT") == "1", f"not A on trial: {slot}, {env}")


# number: (title, function, tear modes it runs with (a fresh disk each), initial state on the disk)
SCENARIOS = {
    1: ("boot-backend.sh and the real boot script agree on every step", s1, None, True),
    2: ("torn install write: the committed slot keeps booting", s2, TEARS, True),
    3: ("torn mark-good write: still a counted trial, no jump back", s3, TEARS, True),
    4: ("torn countdown write: the trial slot is still counted down", s4, TEARS, True),
    5: ("both copies lost: both slots on trial, loss recorded", s5, None, True),
    6: ("a committed slot that stops booting is left after 3 boots", s6, None, True),
    7: ("fresh disk with the layer's initial state: both committed, A", s7, None, True),
    8: ("zeros where the state belongs: both slots on trial, loss recorded", s8, None, False),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated scenario numbers")
    ap.add_argument("--script-rev", help="take boot.cmd.in from this git revision")
    ap.add_argument("--backend", type=Path, default=REPO / "testkit/data/boot-backend.sh")
    ap.add_argument("--keep", action="store_true", help="keep the work directories")
    ap.add_argument("--u-boot", type=Path, default=UBOOT,
                    help="another qemu_arm64 u-boot.bin (e.g. one built with ENV_REDUNDANT, like the Pi's)")
    opts = ap.parse_args()
    if opts.script_rev:
        text = run(["git", "-C", str(REPO), "show", f"{opts.script_rev}:{BOOT_CMD}"]).stdout
    else:
        text = (REPO / BOOT_CMD).read_text()
    for tool in ("qemu-system-aarch64", "mkimage", "mcopy", "mkfs.vfat", "sfdisk", "fw_printenv"):
        if not shutil.which(tool):
            sys.exit(f"boot_script: {tool} is missing (scripts/setup installs it)")
    art = REPO / "qemu-tests/artifacts" / time.strftime("%Y%m%d-%H%M%S-boot-script")
    art.mkdir(parents=True, exist_ok=True)
    nums = [int(n) for n in opts.only.split(",")] if opts.only else sorted(SCENARIOS)
    passed = failed = 0
    for num in nums:
        title, fn, modes, initial = SCENARIOS[num]
        print(f"[{num}] {title}", flush=True)
        t0 = time.monotonic()
        boots = 0
        try:
            for how in modes or [None]:
                work = Path(tempfile.mkdtemp(prefix=f"bs{num}-{how or 'x'}-", dir=art))
                try:
                    d = Disk(work, text, initial, opts.u_boot)
                    if how:
                        fn(d, opts, how)
                    else:
                        fn(d, opts)
                    boots += d.boots
                finally:
                    if not opts.keep:
                        (work / "disk.img").unlink(missing_ok=True)
            print(f"PASS {num} ({boots} boots, {time.monotonic() - t0:.0f} s)", flush=True)
            passed += 1
        except Fail as e:
            print(f"FAIL {num}{f' ({how})' if how else ''}: {e}", flush=True)
            failed += 1
        except Exception:
            traceback.print_exc()
            print(f"FAIL {num}: crashed", flush=True)
            failed += 1
    print(f"artifacts: {art}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
