"""oe-core's runqemu, driven by the layer's own QB_ variables, boots the
A/B disk and updates it (issue 11, item 4).

What Yocto users run is `runqemu qemuarm64 nographic`: runqemu reads the
image's qemuboot.conf (qemuboot.bbclass writes it from MACHINE, the QB_
variables and a few paths) and builds the QEMU command line itself. This
writes that file from `bitbake -e harmony-image` for qemuarm64 (the dump
meta-harmony/checks/bitbake-graph leaves in <build>/qemuarm64/harmony-image.env),
points it at the test image's disk and U-Boot (the Debian-built stand-ins of
the .wic and of u-boot.bin, see image/qemu/build.py), runs the real runqemu
from an oe-core checkout, and then checks, on the console:

  boot 1  U-Boot runs the layer's boot.scr and picks slot A; Linux finds its
          disk under the names the layer's files use (/dev/vda: mounts,
          fw_env.config, system.conf); RAUC sees both slots and the boot slot
  update  `rauc install` of the v2 bundle, `systemctl reboot` (QEMU resets
          in place, as under runqemu on a desk)
  boot 2  U-Boot picks B with a countdown, v2 and its boot files run

CI cannot run it (it needs oe-core and a BitBake parse); meta-harmony/README.md
records the runs.

  qemu-tests/runqemu --layers DIR --env FILE [--image DIR]
"""

import argparse
import configparser
import json
import re
import sys
import time
from pathlib import Path

from guest import Fail, Guest, check

REPO = Path(__file__).resolve().parents[1]

# The variables qemuboot.bbclass writes besides every QB_* one.
BUILD_VARS = ["MACHINE", "TUNE_ARCH", "KERNEL_IMAGETYPE", "KERNEL_IMAGE_NAME", "KERNEL_IMAGE_BIN_EXT",
              "IMAGE_NAME", "IMAGE_LINK_NAME", "SERIAL_CONSOLES", "UNINATIVE_LOADER"]
# Where this machine's QEMU finds the option ROMs a Yocto qemu-system-native
# carries (Debian: ipxe-qemu, installed by scripts/setup).
ROM_DIR = "/usr/lib/ipxe/qemu"


def read_env(path: Path) -> dict:
    """The NAME="value" lines of a `bitbake -e` dump."""
    env = {}
    for line in path.read_text(errors="replace").splitlines():
        m = re.match(r'^([A-Za-z_][A-Za-z0-9_]*)="(.*)"$', line)
        if m:
            env[m.group(1)] = m.group(2)
    return env


def write_qemuboot_conf(env: dict, deploy: Path, native: Path) -> Path:
    """qemuboot.conf as the image build would deploy it, with the build's
    paths replaced by this run's deploy and native directories."""
    check(env.get("MACHINE") == "qemuarm64", f"the dump is for MACHINE={env.get('MACHINE')!r}, not qemuarm64")
    cf = configparser.ConfigParser()
    cf.optionxform = str
    cf.add_section("config_bsp")
    for key in BUILD_VARS + sorted(k for k in env if k.startswith("QB_")):
        if key in env:
            cf.set("config_bsp", key, env[key])
    for key in ("DEPLOY_DIR_IMAGE",):
        cf.set("config_bsp", key, str(deploy))
    for key in ("STAGING_DIR_NATIVE", "STAGING_BINDIR_NATIVE", "STAGING_DIR_HOST"):
        cf.set("config_bsp", key, str(native))
    conf = deploy / f"{env['IMAGE_LINK_NAME']}.qemuboot.conf"
    with conf.open("w") as f:
        cf.write(f)
    return conf


class RunqemuGuest(Guest):
    """A Guest whose QEMU command line is runqemu's, not the test suites'."""

    def __init__(self, image: Path, art: Path, layers: Path, env: dict):
        super().__init__(image, art, "runqemu", raw=True)
        self.deploy = art / "deploy"
        self.native = art / "native"
        self.deploy.mkdir(parents=True, exist_ok=True)
        self.native.mkdir(parents=True, exist_ok=True)
        # The .wic runqemu looks for: <IMAGE_LINK_NAME>.<QB_DEFAULT_FSTYPE>.
        fstype = env.get("QB_DEFAULT_FSTYPE", "")
        wic = self.deploy / f"{env['IMAGE_LINK_NAME']}.{fstype}"
        wic.unlink(missing_ok=True)
        self.overlay.rename(wic)
        self.overlay = wic
        bios = env.get("QB_DEFAULT_BIOS", "")
        check(bios, "QB_DEFAULT_BIOS is empty: runqemu would boot a kernel, not U-Boot")
        (self.deploy / bios).write_bytes((image / "u-boot.bin").read_bytes())
        # runqemu runs STAGING_BINDIR_NATIVE/<QB_SYSTEM_NAME>.
        qemu = self.native / env["QB_SYSTEM_NAME"]
        qemu.write_text(f"#!/bin/sh\nexec /usr/bin/{env['QB_SYSTEM_NAME']} -L {ROM_DIR} \"$@\"\n")
        qemu.chmod(0o755)
        self.conf = write_qemuboot_conf(env, self.deploy, self.native)
        self.runqemu = layers / "openembedded-core" / "scripts" / "runqemu"

    own_session = True

    def command(self):
        return [str(self.runqemu), str(self.conf), "nographic", "slirp"]


def run(args) -> int:
    env = read_env(args.env)
    image = args.image
    art = REPO / "qemu-tests" / "artifacts" / time.strftime("%Y%m%d-%H%M%S-runqemu")
    art.mkdir(parents=True)
    bundles = json.loads((image / "manifest.json").read_text())["bundles_in_guest"]
    g = RunqemuGuest(image, art, args.layers, env)
    started = time.monotonic()
    try:
        g.start()
        line = g.wait_for(r"runqemu - INFO - Running (.*)", 120).group(1)
        print(f"    runqemu's QEMU command: {line.strip()}", flush=True)
        check("if=virtio" in line or "virtio-blk" in line, "runqemu did not attach the disk as virtio-blk")
        t, boot_log = g.boot(expect_slot="A", timeout=600)
        print(f"    boot 1: shell after {t:.1f} s, U-Boot picked A", flush=True)
        _, mem = g.sh("grep MemTotal /proc/meminfo")
        print(f"    memory: {int(mem.split()[-2]) // 1024} MiB (QB_MEM {env.get('QB_MEM')!r})", flush=True)
        _, mounts = g.sh("findmnt -n -o SOURCE,TARGET /boot/firmware; findmnt -n -o SOURCE,TARGET /data")
        check("/dev/vda1" in mounts and "/dev/vda4" in mounts,
              f"the boot and data partitions are not mounted from /dev/vda:\n{mounts}")
        status = g.rauc_status()
        check(status.get("booted") == "A", f"rauc status: booted {status.get('booted')!r}, want A")
        names = {name for entry in status["slots"] for name in entry}
        check({"rootfs.0", "rootfs.1", "bootloader.0"} <= names, f"rauc slots {sorted(names)}")
        print(f"    rauc: booted A, slots {sorted(names)}; boot state {g.env()}", flush=True)
        g.wait_running()
        # The update, as an operator's offer would have RAUC do it.
        t0 = time.monotonic()
        g.sh(f"rauc install {bundles['v2']} >/tmp/install.log 2>&1 || (cat /tmp/install.log; false)",
             timeout=1800)
        installed = g.env()
        print(f"    rauc install v2: {time.monotonic() - t0:.1f} s; boot state {installed}", flush=True)
        t, boot_log = g.reboot(expect_slot="B", timeout=600)
        state = g.env()
        # On trial: B first, and U-Boot took one of the attempts RAUC's install gave it.
        check(state.get("BOOT_ORDER", "").startswith("B")
              and int(state.get("BOOT_B_LEFT", "9")) == int(installed.get("BOOT_B_LEFT", "0")) - 1,
              f"B is not on trial with its countdown running: {state} (after the install: {installed})")
        print(f"    boot 2: shell after {t:.1f} s, U-Boot picked B on trial; boot state {state}", flush=True)
        version = g.os_version()
        check(version == "2.0.0", f"booted OS {version}, want 2.0.0")
        files = re.findall(r"harmony-boot-files: (\S+)", boot_log)
        check(files and files[-1] == "2.0.0", f"boot files {files}, want the bundle's 2.0.0")
        print(f"    v2 on B with boot files {files[-1]}; runqemu total {time.monotonic() - started:.0f} s",
              flush=True)
        print("PASS runqemu A/B boot and update")
        print("1 passed, 0 failed")
        return 0
    except Fail as e:
        print(f"FAIL runqemu A/B boot and update: {e} (artifacts: {art})")
        print("0 passed, 1 failed")
        return 1
    finally:
        g.kill()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=Path, required=True, help="holds openembedded-core/ (scripts/runqemu)")
    p.add_argument("--env", type=Path, required=True, help="`bitbake -e harmony-image` for qemuarm64")
    p.add_argument("--image", type=Path, default=REPO / "build" / "qemu", help="image/qemu/build's output")
    sys.exit(run(p.parse_args()))


if __name__ == "__main__":
    main()
