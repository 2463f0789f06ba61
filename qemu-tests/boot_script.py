#!/usr/bin/env python3
"""The boot script under the real U-Boot, one boot at a time (issue 11 items
7 and 8, issue 12's boot-backend parity).

    qemu-tests/run script [--only N,N] [--script-rev REV] [--backend PATH]

Needs no image: each boot runs Debian's qemu_arm64 U-Boot
(/usr/lib/u-boot/qemu_arm64/u-boot.bin) under qemu-system-aarch64 -M virt
(TCG) on a 40 MiB disk whose partition 1 (vfat) holds boot.scr, compiled with
mkimage from meta-harmony's boot.cmd.in (or from git REV with --script-rev),
and the environment files; partitions 2 and 3 are empty. The script chooses a
slot, saves the boot state, finds no kernel and resets; -no-reboot ends QEMU
there. The chosen slot is read from the console ("harmony: slot X"), the
state from the env files with the real libubootenv (fw_printenv -c). What
userspace writes (RAUC's uboot backend, harmony-boot-confirm) is written with
the real fw_setenv / the layer's harmony-boot-confirm on the same files.
A torn write is a power cut while a copy is written: that copy is truncated or
has bytes flipped, between two boots.

  1 parity: testkit/data/boot-backend.sh (the Rust tests' stand-in) and the
    real boot script go through the same sequence of boots, RAUC writes and
    confirmations; the state and the booted slot agree after every step
  2 install's set-primary write torn on a device committed on B: B boots, the
    new slot is never booted as committed
  3 mark-good's write torn: the slot stays on trial (counted), the device does
    not jump back to the old slot at once
  4 U-Boot's own countdown write torn on a trial boot: the trial slot is still
    counted down and the committed slot is reached
  5 both copies lost: both slots on trial, BOOT_STATE_LOST=1
  6 a committed slot that stops booting (never confirmed) is left for the good
    other slot after 3 boots; a confirmed one is never left

--script-rev REV runs the same scenarios on an older boot.cmd.in (single
uboot.env when that script knows no uboot-redund.env) to show they fail
there; --backend PATH compares another boot-backend.sh in scenario 1.
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BOOT_CMD = "meta-harmony/recipes-bsp/u-boot/files/boot.cmd.in"
CONFIRM = REPO / "meta-harmony/recipes-bsp/u-boot/files/harmony-boot-confirm"
UBOOT = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
VFAT_START = 2048  # sectors: sfdisk's first partition
VFAT_SECTORS = 32768  # 16 MiB
STATE_VARS = ["BOOT_ORDER", "BOOT_A_LEFT", "BOOT_B_LEFT", "BOOT_A_UNCONFIRMED", "BOOT_B_UNCONFIRMED"]
RAUC_VARS = ["BOOT_ORDER", "BOOT_A_LEFT", "BOOT_B_LEFT"]


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


class Disk:
    """A boot partition with boot.scr, booted by the real U-Boot."""

    def __init__(self, work: Path, script_text: str):
        self.work = work
        self.two = "uboot-redund.env" in script_text
        self.files = ["uboot.env", "uboot-redund.env"] if self.two else ["uboot.env"]
        self.cfg = work / "fw_env.config"
        self.cfg.write_text("".join(f"{work / f} 0x0000 0x4000\n" for f in self.files))
        cmd = script_text.replace("@@KERNEL_IMAGETYPE@@", "Image").replace("@@KERNEL_BOOTCMD@@", "booti")
        (work / "boot.cmd").write_text(cmd)
        run(["mkimage", "-A", "arm64", "-T", "script", "-C", "none", "-d", str(work / "boot.cmd"),
             str(work / "boot.scr")])
        self.img = work / "disk.img"
        self.vfat = work / "vfat.img"
        run(["truncate", "-s", "40M", str(self.img)])
        subprocess.run(["sfdisk", "-q", str(self.img)], input="label: dos\n,16M,c,*\n,8M,83\n,8M,83\n",
                       text=True, check=True, capture_output=True)
        run(["truncate", "-s", "16M", str(self.vfat)])
        run(["mkfs.vfat", "-n", "BOOT", str(self.vfat)])
        run(["mcopy", "-i", str(self.vfat), str(work / "boot.scr"), "::boot.scr"])
        self.boots = 0
        self.log = open(work / "console.log", "w")

    # -- the boot partition <-> the files libubootenv sees -------------------
    def pull(self):
        for f in self.files:
            p = subprocess.run(["mcopy", "-n", "-o", "-i", str(self.vfat), f"::{f}", str(self.work / f)],
                               capture_output=True)
            if p.returncode != 0 and (self.work / f).exists():
                (self.work / f).unlink()

    def push(self):
        for f in self.files:
            if (self.work / f).exists():
                run(["mcopy", "-o", "-i", str(self.vfat), str(self.work / f), f"::{f}"])

    def boot(self):
        """One power-on: returns the slot U-Boot chose."""
        run(["dd", f"if={self.vfat}", f"of={self.img}", "bs=512", f"seek={VFAT_START}", "conv=notrunc"])
        self.boots += 1
        p = subprocess.run(
            ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a57", "-m", "512", "-nographic", "-nic", "none",
             "-bios", str(UBOOT), "-drive", f"if=none,file={self.img},format=raw,id=d",
             "-device", "virtio-blk-device,drive=d", "-no-reboot"],
            capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
        self.log.write(f"\n===== boot {self.boots} =====\n{p.stdout}")
        self.log.flush()
        run(["dd", f"if={self.img}", f"of={self.vfat}", "bs=512", f"skip={VFAT_START}", f"count={VFAT_SECTORS}"])
        self.pull()
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
        self.push()

    def confirm(self, slot):
        """harmony-boot-confirm as the booted system runs it."""
        cmdline = self.work / "cmdline"
        cmdline.write_text(f"root=PARTUUID=x rauc.slot={slot}\n")
        env = dict(os.environ, HARMONY_FW_ENV_CONFIG=str(self.cfg), HARMONY_CMDLINE=str(cmdline))
        run([str(CONFIRM)], env=env)
        self.push()

    def newest_copy(self):
        """The copy the last write went to (the valid one with the newer flags)."""
        if not self.two:
            return self.files[0]
        best, flags = None, None
        for f in self.files:
            b = (self.work / f).read_bytes()
            if len(b) != 0x4000:
                continue
            import zlib
            if zlib.crc32(b[5:]) != int.from_bytes(b[:4], "little"):
                continue
            if flags is None or (b[4] - flags) % 256 in range(1, 128):
                best, flags = f, b[4]
        return best

    def tear(self, name, how):
        """A power cut while `name` was written: truncated or bytes flipped."""
        p = self.work / name
        b = bytearray(p.read_bytes())
        if how == "truncate":
            b = b[:0x1000]
        else:
            for i in range(8, 40):
                b[i] ^= 0x5A
        p.write_bytes(bytes(b))
        self.push()


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


def s2(d: Disk, opts):
    committed_on_b(d)
    d.setenv({"BOOT_ORDER": "B", "BOOT_A_LEFT": "0"})  # rauc: set-state A bad
    d.setenv({"BOOT_ORDER": "A B", "BOOT_A_LEFT": "2"})  # rauc: set-primary A
    torn = d.newest_copy()
    d.tear(torn, "truncate")
    print(f"    tore {torn} (truncated) after set-primary A", flush=True)
    for n in range(1, 4):
        slot = d.boot()
        env = state(d.env())
        check(slot == "B", f"boot {n} after the torn install chose {slot} ({env}); the device is committed on B")
        check(env["BOOT_A_LEFT"] != "3", f"the never-verified slot A counts as committed: {env}")
        d.confirm(slot)


def s3(d: Disk, opts):
    d.boot()
    d.confirm("A")
    d.setenv({"BOOT_ORDER": "A", "BOOT_B_LEFT": "0"})  # rauc: set-state B bad
    d.setenv({"BOOT_ORDER": "B A", "BOOT_B_LEFT": "2"})  # rauc: set-primary B
    check(d.boot() == "B", "the installed slot B did not boot")
    d.setenv({"BOOT_B_LEFT": "3"})  # rauc status mark-good: the operator's commit
    torn = d.newest_copy()
    d.tear(torn, "flip")
    print(f"    tore {torn} (bytes flipped) after mark-good", flush=True)
    slot = d.boot()
    env = state(d.env())
    check(slot == "B", f"after the torn mark-good U-Boot chose {slot} ({env}): back to the old slot at once")
    check(env["BOOT_B_LEFT"] == "0", f"B is not counted as a trial any more: {env}")
    slot = d.boot()
    check(slot == "A", f"with B's trial spent U-Boot chose {slot}")


def s4(d: Disk, opts):
    committed_on_b(d)
    d.setenv({"BOOT_ORDER": "B", "BOOT_A_LEFT": "0"})  # rauc: set-state A bad
    d.setenv({"BOOT_ORDER": "A B", "BOOT_A_LEFT": "2"})  # rauc: set-primary A
    check(d.boot() == "A", "the installed slot A did not boot")
    torn = d.newest_copy()
    d.tear(torn, "flip")
    print(f"    tore {torn} (bytes flipped) after U-Boot's countdown write", flush=True)
    seen = []
    for _ in range(4):
        slot = d.boot()
        seen.append((slot, state(d.env())["BOOT_A_LEFT"]))
        if slot == "B":
            break
    print(f"    boots after the tear: {seen}", flush=True)
    check(all(left != "3" for s, left in seen if s == "A"), f"the trial slot A booted as committed: {seen}")
    check(seen[-1][0] == "B", f"the never-confirmed trial slot A kept booting: {seen}")


def s5(d: Disk, opts):
    committed_on_b(d)
    for f in d.files:
        d.tear(f, "flip")
    slot = d.boot()
    env = {k: v for k, v in (d.env() or {}).items() if k.startswith("BOOT_")}
    print(f"    both copies damaged: booted {slot}, {env}", flush=True)
    check(env.get("BOOT_A_LEFT") not in (None, "3") and env.get("BOOT_B_LEFT") not in (None, "3"),
          f"after losing the state a slot counts as committed: {env}")
    check(env.get("BOOT_STATE_LOST") == "1", f"the loss is not recorded for userspace: {env}")


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


SCENARIOS = {
    1: ("boot-backend.sh and the real boot script agree on every step", s1),
    2: ("torn install write: the committed slot keeps booting", s2),
    3: ("torn mark-good write: still a counted trial, no jump back", s3),
    4: ("torn countdown write: the trial slot is still counted down", s4),
    5: ("both copies lost: both slots on trial, loss recorded", s5),
    6: ("a committed slot that stops booting is left after 3 boots", s6),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated scenario numbers")
    ap.add_argument("--script-rev", help="take boot.cmd.in from this git revision")
    ap.add_argument("--backend", type=Path, default=REPO / "testkit/data/boot-backend.sh")
    ap.add_argument("--keep", action="store_true", help="keep the work directories")
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
        title, fn = SCENARIOS[num]
        print(f"[{num}] {title}", flush=True)
        work = Path(tempfile.mkdtemp(prefix=f"bs{num}-", dir=art))
        t0 = time.monotonic()
        try:
            d = Disk(work, text)
            fn(d, opts)
            print(f"PASS {num} ({d.boots} boots, {time.monotonic() - t0:.0f} s)", flush=True)
            passed += 1
        except Fail as e:
            print(f"FAIL {num}: {e}", flush=True)
            failed += 1
        except Exception:
            traceback.print_exc()
            print(f"FAIL {num}: crashed", flush=True)
            failed += 1
        finally:
            if not opts.keep:
                for f in ("disk.img", "vfat.img"):
                    (work / f).unlink(missing_ok=True)
    print(f"artifacts: {art}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
