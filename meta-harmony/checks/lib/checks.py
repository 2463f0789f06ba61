#!/usr/bin/env python3
"""meta-harmony's static checks (everything but oelint-adv).

    checks.py [--layer DIR] [NAME ...]

Runs the named checks (all by default) against the layer in DIR (default:
the layer this file belongs to; its parent directory is taken as the
repository root holding Cargo.toml, Cargo.lock and image/kas/). Prints
`PASS name` or `FAIL name` followed by the problems, one per line, and exits
non-zero if any check failed. checks/run counts these lines.
"""

import argparse
import configparser
import re
import subprocess
import sys
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bbharness  # noqa: E402
import bootenv  # noqa: E402
import bootregion  # noqa: E402
import bootstate  # noqa: E402
import enroll  # noqa: E402
import parity  # noqa: E402
import product  # noqa: E402
import wks  # noqa: E402
from bbharness import MACHINES  # noqa: E402

CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"

# The variables RAUC's uboot backend reads and writes (RAUC docs, "U-Boot"):
# BOOT_ORDER and BOOT_<bootname>_LEFT for every slot's bootname.
RAUC_UBOOT_ORDER_VAR = "BOOT_ORDER"


class Ctx:
    def __init__(self, layer: Path):
        self.layer = layer.resolve()
        self.repo = self.layer.parent
        self.h = bbharness.Harness(self.layer)
        self._cache = {}
        self.machines = MACHINES

    def recipe(self, rel: str, machine: str, distro: str = "harmony", local=None):
        key = (rel, machine, distro, tuple(sorted((local or {}).items())))
        if key not in self._cache:
            self._cache[key] = self.h.recipe(self.layer / rel, machine, distro, local)
        return self._cache[key]

    def machine_file(self, rel_dir: str, machine: str, name: str) -> Path:
        return self.layer / rel_dir / "files" / machine / name


AGENT = "recipes-harmony/harmony-agent"
RAUC_CONF_DIR = "recipes-core/rauc"
LIBUBOOTENV_DIR = "recipes-bsp/libubootenv"
UBOOT_DIR = "recipes-bsp/u-boot"
IMAGE = "recipes-core/images/harmony-image.bb"
BUNDLE = "recipes-core/bundles/harmony-bundle.bb"


def agent_recipe(ctx: Ctx) -> str:
    found = sorted((ctx.layer / AGENT).glob("harmony-agent_*.bb"))
    if len(found) != 1:
        raise CheckError(f"expected one {AGENT}/harmony-agent_<version>.bb, found {len(found)}")
    return str(found[0].relative_to(ctx.layer))


class CheckError(Exception):
    pass


# --------------------------------------------------------------------------
# parsers for the boot-chain files
# --------------------------------------------------------------------------

def read_system_conf(path: Path) -> configparser.ConfigParser:
    if not path.is_file():
        raise CheckError(f"{path} does not exist")
    cp = configparser.ConfigParser(interpolation=None, strict=True)
    cp.optionxform = str  # keys are case-sensitive in RAUC
    try:
        cp.read_string(path.read_text(), source=str(path))
    except configparser.Error as e:
        raise CheckError(f"{path}: {e}")
    return cp


def read_wks(path: Path, d=None):
    """(ptable, [partition dicts]) from a .wks / .wks.in file."""
    if not path.is_file():
        raise CheckError(f"{path} does not exist")
    return wks.read_wks(path, d.expand if d is not None else None)


def read_fw_env(path: Path):
    if not path.is_file():
        raise CheckError(f"{path} does not exist")
    entries = []
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if len(words) < 3:
            raise CheckError(f"{path}:{lineno}: want 'device offset size [sector size]'")
        try:
            nums = [int(w, 0) for w in words[1:]]
        except ValueError:
            raise CheckError(f"{path}:{lineno}: offset/size are not numbers: {line}")
        entries.append({"device": words[0], "offset": nums[0], "size": nums[1], "line": lineno})
    if not 1 <= len(entries) <= 2:
        raise CheckError(f"{path}: want one environment copy, or two (redundant), found {len(entries)}")
    if len(entries) == 2 and entries[0]["size"] != entries[1]["size"]:
        raise CheckError(f"{path}: the two redundant copies differ in size")
    return entries


def boot_script(ctx: Ctx) -> Path:
    return ctx.layer / UBOOT_DIR / "files" / "boot.cmd.in"


def placeholders(text: str):
    return set(re.findall(r"@@([A-Za-z0-9_]+)@@", text))


# --------------------------------------------------------------------------
# checks: each returns a list of problems (empty = pass)
# --------------------------------------------------------------------------

def check_bb_parse(ctx: Ctx):
    """Every recipe and bbappend, for every machine, through BitBake's parser;
    every shell and Python function body through its parsers."""
    problems = []
    files = bbharness.layer_files(ctx.layer)
    if not files:
        return ["no BitBake files found"]
    for machine in MACHINES:
        try:
            ctx.h.config(machine)
        except Exception as e:
            return [f"configuration ({machine}): {type(e).__name__}: {e}"]
        for f in files:
            if f.suffix not in (".bb", ".bbappend"):
                continue  # .inc/.bbclass/.conf are parsed through these
            rel = str(f.relative_to(ctx.layer))
            where = f"{rel} [{machine}]"
            try:
                d = ctx.recipe(rel, machine)
            except Exception as e:
                problems.append(f"{where}: {type(e).__name__}: {e}")
                continue
            problems += bbharness.check_functions(d, where)
            problems += bbharness.check_expansions(d, where)
    return sorted(set(problems))


def check_bbappend_gating(ctx: Ctx):
    """A bbappend is one DISTRO_FEATURE-gated `require` of <recipe>_harmony.inc
    and changes nothing when the feature is off."""
    problems = []
    gate = re.compile(r"^require \$\{@bb\.utils\.contains\('DISTRO_FEATURES', 'harmony', "
                      r"'\$\{BPN\}_harmony\.inc', '', d\)\}$")
    for f in sorted(list(ctx.layer.glob("recipes-*/**/*.bbappend"))
                    + list(ctx.layer.glob("dynamic-layers/*/recipes-*/**/*.bbappend"))):
        rel = str(f.relative_to(ctx.layer))
        code = [ln for ln in f.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if len(code) != 1 or not gate.match(code[0]):
            problems.append(f"{rel}: must contain only the gated require of ${{BPN}}_harmony.inc")
            continue
        try:
            d = ctx.recipe(rel, "qemuarm64", distro="nodistro")
        except Exception as e:
            problems.append(f"{rel} without the feature: {type(e).__name__}: {e}")
            continue
        included = [x for x in (d.getVar("BBINCLUDED") or "").split() if x.endswith("_harmony.inc")]
        if included or (d.getVar("SRC_URI") or "").strip():
            problems.append(f"{rel}: active although 'harmony' is not in DISTRO_FEATURES")
    return problems


def check_agent_crates(ctx: Ctx):
    """The agent recipe's crate:// entries and checksums equal Cargo.lock's."""
    lock_path = ctx.repo / "Cargo.lock"
    if not lock_path.is_file():
        return [f"{lock_path} does not exist"]
    lock = tomllib.loads(lock_path.read_text())
    want = {}
    problems = []
    for pkg in lock.get("package", []):
        if pkg.get("source") is None:
            continue
        if pkg["source"] != CRATES_IO:
            problems.append(f"Cargo.lock: {pkg['name']} {pkg['version']} is not from crates.io")
            continue
        want[f"{pkg['name']}-{pkg['version']}"] = pkg.get("checksum")
    d = ctx.recipe(agent_recipe(ctx), "qemuarm64")
    have = {}
    for uri in (d.getVar("SRC_URI") or "").split():
        m = re.match(r"crate://crates\.io/([^/;]+)/([^/;]+)", uri)
        if m:
            key = f"{m.group(1)}-{m.group(2)}"
            have[key] = d.getVarFlag("SRC_URI", f"{key}.sha256sum")
    for key in sorted(set(want) - set(have)):
        problems.append(f"in Cargo.lock, not in the recipe: {key}")
    for key in sorted(set(have) - set(want)):
        problems.append(f"in the recipe, not in Cargo.lock: {key}")
    for key in sorted(set(want) & set(have)):
        if want[key] != have[key]:
            problems.append(f"{key}: sha256sum {have[key]} in the recipe, {want[key]} in Cargo.lock")
    if problems:
        problems.append("regenerate with meta-harmony/scripts/update-agent-crates")
    return problems


def check_agent_sources(ctx: Ctx):
    """The recipe fetches every workspace member and carries the workspace version."""
    problems = []
    manifest = tomllib.loads((ctx.repo / "Cargo.toml").read_text())
    ws = manifest.get("workspace", {})
    members = set(ws.get("members", []))
    rel = agent_recipe(ctx)
    d = ctx.recipe(rel, "qemuarm64")
    listed = set((d.getVar("HARMONY_WORKSPACE_MEMBERS") or "").split())
    if members != listed:
        problems.append(f"HARMONY_WORKSPACE_MEMBERS is {sorted(listed)}, Cargo.toml has {sorted(members)}")
    version = ws.get("package", {}).get("version")
    agent_manifest = ctx.repo / "agent" / "Cargo.toml"
    if agent_manifest.is_file():
        pkg = tomllib.loads(agent_manifest.read_text()).get("package", {})
        if isinstance(pkg.get("version"), str):
            version = pkg["version"]
    if version != d.getVar("PV"):
        problems.append(f"{rel}: PV {d.getVar('PV')} but the agent's Cargo version is {version}")
    uris = (d.getVar("SRC_URI") or "").split()
    for name in ("Cargo.toml", "Cargo.lock"):
        if not any(u.startswith(f"file://{name};") for u in uris):
            problems.append(f"{rel}: SRC_URI lacks file://{name}")
    return problems


def _search_local(ctx: Ctx, d, name: str):
    """Where BitBake's FILESPATH search would find file://name, or None."""
    if name.startswith("/"):
        return Path(name) if Path(name).exists() else None
    dirs = [p for p in (d.getVar("FILESEXTRAPATHS") or "").split(":") if p and p != "__default"]
    fdir = d.getVar("FILE_DIRNAME")
    dirs += [f"{fdir}/{d.getVar('BP')}", f"{fdir}/{d.getVar('BPN')}", f"{fdir}/files"]
    overrides = (d.getVar("FILESOVERRIDES") or "").split(":")
    for base in dirs:
        for ov in list(reversed(overrides)) + [""]:
            cand = Path(base) / ov / name if ov else Path(base) / name
            if cand.exists():
                return cand
    return None


def check_local_files(ctx: Ctx):
    """Every file:// entry of our recipes exists, for every machine (BitBake
    stops parsing on a missing one)."""
    problems = []
    recipes = [p for pat in ("recipes-*/**/*.bb", "recipes-*/**/*.bbappend",
                             "dynamic-layers/*/recipes-*/**/*.bbappend") for p in ctx.layer.glob(pat)]
    for f in sorted(recipes):
        rel = str(f.relative_to(ctx.layer))
        for machine in MACHINES:
            d = ctx.recipe(rel, machine)
            for uri in (d.getVar("SRC_URI") or "").split():
                if not uri.startswith("file://"):
                    continue
                name = uri[len("file://"):].split(";", 1)[0]
                if _search_local(ctx, d, name) is None:
                    problems.append(f"{rel} [{machine}]: file://{name} not found")
    return sorted(set(problems))


def _wks_for(ctx: Ctx, machine: str):
    d = ctx.recipe(IMAGE, machine)
    wks_name = (d.getVar("WKS_FILE") or "").strip()
    if not wks_name:
        raise CheckError(f"{IMAGE}: WKS_FILE is not set for {machine}")
    path = ctx.layer / "files" / "wic" / wks_name
    if not path.is_file() and (ctx.layer / "wic" / wks_name).is_file():
        path = ctx.layer / "wic" / wks_name  # the wic-location check reports this
    return path, read_wks(path, d)


def _wks_and_system_conf(ctx: Ctx, problems):
    """(machine, "where" prefix, ptable, wks parts, system.conf) per machine;
    a machine whose files cannot be read is a problem and is skipped."""
    for machine in MACHINES:
        try:
            wks_path, (ptable, parts) = _wks_for(ctx, machine)
            sc_path = ctx.machine_file(RAUC_CONF_DIR, machine, "system.conf")
            sc = read_system_conf(sc_path)
        except CheckError as e:
            problems.append(f"[{machine}] {e}")
            continue
        yield machine, f"[{machine}] {sc_path.relative_to(ctx.layer)} vs {wks_path.name}", ptable, parts, sc


def check_wks_vs_system_conf(ctx: Ctx):
    """The rootfs slots in system.conf are two distinct ext4 rootfs partitions
    of the machine's wks, and the data directory is on the data partition."""
    problems = []
    for machine, where, ptable, parts, sc in _wks_and_system_conf(ctx, problems):
        by_device = {p.get("device"): p for p in parts if p.get("device")}
        by_label = {p.get("label"): p for p in parts if p.get("label")}
        by_partname = {p.get("part-name"): p for p in parts if p.get("part-name")}
        slots = [s for s in sc.sections() if s.startswith("slot.rootfs.")]
        if sorted(slots) != ["slot.rootfs.0", "slot.rootfs.1"]:
            problems.append(f"{where}: want slots rootfs.0 and rootfs.1, found {slots}")
        used = []
        for s in slots:
            dev = sc[s].get("device", "")
            part = by_device.get(dev)
            if part is None and dev.startswith("/dev/disk/by-label/"):
                part = by_label.get(dev.rsplit("/", 1)[1])
            if part is None and dev.startswith("/dev/disk/by-partlabel/"):
                part = by_partname.get(dev.rsplit("/", 1)[1])
            if part is None:
                problems.append(f"{where}: {s} device {dev} is no partition of the wks "
                                f"(it has {sorted(k for k in by_device)})")
                continue
            used.append(part["num"])
            if part.get("mount") != "/":
                problems.append(f"{where}: {s} ({dev}) is wks partition {part['num']}, "
                                f"which is not a rootfs partition (mount {part.get('mount')})")
            fstype = part.get("fstype")
            if sc[s].get("type") != fstype:
                problems.append(f"{where}: {s} type={sc[s].get('type')} but the partition is {fstype}")
            if "bootname" not in sc[s]:
                problems.append(f"{where}: {s} has no bootname")
        if len(used) == 2 and used[0] == used[1]:
            problems.append(f"{where}: both slots are partition {used[0]}")
        rootfs_parts = [p["num"] for p in parts if p.get("mount") == "/"]
        if len(rootfs_parts) != 2:
            problems.append(f"{where}: the wks has {len(rootfs_parts)} rootfs partitions, want 2")
        data_dir = sc["system"].get("data-directory") if sc.has_section("system") else None
        if data_dir:
            mounts = sorted((p.get("mount") for p in parts if p.get("mount") not in (None, "/")),
                            key=len, reverse=True)
            owner = next((m for m in mounts if data_dir.rstrip("/") == m or data_dir.startswith(m.rstrip("/") + "/")), None)
            if owner is None:
                problems.append(f"{where}: data-directory {data_dir} is not on a partition of its own "
                                f"(wks mounts {mounts}); it would be lost with the slot")
    return problems


def _wks_size_kib(text: str):
    m = re.fullmatch(r"(\d+)([KMG]?)", str(text))
    if not m:
        return None
    return int(m.group(1)) * {"K": 1, "": 1024, "M": 1024, "G": 1024 * 1024}[m.group(2)]


def check_rootfs_fits_slot(ctx: Ctx):
    """Both rootfs partitions have the same fixed size, and the image's
    IMAGE_ROOTFS_MAXSIZE keeps the bundle's ext4 image within it."""
    problems = []
    for machine in MACHINES:
        try:
            wks_path, (_, parts) = _wks_for(ctx, machine)
        except CheckError as e:
            problems.append(f"[{machine}] {e}")
            continue
        sizes = []
        for p in parts:
            if p.get("mount") != "/":
                continue
            size = p.get("fixed-size") or p.get("size")
            kib = _wks_size_kib(size) if size else None
            if kib is None:
                problems.append(f"[{machine}] {wks_path.name}:{p['line']}: rootfs partition without a fixed size")
            sizes.append(kib)
        if len(set(sizes)) > 1:
            problems.append(f"[{machine}] {wks_path.name}: rootfs slots differ in size {sizes} (KiB)")
        slot = min((x for x in sizes if x), default=None)
        d = ctx.recipe(IMAGE, machine)
        maxsize = d.getVar("IMAGE_ROOTFS_MAXSIZE")
        if not maxsize:
            problems.append(f"[{machine}] {IMAGE}: no IMAGE_ROOTFS_MAXSIZE; a rootfs larger than the slot "
                            f"({slot} KiB) would only fail at installation")
        elif slot and int(maxsize) > slot:
            problems.append(f"[{machine}] IMAGE_ROOTFS_MAXSIZE {maxsize} KiB exceeds the {slot} KiB slot")
    return problems


def check_bundle_compatible(ctx: Ctx):
    """harmony-bundle's compatible equals system.conf's, and system.conf
    accepts the bundle's format."""
    problems = []
    for machine in MACHINES:
        try:
            sc = read_system_conf(ctx.machine_file(RAUC_CONF_DIR, machine, "system.conf"))
        except CheckError as e:
            problems.append(f"[{machine}] {e}")
            continue
        d = ctx.recipe(BUNDLE, machine)
        bundle = d.getVar("RAUC_BUNDLE_COMPATIBLE")
        system = sc.get("system", "compatible", fallback=None)
        if bundle != system:
            problems.append(f"[{machine}] bundle compatible '{bundle}' != system.conf compatible '{system}'")
        fmt = d.getVar("RAUC_BUNDLE_FORMAT")
        formats = sc.get("system", "bundle-formats", fallback="").split()
        if formats:
            plain = [f for f in formats if not f.startswith(("-", "+"))]
            allowed = set(plain) if plain else {"plain", "verity", "crypt"}
            for f in formats:
                if f.startswith("-"):
                    allowed.discard(f[1:])
                elif f.startswith("+"):
                    allowed.add(f[1:])
            if fmt not in allowed:
                problems.append(f"[{machine}] bundle format {fmt} is not in system.conf bundle-formats={' '.join(formats)}")
    return problems


def check_boot_script_placeholders(ctx: Ctx):
    """Every @@NAME@@ of boot.cmd.in is documented in its header and filled
    by u-boot_harmony.inc; the .inc fills nothing that is not there."""
    path = boot_script(ctx)
    if not path.is_file():
        return [f"{path} does not exist"]
    text = path.read_text()
    used = placeholders(text)
    header = "\n".join(ln for ln in text.splitlines() if ln.lstrip().startswith("#"))
    inc = (ctx.layer / UBOOT_DIR / "u-boot_harmony.inc").read_text()
    filled = set(re.findall(r"s\|@@([A-Za-z0-9_]+)@@\|", inc))
    problems = []
    for name in sorted(used - filled):
        problems.append(f"@@{name}@@ is used in boot.cmd.in but u-boot_harmony.inc does not fill it")
    for name in sorted(filled - used):
        problems.append(f"u-boot_harmony.inc fills @@{name}@@, which boot.cmd.in does not use")
    for name in sorted(used):
        if f"@@{name}@@" not in header:
            problems.append(f"@@{name}@@ is not documented in the comment header of boot.cmd.in")
    return problems


def _script_code(text: str) -> str:
    return "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))


def check_boot_script_vs_env(ctx: Ctx):
    """The boot script drives the variables RAUC's uboot backend uses (for
    system.conf's bootnames), and fw_env.config points where that environment
    is stored and where Linux can reach it."""
    path = boot_script(ctx)
    if not path.is_file():
        return [f"{path} does not exist"]
    code = _script_code(path.read_text())
    problems = []
    for machine in MACHINES:
        try:
            sc = read_system_conf(ctx.machine_file(RAUC_CONF_DIR, machine, "system.conf"))
            env = read_fw_env(ctx.machine_file(LIBUBOOTENV_DIR, machine, "fw_env.config"))
        except CheckError as e:
            problems.append(f"[{machine}] {e}")
            continue
        if sc.get("system", "bootloader", fallback=None) != "uboot":
            problems.append(f"[{machine}] system.conf: bootloader is not uboot")
        bootnames = [sc[s].get("bootname") for s in sc.sections() if s.startswith("slot.rootfs.")]
        for var in [RAUC_UBOOT_ORDER_VAR] + [f"BOOT_{b}_LEFT" for b in bootnames if b]:
            if not re.search(r"\b%s\b" % re.escape(var), code):
                problems.append(f"[{machine}] boot.cmd.in never uses {var}, which RAUC's uboot backend sets")
        for b in bootnames:
            if b and not re.search(r"\b%s\b" % re.escape(b), code):
                problems.append(f"[{machine}] boot.cmd.in does not know bootname {b}")
        if not re.search(r"rauc\.slot=", code):
            problems.append(f"[{machine}] boot.cmd.in does not pass rauc.slot= to the kernel")
        # saveenv, or the script's own write of the environment copies
        # (env export + ${devtype} write: the raw copies of ADR 0004).
        writes_itself = re.search(r"\benv export\b", code) and re.search(r"\$\{devtype\} write\b", code)
        if "saveenv" not in code and not writes_itself:
            problems.append(f"[{machine}] boot.cmd.in never saves the environment (the counter would not count)")
        # Where the environment lives, as far as Linux is concerned.
        try:
            _, (_, parts) = _wks_for(ctx, machine)
        except CheckError as e:
            problems.append(f"[{machine}] {e}")
            continue
        for e in env:
            dev = e["device"]
            if dev.startswith("/dev/"):
                continue  # raw device or MTD: no file system to agree with
            mounts = sorted((p for p in parts if p.get("mount") not in (None, "/")),
                            key=lambda p: len(p["mount"]), reverse=True)
            owner = next((p for p in mounts if dev.startswith(p["mount"].rstrip("/") + "/")), None)
            if owner is None:
                problems.append(f"[{machine}] fw_env.config: {dev} is on no partition the wks mounts "
                                f"({[p['mount'] for p in mounts]})")
                continue
            if owner.get("fstype") != "vfat":
                problems.append(f"[{machine}] fw_env.config: {dev} is on a {owner.get('fstype')} partition; "
                                "U-Boot keeps a file environment on the FAT boot partition")
            fname = dev.rsplit("/", 1)[1]
            if fname not in code and re.search(r"\b\w+\.env\b", code):
                problems.append(f"[{machine}] boot.cmd.in names an env file but not {fname}")
    return problems


def check_keyring(ctx: Ctx):
    """system.conf's keyring is what rauc-conf installs, and the bundle signer
    chains to it."""
    problems = []
    for machine in MACHINES:
        try:
            sc = read_system_conf(ctx.machine_file(RAUC_CONF_DIR, machine, "system.conf"))
        except CheckError as e:
            problems.append(f"[{machine}] {e}")
            continue
        d = ctx.recipe(f"{RAUC_CONF_DIR}/rauc-conf.bbappend", machine)
        name = d.getVar("HARMONY_RAUC_KEYRING_NAME")
        path = sc.get("keyring", "path", fallback=None)
        if path is None:
            problems.append(f"[{machine}] system.conf has no [keyring] path")
        elif path not in (name, f"/usr/lib/rauc/{name}"):
            problems.append(f"[{machine}] system.conf keyring path={path}, rauc-conf installs /usr/lib/rauc/{name}")
    cfg = ctx.h.config("qemuarm64")
    keyring = cfg.getVar("HARMONY_RAUC_KEYRING")
    cert = cfg.getVar("HARMONY_RAUC_SIGNING_CERT")
    for p in (keyring, cert, cfg.getVar("HARMONY_RAUC_SIGNING_KEY")):
        if not Path(p).is_file():
            problems.append(f"{p} does not exist")
    if not problems:
        r = subprocess.run(["openssl", "verify", "-CAfile", keyring, cert], capture_output=True, text=True)
        if r.returncode != 0:
            problems.append(f"the default signer does not chain to the default keyring: {r.stdout}{r.stderr}".strip())
    for k in (cfg.getVar("HARMONY_FLEET_PUBLIC_KEYS") or "").split():
        text = Path(k).read_text().strip() if Path(k).is_file() else ""
        if not re.fullmatch(r"[0-9a-f]{64}", text):
            problems.append(f"{k}: not one line of 64 hex digits (an Ed25519 public key)")
    return problems


def check_no_mark_good(ctx: Ctx):
    """Only the operator commits a slot: rauc-mark-good stays out of the image."""
    problems = []
    for machine in MACHINES:
        d = ctx.recipe(IMAGE, machine)
        if "rauc-mark-good" not in (d.getVar("BAD_RECOMMENDATIONS") or "").split():
            problems.append(f"[{machine}] {IMAGE}: rauc-mark-good is not in BAD_RECOMMENDATIONS")
        for var in ("IMAGE_INSTALL", "CORE_IMAGE_EXTRA_INSTALL"):
            if "rauc-mark-good" in (d.getVar(var) or "").split():
                problems.append(f"[{machine}] {IMAGE}: {var} installs rauc-mark-good")
    return problems


def _kas_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _kas_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _kas_resolve(repo: Path, path: Path, seen=()) -> dict:
    """A kas file with its local includes merged in (kas semantics: includes
    first, in order, then the file itself; paths relative to the repo root)."""
    import yaml

    if path in seen:
        raise CheckError(f"include loop at {path.name}")
    doc = yaml.safe_load(path.read_text()) or {}
    merged = {}
    for inc in (doc.get("header") or {}).get("includes", []) or []:
        if not isinstance(inc, str):
            raise CheckError(f"{path.name}: includes from other repositories are not expected")
        target = repo / inc
        if not target.is_file():
            raise CheckError(f"{path.name}: include {inc} does not exist (relative to the repository root)")
        merged = _kas_merge(merged, _kas_resolve(repo, target, seen + (path,)))
    return _kas_merge(merged, doc)


def check_kas_pinned(ctx: Ctx):
    """image/kas: valid kas files (kas's own JSON schema), one per machine,
    every external repository pinned to a commit, meta-raspberrypi only where
    needed."""
    import json

    import jsonschema
    import kas
    import yaml

    kas_dir = ctx.repo / "image" / "kas"
    files = sorted(kas_dir.glob("*.yml")) if kas_dir.is_dir() else []
    if not files:
        return [f"no kas files in {kas_dir}"]
    schema = json.loads((Path(kas.__file__).parent / "schema-kas.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    problems = []
    machines = {}
    for f in files:
        try:
            doc = yaml.safe_load(f.read_text()) or {}
        except yaml.YAMLError as e:
            problems.append(f"{f.name}: {e}")
            continue
        for err in validator.iter_errors(doc):
            problems.append(f"{f.name}: {'/'.join(map(str, err.path)) or '(top)'}: {err.message}")
        for name, repo in (doc.get("repos") or {}).items():
            repo = repo or {}
            if "url" not in repo:
                continue  # the repository the kas file lives in
            if not re.fullmatch(r"[0-9a-f]{40}", str(repo.get("commit", ""))):
                problems.append(f"{f.name}: repos.{name} is not pinned to a full commit id")
        if "machine" in doc:
            try:
                machines[doc["machine"]] = (f, _kas_resolve(ctx.repo, f))
            except CheckError as e:
                problems.append(str(e))
    for m in sorted(set(MACHINES) - set(machines)):
        problems.append(f"no kas file sets machine: {m}")
    for m, (f, cfg) in sorted(machines.items()):
        repos = cfg.get("repos") or {}
        if cfg.get("distro") != "harmony":
            problems.append(f"{f.name}: distro is {cfg.get('distro')}, not harmony")
        for t in ("harmony-image", "harmony-bundle"):
            if t not in (cfg.get("target") or []):
                problems.append(f"{f.name}: target lacks {t}")
        for needed in ("openembedded-core", "bitbake", "meta-rauc"):
            if needed not in repos:
                problems.append(f"{f.name}: no {needed} repository")
        if m.startswith("raspberrypi") and "meta-raspberrypi" not in repos:
            problems.append(f"{f.name}: a Raspberry Pi machine without meta-raspberrypi")
        if not any("meta-harmony" in (r or {}).get("layers", {}) for r in repos.values()):
            problems.append(f"{f.name}: meta-harmony is not among the layers")
    return problems


def check_wic_location(ctx: Ctx):
    """No <layer>/wic directory: oe-core wrynose's sanity check stops every
    build of a configuration whose layer has one (files/wic is the place)."""
    legacy = ctx.layer / "wic"
    if legacy.exists():
        return [f"{legacy.relative_to(ctx.repo)} exists: wrynose refuses to build "
                "('wic/wks files ... need to be moved to files/wic'); move it to meta-harmony/files/wic"]
    return []


def check_single_copy(ctx: Ctx):
    """The boot-chain files and the agent unit exist once, in the layer: the
    QEMU image uses them from here, a second copy would drift."""
    names = {"boot.cmd.in", "system.conf", "fw_env.config", "harmony-agent.service", "agent.toml"}
    skip = {".git", "target", "build", ".tools", "artifacts", "node_modules"}
    problems = []
    for path in ctx.repo.rglob("*"):
        if any(part in skip for part in path.relative_to(ctx.repo).parts):
            continue
        if path.name in names and path.is_file() and ctx.layer not in path.parents:
            problems.append(f"{path.relative_to(ctx.repo)} duplicates a file meta-harmony owns")
        if path.suffix == ".wks" or path.name.endswith(".wks.in"):
            if ctx.layer not in path.parents:
                problems.append(f"{path.relative_to(ctx.repo)}: partition layouts belong in meta-harmony/files/wic")
    return problems


def _recipe_in(ctx: Ctx, recipe: str, machine: str):
    """The datastore of a recipe or bbappend of the layer (path relative to
    it; a bbappend is parsed with its .inc as the checks do elsewhere)."""
    if not (ctx.layer / recipe).is_file():
        return None
    return ctx.recipe(recipe, machine)


def check_partition_mounts(ctx: Ctx):
    """The rootfs a bundle carries mounts the boot and data partitions by
    itself: harmony-partitions' mount units agree with the wks, are enabled
    and installed by the image; wic does not rewrite fstab in the .wic only."""
    return parity.check_partition_mounts(ctx, _search_local, _wks_for)


def check_builder_uses_layer(ctx: Ctx):
    """image/qemu/build.py authors no file that shapes boot, mounts, RAUC or
    the agent, and installs the layer's files where the recipes do."""
    try:
        return parity.check_builder_uses_layer(ctx, _recipe_in)
    except parity.CheckError as e:
        return [str(e)]


def _yaml(path: Path):
    import yaml

    if not path.is_file():
        raise CheckError(f"{path} does not exist")
    return yaml.safe_load(path.read_text()) or {}


def check_boot_env_location(ctx: Ctx):
    """wks rawcopy lines, fw_env.config, boot.cmd.in and the Pi's U-Boot
    fragment put the two raw copies of the boot state at the same offsets;
    the image writes the layer's initial state there."""
    return bootstate.check_boot_env_location(ctx, read_fw_env, _wks_for, boot_script, read_system_conf)


def check_boot_region(ctx: Ctx):
    """system.conf's boot-mbr-switch slot and the wks agree, by RAUC 1.8's
    rules: the region is the boot partition (MBR entry 0, first half) and a
    reserved second half, on the whole disk, overlapping no other partition
    and not the raw boot state copies."""
    problems = []
    try:
        raw_sizes = bootregion.raw_sizes(bootenv.recipe_size(ctx.layer))
    except (bootenv.BootEnvError, OSError) as e:
        return [str(e)]
    for machine, where, ptable, parts, sc in _wks_and_system_conf(ctx, problems):
        if ptable != "msdos":
            problems.append(f"{where}: the wks table is {ptable}; boot-mbr-switch needs msdos")
        problems += [f"{where}: {p}" for p in bootregion.problems(sc, parts, raw_sizes)]
    return problems


def check_bundle_boot_slot(ctx: Ctx):
    """harmony-bundle carries the boot image for system.conf's boot-mbr-switch
    slot, listed first (RAUC writes images in manifest order), taken from the
    boot partition of the image's own .wic."""
    problems = []
    for machine in MACHINES:
        try:
            sc = read_system_conf(ctx.machine_file(RAUC_CONF_DIR, machine, "system.conf"))
            boot = bootregion.boot_slots(sc)
        except (CheckError, bootregion.RegionError) as e:
            problems.append(f"[{machine}] {e}")
            continue
        d = ctx.recipe(BUNDLE, machine)
        slots = (d.getVar("RAUC_BUNDLE_SLOTS") or "").split()
        classes = [(d.getVarFlag(f"RAUC_SLOT_{s}", "name") or s) for s in slots]
        known = {s.split(".")[1] for s in sc.sections() if s.startswith("slot.")}
        for c in classes:
            if c not in known:
                problems.append(f"[{machine}] {BUNDLE}: slot class {c} is not in system.conf")
        if len(boot) != 1:
            continue
        want = bootregion.slot_class(boot[0][0])
        if not classes or classes[0] != want:
            problems.append(f"[{machine}] {BUNDLE}: RAUC_BUNDLE_SLOTS {slots} does not start with the boot slot "
                            f"class {want}: RAUC would write the rootfs before the boot files")
            continue
        slot = slots[0]
        name = d.getVarFlag(f"RAUC_SLOT_{slot}", "file") or ""
        if not name.endswith((".vfat", ".img")):
            problems.append(f"[{machine}] {BUNDLE}: the boot image {name!r} is not *.vfat or *.img "
                            "(RAUC 1.8 has no boot-mbr-switch handler for it)")
        if d.getVarFlag(f"RAUC_SLOT_{slot}", "type") != "boot":
            problems.append(f"[{machine}] {BUNDLE}: RAUC_SLOT_{slot}[type] is not boot")
        if name and name != (d.getVar("HARMONY_BOOT_IMAGE") or ""):
            problems.append(f"[{machine}] {BUNDLE}: RAUC_SLOT_{slot}[file] is {name}, the recipe makes "
                            f"{d.getVar('HARMONY_BOOT_IMAGE')}")
        wic = d.getVar("HARMONY_BOOT_IMAGE_WIC_TYPE") or ""
        image = ctx.recipe(IMAGE, machine)
        if wic not in (image.getVar("IMAGE_FSTYPES") or "").split():
            problems.append(f"[{machine}] {BUNDLE}: takes the boot partition from the {wic!r} image, which "
                            f"{IMAGE} does not build (IMAGE_FSTYPES)")
        task = d.getVarFlags("do_harmony_boot_image") or {}
        if not task.get("task") or "do_unpack" not in (task.get("deps") or []) \
                or "do_harmony_boot_image" not in (d.getVarFlag("do_configure", "deps") or []):
            problems.append(f"[{machine}] {BUNDLE}: do_harmony_boot_image does not run between do_unpack and "
                            "do_configure (where bundle.bbclass collects the images)")
        if f"harmony-image:do_image_complete" not in (d.getVarFlag(f"RAUC_SLOT_{slot}", "depends") or "").split():
            problems.append(f"[{machine}] {BUNDLE}: RAUC_SLOT_{slot}[depends] does not wait for "
                            "harmony-image:do_image_complete (the .wic)")
    return problems


ADAPTIVE = "block-hash-index"


def _builder_constant(ctx: Ctx, name: str):
    """A top-level string constant of image/qemu/build.py (None if absent)."""
    import ast
    path = ctx.repo / "image" / "qemu" / "build.py"
    if not path.is_file():
        return None
    for node in ast.parse(path.read_text()).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == name and isinstance(node.value, ast.Constant)):
            return node.value.value
    return None


CURL_BBAPPEND = "recipes-support/curl/curl_%.bbappend"


def check_rauc_http2(ctx: Ctx):
    """Streaming over HTTP/2 (issue 16) is opt-in: with HARMONY_RAUC_HTTP2 =
    "1" RAUC's libcurl is built with nghttp2 for the target (so it can
    multiplex its Range requests to the operator's bundle server over TLS;
    the QEMU image's Debian libcurl has it); without it curl has none (at
    the pinned oe-core, nghttp2 makes oe-core mark a curl CVE unpatched:
    recipes-support/curl/curl_harmony.inc). Both must hold whether or not
    the layers below append nghttp2 themselves, as the pinned meta-rauc does
    for every distro with "rauc" (modelled here; `bitbake-graph` checks the
    real layers). curl-native is never changed."""
    problems = []
    below = {
        "oe-core alone": {"PACKAGECONFIG": "openssl"},
        "with meta-rauc's append": {"PACKAGECONFIG": "openssl", "PACKAGECONFIG:append:class-target": " nghttp2"},
    }

    def has_nghttp2(machine, local, cls):
        d = ctx.recipe(CURL_BBAPPEND, machine, local={**local, "CLASSOVERRIDE": cls})
        return "nghttp2" in (d.getVar("PACKAGECONFIG") or "").split(), d.getVar("PACKAGECONFIG")

    for machine in MACHINES:
        if has_nghttp2(machine, {"PACKAGECONFIG": "openssl", "HARMONY_RAUC_HTTP2": "1"}, "class-native")[0]:
            problems.append(f"[{machine}] curl-native gets nghttp2 too (append for class-target only)")
        for name, upstream in below.items():
            on = {**upstream, "HARMONY_RAUC_HTTP2": "1"}
            has, pc = has_nghttp2(machine, on, "class-target")
            if not has:
                problems.append(f"[{machine}, {name}] curl with HARMONY_RAUC_HTTP2 = \"1\": PACKAGECONFIG {pc!r} "
                                "has no nghttp2: RAUC streams over HTTP/1.1 only")
            has, pc = has_nghttp2(machine, upstream, "class-target")
            if has:
                problems.append(f"[{machine}, {name}] curl gets nghttp2 without HARMONY_RAUC_HTTP2 = \"1\" "
                                f"(it is opt-in): {pc!r}")
    return problems


def check_bundle_adaptive(ctx: Ctx):
    """Adaptive updates (issue 16): harmony-bundle's rootfs image carries a
    block-hash-index (RAUC_SLOT_rootfs[adaptive], written into the manifest
    by meta-rauc's bundle.bbclass); every machine's system.conf has the
    data-directory RAUC keeps the slots' indices in (where it lives is
    checked by wks-vs-system-conf) and block-device rootfs slots; the QEMU
    builder's bundles declare the same method."""
    problems = []
    for machine in MACHINES:
        d = ctx.recipe(BUNDLE, machine)
        slots = (d.getVar("RAUC_BUNDLE_SLOTS") or "").split()
        rootfs = [s for s in slots if (d.getVarFlag(f"RAUC_SLOT_{s}", "name") or s) == "rootfs"]
        if len(rootfs) != 1:
            problems.append(f"[{machine}] {BUNDLE}: want one rootfs slot class in RAUC_BUNDLE_SLOTS {slots}")
            continue
        flag = d.getVarFlag(f"RAUC_SLOT_{rootfs[0]}", "adaptive") or ""
        if flag.split() != [ADAPTIVE]:
            problems.append(f"[{machine}] {BUNDLE}: RAUC_SLOT_{rootfs[0]}[adaptive] is {flag!r}, want {ADAPTIVE!r}: "
                            "every update downloads the whole image")
        try:
            sc = read_system_conf(ctx.machine_file(RAUC_CONF_DIR, machine, "system.conf"))
        except CheckError as e:
            problems.append(f"[{machine}] {e}")
            continue
        where = f"[{machine}] system.conf"
        if not (sc.has_section("system") and sc["system"].get("data-directory")):
            problems.append(f"{where}: no data-directory in [system]: RAUC ignores adaptive images without one "
                            "(no place for the slots' hash indices)")
        for sec in (x for x in sc.sections() if x.startswith("slot.rootfs.")):
            if sc[sec].get("type") not in ("ext4", "raw"):
                problems.append(f"{where}: [{sec}] type={sc[sec].get('type')}: adaptive updates need a "
                                "block-device slot (ext4 or raw)")
        # the same ext4 UUID and directory hash seed in every build (harmony-image.bb)
        image = ctx.recipe(IMAGE, machine)
        cmd = (image.getVar("EXTRA_IMAGECMD:ext4") or "").split()
        for opt, var, want in (("-U", "HARMONY_ROOTFS_FS_UUID", None), ("-E", "HARMONY_ROOTFS_HASH_SEED", "hash_seed=")):
            value = image.getVar(var) or ""
            if not re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", value):
                problems.append(f"[{machine}] {IMAGE}: {var} is {value!r}, not a UUID")
            arg = (want or "") + value
            if not any(a == opt and b.split(",").count(arg) for a, b in zip(cmd, cmd[1:])):
                problems.append(f"[{machine}] {IMAGE}: EXTRA_IMAGECMD:ext4 {' '.join(cmd)!r} lacks {opt} {arg}: "
                                "every build gets a random one, and no directory block matches the last build's")
    builder = _builder_constant(ctx, "ROOTFS_ADAPTIVE")
    if builder != ADAPTIVE:
        problems.append(f"image/qemu/build.py: ROOTFS_ADAPTIVE is {builder!r}, the bundle recipe declares {ADAPTIVE!r}")
    return problems


def check_boot_state_raw(ctx: Ctx):
    """Nothing keeps the boot state in files on the boot partition any more."""
    return bootstate.check_boot_state_raw(ctx, read_fw_env, boot_script)


def check_image_content(ctx: Ctx):
    """packagegroup-base (machine extras) and the network stay in the image;
    the distro drops graphics/audio features and keeps the radios."""
    return product.check_image_content(ctx)


def check_release_keys(ctx: Ctx):
    """A release build with unset, missing or development keys stops."""
    return product.check_release_keys(ctx, _yaml)


def check_runqemu(ctx: Ctx):
    """qemuarm64 under runqemu boots the .wic through U-Boot as an A/B system."""
    return product.check_runqemu(ctx)


def check_limits(ctx: Ctx):
    """Agent, RAUC, image and partitions agree on how large a bundle may be."""
    return product.check_limits(ctx, read_system_conf, _wks_for, _wks_size_kib)


def check_agent_licences(ctx: Ctx):
    """The agent's licence is its sources' declaration, and every crate
    linked into it has its licence in the recipe's LICENSE."""
    return product.check_agent_licences(ctx, agent_recipe)


def check_enroll_file(ctx: Ctx):
    """The enrollment file (issue 14): the agent imports it from the boot
    partition and may delete it there; HARMONY_ENROLL_FILE bakes it in only
    when set, never into sstate or a bundle."""
    return enroll.check_enroll_file(ctx, IMAGE, BUNDLE, MACHINES)


CHECKS = {
    "bb-parse": check_bb_parse,
    "bbappend-gating": check_bbappend_gating,
    "agent-crates": check_agent_crates,
    "agent-sources": check_agent_sources,
    "local-files": check_local_files,
    "wks-vs-system-conf": check_wks_vs_system_conf,
    "rootfs-fits-slot": check_rootfs_fits_slot,
    "bundle-compatible": check_bundle_compatible,
    "boot-script-placeholders": check_boot_script_placeholders,
    "boot-script-vs-env": check_boot_script_vs_env,
    "boot-env-location": check_boot_env_location,
    "boot-state-raw": check_boot_state_raw,
    "boot-region": check_boot_region,
    "bundle-boot-slot": check_bundle_boot_slot,
    "bundle-adaptive": check_bundle_adaptive,
    "rauc-http2": check_rauc_http2,
    "keyring": check_keyring,
    "no-mark-good": check_no_mark_good,
    "kas-pinned": check_kas_pinned,
    "wic-location": check_wic_location,
    "single-copy": check_single_copy,
    "partition-mounts": check_partition_mounts,
    "builder-uses-layer": check_builder_uses_layer,
    "image-content": check_image_content,
    "release-keys": check_release_keys,
    "runqemu": check_runqemu,
    "limits": check_limits,
    "agent-licences": check_agent_licences,
    "enroll-file": check_enroll_file,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layer", type=Path, default=bbharness.LAYER)
    ap.add_argument("names", nargs="*", help=f"checks to run: {', '.join(CHECKS)}")
    args = ap.parse_args()
    names = args.names or list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        ap.error(f"unknown checks: {unknown}")
    ctx = Ctx(args.layer)
    failed = 0
    try:
        for name in names:
            try:
                problems = CHECKS[name](ctx)
            except CheckError as e:
                problems = [str(e)]
            except Exception as e:  # a crash is a failure, with its reason
                problems = [f"{type(e).__name__}: {e}"]
            if problems:
                failed += 1
                print(f"FAIL {name}")
                for p in problems:
                    print(f"    {p}")
            else:
                print(f"PASS {name}")
            sys.stdout.flush()
    finally:
        ctx.h.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
