"""Checks on what the Yocto image is, beyond the files it shares with the
QEMU test image (issue 11):

  image-content    packagegroup-base stays (MACHINE_EXTRA_RRECOMMENDS: the
                   Pi's kernel modules, firmware, udev-rules-rpi), the
                   network recipe is in, the distro keeps wifi/bluetooth and
                   drops the graphics/audio/desktop features
  release-keys     a release build with unset, missing or development keys
                   stops (bb.fatal), and image/kas/release.yml never lets a
                   missing key variable fall back to the development keys
  runqemu          qemuarm64 boots under runqemu as an A/B system: plain
                   .wic, U-Boot as firmware, no kernel of runqemu's own
  limits           the agent's max_bundle_bytes equals RAUC's
                   max-bundle-download-size and admits the largest image;
                   RAUC grows written slots (resize=true); /data grows
"""

import re
import tomllib

IMAGE = "recipes-core/images/harmony-image.bb"
SANITY = "classes-global/harmony_sanity.bbclass"
AGENT_TOML = "recipes-harmony/harmony-agent/files/agent.toml"
PARTITIONS = "recipes-core/harmony-partitions/harmony-partitions_1.0.bb"
RELEASE_KAS = "image/kas/release.yml"

# Distro features a headless fleet device does not need.
UNWANTED_FEATURES = ["x11", "wayland", "vulkan", "opengl", "alsa", "nfs", "3g", "nfc"]
OE_DEFAULT_FEATURES = ("acl alsa bluetooth debuginfod ext2 ipv4 ipv6 pcmcia usbgadget usbhost wifi xattr nfs "
                       "zeroconf pci 3g nfc x11 vfat seccomp opengl ptest multiarch wayland vulkan "
                       "gobject-introspection-data ldconfig")
# ...and those the Pi's radios need through packagegroup-base.
# (systemd comes from INIT_MANAGER, which the harness does not evaluate.)
WANTED_FEATURES = ["wifi", "bluetooth", "rauc", "harmony"]


def check_image_content(ctx):
    problems = []
    for machine in ctx.machines:
        d = ctx.recipe(IMAGE, machine)
        installs = (d.getVar("IMAGE_INSTALL") or "").split()
        for pkg in ("packagegroup-base", "harmony-network"):
            if pkg not in installs:
                problems.append(f"[{machine}] {IMAGE}: IMAGE_INSTALL lacks {pkg}")
    cfg = ctx.h.config("raspberrypi4-64")
    # The harness's stub starts DISTRO_FEATURES empty: start from oe-core's
    # defaults (meta/conf/distro/include/default-distrovars.inc and the
    # backfill) and let the distro's :append/:remove act on them.
    cfg.setVar("DISTRO_FEATURES", OE_DEFAULT_FEATURES, parsing=True)
    features = set((cfg.getVar("DISTRO_FEATURES") or "").split())
    for f in UNWANTED_FEATURES:
        if f in features:
            problems.append(f"harmony distro keeps oe-core's default feature {f}")
    for f in WANTED_FEATURES:
        if f not in features:
            problems.append(f"harmony distro lacks {f}")
    return problems


def check_release_keys(ctx, repo_yaml):
    problems = []
    cfg = ctx.h.config("qemuarm64")
    body = cfg.getVar("harmony_sanity_check", False) or ""
    release = body[body.find("HARMONY_RELEASE"):] if "HARMONY_RELEASE" in body else ""
    if "bb.fatal(" not in release:
        problems.append(f"{SANITY}: a release build with development or missing keys does not stop (no bb.fatal)")
    if re.search(r"bb\.warn\(", release):
        problems.append(f"{SANITY}: the release branch only warns")
    try:
        found = cfg.expand("${@' | '.join(harmony_release_key_problems(d))}")
    except Exception as e:  # noqa: BLE001 - reported as the problem it is
        return problems + [f"{SANITY}: harmony_release_key_problems: {type(e).__name__}: {e}"]
    for var in (cfg.getVar("HARMONY_KEY_VARIABLES") or "").split():
        if f"{var} uses the public development keys" not in found:
            problems.append(f"{SANITY}: the development default of {var} is not refused ({found!r})")
        cfg2 = ctx.h.config("qemuarm64")
        cfg2.setVar(var, "")
        if f"{var} is not set" not in cfg2.expand("${@' | '.join(harmony_release_key_problems(d))}"):
            problems.append(f"{SANITY}: an empty {var} is not refused")
    kas = repo_yaml(ctx.repo / RELEASE_KAS)
    header = "\n".join((kas.get("local_conf_header") or {}).values())
    env = kas.get("env") or {}
    if not re.search(r'^HARMONY_RELEASE = "1"$', header, re.M):
        problems.append(f"{RELEASE_KAS}: does not set HARMONY_RELEASE = \"1\"")
    for var in (cfg.getVar("HARMONY_KEY_VARIABLES") or "").split():
        if var not in env:
            problems.append(f"{RELEASE_KAS}: env lacks {var}")
        if not re.search(rf'^{var} \?= ""$', header, re.M):
            problems.append(f"{RELEASE_KAS}: a missing {var} would fall back to the development key "
                            f"(want {var} ?= \"\" in local_conf_header)")
    return problems


def check_runqemu(ctx):
    problems = []
    d = ctx.recipe(IMAGE, "qemuarm64")
    want = {"QB_DEFAULT_FSTYPE": "wic", "QB_DEFAULT_BIOS": "u-boot.bin", "QB_DEFAULT_KERNEL": "none"}
    for var, value in want.items():
        if (d.getVar(var) or "").strip() != value:
            problems.append(f"[qemuarm64] {IMAGE}: {var} is {d.getVar(var)!r}, want {value!r}")
    if "wic" not in (d.getVar("IMAGE_FSTYPES") or "").split():
        problems.append(f"[qemuarm64] {IMAGE}: IMAGE_FSTYPES lacks a plain wic for runqemu")
    if "u-boot" not in (d.getVar("EXTRA_IMAGEDEPENDS") or "").split():
        problems.append(f"[qemuarm64] {IMAGE}: EXTRA_IMAGEDEPENDS lacks u-boot (runqemu's firmware)")
    # runqemu attaches a wic disk by QB_DRIVE_TYPE alone (QB_ROOTFS_OPT is
    # replaced); qemuboot.bbclass defaults it to /dev/sd, i.e. virtio-scsi.
    drive = (d.getVar("QB_DRIVE_TYPE") or "/dev/sd").strip()
    bus = runqemu_disk_bus(drive)
    if bus != "virtio-blk":
        problems.append(f"[qemuarm64] {IMAGE}: QB_DRIVE_TYPE {drive!r} makes runqemu attach the .wic as "
                        f"{bus}, but the layer's files name /dev/vda (want \"/dev/vd\")")
    return problems


def runqemu_disk_bus(drive_type):
    """The bus runqemu puts a wic/vmdk disk on for a QB_DRIVE_TYPE (its
    prefix tests, in its order)."""
    for prefix, bus in (("/dev/sd", "virtio-scsi"), ("/dev/hd", "ide"), ("/dev/mmcblk", "sdhci"),
                        ("/dev/vdb", "virtio-mmio")):
        if drive_type.startswith(prefix):
            return bus
    # Anything else, /dev/vd included, is virtio-blk (with a warning unless /dev/vd).
    return "virtio-blk"


def check_limits(ctx, read_system_conf, wks_for, size_kib):
    problems = []
    path = ctx.layer / AGENT_TOML
    try:
        agent = tomllib.loads(path.read_text()).get("upgrade", {}).get("max_bundle_bytes")
    except (OSError, tomllib.TOMLDecodeError) as e:
        return [f"{AGENT_TOML}: {e}"]
    if not isinstance(agent, int):
        return [f"{AGENT_TOML}: [upgrade] max_bundle_bytes is not set"]
    for machine in ctx.machines:
        sc = read_system_conf(ctx.machine_file("recipes-core/rauc", machine, "system.conf"))
        rauc = sc.get("system", "max-bundle-download-size", fallback=None)
        if rauc is None or int(rauc) != agent:
            problems.append(f"[{machine}] agent max_bundle_bytes {agent} != RAUC max-bundle-download-size {rauc}")
        for s in [s for s in sc.sections() if s.startswith("slot.rootfs.")]:
            if sc[s].get("resize") != "true":
                problems.append(f"[{machine}] system.conf {s}: no resize=true (an updated slot's ext4 "
                                "stays the size of the image)")
        d = ctx.recipe(IMAGE, machine)
        maxsize = d.getVar("IMAGE_ROOTFS_MAXSIZE")
        if maxsize and int(maxsize) * 1024 > agent:
            problems.append(f"[{machine}] IMAGE_ROOTFS_MAXSIZE {maxsize} KiB is more than the agent "
                            f"accepts ({agent} bytes): a valid bundle would be refused")
        _, (_, parts) = wks_for(ctx, machine)
        if parts and parts[-1].get("mount") != "/data":
            problems.append(f"[{machine}] the data partition is not the last one: it cannot grow to the card")
    p = ctx.recipe(PARTITIONS, "qemuarm64") if (ctx.layer / PARTITIONS).is_file() else None
    if p is None or "harmony-grow-data.service" not in (p.getVar("SYSTEMD_SERVICE:harmony-partitions") or "").split():
        problems.append(f"{PARTITIONS}: harmony-grow-data.service is not enabled (the data partition "
                        "keeps its image size)")
    return problems


AGENT_LICENSES = "recipes-harmony/harmony-agent/harmony-agent-licenses.inc"
CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"


def _md5_lines(path, begin, end):
    import hashlib

    h = hashlib.md5()
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if n >= begin and (not end or n <= end):
                h.update(line)
    return h.hexdigest()


def check_agent_licences(ctx, agent_recipe):
    problems = []
    rel = agent_recipe(ctx)
    d = ctx.recipe(rel, "qemuarm64")
    common = d.getVar("COMMON_LICENSE_DIR")
    for uri in (d.getVar("LIC_FILES_CHKSUM") or "").split():
        path, *params = uri[len("file://"):].split(";")
        opts = dict(p.split("=", 1) for p in params if "=" in p)
        if path.startswith(common):
            problems.append(f"{rel}: LIC_FILES_CHKSUM points at the common licence {path.rsplit('/', 1)[-1]}, "
                            "not at the sources' own declaration")
            continue
        src = ctx.repo / path  # S is the workspace root
        if not src.is_file():
            problems.append(f"{rel}: LIC_FILES_CHKSUM file {path} does not exist")
            continue
        md5 = _md5_lines(src, int(opts.get("beginline", 1)), int(opts.get("endline", 0)))
        if md5 != opts.get("md5"):
            problems.append(f"{rel}: {path} lines {opts.get('beginline')}-{opts.get('endline')} have md5 {md5}, "
                            f"LIC_FILES_CHKSUM says {opts.get('md5')}")
    licence = d.getVar("LICENSE") or ""
    crate_licences = (d.getVar("HARMONY_CRATE_LICENSES") or "").strip()
    if not crate_licences or crate_licences not in licence:
        problems.append(f"{rel}: LICENSE does not declare the crates' licences (HARMONY_CRATE_LICENSES)")
    inc = ctx.layer / AGENT_LICENSES
    if not inc.is_file():
        return problems + [f"{AGENT_LICENSES} does not exist: run meta-harmony/scripts/update-agent-licenses"]
    listed = {}
    for m in re.finditer(r"^#   (\S+) (\S+): (.+)$", inc.read_text(), re.M):
        listed[m.group(1)] = m.group(2)
    lock = tomllib.loads((ctx.repo / "Cargo.lock").read_text())
    in_lock = {(p["name"], p["version"]) for p in lock.get("package", []) if p.get("source") == CRATES_IO}
    for name, version in sorted(listed.items()):
        if (name, version) not in in_lock:
            problems.append(f"{AGENT_LICENSES}: {name} {version} is not in Cargo.lock (stale)")
    manifest = tomllib.loads((ctx.repo / "agent" / "Cargo.toml").read_text())
    lock_names = {n for n, _ in in_lock}
    for dep in sorted(manifest.get("dependencies", {})):
        if dep in lock_names and dep not in listed:
            problems.append(f"{AGENT_LICENSES}: the agent depends on {dep}, which has no licence entry")
    if problems and any(p.startswith(AGENT_LICENSES) for p in problems):
        problems.append("regenerate with meta-harmony/scripts/update-agent-licenses")
    return problems
