"""enroll-file: the zero-touch enrollment file's way through the layer (issue 14).

The name is the protocol's (protocol/src/enroll.rs ENROLL_FILE_NAME). The
agent's config imports it from the boot partition's mount point, and its
unit may write there (ProtectSystem would make it read-only) and waits for
that mount. HARMONY_ENROLL_FILE: empty changes nothing; set, the image puts
the deployed file on the boot partition, the deploy never reaches sstate, and
the bundle scrubs it from its boot image. The sanity class's validation and
the bundle's scrub are run, not just read (the scrub only where mkfs.vfat and
mtools are installed: it says so when they are not).
"""

import re
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path

import bbharness

ENROLL_RECIPE = "recipes-core/harmony-enroll/harmony-enroll_1.0.bb"
SANITY = "classes-global/harmony_sanity.bbclass"
AGENT_FILES = "recipes-harmony/harmony-agent/files"
PARTITION_FILES = "recipes-core/harmony-partitions/files"
VARIABLE = "HARMONY_ENROLL_FILE"

GOOD = 'token = "hfe1_0123abcd_S3cretS3cretS3cretS3cret"\nnats_urls = ["tls://nats.example:4222"]\n'


def protocol_name(repo: Path):
    src = repo / "protocol/src/enroll.rs"
    m = re.search(r'pub const ENROLL_FILE_NAME: &str = "([^"]+)";', src.read_text()) if src.is_file() else None
    return m.group(1) if m else None


def python_def(text: str, name: str):
    """The source of a top-level `def name(...)` of a BitBake file."""
    m = re.search(rf"^def {name}\(.*?(?=^\S)", text + "\n#", re.S | re.M)
    if not m:
        return None
    ns = {}
    exec(m.group(0), ns)
    return ns[name]


def boot_mount_points(layer: Path):
    points = set()
    for unit in sorted((layer / PARTITION_FILES).glob("*/boot-firmware.mount")):
        m = re.search(r"^Where=(\S+)", unit.read_text(), re.M)
        points.add(m.group(1) if m else None)
    return points


def unit_values(text: str, key: str):
    out = []
    for line in text.splitlines():
        if line.startswith(key + "="):
            out += line.split("=", 1)[1].split()
    return out


def check_enroll_file(ctx, image_rel: str, bundle_rel: str, machines):
    problems = []
    layer = ctx.layer
    name = protocol_name(ctx.repo)
    if not name:
        return ["protocol/src/enroll.rs: no ENROLL_FILE_NAME"]

    # The agent: config, unit.
    points = boot_mount_points(layer)
    if len(points) != 1 or None in points:
        return [f"{PARTITION_FILES}/*/boot-firmware.mount: no single Where= ({sorted(map(str, points))})"]
    boot = points.pop()
    want = f"{boot}/{name}"
    cfg = tomllib.loads((layer / AGENT_FILES / "agent.toml").read_text())
    got = cfg.get("enroll", {}).get("import_from")
    if got != want:
        problems.append(f"agent.toml: [enroll] import_from is {got!r}, the boot partition's file is {want!r}")
    unit = (layer / AGENT_FILES / "harmony-agent.service").read_text()
    if "boot-firmware.mount" not in unit_values(unit, "After"):
        problems.append("harmony-agent.service: not After=boot-firmware.mount: the agent may look for "
                        f"{name} before the boot partition is mounted")
    protect = (unit_values(unit, "ProtectSystem") or ["no"])[-1]
    writable = [p.lstrip("-+") for p in unit_values(unit, "ReadWritePaths")]
    if protect not in ("no", "false") and boot not in writable and "/boot" not in writable:
        problems.append(f"harmony-agent.service: ProtectSystem={protect} makes {boot} read-only to the agent "
                        f"and nothing (ReadWritePaths) undoes it: it could not delete {name}")

    # The build, without and with the variable.
    sanity = (layer / SANITY).read_text()
    if not re.search(rf"^{VARIABLE} \?= \"\"$", sanity, re.M):
        problems.append(f"{SANITY}: {VARIABLE} has no empty default")
    with tempfile.TemporaryDirectory(prefix="enroll-check-") as tmp:
        good = Path(tmp) / "factory-enroll.toml"
        good.write_text(GOOD)
        for machine in machines:
            for local in (None, {VARIABLE: str(good)}):
                on = local is not None
                where = f"[{machine}, {VARIABLE} {'set' if on else 'empty'}]"
                image = ctx.recipe(image_rel, machine, local=local)
                files = (image.getVar("IMAGE_BOOT_FILES") or "").split()
                deps = (image.getVarFlag("do_image_wic", "depends") or "").split()
                if (name in files) != on:
                    problems.append(f"{where} harmony-image: IMAGE_BOOT_FILES {'lacks' if on else 'has'} {name}")
                if ("harmony-enroll:do_deploy" in deps) != on:
                    problems.append(f"{where} harmony-image: do_image_wic {'does not wait' if on else 'waits'} "
                                    "for harmony-enroll:do_deploy")
                recipe = ctx.recipe(ENROLL_RECIPE, machine, local=local)
                skipped = recipe.getVar("__SKIPPED")
                if bool(skipped) == on:
                    problems.append(f"{where} harmony-enroll: {'skipped' if on else 'not skipped'}")
                bundle = ctx.recipe(bundle_rel, machine, local=local)
                if ("mtools-native" in (bundle.getVar("DEPENDS") or "").split()) != on:
                    problems.append(f"{where} harmony-bundle: DEPENDS {'lacks' if on else 'has'} mtools-native")
                if not on:
                    continue
                # bb-parse covers the default; the same with the variable set.
                for rel, dd in ((image_rel, image), (ENROLL_RECIPE, recipe), (bundle_rel, bundle)):
                    problems += bbharness.check_functions(dd, f"{rel} {where}")
                    problems += bbharness.check_expansions(dd, f"{rel} {where}")
                if recipe.getVar("SRC_URI").split() != [f"file://{good}"]:
                    problems.append(f"{where} harmony-enroll: SRC_URI is {recipe.getVar('SRC_URI')!r}")
                if f"${{DEPLOYDIR}}/{name}" not in (recipe.getVar("do_deploy", False) or ""):
                    problems.append(f"{where} harmony-enroll: do_deploy does not deploy {name}")
                if recipe.getVar("SSTATE_SKIP_CREATION:task-deploy") != "1":
                    problems.append(f"{where} harmony-enroll: do_deploy would put the token into sstate")
                if bundle.getVar("HARMONY_ENROLL_FILE_NAME") != name:
                    problems.append(f"{where} harmony-bundle: scrubs {bundle.getVar('HARMONY_ENROLL_FILE_NAME')!r}, "
                                    f"the file is {name!r}")
                body = bundle.getVar("do_harmony_boot_image", False) or ""
                if "harmony_scrub_boot_file(" not in body:
                    problems.append(f"{where} harmony-bundle: do_harmony_boot_image does not scrub {name}: "
                                    "every bundle would carry the token")
                if "do_prepare_recipe_sysroot" not in (bundle.getVarFlag("do_harmony_boot_image", "deps") or []):
                    problems.append(f"{where} harmony-bundle: do_harmony_boot_image may run before mtools-native "
                                    "is in its sysroot")

        # The sanity class's validation, run.
        validate = python_def(sanity, "harmony_enroll_file_problems")
        if validate is None:
            problems.append(f"{SANITY}: no harmony_enroll_file_problems")
        else:
            bad = Path(tmp) / "not-enroll.toml"
            bad.write_text('# a NATS .creds file by mistake\nnats_urls = ["nats://x:4222"]\n')

            class D(dict):
                def getVar(self, k):
                    return self.get(k)
            for value, ok in (("", True), (str(good), True), (str(bad), False),
                              ("relative/enroll.toml", False), (str(Path(tmp) / "missing.toml"), False)):
                found = validate(D({VARIABLE: value}))
                if (not found) != ok:
                    problems.append(f"{SANITY}: harmony_enroll_file_problems({value!r}) = {found}")

        # The bundle's scrub, run on a real FAT image.
        tools = ["mkfs.vfat", "mcopy", "mdel", "mtype", "mdir"]
        missing = [t for t in tools if not shutil.which(t)]
        scrub = python_def((layer / bundle_rel).read_text(), "harmony_scrub_boot_file")
        if scrub is None:
            problems.append(f"{bundle_rel}: no harmony_scrub_boot_file")
        elif missing:
            print(f"  enroll-file: scrub not run, {', '.join(missing)} not installed")
        else:
            problems += run_scrub(scrub, Path(tmp), name, Path(shutil.which("mdel")).parent)
    return problems


def run_scrub(scrub, tmp: Path, name: str, bindir: Path):
    problems = []
    pem = "-----BEGIN CERTIFICATE-----\n" + "\n".join("MIIB%060d" % i for i in range(30)) + "\n-----END CERTIFICATE-----\n"
    content = GOOD + 'nats_ca_pem = """\n' + pem + '"""\n'
    src = tmp / "scrub-src.toml"
    src.write_text(content)
    other = tmp / "boot.scr"
    other.write_bytes(bytes(range(256)) * 12)
    for label, mkfs in (("FAT16, 2 KiB clusters", ["-s", "4"]), ("FAT32, 512-byte clusters", ["-F", "32", "-s", "1"])):
        img = tmp / "boot.vfat"
        img.unlink(missing_ok=True)

        def sh(*args):
            subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sh("mkfs.vfat", *mkfs, "-C", str(img), "65536")
        sh("mcopy", "-i", str(img), str(other), "::boot.scr")
        sh("mcopy", "-i", str(img), str(src), "::" + name)
        try:
            n = scrub(str(img), name, str(bindir))
        except RuntimeError as e:
            problems.append(f"harmony_scrub_boot_file ({label}): {e}")
            continue
        data = img.read_bytes()
        listing = subprocess.run(["mdir", "-b", "-i", str(img), "::/"], capture_output=True, text=True).stdout
        kept = subprocess.run(["mtype", "-i", str(img), "::boot.scr"], capture_output=True).stdout
        if n == 0 or b"S3cretS3cret" in data or b"MIIB0000" in data:
            problems.append(f"harmony_scrub_boot_file ({label}): the file's content is still in the image")
        if name in listing:
            problems.append(f"harmony_scrub_boot_file ({label}): {name} is still listed")
        if kept != other.read_bytes():
            problems.append(f"harmony_scrub_boot_file ({label}): damaged another file")
        if scrub(str(img), name, str(bindir)) != 0:
            problems.append(f"harmony_scrub_boot_file ({label}): did something on an image without {name}")
    return problems
