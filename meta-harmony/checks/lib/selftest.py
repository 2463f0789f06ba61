#!/usr/bin/env python3
"""Prove that each check fails when the thing it guards is broken.

For every case: copy the layer (and the repository files the checks read)
into a fresh temporary directory, confirm the check passes on the copy,
break one thing, and confirm the check now fails. A case whose check already
fails on the unbroken copy proves nothing and is reported as such (the
failing check itself is reported by checks/run). Exit 1 if any break went
unnoticed.
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
COPY_FROM_REPO = ["Cargo.toml", "Cargo.lock", "agent/Cargo.toml", "image/kas"]


# Stand-ins used in the temporary copy only while the real boot-chain file
# does not exist yet, so that the checks can still be proven on realistic
# input. Where the real file exists, the real file is what is tested.
FIXTURE_SYSTEM_CONF = """[system]
compatible=harmony-{machine}
bootloader=uboot
data-directory=/data/rauc

[keyring]
path=ca.cert.pem

[slot.rootfs.0]
device=/dev/{disk}2
type=ext4
bootname=A

[slot.rootfs.1]
device=/dev/{disk}3
type=ext4
bootname=B
"""
FIXTURE_WKS = """bootloader --ptable msdos
part /boot --source bootimg-partition --ondisk {disk_wks} --fstype=vfat --label boot --active
part / --source rootfs --ondisk {disk_wks} --fstype=ext4 --label rootfs_a --fixed-size 320M
part / --source rootfs --ondisk {disk_wks} --fstype=ext4 --label rootfs_b --fixed-size 320M
part /data --ondisk {disk_wks} --fstype=ext4 --label data --size 64M
"""
FIXTURE_FW_ENV = "/boot/uboot.env 0x0000 0x4000\n"
FIXTURE_BOOT_CMD = """# Stand-in boot script. Placeholders:
#   @@KERNEL_IMAGETYPE@@  kernel image file name
#   @@KERNEL_BOOTCMD@@    booti
test -n "${BOOT_ORDER}" || setenv BOOT_ORDER "A B"
test -n "${BOOT_A_LEFT}" || setenv BOOT_A_LEFT 3
test -n "${BOOT_B_LEFT}" || setenv BOOT_B_LEFT 3
for s in ${BOOT_ORDER}; do
  if test "${s}" = "A" && test ${BOOT_A_LEFT} -gt 0; then setexpr BOOT_A_LEFT ${BOOT_A_LEFT} - 1; setenv slot A; fi
  if test "${s}" = "B" && test ${BOOT_B_LEFT} -gt 0; then setexpr BOOT_B_LEFT ${BOOT_B_LEFT} - 1; setenv slot B; fi
done
saveenv
setenv bootargs "${bootargs} rauc.slot=${slot}"
load mmc 0:2 ${kernel_addr_r} boot/@@KERNEL_IMAGETYPE@@
@@KERNEL_BOOTCMD@@ ${kernel_addr_r} - ${fdt_addr}
"""


def add_fixtures(layer: Path):
    disks = {"qemuarm64": "vda"}
    for machine in checks.MACHINES:
        disk = disks.get(machine, "mmcblk0p")
        disk_wks = disk.rstrip("p")
        fixtures = {
            f"recipes-core/rauc/files/{machine}/system.conf": FIXTURE_SYSTEM_CONF.format(machine=machine, disk=disk),
            f"recipes-bsp/libubootenv/files/{machine}/fw_env.config": FIXTURE_FW_ENV,
            f"files/wic/harmony-{machine}.wks": FIXTURE_WKS.format(disk_wks=disk_wks),
        }
        for rel, text in fixtures.items():
            path = layer / rel
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    boot = layer / "recipes-bsp/u-boot/files/boot.cmd.in"
    if not boot.exists():
        boot.parent.mkdir(parents=True, exist_ok=True)
        boot.write_text(FIXTURE_BOOT_CMD)
    agent_files = layer / "recipes-harmony/harmony-agent/files"
    for name in ("harmony-agent.service", "agent.toml"):
        if not (agent_files / name).exists():
            agent_files.mkdir(parents=True, exist_ok=True)
            (agent_files / name).write_text("# stand-in\n")


def move_legacy_wic(layer: Path):
    """The unbroken copy uses files/wic even while the tree still has wic/
    (the wic-location check reports that on the real tree)."""
    legacy = layer / "wic"
    if legacy.is_dir():
        (layer / "files").mkdir(exist_ok=True)
        if not (layer / "files" / "wic").exists():
            legacy.rename(layer / "files" / "wic")
        else:
            shutil.rmtree(legacy)


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
    move_legacy_wic(root / "meta-harmony")
    add_fixtures(root / "meta-harmony")
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


def run_python_check(name):
    def run(layer: Path):
        ctx = checks.Ctx(layer)
        try:
            return bool(checks.CHECKS[name](ctx))
        except Exception:
            return True
        finally:
            ctx.h.close()
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
]


def main() -> int:
    missed = 0
    for desc, check, breaker in CASES:
        # BitBake caches parsed files by path: the broken copy needs a path
        # of its own, not the baseline's.
        with tempfile.TemporaryDirectory(prefix="mh-selftest-") as base, \
                tempfile.TemporaryDirectory(prefix="mh-selftest-") as tmp:
            if check(make_copy(Path(base))):
                print(f"  unproven  {desc}: the check already fails on the unbroken copy")
                continue
            layer = make_copy(Path(tmp))
            try:
                breaker(layer)
            except (LookupError, FileNotFoundError) as e:
                print(f"  unproven  {desc}: cannot break it ({e})")
                continue
            if check(layer):
                print(f"  caught    {desc}")
            else:
                print(f"  MISSED    {desc}")
                missed += 1
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
