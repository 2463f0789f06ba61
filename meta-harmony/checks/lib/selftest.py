#!/usr/bin/env python3
"""Prove that each check fails when the thing it guards is broken.

For every case: copy the layer (and the repository files the checks read)
into a fresh temporary directory, confirm the check passes on the copy,
break one thing, and confirm the check now fails with problems it reports
(not with a crash). Each case ends as one of

  caught     passes on the copy, fails on the broken copy
  MISSED     passes on both: the check does not see the break
  UNPROVEN   fails on the unbroken copy, or the breaker no longer matches
             what it breaks: the case proves nothing until it is fixed
  CRASHED    the check raised an exception instead of reporting problems

Exits 0 only if every case of CASES was caught (the count is compared with
the list, so a case that silently disappears fails too).
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import checks  # noqa: E402

LAYER = HERE.parents[1]
REPO = LAYER.parent
COPY_FROM_REPO = ["Cargo.toml", "Cargo.lock", "agent/Cargo.toml", "image/kas", "image/qemu/build.py",
                  "protocol/src/enroll.rs"]


def make_copy(root: Path) -> Path:
    shutil.copytree(LAYER, root / "meta-harmony", ignore=shutil.ignore_patterns("__pycache__"))
    for rel in COPY_FROM_REPO:
        src = REPO / rel
        if src.is_dir():
            shutil.copytree(src, root / rel)
        elif src.is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / rel)
    # The workspace members: the agent recipe fetches their directories.
    import tomllib
    for member in tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["members"]:
        manifest = REPO / member / "Cargo.toml"
        (root / member).mkdir(parents=True, exist_ok=True)
        if manifest.is_file():
            shutil.copy2(manifest, root / member / "Cargo.toml")
    return root / "meta-harmony"


def edit(path: Path, pattern: str, repl: str, count: int = 1):
    text = path.read_text()
    new, n = re.subn(pattern, repl, text, count=count, flags=re.M)
    if n == 0:
        raise LookupError(f"{path.name}: /{pattern}/ not found")
    path.write_text(new)


def append(path: Path, text: str):
    path.write_text(path.read_text() + text)


def first(layer: Path, pattern: str) -> Path:
    found = sorted(layer.glob(pattern))
    if not found:
        raise LookupError(f"nothing matches {pattern}")
    return found[0]


class Crashed(Exception):
    """A check raised instead of returning its problems."""


def run_python_check(name):
    def run(layer: Path):
        ctx = checks.Ctx(layer)
        try:
            problems = checks.CHECKS[name](ctx)
        except checks.CheckError as e:
            problems = [str(e)]  # a reported problem, as checks.py prints it
        except Exception as e:
            raise Crashed(f"{name}: {type(e).__name__}: {e}") from e
        finally:
            ctx.h.close()
        return bool(problems)
    return run


def run_oelint(layer: Path):
    files = [str(p.relative_to(layer)) for p in layer.rglob("*")
             if p.suffix in (".bb", ".bbappend", ".inc", ".bbclass", ".conf")
             and "checks" not in p.parts and "files" not in p.parts]
    env = dict(os.environ, OELINT_CONFIG=str(layer / "checks" / "oelint.cfg"))
    oelint = Path(sys.executable).parent / "oelint-adv"
    r = subprocess.run([str(oelint), "--quiet", "--relpaths", "--jobs", "1", "--", *files],
                       cwd=layer, env=env, capture_output=True, text=True)
    return r.returncode != 0 or bool((r.stdout + r.stderr).strip())


def run_crates_script(layer: Path):
    r = subprocess.run([sys.executable, str(layer / "scripts" / "update-agent-crates"), "--check"],
                       capture_output=True, text=True)
    return r.returncode != 0


CRATES_INC = "recipes-harmony/harmony-agent/harmony-agent-crates.inc"
SYSTEM_CONF = "recipes-core/rauc/files/qemuarm64/system.conf"
BOOT_CMD = "recipes-bsp/u-boot/files/boot.cmd.in"
QEMU_FW_ENV = "recipes-bsp/libubootenv/files/qemuarm64/fw_env.config"
ENV_CFG = "recipes-bsp/u-boot/files/harmony-env-redund.cfg"
BOOT_ENV_BB = "recipes-bsp/u-boot/harmony-boot-env_1.0.bb"
BOOT_ENV_TXT = "recipes-bsp/u-boot/files/harmony-boot-env.txt"
IMAGE = "recipes-core/images/harmony-image.bb"
BUNDLE = "recipes-core/bundles/harmony-bundle.bb"
PARTITIONS = "recipes-core/harmony-partitions"
BUILDER = "image/qemu/build.py"

# (description, check runner, break function(layer))
CASES = [
    ("trailing whitespace in a recipe", run_oelint,
     lambda l: append(l / "recipes-core/images/harmony-image.bb", "IMAGE_LINGUAS = \"\" \n")),
    ("unterminated quote", run_python_check("bb-parse"),
     lambda l: append(l / "recipes-core/images/harmony-image.bb", 'IMAGE_LINGUAS = "en-us\n')),
    ("pre-honister _append override syntax", run_python_check("bb-parse"),
     lambda l: append(l / "recipes-core/images/harmony-image.bb", 'IMAGE_INSTALL_append = " foo"\n')),
    ("shell syntax error in an .inc", run_python_check("bb-parse"),
     lambda l: append(l / "recipes-bsp/u-boot/u-boot_harmony.inc",
                      "do_install:append() {\n    if [ -e x ]; then\n        true\n}\n")),
    ("Python syntax error in the global class", run_python_check("bb-parse"),
     lambda l: edit(l / "classes-global/harmony_sanity.bbclass", r"return in_use$", "return in_use)")),
    ("broken inline Python", run_python_check("bb-parse"),
     lambda l: append(l / "recipes-core/bundles/harmony-bundle.bb", 'X = "${@undefined_function(d)}"\n')),
    ("ungated bbappend", run_python_check("bbappend-gating"),
     lambda l: append(first(l, "recipes-bsp/libubootenv/*.bbappend"), 'SRC_URI += "file://x"\n')),
    ("crate missing from the recipe", run_python_check("agent-crates"),
     lambda l: edit(l / CRATES_INC, r"^    crate://crates\.io/.*\n", "")),
    ("crate checksum changed", run_crates_script,
     lambda l: edit(l / CRATES_INC, r'sha256sum\] = "[0-9a-f]', 'sha256sum] = "X')),
    ("workspace member not fetched", run_python_check("agent-sources"),
     lambda l: edit(first(l, "recipes-harmony/harmony-agent/harmony-agent_*.bb"),
                    r'^(HARMONY_WORKSPACE_MEMBERS = ".*) \w+"', r'\1"')),
    ("local file missing", run_python_check("local-files"),
     lambda l: (l / "recipes-harmony/harmony-agent/files/agent.toml").unlink()),
    ("slot on a partition the wks lacks", run_python_check("wks-vs-system-conf"),
     lambda l: edit(l / SYSTEM_CONF, r"^(\[slot\.rootfs\.1\][^\[]*?device\s*=\s*)\S+", r"\1/dev/nowhere9")),
    ("image may outgrow its slot", run_python_check("rootfs-fits-slot"),
     lambda l: edit(l / "recipes-core/images/harmony-image.bb",
                    r'^IMAGE_ROOTFS_MAXSIZE:qemuarm64 = ".*"', 'IMAGE_ROOTFS_MAXSIZE:qemuarm64 = "999999"')),
    ("bundle compatible differs", run_python_check("bundle-compatible"),
     lambda l: edit(l / "recipes-core/bundles/harmony-bundle.bb",
                    r'^RAUC_BUNDLE_COMPATIBLE = ".*"', 'RAUC_BUNDLE_COMPATIBLE = "someone-else"')),
    ("unfilled boot script placeholder", run_python_check("boot-script-placeholders"),
     lambda l: append(l / BOOT_CMD, "echo @@NOT_FILLED_ANYWHERE@@\n")),
    ("boot script ignores a RAUC variable", run_python_check("boot-script-vs-env"),
     lambda l: edit(l / BOOT_CMD, r"\bBOOT_B_LEFT\b", "BOOT_Y_LEFT", count=0)),
    ("fw_env.config names another offset than the wks", run_python_check("boot-env-location"),
     lambda l: edit(l / QEMU_FW_ENV, r"0x110000", "0x120000")),
    ("boot script reads copy 2 elsewhere", run_python_check("boot-env-location"),
     lambda l: edit(l / BOOT_CMD, r"^setenv harmony_env_blk2 0x880$", "setenv harmony_env_blk2 0x890")),
    ("boot script reads fewer blocks than a copy has", run_python_check("boot-env-location"),
     lambda l: edit(l / BOOT_CMD, r"^setenv harmony_env_blks 0x20$", "setenv harmony_env_blks 0x10")),
    ("U-Boot fragment's redundant offset differs", run_python_check("boot-env-location"),
     lambda l: edit(l / ENV_CFG, r"^CONFIG_ENV_OFFSET_REDUND=0x110000$", "CONFIG_ENV_OFFSET_REDUND=0x120000")),
    ("U-Boot fragment without ENV_APPEND (copies replace bootcmd)", run_python_check("boot-env-location"),
     lambda l: edit(l / ENV_CFG, r"^CONFIG_ENV_APPEND=y\n", "")),
    ("Pi's wks puts copy 2 elsewhere", run_python_check("boot-env-location"),
     lambda l: edit(l / "files/wic/harmony-raspberrypi5.wks", r"--offset 1088K", "--offset 1152K")),
    ("wks writes only one copy", run_python_check("boot-env-location"),
     lambda l: edit(l / "files/wic/harmony-qemuarm64.wks", r"^part --source rawcopy .*--offset 1088K\n", "")),
    ("copy size differs from the recipe's", run_python_check("boot-env-location"),
     lambda l: edit(l / BOOT_ENV_BB, r'^HARMONY_BOOT_ENV_SIZE = "0x4000"$', 'HARMONY_BOOT_ENV_SIZE = "0x8000"')),
    ("image does not wait for the initial state", run_python_check("boot-env-location"),
     lambda l: edit(l / IMAGE, r'^do_image_wic\[depends\] \+= "harmony-boot-env:do_deploy"\n', "")),
    ("initial state leaves a slot on trial", run_python_check("boot-env-location"),
     lambda l: edit(l / BOOT_ENV_TXT, r"^BOOT_B_LEFT=3$", "BOOT_B_LEFT=2")),
    ("boot region larger than two boot partitions", run_python_check("boot-region"),
     lambda l: edit(l / SYSTEM_CONF, r"^region-size=128M$", "region-size=256M")),
    ("boot region starts after the boot partition", run_python_check("boot-region"),
     lambda l: edit(l / "recipes-core/rauc/files/raspberrypi4-64/system.conf", r"^region-start=4M$", "region-start=68M")),
    ("boot slot on a partition, not the whole disk", run_python_check("boot-region"),
     lambda l: edit(l / "recipes-core/rauc/files/raspberrypi5/system.conf", r"^device=/dev/mmcblk0$", "device=/dev/mmcblk0p1")),
    ("second half of the boot region not reserved", run_python_check("boot-region"),
     lambda l: edit(l / "files/wic/harmony-raspberrypi4-64.wks", r"^part --ondisk mmcblk0 --no-table --fixed-size 64M\n", "")),
    ("boot slot given a bootname", run_python_check("boot-region"),
     lambda l: edit(l / SYSTEM_CONF, r"^type=boot-mbr-switch$", "type=boot-mbr-switch\nbootname=C")),
    ("bundle writes the rootfs before the boot files", run_python_check("bundle-boot-slot"),
     lambda l: edit(l / BUNDLE, r'^RAUC_BUNDLE_SLOTS = "bootloader rootfs"$', 'RAUC_BUNDLE_SLOTS = "rootfs bootloader"')),
    ("bundle's boot image from a .wic the image does not build", run_python_check("bundle-boot-slot"),
     lambda l: edit(l / BUNDLE, r'^HARMONY_BOOT_IMAGE_WIC_TYPE = "wic\.bz2"$', 'HARMONY_BOOT_IMAGE_WIC_TYPE = "wic.xz"')),
    ("bundle's boot image no longer cut before the manifest", run_python_check("bundle-boot-slot"),
     lambda l: edit(l / BUNDLE, r"^addtask harmony_boot_image after do_unpack do_prepare_recipe_sysroot before do_configure$",
                    "addtask harmony_boot_image after do_unpack do_prepare_recipe_sysroot")),
    ("bundle's rootfs image not adaptive", run_python_check("bundle-adaptive"),
     lambda l: edit(l / BUNDLE, r'^RAUC_SLOT_rootfs\[adaptive\] = "block-hash-index"\n', "")),
    ("rootfs image with a random ext4 UUID and hash seed", run_python_check("bundle-adaptive"),
     lambda l: edit(l / IMAGE, r'^EXTRA_IMAGECMD:ext4:append = .*\n', "")),
    ("no data-directory for the slots' hash indices", run_python_check("bundle-adaptive"),
     lambda l: edit(l / "recipes-core/rauc/files/raspberrypi5/system.conf", r"^data-directory=/data/rauc\n", "")),
    ("RAUC's libcurl without HTTP/2 even when asked", run_python_check("rauc-http2"),
     lambda l: edit(l / "recipes-support/curl/curl_harmony.inc", r'^PACKAGECONFIG:append:class-target = .*$', "")),
    ("curl-native given nghttp2 as well", run_python_check("rauc-http2"),
     lambda l: edit(l / "recipes-support/curl/curl_harmony.inc", r'^PACKAGECONFIG:append:class-target = ', "PACKAGECONFIG:append = ")),
    ("meta-rauc's nghttp2 for curl left in by default", run_python_check("rauc-http2"),
     lambda l: edit(l / "recipes-support/curl/curl_harmony.inc", r'^PACKAGECONFIG:remove:class-target = .*$', "")),
    ("HTTP/2 for RAUC's libcurl on by default", run_python_check("rauc-http2"),
     lambda l: edit(l / "recipes-support/curl/curl_harmony.inc", r'^HARMONY_RAUC_HTTP2 \?\?= "0"$', 'HARMONY_RAUC_HTTP2 ??= "1"')),
    ("boot script writes uboot.env again", run_python_check("boot-state-raw"),
     lambda l: append(l / BOOT_CMD, "fatwrite ${devtype} ${devnum}:1 ${loadaddr} uboot.env 0x4000\n")),
    ("fw_env.config back on a file of the boot partition", run_python_check("boot-state-raw"),
     lambda l: edit(l / QEMU_FW_ENV, r"^/dev/vda(\s+0x110000)", r"/boot/firmware/uboot-redund.env\1")),
    ("fw_env.config on a partition, not the whole disk", run_python_check("boot-state-raw"),
     lambda l: edit(l / "recipes-bsp/libubootenv/files/raspberrypi4-64/fw_env.config", r"^/dev/mmcblk0 ", "/dev/mmcblk0p1 ")),
    ("U-Boot fragment with the pre-2026 redundancy option", run_python_check("boot-state-raw"),
     lambda l: edit(l / ENV_CFG, r"^CONFIG_ENV_REDUNDANT=y$", "CONFIG_SYS_REDUNDAND_ENVIRONMENT=y")),
    ("U-Boot fragment back on FAT", run_python_check("boot-state-raw"),
     lambda l: edit(l / ENV_CFG, r"^# CONFIG_ENV_IS_IN_FAT is not set$", "CONFIG_ENV_IS_IN_FAT=y")),
    ("boot confirmation needs /boot/firmware again", run_python_check("boot-state-raw"),
     lambda l: edit(l / "recipes-bsp/u-boot/files/harmony-boot-confirm.service", r"^After=multi-user\.target$",
                    "After=multi-user.target boot-firmware.mount\nRequires=boot-firmware.mount")),
    ("keyring name differs", run_python_check("keyring"),
     lambda l: edit(l / SYSTEM_CONF, r"^(path\s*=\s*).*$", r"\1elsewhere.pem")),
    ("rauc-mark-good allowed in", run_python_check("no-mark-good"),
     lambda l: edit(l / "recipes-core/images/harmony-image.bb", r"^BAD_RECOMMENDATIONS.*\n", "")),
    ("kas repo on a branch", run_python_check("kas-pinned"),
     lambda l: edit(first(l.parent / "image" / "kas", "*.yml"), r"commit: [0-9a-f]{40}", "branch: master")),
    ("kas file with a misspelt key", run_python_check("kas-pinned"),
     lambda l: append(first(l.parent / "image" / "kas", "qemuarm64.yml"), "machin: qemuarm64\n")),
    ("kas include that does not exist", run_python_check("kas-pinned"),
     lambda l: edit(first(l.parent / "image" / "kas", "raspberrypi5.yml"), r"raspberrypi\.yml", "raspberry.yml")),
    ("wks back in <layer>/wic", run_python_check("wic-location"),
     lambda l: (l / "wic").mkdir()),
    ("second copy of the boot script", run_python_check("single-copy"),
     lambda l: (l.parent / "image" / "qemu").mkdir(parents=True, exist_ok=True)
     or (l.parent / "image" / "qemu" / "boot.cmd.in").write_text("# copy\n")),
    ("data mount on the wrong partition", run_python_check("partition-mounts"),
     lambda l: edit(l / f"{PARTITIONS}/files/qemuarm64/data.mount", r"^What=/dev/vda4$", "What=/dev/vda3")),
    ("boot partition mounted elsewhere", run_python_check("partition-mounts"),
     lambda l: edit(l / f"{PARTITIONS}/files/rpi/boot-firmware.mount", r"^Where=/boot/firmware$", "Where=/boot")),
    ("image without the mount units", run_python_check("partition-mounts"),
     lambda l: edit(l / IMAGE, r"^    harmony-partitions \\\n", "")),
    ("wic rewrites fstab in the .wic only", run_python_check("partition-mounts"),
     lambda l: edit(l / IMAGE, r"^WIC_CREATE_EXTRA_ARGS.*\n", "")),
    ("mount unit never enabled", run_python_check("partition-mounts"),
     lambda l: edit(l / f"{PARTITIONS}/harmony-partitions_1.0.bb", r"boot-firmware\.mount data\.mount harmony", "data.mount harmony")),
    ("builder writes its own fstab", run_python_check("builder-uses-layer"),
     lambda l: append(l.parent / BUILDER, '\n\ndef mounts(root):\n    write(root / "etc/fstab", "/dev/vda4 /data ext4\\n")\n')),
    ("builder writes its own agent unit", run_python_check("builder-uses-layer"),
     lambda l: append(l.parent / BUILDER, '\n\ndef unit(root):\n    write(root / "etc/systemd/system/harmony-agent.service", "")\n')),
    ("builder installs a layer file elsewhere", run_python_check("builder-uses-layer"),
     lambda l: edit(l.parent / BUILDER, r'"etc/fw_env\.config", 0o644', '"etc/fw_env.conf", 0o644')),
    ("recipe installs a file the QEMU image lacks", run_python_check("builder-uses-layer"),
     lambda l: append(l / f"{PARTITIONS}/harmony-partitions_1.0.bb",
                      "do_install:append() {\n    install -m 0644 ${HARMONY_UNPACKDIR}/x.conf ${D}${sysconfdir}/x.conf\n}\n")),
    ("IMAGE_INSTALL without packagegroup-base", run_python_check("image-content"),
     lambda l: edit(l / IMAGE, r"^    packagegroup-base \\\n", "")),
    ("distro keeps x11", run_python_check("image-content"),
     lambda l: edit(l / "conf/distro/harmony.conf", r"^(DISTRO_FEATURES:remove = \".*)\bx11 ", r"\1")),
    ("release build with development keys only warns", run_python_check("release-keys"),
     lambda l: edit(l / "classes-global/harmony_sanity.bbclass", r"bb\.fatal\(\"RELEASE", 'bb.warn("RELEASE')),
    ("release kas lets a missing key fall back", run_python_check("release-keys"),
     lambda l: edit(l.parent / "image/kas/release.yml", r'^    HARMONY_RAUC_SIGNING_KEY \?= ""\n', "")),
    ("runqemu without U-Boot as firmware", run_python_check("runqemu"),
     lambda l: edit(l / IMAGE, r"^QB_DEFAULT_BIOS:qemuarm64 = .*\n", "")),
    ("runqemu attaches the wic as virtio-scsi (sda)", run_python_check("runqemu"),
     lambda l: edit(l / IMAGE, r"^QB_DRIVE_TYPE:qemuarm64 = .*\n", "")),
    ("agent accepts larger bundles than RAUC", run_python_check("limits"),
     lambda l: edit(l / "recipes-harmony/harmony-agent/files/agent.toml", r"^max_bundle_bytes = \d+", "max_bundle_bytes = 4294967296")),
    ("slot without resize=true", run_python_check("limits"),
     lambda l: edit(l / "recipes-core/rauc/files/raspberrypi5/system.conf", r"^resize=true\n", "")),
    ("agent licence from the common licence directory", run_python_check("agent-licences"),
     lambda l: edit(first(l, "recipes-harmony/harmony-agent/harmony-agent_*.bb"), r"^LIC_FILES_CHKSUM = .*$",
                    'LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"')),
    ("workspace licence line changed", run_python_check("agent-licences"),
     lambda l: edit(l.parent / "Cargo.toml", r'^license = "Apache-2.0"$', 'license = "MIT"')),
    ("crate without a licence entry", run_python_check("agent-licences"),
     lambda l: edit(l / "recipes-harmony/harmony-agent/harmony-agent-licenses.inc", r"^#   tokio \S+: .*\n", "")),
    ("agent cannot delete the enrollment file (boot partition read-only to it)", run_python_check("enroll-file"),
     lambda l: edit(l / "recipes-harmony/harmony-agent/files/harmony-agent.service", r"^ReadWritePaths=.*\n", "")),
    ("agent looks for the enrollment file before the boot partition is mounted", run_python_check("enroll-file"),
     lambda l: edit(l / "recipes-harmony/harmony-agent/files/harmony-agent.service",
                    r"^(After=.*) boot-firmware\.mount", r"\1")),
    ("agent imports the enrollment file from elsewhere", run_python_check("enroll-file"),
     lambda l: edit(l / "recipes-harmony/harmony-agent/files/agent.toml", r'^import_from = .*$',
                    'import_from = "/boot/harmony-enroll.toml"')),
    ("enrollment file baked in without HARMONY_ENROLL_FILE", run_python_check("enroll-file"),
     lambda l: edit(l / IMAGE, r"^IMAGE_BOOT_FILES:append = .*$", 'IMAGE_BOOT_FILES:append = " harmony-enroll.toml"')),
    ("baked-in token put into sstate", run_python_check("enroll-file"),
     lambda l: edit(l / "recipes-core/harmony-enroll/harmony-enroll_1.0.bb", r"^SSTATE_SKIP_CREATION.*\n", "")),
    ("bundle carries the baked-in token", run_python_check("enroll-file"),
     lambda l: edit(l / "recipes-core/bundles/harmony-bundle.bb", r"^    if d\.getVar\('HARMONY_ENROLL_FILE'\):\n(?:        .*\n)+", "")),
    ("bundle's scrub only deletes (token left in free clusters)", run_python_check("enroll-file"),
     lambda l: edit(l / "recipes-core/bundles/harmony-bundle.bb", r"data\[pos:pos \+ len\(piece\)\] = ", "_ = ")),
    ("sanity class bakes in any file", run_python_check("enroll-file"),
     lambda l: edit(l / "classes-global/harmony_sanity.bbclass", r"if not re\.search\(r\"\"\"\^", 'if False and re.search(r"""^')),
]


def prove(desc, check, breaker) -> str:
    """One case: 'caught', 'MISSED', 'UNPROVEN' or 'CRASHED', with the reason."""
    # BitBake caches parsed files by path: the broken copy needs a path of
    # its own, not the baseline's.
    with tempfile.TemporaryDirectory(prefix="mh-selftest-") as base, \
            tempfile.TemporaryDirectory(prefix="mh-selftest-") as tmp:
        try:
            if check(make_copy(Path(base))):
                return "UNPROVEN", "the check already fails on the unbroken copy"
            layer = make_copy(Path(tmp))
            try:
                breaker(layer)
            except (LookupError, FileNotFoundError) as e:
                return "UNPROVEN", f"cannot break it ({e})"
            if check(layer):
                return "caught", ""
            return "MISSED", "the check passes on the broken copy"
        except Crashed as e:
            return "CRASHED", str(e)


def main() -> int:
    outcomes = []
    for desc, check, breaker in CASES:
        outcome, why = prove(desc, check, breaker)
        outcomes.append(outcome)
        print(f"  {outcome:<9} {desc}" + (f": {why}" if why else ""), flush=True)
    caught = outcomes.count("caught")
    print(f"{caught} of {len(CASES)} breaks caught")
    return 0 if caught == len(CASES) == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
