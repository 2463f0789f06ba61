#!/usr/bin/env python3
"""Build the Harmony Fleet QEMU aarch64 A/B test image from Debian arm64 packages.

    image/qemu/build [--out DIR] [--no-agent] [--with-podman] [--debian-rauc] [--with-adaptive-variant] [--force]

Output (default build/qemu/):
    disk.img            A/B disk (layout read from meta-harmony/files/wic/harmony-qemuarm64.wks):
                        the initial boot state (harmony-boot-env) at the wks rawcopy offsets,
                        the boot region (system.conf's boot-mbr-switch slot): boot vfat
                        (boot-v1.vfat) in its first half, the second half empty;
                        rootfs A = v1, rootfs B = v1, data ext4
                        (bundles/ with every bundle below, rauc/ data directory)
    boot-<variant>.vfat              the boot partition of each variant: boot.scr from the
                                     layer's boot.cmd.in, printing "harmony-boot-files: <version>"
    bundles/v1.raucb, v2.raucb       signed verity bundles (version 1.0.0 / 2.0.0); every bundle
                                     carries its variant's boot-<variant>.vfat for the boot slot
                                     (listed first) and the rootfs slot image, adaptive
                                     (block-hash-index, as harmony-bundle.bb declares it), in a
                                     squashfs of 64 KiB lz4 blocks
    bundles/v2-full.raucb            v2's slot image without adaptive data (a streamed install
                                     reads the whole bundle; qemu-tests/ota 14, 15)
    bundles/v2.1.raucb               --with-adaptive-variant only: version 2.1.0, v2 plus one small
                                     Debian package (ADAPTIVE_VARIANT), for measuring adaptive
                                     updates (qemu-tests/run streaming --only 4)
    bundles/broken.raucb             signed, installs fine, cannot boot (no init)
    bundles/untrusted.raucb          v2 signed by a CA the device does not trust
    bundles/v3.raucb                 version 3.0.0 whose agent is pointed at a NATS URL
                                     nobody listens on (it can never be committed)
    bundles/old.raucb                the v1 slot image as version 0.9.0 (a downgrade)
    bundles/foreign.raucb            the v2 slot image for another `compatible`
    rootfs-{v1,v2,broken}.ext4       the slot images inside the bundles
    keys/                            test CA + signer, and the fleet's ed25519 offer key
                                     (fleet.key, fleet.pub; generated here, never committed)
    u-boot.bin                       Debian's u-boot-qemu qemu_arm64 build
    rauc-streaming/usr/bin/rauc      bookworm's rauc 1.8-2 rebuilt with HTTP streaming (not with
                                     --debian-rauc), build-info.txt: how and how long
    manifest.json                    what the test runner needs to know

Nothing is mounted: file systems are made with mke2fs -d, mkfs.vfat + mtools,
the partition table with sfdisk on the image file. Runs as root (mmdebstrap's
root mode and mke2fs -d keep root ownership). Incremental: every stage keeps a
stamp of its inputs and is skipped when they did not change.

RAUC: Debian bookworm's rauc 1.8-2 is built without HTTP streaming. Stage
rauc-streaming cross-builds the same source package with --enable-streaming
(image/qemu/rauc-streaming/build, 30-85 s here, cached by its inputs, also
across output directories in $HARMONY_CACHE/rauc-streaming/) and its
/usr/bin/rauc replaces Debian's in every rootfs variant; nbd.ko is loaded at
boot (the Yocto kernels have CONFIG_BLK_DEV_NBD=y). --debian-rauc keeps
Debian's binary (no streaming) and skips that stage.

Agent hook: if an aarch64 harmony-agent binary exists (HARMONY_AGENT_BIN, or
target/aarch64-unknown-linux-gnu/release/harmony-agent), it is installed as
/usr/bin/harmony-agent in every rootfs variant together with
meta-harmony/recipes-harmony/harmony-agent/files/{harmony-agent.service,agent.toml,harmony-podman}
(unit enabled), and keys/fleet.pub as /etc/harmony/fleet-keys/fleet.pub.
--no-agent leaves the agent out. The data partition carries the bundles the
boot-chain tests install by hand (v2, broken, untrusted); the OTA tests push
theirs to the operator from the host.

--with-podman (default output build/qemu-podman/; never the CI image): every
variant also gets Debian's podman 4.3 and what it needs to run containers as
root (PODMAN_PACKAGES, PODMAN_MODULES), and the layer's container storage
configuration (LAYER_FILES marked "podman": graphroot on /data). The OTA
suite's Container scenario (qemu-tests/ota --only 12 --image build/qemu-podman)
runs on it; manifest.json says "podman": true.
"""

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAYER = REPO / "meta-harmony"
sys.path.insert(0, str(LAYER / "checks" / "lib"))
import bootenv  # noqa: E402  (the layer's boot state copies: offsets, size, initial state)
import bootregion  # noqa: E402  (the layer's boot region: RAUC's boot-mbr-switch slot and the wks layout)
import wks  # noqa: E402  (the layer's wks reader)
MACHINE = "qemuarm64"
WKS = LAYER / "files" / "wic" / f"harmony-{MACHINE}.wks"
BOOT_CMD = LAYER / "recipes-bsp/u-boot/files/boot.cmd.in"
SYSTEM_CONF = LAYER / f"recipes-core/rauc/files/{MACHINE}/system.conf"
# BitBake's FILESOVERRIDES for this machine, most specific first (the ones
# the layer's files/ directories use), then none.
FILES_OVERRIDES = [MACHINE, ""]

# Everything in the rootfs that shapes boot, mounts, RAUC or the agent comes
# from the layer, installed where its recipe's do_install puts it, and units
# are enabled as its SYSTEMD_SERVICE/[Install] say: (recipe, file:// name,
# destination in the rootfs, mode, "agent" if only with the agent,
# "podman" if only with --with-podman). The
# builder authors none of these itself; meta-harmony/checks
# (builder-uses-layer) compares this table with the recipes and fails on a
# rootfs file of that kind written by the builder.
PARTITIONS_BB = "recipes-core/harmony-partitions/harmony-partitions_1.0.bb"
NETWORK_BB = "recipes-core/harmony-network/harmony-network_1.0.bb"
AGENT_BB = "recipes-harmony/harmony-agent/harmony-agent_0.1.0.bb"
CONFIRM_BB = "recipes-bsp/u-boot/harmony-boot-confirm_1.0.bb"
CONTAINER_HOST_CONFIG_BBAPPEND = ("dynamic-layers/virtualization-layer/recipes-containers/container-host-config/"
                                  "container-host-config_%.bbappend")
LAYER_FILES = [
    (PARTITIONS_BB, "boot-firmware.mount", "usr/lib/systemd/system/boot-firmware.mount", 0o644, None),
    (PARTITIONS_BB, "data.mount", "usr/lib/systemd/system/data.mount", 0o644, None),
    (PARTITIONS_BB, "harmony-grow-data.service", "usr/lib/systemd/system/harmony-grow-data.service", 0o644, None),
    (PARTITIONS_BB, "harmony-grow-data", "usr/sbin/harmony-grow-data", 0o755, None),
    (NETWORK_BB, "20-wired.network", "usr/lib/systemd/network/20-wired.network", 0o644, None),
    (NETWORK_BB, "25-wireless.network", "usr/lib/systemd/network/25-wireless.network", 0o644, None),
    (NETWORK_BB, "harmony-wifi-import.service", "usr/lib/systemd/system/harmony-wifi-import.service", 0o644, None),
    (NETWORK_BB, "harmony-wifi-import", "usr/sbin/harmony-wifi-import", 0o755, None),
    (NETWORK_BB, "wpa_supplicant-wlan0.conf",
     "usr/lib/systemd/system/wpa_supplicant@wlan0.service.d/10-harmony.conf", 0o644, None),
    (CONFIRM_BB, "harmony-boot-confirm.service", "usr/lib/systemd/system/harmony-boot-confirm.service", 0o644, None),
    (CONFIRM_BB, "harmony-boot-confirm", "usr/sbin/harmony-boot-confirm", 0o755, None),
    ("recipes-core/rauc/rauc-conf.bbappend", "system.conf", "etc/rauc/system.conf", 0o644, None),
    ("recipes-bsp/libubootenv/libubootenv_%.bbappend", "fw_env.config", "etc/fw_env.config", 0o644, None),
    (AGENT_BB, "harmony-agent.service", "usr/lib/systemd/system/harmony-agent.service", 0o644, "agent"),
    (AGENT_BB, "harmony-watchdog.conf", "usr/lib/systemd/system.conf.d/10-harmony-watchdog.conf", 0o644, "agent"),
    (AGENT_BB, "agent.toml", "etc/harmony/agent.toml", 0o644, "agent"),
    (AGENT_BB, "harmony-podman", "usr/libexec/harmony-agent/podman", 0o755, "agent"),
    # where container images and containers live (meta-virtualization's
    # container-host-config installs it; the layer's bbappend supplies ours)
    (CONTAINER_HOST_CONFIG_BBAPPEND, "storage.conf", "etc/containers/storage.conf", 0o644, "podman"),
]

# Units a recipe enables by a symlink of its own do_install (not by
# systemd.bbclass): (recipe, link name, target, unit it is wanted by).
# harmony-network enables wpa_supplicant's wlan0 instance this way.
LAYER_ENABLES = [
    (NETWORK_BB, "wpa_supplicant@wlan0.service", "/usr/lib/systemd/system/wpa_supplicant@.service",
     "sys-subsystem-net-devices-wlan0.device"),
]


def layer_file(recipe: str, name: str) -> Path:
    """Where BitBake's file:// search (FILESPATH: <BPN>-<PV>/, <BPN>/,
    files/, each with the machine's overrides first) finds `name`."""
    rdir = (LAYER / recipe).parent
    bpn, _, pv = Path(recipe).name.rsplit(".", 1)[0].partition("_")
    for base in [rdir / f"{bpn}-{pv}", rdir / bpn, rdir / "files"]:
        for ov in FILES_OVERRIDES:
            p = base / ov / name if ov else base / name
            if p.is_file():
                return p
    raise SystemExit(f"build: file://{name} of {recipe} not found (for {MACHINE})")


def wanted(only, agent, podman) -> bool:
    """Whether a LAYER_FILES entry belongs in this image."""
    return only is None or (only == "agent" and agent is not None) or (only == "podman" and podman)


def layer_inputs(agent, podman=False):
    """The layer files this image is made of (for the stage stamps)."""
    return [layer_file(d, n) for d, n, _, _, only in LAYER_FILES if wanted(only, agent, podman)]
UBOOT_BIN = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
PACKAGES = [
    "systemd", "systemd-sysv", "udev", "dbus", "rauc", "rauc-service", "libubootenv-tool",
    "kmod", "libc-bin", "util-linux", "mount", "e2fsprogs", "dosfstools",
    "iproute2", "procps", "busybox-static", "bash", "coreutils", "grep", "sed", "findutils",
    # sfdisk: harmony-grow-data (the layer's first-boot growth of the data partition)
    "fdisk",
    # what the rebuilt rauc (stage rauc-streaming) links besides Debian's rauc's dependencies
    "libnl-3-200", "libnl-genl-3-200",
    # wpa_supplicant@.service, run for wlan0 by the layer's harmony-network
    "wpasupplicant",
    # test-only (boot-chain scenario 11): the access point on the other
    # mac80211_hwsim radio and `iw dev wlan0 link`; no product file uses them
    "hostapd", "iw",
]
# --with-podman only (never in the CI image): podman 4.3 as root. Its Depends
# bring conmon, crun (the first of crun | runc) and
# golang-github-containers-common (policy.json, containers.conf); mmdebstrap
# installs no Recommends. Networking: netavark, which podman uses for its
# default bridge network when it finds /usr/lib/podman/netavark on a fresh
# storage, and the iptables it calls (nft backend, as Debian's alternatives
# choose). No aardvark-dns: the default network has DNS off. No catatonit:
# nothing here runs `podman run --init`. No CNI plugins (44 MB).
PODMAN_PACKAGES = ["podman", "netavark", "iptables"]
# What podman's default network and storage load (on demand, by alias):
# overlayfs for the image layers, a bridge and veth pairs, and the nf_tables
# rules netavark writes through iptables-nft (NAT, conntrack, the xt matches
# it uses through nft_compat).
PODMAN_MODULES = ["overlay", "bridge", "veth", "nf_tables", "nft_compat", "nft_chain_nat", "nft_nat", "nft_masq",
                  "nft_ct", "x_tables", "xt_MASQUERADE", "xt_addrtype", "xt_comment", "xt_conntrack", "xt_mark",
                  "xt_multiport", "xt_tcpudp", "nf_nat", "nf_conntrack"]
KERNEL_META = "linux-image-arm64"
# Kernel modules the guest needs (plus their dependencies). The first group
# goes into the initramfs as well, in this order.
INITRD_MODULES = ["virtio_pci", "virtio_blk", "crc32c_generic", "ext4"]
ROOTFS_MODULES = INITRD_MODULES + [
    "loop", "squashfs", "dm_mod", "dm_verity", "vfat", "nls_cp437", "nls_ascii",
    "nls_utf8", "nls_iso8859_1", "virtio_net", "virtio_rng", "virtio_console",
    "sha256_generic", "sha256_arm64", "sha2_ce", "af_packet",
    # a pair of simulated 802.11 radios (scenario 11: the layer's Wi-Fi path)
    # and the ciphers mac80211 asks the crypto API for (WPA2's CCMP, GCMP,
    # BIP), loaded on demand; without them hostapd's set_key fails (ENOENT)
    "mac80211_hwsim", "ccm", "ctr", "cmac", "gcm", "ghash_generic",
    # RAUC's HTTP streaming: the bundle is read through a network block device
    "nbd",
]
# Loaded at boot (systemd-modules-load): nbd has no alias by which RAUC's
# netlink lookup of the "nbd" family could load it on demand.
BOOT_MODULES = ["nbd"]
RAUC_STREAMING = Path(__file__).resolve().parent / "rauc-streaming" / "build"
# The Debian rauc the rebuilt one replaces: its source package version must
# be what the rauc-streaming script builds.
RAUC_DEBIAN_VERSION = "1.8-2"
# Trimmed from every rootfs: documentation, translations, perl's library.
TRIM = ["usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
        "usr/share/perl", "usr/share/perl5", "usr/share/lintian", "usr/share/zsh",
        "usr/share/bash-completion", "usr/share/common-licenses", "var/cache/apt",
        "var/lib/apt/lists", "usr/share/i18n", "usr/lib/aarch64-linux-gnu/perl",
        "usr/lib/aarch64-linux-gnu/perl-base", "usr/lib/aarch64-linux-gnu/gconv",
        "lib/udev/hwdb.bin", "usr/bin/perl", "usr/bin/perl5.36.0"]

VARIANTS = {
    "v1": {"version": "1.0.0"},
    "v2": {"version": "2.0.0"},
    "broken": {"version": "9.9.9-broken"},
    # Boots and runs, but its agent is configured for a NATS server nobody
    # listens on: the operator can never commit it.
    "v3": {"version": "3.0.0", "misdirected_nats": "nats://10.0.2.2:9"},
}
# Built only with --with-adaptive-variant (never in CI's image): v2 plus one
# small Debian package, the "small change" whose adaptive (block-hash-index)
# streamed install qemu-tests/streaming.py measures. extra_debs are unpacked
# (dpkg-deb -x, as mmdebstrap's extract variant does) into the rootfs before
# it is trimmed; their dependencies must already be in the image.
ADAPTIVE_VARIANT = {"v2.1": {"version": "2.1.0", "extra_debs": ["less"]}}
# Bundles made from another variant's slot image: (image, version, signer, compatible).
DERIVED_BUNDLES = {
    "untrusted": ("v2", "2.0.1-untrusted", "untrusted", None),
    "old": ("v1", "0.9.0", "trusted", None),
    "foreign": ("v2", "2.0.0", "trusted", "harmony-some-other-machine"),
}
# v2's slot image without adaptive data (as every bundle was before issue
# 16): a streamed install of it reads the whole bundle, which is what the
# OTA scenarios that measure full streaming, a cap and a power cut need
# (qemu-tests/ota 14, 15). Same version and signer as v2.
FULL_BUNDLES = {"v2-full": "v2"}
# What the boot-chain tests install from the data partition.
DATA_BUNDLES = ["v2", "broken", "untrusted"]
DISK_ID = "0x4861726d"  # MBR disk signature; PARTUUIDs are 4861726d-0N
# Every bundle's rootfs image is adaptive, as harmony-bundle.bb declares it
# (RAUC_SLOT_rootfs[adaptive]): `rauc bundle` adds a SHA-256 per 4 KiB block
# of the image (rootfs.ext4.block-hash-index), and an installing RAUC (with
# system.conf's data-directory) takes every block it finds in the target or
# the active slot from there and reads only the others from the bundle.
ROOTFS_ADAPTIVE = "block-hash-index"
# The same file system UUID and directory hash seed in every rootfs image
# (mke2fs picks random ones): with metadata_csum every directory block and
# inode carries a checksum seeded by the UUID, and directory blocks are
# hashed with the seed, so with random ones no directory block of one build
# equals the other's, even for an unchanged directory. harmony-image.bb sets
# both for the Yocto image (EXTRA_IMAGECMD:ext4); they are read from there.
IMAGE_BB = LAYER / "recipes-core/images/harmony-image.bb"


def image_recipe_default(name: str) -> str:
    """`NAME ?= "value"` of harmony-image.bb."""
    import re
    m = re.search(rf'^{name} \?= "([^"$]+)"$', IMAGE_BB.read_text(), re.M)
    if not m:
        raise SystemExit(f"build: {IMAGE_BB.relative_to(REPO)} sets no {name} ?= \"...\"")
    return m.group(1)


ROOTFS_FS_UUID = image_recipe_default("HARMONY_ROOTFS_FS_UUID")
ROOTFS_HASH_SEED = image_recipe_default("HARMONY_ROOTFS_HASH_SEED")
ROOTFS_MKE2FS_STABLE = ["-U", ROOTFS_FS_UUID]
ROOTFS_MKE2FS_STABLE_E = [f"hash_seed={ROOTFS_HASH_SEED}"]
# Not pinned: the inodes' times. mke2fs -d copies ctime (with mtime and atime)
# from the source tree, which this builder writes anew for every variant, so
# every inode table block differs between builds anyway (118 blocks in one
# contiguous run here; E2FSPROGS_FAKE_TIME pins only crtime and changed none
# of them; docs/streaming-facts.md section 7).
# lz4: fast to build and to read under TCG (the guest kernel has it). 64 KiB
# squashfs blocks (default 128 KiB), as RAUC's docs advise for adaptive
# bundles: a 4 KiB block the device lacks costs the whole compressed squashfs
# block around it.
MKSQUASHFS_ARGS = "-comp lz4 -b 64k"


def log(msg):
    print(f"build: {msg}", flush=True)


def run(cmd, **kw):
    if isinstance(cmd, str):
        kw.setdefault("shell", True)
    r = subprocess.run(cmd, **kw)
    if r.returncode != 0:
        raise SystemExit(f"build: command failed ({r.returncode}): {cmd if isinstance(cmd, str) else shlex.join(map(str, cmd))}")
    return r


def out_of(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def out_of_bytes(cmd):
    return subprocess.run(cmd, check=True, capture_output=True).stdout


def sha(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, Path):
            if p.is_dir():
                for f in sorted(p.rglob("*")):
                    if f.is_file():
                        h.update(str(f.relative_to(p)).encode())
                        h.update(f.read_bytes())
            elif p.exists():
                h.update(p.read_bytes())
            else:
                h.update(b"<missing>" + str(p).encode())
        else:
            h.update(str(p).encode())
        h.update(b"\0")
    return h.hexdigest()


def sha256_file(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


class Stage:
    """Skip a stage whose stamp matches its input hash."""

    def __init__(self, out: Path, name: str, key: str, force: bool):
        self.stamp = out / "stamps" / name
        self.key = key
        self.force = force
        self.name = name

    def fresh(self) -> bool:
        ok = not self.force and self.stamp.is_file() and self.stamp.read_text() == self.key
        if ok:
            log(f"{self.name}: up to date")
        return ok

    def done(self):
        self.stamp.parent.mkdir(parents=True, exist_ok=True)
        self.stamp.write_text(self.key)


# ---------------------------------------------------------------------------
# wks
# ---------------------------------------------------------------------------

def read_wks(path: Path):
    """The layer's partitions, numbered and named as wic does (the layer's
    own reader), plus what this builder needs: sizes and alignment in bytes;
    and the offsets of the raw boot state copies (its --no-table rawcopy
    lines)."""
    ptable, lines = wks.read_wks(path)
    parts = [p for p in lines if not p.get("no-table")]
    # --no-table lines: the boot state copies, and reserves without a source
    # (the second half of the boot region)
    others = [p for p in lines if p.get("no-table") and p not in bootenv.copy_parts(lines) and p.get("source")]
    if ptable != "msdos" or len(parts) != 4 or others:
        raise SystemExit(f"build: {path}: expected an msdos table with 4 partitions, the boot state copies "
                         "and reserves")
    try:
        env_offsets = bootenv.copy_offsets(lines)
    except bootenv.BootEnvError as e:
        raise SystemExit(f"build: {path}: {e}")
    if len(env_offsets) != 2:
        raise SystemExit(f"build: {path}: expected two rawcopy lines of {bootenv.BLOB}")
    raw_sizes = bootregion.raw_sizes(bootenv.recipe_size(LAYER))
    # where wic puts every part (the layer's layout), and the boot region
    # RAUC switches in (system.conf's boot-mbr-switch slot) agreeing with it
    try:
        placed = {id(p): (start, size) for p, start, size in bootregion.layout(lines, raw_sizes)}
        bad = bootregion.problems(read_system_conf(), lines, raw_sizes)
    except bootregion.RegionError as e:
        raise SystemExit(f"build: {path}: {e}")
    if bad:
        raise SystemExit(f"build: {path} and {SYSTEM_CONF.name}: " + "; ".join(bad))
    for p in parts:
        if "fixed-size" not in p and "size" not in p:
            raise SystemExit(f"build: {path}: every partition needs --fixed-size (or --size)")
        p["offset_bytes"], p["bytes"] = placed[id(p)]
        p["active"] = bool(p.get("active", False))
        if "device" not in p:
            raise SystemExit(f"build: {path}: partition {p['num']} has no --ondisk")
    return parts, env_offsets


def read_system_conf():
    import configparser
    cp = configparser.ConfigParser(interpolation=None, strict=True)
    cp.optionxform = str
    cp.read_string(SYSTEM_CONF.read_text(), source=str(SYSTEM_CONF))
    return cp


def boot_region():
    """(slot class, start, size) of system.conf's boot-mbr-switch slot."""
    section, _, start, size = bootregion.boot_slots(read_system_conf())[0]
    return bootregion.slot_class(section), start, size


# ---------------------------------------------------------------------------
# stages
# ---------------------------------------------------------------------------

def cache_dir() -> Path:
    d = Path(os.environ.get("HARMONY_CACHE", Path.home() / ".cache" / "harmony")) / "debs"
    d.mkdir(parents=True, exist_ok=True)
    return d


def stage_base(out: Path, force: bool, packages=PACKAGES) -> Path:
    root = out / "base" / "root"
    st = Stage(out, "base", sha(SUITE, MIRROR, packages, "v2"), force)
    if st.fresh() and root.is_dir():
        return root
    if root.parent.exists():
        shutil.rmtree(root.parent)
    root.parent.mkdir(parents=True)
    cache = cache_dir()
    log(f"base: mmdebstrap (extract) {SUITE} arm64, download cache {cache}")
    run(["mmdebstrap", "--variant=extract", "--architectures=arm64", "--quiet",
         "--include=" + ",".join(packages),
         "--skip=download/empty",
         f"--setup-hook=mkdir -p \"$1/var/cache/apt/archives\"; "
         f"find {cache} -maxdepth 1 -name '*.deb' -exec cp -t \"$1/var/cache/apt/archives/\" {{}} +",
         f"--customize-hook=find \"$1/var/cache/apt/archives\" -maxdepth 1 -name '*.deb' -exec cp -n -t {cache} {{}} +",
         SUITE, str(root),
         f"deb {MIRROR} {SUITE} main", f"deb {MIRROR} {SUITE}-updates main",
         f"deb {SECURITY} {SUITE}-security main"])
    st.done()
    return root


def stage_kernel(out: Path, force: bool, modules=ROOTFS_MODULES):
    kdir = out / "kernel"
    # The newest kernel package the (host's) arm64 package lists know.
    dep = out_of(["apt-cache", "depends", f"{KERNEL_META}:arm64"])
    pkg = next(l.split(":", 1)[1].strip() for l in dep.splitlines() if l.strip().startswith("Depends:"))
    pkg = pkg.split(":")[0]
    version = out_of(["apt-cache", "policy", f"{pkg}:arm64"]).split("Candidate:")[1].split()[0]
    st = Stage(out, "kernel", sha(pkg, version, INITRD_MODULES, modules, "v3"), force)
    if st.fresh() and (kdir / "Image").is_file():
        return kdir
    cache = cache_dir()
    debs = sorted(cache.glob(f"{pkg}_{version.replace(':', '%3a')}_arm64.deb"))
    if not debs:
        log(f"kernel: downloading {pkg} {version}")
        run(["apt-get", "download", "-q", f"{pkg}:arm64={version}"], cwd=cache,
            stdout=subprocess.DEVNULL)
        debs = sorted(cache.glob(f"{pkg}_*_arm64.deb"))
    deb = debs[-1]
    if kdir.exists():
        shutil.rmtree(kdir)
    x = kdir / "x"
    x.mkdir(parents=True)
    run(["dpkg-deb", "-x", str(deb), str(x)])
    kver = next((x / "lib/modules").iterdir()).name
    vmlinuz = next((x / "boot").glob("vmlinuz-*"))
    data = vmlinuz.read_bytes()
    if data[:2] == b"\x1f\x8b":
        import gzip
        data = gzip.decompress(data)
    (kdir / "Image").write_bytes(data)
    run(["depmod", "-b", str(x), kver])
    deps = {}
    for line in (x / "lib/modules" / kver / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
    by_name = {Path(m).name[:-3].replace("-", "_"): m for m in deps}

    def closure(names):
        order = []

        def visit(m):
            if m in order:
                return
            for d in reversed(deps[m]):
                visit(d)
            order.append(m)

        for n in names:
            m = by_name.get(n)
            if m is None:
                builtin = (x / "lib/modules" / kver / "modules.builtin").read_text()
                if f"/{n}.ko" in builtin.replace("-", "_"):
                    continue
                log(f"kernel: module {n} not found (skipped)")
                continue
            visit(m)
        return order

    mods = kdir / "modules"
    mdir = mods / "lib/modules" / kver
    for m in closure(modules):
        dst = mdir / m
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(x / "lib/modules" / kver / m, dst)
    for f in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        shutil.copy2(x / "lib/modules" / kver / f, mdir / f)
    run(["depmod", "-b", str(mods), kver])
    (kdir / "initrd-modules").write_text("\n".join(closure(INITRD_MODULES)) + "\n")
    (kdir / "version").write_text(kver)
    shutil.rmtree(x)
    st.done()
    return kdir


def extra_debs(packages) -> list:
    """The arm64 .debs of `packages` at bookworm's candidate version (the
    host's package lists, as stage_kernel uses), from the download cache or
    downloaded into it."""
    cache = cache_dir()
    debs = []
    for pkg in packages:
        version = out_of(["apt-cache", "policy", f"{pkg}:arm64"]).split("Candidate:")[1].split()[0]
        if version == "(none)":
            raise SystemExit(f"build: no arm64 candidate for {pkg} in the host's package lists")
        name = f"{pkg}_{version.split(':')[-1]}_arm64.deb"
        if not (cache / name).is_file():
            log(f"adaptive variant: downloading {pkg} {version}")
            run(["apt-get", "download", "-q", f"{pkg}:arm64={version}"], cwd=cache, stdout=subprocess.DEVNULL)
        if not (cache / name).is_file():
            raise SystemExit(f"build: apt-get download {pkg}:arm64={version} did not give {name}")
        debs.append(cache / name)
    return debs


def stage_rauc_streaming(out: Path, force: bool) -> Path:
    """Debian bookworm's rauc source package, cross-built for arm64 with
    HTTP streaming (image/qemu/rauc-streaming/build): the directory holding
    its usr/bin/rauc. Cached by the script's content in the output directory
    and in $HARMONY_CACHE/rauc-streaming/<key>/."""
    candidate = out_of(["apt-cache", "policy", "rauc:arm64"]).split("Candidate:")[1].split()[0]
    if candidate != RAUC_DEBIAN_VERSION:
        raise SystemExit(f"build: bookworm's rauc is now {candidate}; the rauc-streaming stage builds "
                         f"{RAUC_DEBIAN_VERSION} (update image/qemu/rauc-streaming/build and RAUC_DEBIAN_VERSION)")
    key = sha(RAUC_STREAMING, RAUC_DEBIAN_VERSION, "v1")
    dst = out / "rauc-streaming"
    st = Stage(out, "rauc-streaming", key, force)
    if st.fresh() and (dst / "usr/bin/rauc").is_file():
        return dst
    cached = cache_dir().parent / "rauc-streaming" / key
    if dst.exists():
        shutil.rmtree(dst)
    if not force and (cached / "usr/bin/rauc").is_file():
        log(f"rauc-streaming: from the cache {cached}")
        shutil.copytree(cached, dst)
    else:
        log(f"rauc-streaming: cross-building rauc {RAUC_DEBIAN_VERSION} with --enable-streaming")
        work = out / "rauc-streaming.work"
        if work.exists():
            shutil.rmtree(work)
        t = time.time()
        run([str(RAUC_STREAMING), str(dst), str(work)])
        shutil.rmtree(work)
        log(f"rauc-streaming: built in {time.time() - t:.0f} s")
        if cached.parent.exists():
            shutil.rmtree(cached.parent)
        shutil.copytree(dst, cached)
    st.done()
    return dst


INIT = r"""#!/bin/busybox sh
# Harmony QEMU initramfs: load the block/ext4 modules, find root=PARTUUID=,
# mount it and hand over to its /sbin/init.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do insmod "/lib/modules/$m" 2>/dev/null; done < /modules.list
root=
for a in $(cat /proc/cmdline); do
    case "$a" in root=PARTUUID=*) root="${a#root=PARTUUID=}" ;; esac
done
dev=
for i in $(seq 1 100); do
    for p in /sys/class/block/*; do
        [ -f "$p/partition" ] || continue
        disk=$(basename "$(readlink -f "$p/..")")
        sig=$(hexdump -s 440 -n 4 -e '1/4 "%08x"' "/dev/$disk" 2>/dev/null)
        n=$(printf '%02x' "$(cat "$p/partition")")
        if [ "$sig-$n" = "$root" ]; then dev=/dev/$(basename "$p"); fi
    done
    [ -n "$dev" ] && break
    sleep 0.1
done
if [ -z "$dev" ] || ! mount -t ext4 -o rw "$dev" /newroot; then
    echo "harmony-initramfs: cannot mount root PARTUUID=$root"
    exit 1
fi
init=/newroot/sbin/init
if [ -L "$init" ]; then
    t=$(readlink "$init")
    case "$t" in /*) init="/newroot$t" ;; *) init="/newroot/sbin/$t" ;; esac
fi
if [ ! -x "$init" ]; then
    echo "harmony-initramfs: no /sbin/init on $dev"
    exit 1
fi
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /sbin/init
"""


def stage_initrd(out: Path, base: Path, kdir: Path, force: bool) -> Path:
    initrd = out / "initrd"
    st = Stage(out, "initrd", sha(INIT, kdir / "version", kdir / "initrd-modules",
                                   base / "bin/busybox"), force)
    if st.fresh() and initrd.is_file():
        return initrd
    tmp = out / "initrd.d"
    if tmp.exists():
        shutil.rmtree(tmp)
    for d in ("bin", "dev", "proc", "sys", "newroot", "lib/modules"):
        (tmp / d).mkdir(parents=True)
    shutil.copy2(base / "bin/busybox", tmp / "bin/busybox")
    (tmp / "init").write_text(INIT)
    (tmp / "init").chmod(0o755)
    kver = (kdir / "version").read_text()
    lst = []
    for m in (kdir / "initrd-modules").read_text().split():
        dst = tmp / "lib/modules" / Path(m).name
        shutil.copy2(kdir / "modules/lib/modules" / kver / m, dst)
        lst.append(Path(m).name)
    (tmp / "modules.list").write_text("\n".join(lst) + "\n")
    run(f"cd {shlex.quote(str(tmp))} && find . | sort | cpio -o -H newc -R 0:0 --quiet | gzip -9 > {shlex.quote(str(initrd))}")
    shutil.rmtree(tmp)
    st.done()
    return initrd


def fleet_key(keys: Path):
    """The fleet's ed25519 offer-signing key in harmony-operator's format
    (one line of hex seed, 0600; <key>.pub one line of hex public key)."""
    pem = keys / "fleet.pem"
    run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", pem])
    der = out_of_bytes(["openssl", "pkey", "-in", pem, "-outform", "DER"])
    pub = out_of_bytes(["openssl", "pkey", "-in", pem, "-pubout", "-outform", "DER"])
    pem.unlink()
    # PKCS#8 and SPKI DER of an ed25519 key end with the 32 raw bytes.
    seed = keys / "fleet.key"
    seed.touch(mode=0o600)
    seed.write_text(der[-32:].hex() + "\n")
    (keys / "fleet.pub").write_text(pub[-32:].hex() + "\n")


def stage_keys(out: Path) -> Path:
    keys = out / "keys"
    if (keys / "untrusted-signer.key.pem").is_file() and (keys / "fleet.pub").is_file():
        return keys
    if keys.exists():
        shutil.rmtree(keys)
    keys.mkdir(parents=True, exist_ok=True)
    log("keys: generating the test CA, signer and an untrusted CA (build-time only)")

    def ca(name, cn):
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", keys / f"{name}.key.pem", "-out", keys / f"{name}.cert.pem",
             "-days", "3650", "-subj", f"/O=Harmony Fleet test/CN={cn}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"],
            stderr=subprocess.DEVNULL)

    def signer(name, ca_name, cn):
        run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", keys / f"{name}.key.pem", "-out", keys / f"{name}.csr", "-subj",
             f"/O=Harmony Fleet test/CN={cn}"], stderr=subprocess.DEVNULL)
        ext = keys / "signer.ext"
        ext.write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n")
        run(["openssl", "x509", "-req", "-in", keys / f"{name}.csr", "-CA", keys / f"{ca_name}.cert.pem",
             "-CAkey", keys / f"{ca_name}.key.pem", "-CAcreateserial", "-days", "3650",
             "-extfile", ext, "-out", keys / f"{name}.cert.pem"], stderr=subprocess.DEVNULL)

    fleet_key(keys)
    ca("ca", "QEMU test CA")
    signer("signer", "ca", "QEMU test signer")
    ca("untrusted-ca", "Untrusted CA")
    signer("untrusted-signer", "untrusted-ca", "Untrusted signer")
    return keys


def agent_binary(no_agent: bool):
    if no_agent:
        return None
    p = os.environ.get("HARMONY_AGENT_BIN") or str(REPO / "target/aarch64-unknown-linux-gnu/release/harmony-agent")
    p = Path(p)
    return p if p.is_file() else None


def write(path: Path, text: str, mode=0o644):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_text(text)
    path.chmod(mode)


def enable(root: Path, unit: str, target: str, name=None):
    wants = root / "etc/systemd/system" / f"{target}.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / (name or Path(unit).name)
    if not link.exists():
        link.symlink_to(unit)


def install_layer_files(root: Path, agent, podman=False):
    """LAYER_FILES into the rootfs, units enabled as `systemctl enable` would
    (by their [Install] WantedBy=), like systemd.bbclass does for the recipes."""
    for recipe, name, dest, mode, only in LAYER_FILES:
        if not wanted(only, agent, podman):
            continue
        dst = root / dest
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        shutil.copy2(layer_file(recipe, name), dst)
        dst.chmod(mode)
        if dst.suffix in (".service", ".mount") and dst.parent.name == "system":
            for target in wanted_by(dst):
                enable(root, "/" + dest, target)
        if dst.suffix == ".mount":
            where = next(l.split("=", 1)[1].strip() for l in dst.read_text().splitlines() if l.startswith("Where="))
            (root / where.lstrip("/")).mkdir(parents=True, exist_ok=True)
    for recipe, name, unit, target in LAYER_ENABLES:
        # Debian bookworm's packages without merged /usr: /lib/systemd/system
        found = [u for u in (unit, unit.replace("/usr/lib/", "/lib/", 1)) if (root / u.lstrip("/")).is_file()]
        if not found:
            raise SystemExit(f"build: {recipe} enables {name} as {unit}, which no package of the image installs")
        enable(root, found[0], target, name)


def alternatives_iptables(root: Path):
    """What iptables' maintainer script (not run by the extract variant)
    would have done: /usr/sbin/iptables and friends point at the nft backend,
    Debian's default. netavark runs `iptables`."""
    for tool in ("iptables", "ip6tables"):
        for suffix in ("", "-save", "-restore"):
            link = root / "usr/sbin" / f"{tool}{suffix}"
            if not link.exists():
                link.symlink_to(f"{tool}-nft{suffix}")


def preset_networkd(root: Path):
    """What oe-core's systemd (PACKAGECONFIG networkd) enables by preset:
    systemd-networkd, which runs the layer's .network files."""
    enable(root, "/lib/systemd/system/systemd-networkd.service", "multi-user.target")


def substitute_build_products(root: Path, keys: Path, agent):
    """What the recipes build or take from variables, here from this build:
    the keyring (HARMONY_RAUC_KEYRING, installed by rauc-conf as ca.cert.pem),
    the fleet key (HARMONY_FLEET_PUBLIC_KEYS) and the cross-built agent."""
    (root / "usr/lib/rauc").mkdir(parents=True, exist_ok=True)
    shutil.copy2(keys / "ca.cert.pem", root / "usr/lib/rauc/ca.cert.pem")
    if agent is None:
        return
    shutil.copy2(agent, root / "usr/bin/harmony-agent")
    (root / "usr/bin/harmony-agent").chmod(0o755)
    (root / "etc/harmony/fleet-keys").mkdir(parents=True, exist_ok=True)
    shutil.copy2(keys / "fleet.pub", root / "etc/harmony/fleet-keys/fleet.pub")


def substitute_rauc(root: Path, rauc):
    """What meta-rauc's rauc recipe builds with PACKAGECONFIG streaming (on by
    default there): the rebuilt rauc binary in place of Debian's; and what
    the Yocto kernels have built in (CONFIG_BLK_DEV_NBD=y), loaded at boot
    from the Debian kernel's module."""
    if rauc is None:
        return
    shutil.copy2(rauc / "usr/bin/rauc", root / "usr/bin/rauc")
    (root / "usr/bin/rauc").chmod(0o755)
    write(root / "etc/modules-load.d/harmony-nbd.conf",
          "# RAUC HTTP streaming (QEMU test image: Debian's kernel has nbd as a module)\n"
          + "".join(f"{m}\n" for m in BOOT_MODULES))


def wanted_by(unit: Path):
    targets, section = [], None
    for line in unit.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Install]" and line.startswith("WantedBy="):
            targets += line.split("=", 1)[1].split()
    return targets


def test_console(root: Path):
    """QEMU test image only: a root shell on the serial console for the
    test harness (no login/PAM: a root shell service owns ttyAMA0 instead of
    a getty)."""
    (root / "etc/systemd/system/serial-getty@ttyAMA0.service").symlink_to("/dev/null")
    write(root / "etc/systemd/system/harmony-console.service",
          "[Unit]\nDescription=Root shell on the serial console (QEMU test image only)\n"
          "After=systemd-user-sessions.service\nConflicts=rescue.service\n\n"
          "[Service]\nExecStart=-/bin/bash -l\nStandardInput=tty-force\nStandardOutput=tty\n"
          "StandardError=tty\nTTYPath=/dev/ttyAMA0\nTTYReset=yes\nTTYVHangup=yes\n"
          "Environment=HOME=/root TERM=dumb\nWorkingDirectory=/root\nRestart=always\nRestartSec=1\n"
          # an interactive bash ignores SIGTERM: without this every shutdown waits 90 s
          "KillSignal=SIGHUP\nTimeoutStopSec=5\n")
    enable(root, "/etc/systemd/system/harmony-console.service", "multi-user.target")
    write(root / "root/.bashrc", "PS1='harmony# '\nexport TERM=dumb\nstty -echo 2>/dev/null\necho HARMONY-CONSOLE-READY\n")
    write(root / "root/.profile", ". ~/.bashrc\n")


def fault_misdirected_nats(root: Path, wrong: str):
    """Test fault (variant v3): its image-level config sorts a drop-in after
    the device's enrollment one that points the agent at a server nobody
    runs, as a bad release would."""
    text = (root / "etc/harmony/agent.toml").read_text()
    text = text.replace('drop_in_dir = "/data/harmony/agent.d"', 'drop_in_dir = "/etc/harmony/agent.d"')
    if 'drop_in_dir = "/etc/harmony/agent.d"' not in text:
        raise SystemExit("build: agent.toml no longer names drop_in_dir = \"/data/harmony/agent.d\"")
    write(root / "etc/harmony/agent.toml", text)
    (root / "etc/harmony/agent.d").mkdir(parents=True, exist_ok=True)
    # The device's own drop-ins, as qemu-tests/ota lays them out: the test's
    # timing and what enrollment wrote (identity, key, server).
    for name in ("05-qemu-test-timing.toml", "20-enrolled.toml"):
        (root / "etc/harmony/agent.d" / name).symlink_to(f"/data/harmony/agent.d/{name}")
    write(root / "etc/harmony/agent.d/90-release.toml", f'[nats]\nurls = ["{wrong}"]\n')


def fault_no_init(root: Path):
    """Test fault (variant broken): installs like any bundle, but nothing can
    start: no init."""
    for f in ("sbin/init", "lib/systemd/systemd"):
        (root / f).unlink()


def stage_rootfs(out: Path, name: str, base: Path, kdir: Path, initrd: Path, keys: Path,
                 parts, agent, rauc, key: str, force: bool, podman=False, extra_debs=()) -> Path:
    img = out / f"rootfs-{name}.ext4"
    st = Stage(out, f"rootfs-{name}", key, force)
    if st.fresh() and img.is_file():
        return img
    spec = {**VARIANTS, **ADAPTIVE_VARIANT}[name]
    version = spec["version"]
    log(f"rootfs-{name}: version {version}")
    root = out / f"rootfs-{name}.d"
    if root.exists():
        shutil.rmtree(root)
    run(["cp", "-a", str(base), str(root)])
    for deb in extra_debs:
        # as mmdebstrap's extract variant installs every package: unpacked, no
        # maintainer scripts (the image's dpkg status is empty either way)
        log(f"rootfs-{name}: adding {deb.name}")
        run(["dpkg-deb", "-x", str(deb), str(root)])
    for t in TRIM:
        if (root / t).is_dir() and not (root / t).is_symlink():
            shutil.rmtree(root / t)
        elif (root / t).exists():
            (root / t).unlink()
    for f in (root / "var/cache/apt").glob("*") if (root / "var/cache/apt").exists() else []:
        f.unlink()

    # what base-files' maintainer script would have done
    for link, target in (("var/run", "/run"), ("var/lock", "/run/lock")):
        if (root / link).is_dir() and not (root / link).is_symlink():
            shutil.rmtree(root / link)
        if not (root / link).is_symlink():
            (root / link).symlink_to(target)
    # /bin/sh, which dash's maintainer script (not run by the extract variant)
    # would provide and a Yocto image always has: the layer's scripts
    # (harmony-boot-confirm, harmony-grow-data) are #!/bin/sh.
    if not (root / "bin/sh").exists():
        (root / "bin/sh").symlink_to("bash")

    # users and groups: base files, then systemd-sysusers from the packages' sysusers.d
    write(root / "etc/passwd", "root:x:0:0:root:/root:/bin/bash\n")
    write(root / "etc/group", "root:x:0:\ntty:x:5:\ndisk:x:6:\nkmem:x:15:\ndialout:x:20:\n"
          "audio:x:29:\nvideo:x:44:\nutmp:x:43:\ninput:x:101:\nkvm:x:102:\nrender:x:103:\n"
          "sgx:x:104:\ncdrom:x:24:\ntape:x:26:\nfloppy:x:25:\nusers:x:100:\nnogroup:x:65534:\n")
    write(root / "etc/shadow", "root::19000:0:99999:7:::\n", 0o640)
    write(root / "etc/gshadow", "root:*::\n", 0o640)
    run(["systemd-sysusers", f"--root={root}"], stdout=subprocess.DEVNULL)
    run(["ldconfig", "-r", str(root)])

    # identity
    write(root / "etc/hostname", "harmony-qemu\n")
    write(root / "etc/machine-id", "")
    write(root / "etc/os-release",
          f'NAME="Harmony Fleet"\nID=harmony\nID_LIKE=debian\nVERSION="{version}"\n'
          f'VERSION_ID={version}\nPRETTY_NAME="Harmony Fleet {version} (QEMU test image)"\n'
          f"HARMONY_MACHINE={MACHINE}\n")
    (root / "usr/lib/os-release").unlink(missing_ok=True)

    # mounts, RAUC, U-Boot environment tools, network, (agent): the layer's files
    install_layer_files(root, agent, podman)
    if podman:
        alternatives_iptables(root)
    preset_networkd(root)
    substitute_build_products(root, keys, agent)
    substitute_rauc(root, rauc)

    # kernel + initramfs in the slot's /boot, modules
    (root / "boot").mkdir(exist_ok=True)
    shutil.copy2(kdir / "Image", root / "boot/Image")
    shutil.copy2(initrd, root / "boot/initrd")
    run(["cp", "-a", str(kdir / "modules/lib/modules"), str(root / "lib/")])

    test_console(root)
    # nothing in the image may commit a slot: that is the operator's job
    for unit in ("e2scrub_all.timer", "e2scrub_reap.service", "apt-daily.timer", "fstrim.timer"):
        (root / "etc/systemd/system" / unit).unlink(missing_ok=True)
        (root / "etc/systemd/system" / unit).symlink_to("/dev/null")
    write(root / "etc/systemd/journald.conf.d/harmony.conf", "[Journal]\nStorage=volatile\n")

    if agent is not None:
        log(f"rootfs-{name}: including the agent {agent}")
        wrong = spec.get("misdirected_nats")
        if wrong:
            fault_misdirected_nats(root, wrong)

    if name == "broken":
        fault_no_init(root)

    # ext4 image: content + 30 % + 24 MiB, in 4 KiB blocks
    used = int(out_of(["du", "-s", "--block-size=1", str(root)]).split()[0])
    blocks = (int(used * 1.3) + 24 * 1024 * 1024) // 4096
    slot = next(p for p in parts if p["mount"] == "/")
    if blocks * 4096 > slot["bytes"]:
        raise SystemExit(f"build: rootfs-{name} needs {blocks * 4} KiB, the slot has {slot['bytes'] // 1024}")
    img.unlink(missing_ok=True)
    run(["mke2fs", "-q", "-t", "ext4", "-b", "4096", "-L", f"harmony-{name}", *ROOTFS_MKE2FS_STABLE,
         "-E", ",".join(["root_owner=0:0", *ROOTFS_MKE2FS_STABLE_E]), "-d", str(root), str(img), str(blocks)])
    shutil.rmtree(root)
    st.done()
    return img


def bundle(out: Path, name: str, img: Path, boot_img: Path, version: str, cert: Path, key: Path, keyring: Path,
           compatible=None, adaptive=True) -> Path:
    """A signed verity bundle: the boot files (system.conf's boot-mbr-switch
    slot) first, as harmony-bundle lists them, then the rootfs slot image."""
    bdir = out / "bundles"
    bdir.mkdir(exist_ok=True)
    work = out / f"bundle-{name}.d"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    os.link(img, work / "rootfs.ext4")
    os.link(boot_img, work / "boot.vfat")
    boot_class = boot_region()[0]
    compatible = compatible or next(l.split("=", 1)[1].strip() for l in SYSTEM_CONF.read_text().splitlines()
                                    if l.startswith("compatible="))
    (work / "manifest.raucm").write_text(
        f"[update]\ncompatible={compatible}\nversion={version}\n"
        f"description=Harmony Fleet {name} (QEMU test bundle)\n\n"
        f"[bundle]\nformat=verity\n\n[image.{boot_class}]\nfilename=boot.vfat\n\n"
        f"[image.rootfs]\nfilename=rootfs.ext4\n" + (f"adaptive={ROOTFS_ADAPTIVE}\n" if adaptive else ""))
    dst = bdir / f"{name}.raucb"
    dst.unlink(missing_ok=True)
    run(["rauc", "bundle", f"--mksquashfs-args={MKSQUASHFS_ARGS}", f"--cert={cert}", f"--key={key}",
         f"--keyring={keyring}", str(work), str(dst)], stdout=subprocess.DEVNULL)
    shutil.rmtree(work)
    return dst


def mkfs_ext4_dir(img: Path, src: Path, size: int, label: str):
    img.unlink(missing_ok=True)
    run(["mke2fs", "-q", "-t", "ext4", "-b", "4096", "-L", label, "-E", "root_owner=0:0",
         "-d", str(src), str(img), str(size // 4096)])


def stage_boot_images(out: Path, parts, force: bool, variants=VARIANTS):
    """The boot partition's image for every variant: what IMAGE_BOOT_FILES
    puts there for qemuarm64 (boot.scr, compiled from the layer's
    boot.cmd.in as the u-boot recipe does, its version marker filled with the
    variant's version) in a vfat of the wks boot partition's size. The disk's
    partition 1 gets v1's; each bundle carries its variant's as the image of
    system.conf's boot-mbr-switch slot."""
    boot = parts[0]
    key = sha(BOOT_CMD, WKS, SYSTEM_CONF, {n: v["version"] for n, v in variants.items()}, "v1")
    st = Stage(out, "boot-images", key, force)
    imgs = {n: out / f"boot-{n}.vfat" for n in variants}
    if st.fresh() and all(i.is_file() for i in imgs.values()):
        return imgs
    for n, img in imgs.items():
        cmd = (BOOT_CMD.read_text().replace("@@KERNEL_IMAGETYPE@@", "Image").replace("@@KERNEL_BOOTCMD@@", "booti")
               .replace("@@BOOT_FILES_VERSION@@", variants[n]["version"]))
        if "@@" in cmd:
            raise SystemExit("build: boot.cmd.in has placeholders this builder does not fill")
        work = out / f"boot-{n}.d"
        if work.exists():
            shutil.rmtree(work)
        work.mkdir()
        (work / "boot.cmd").write_text(cmd)
        run(["mkimage", "-q", "-A", "arm64", "-O", "linux", "-T", "script", "-C", "none",
             "-n", "harmony boot", "-d", str(work / "boot.cmd"), str(work / "boot.scr")], stdout=subprocess.DEVNULL)
        img.unlink(missing_ok=True)
        run(["mkfs.vfat", "-n", boot["label"].upper()[:11], "-C", str(img), str(boot["bytes"] // 1024)],
            stdout=subprocess.DEVNULL)
        run(["mcopy", "-i", str(img), str(work / "boot.scr"), "::boot.scr"])
        shutil.rmtree(work)
    st.done()
    return imgs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="default build/qemu (build/qemu-podman with --with-podman)")
    ap.add_argument("--no-agent", action="store_true")
    ap.add_argument("--with-podman", action="store_true",
                    help="add podman and the layer's container storage config (not the CI image)")
    ap.add_argument("--debian-rauc", action="store_true",
                    help="keep Debian's rauc 1.8-2 (no HTTP streaming); skips the rauc-streaming stage")
    ap.add_argument("--with-adaptive-variant", action="store_true",
                    help="also build v2.1 (v2 plus one small package, ADAPTIVE_VARIANT) and its bundle, for "
                         "measuring adaptive updates (qemu-tests/run streaming; not the CI image)")
    ap.add_argument("--force", action="store_true", help="rebuild every stage")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("build: run as root (mmdebstrap root mode, root-owned files in mke2fs -d)")
    for tool in ("mmdebstrap", "mke2fs", "mkfs.vfat", "mcopy", "sfdisk", "mkimage", "mkenvimage", "rauc", "depmod",
                 "cpio", "openssl", "systemd-sysusers"):
        if shutil.which(tool) is None:
            raise SystemExit(f"build: {tool} is missing (run scripts/setup)")
    t0 = time.time()
    podman = args.with_podman
    out = (args.out or REPO / "build" / ("qemu-podman" if podman else "qemu")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    parts, env_offsets = read_wks(WKS)
    base = stage_base(out, args.force, PACKAGES + PODMAN_PACKAGES if podman else PACKAGES)
    kdir = stage_kernel(out, args.force, ROOTFS_MODULES + PODMAN_MODULES if podman else ROOTFS_MODULES)
    initrd = stage_initrd(out, base, kdir, args.force)
    keys = stage_keys(out)
    agent = agent_binary(args.no_agent)
    rauc = None if args.debian_rauc else stage_rauc_streaming(out, args.force)
    common = sha(Path(__file__), Path(wks.__file__), out / "stamps/base", out / "stamps/kernel", initrd,
                 keys / "ca.cert.pem", keys / "fleet.pub", WKS, agent or "no-agent", *layer_inputs(agent, podman),
                 *(["podman"] if podman else []),
                 out / "stamps/rauc-streaming" if rauc else "debian-rauc",
                 *ROOTFS_MKE2FS_STABLE, *ROOTFS_MKE2FS_STABLE_E)
    variants = dict(VARIANTS)
    debs = {}
    if args.with_adaptive_variant:
        variants.update(ADAPTIVE_VARIANT)
        debs = {n: extra_debs(v["extra_debs"]) for n, v in ADAPTIVE_VARIANT.items()}
    imgs = {n: stage_rootfs(out, n, base, kdir, initrd, keys, parts, agent, rauc,
                            sha(common, n, *debs.get(n, [])), args.force, podman, debs.get(n, []))
            for n in variants}
    boot_imgs = stage_boot_images(out, parts, args.force, variants)

    # bundles (adaptive rootfs images, 64 KiB squashfs blocks: in the key, so
    # bundles built before are rebuilt)
    bkey = sha(common, *[out / f"stamps/rootfs-{n}" for n in variants], out / "stamps/boot-images",
               keys / "signer.cert.pem", keys / "untrusted-signer.cert.pem", SYSTEM_CONF,
               f"adaptive={ROOTFS_ADAPTIVE}", f"mksquashfs={MKSQUASHFS_ARGS}", f"full={sorted(FULL_BUNDLES.items())}")
    st = Stage(out, "bundles", bkey, args.force)
    bundles = {n: out / "bundles" / f"{n}.raucb" for n in list(variants) + list(DERIVED_BUNDLES) + list(FULL_BUNDLES)}
    if not (st.fresh() and all(b.is_file() for b in bundles.values())):
        for n in variants:
            log(f"bundle {n}")
            bundle(out, n, imgs[n], boot_imgs[n], variants[n]["version"], keys / "signer.cert.pem",
                   keys / "signer.key.pem", keys / "ca.cert.pem")
        for n, (img, version, signer, compatible) in DERIVED_BUNDLES.items():
            log(f"bundle {n} (slot image {img}, version {version}, {signer} signer, "
                f"compatible {compatible or 'of the machine'})")
            prefix = "untrusted-" if signer == "untrusted" else ""
            bundle(out, n, imgs[img], boot_imgs[img], version, keys / f"{prefix}signer.cert.pem",
                   keys / f"{prefix}signer.key.pem",
                   keys / f"{prefix}ca.cert.pem", compatible)
        for n, img in FULL_BUNDLES.items():
            log(f"bundle {n} (slot image {img}, not adaptive)")
            bundle(out, n, imgs[img], boot_imgs[img], variants[img]["version"], keys / "signer.cert.pem",
                   keys / "signer.key.pem", keys / "ca.cert.pem", adaptive=False)
        st.done()

    # data partition, disk (boot partition: v1's boot image)
    dkey = sha(bkey, WKS, LAYER / bootenv.RECIPE, LAYER / bootenv.TEXT, Path(bootenv.__file__),
               Path(bootregion.__file__), *[out / f"stamps/rootfs-{n}" for n in variants])
    st = Stage(out, "disk", dkey, args.force)
    disk = out / "disk.img"
    if not (st.fresh() and disk.is_file()):
        boot, slot_a, slot_b, data = parts
        dd = out / "data.d"
        if dd.exists():
            shutil.rmtree(dd)
        (dd / "bundles").mkdir(parents=True)
        (dd / "rauc").mkdir()
        for n in DATA_BUNDLES:
            os.link(bundles[n], dd / "bundles" / bundles[n].name)
        used = int(out_of(["du", "-s", "--block-size=1", str(dd)]).split()[0])
        if used + 128 * 2 ** 20 > data["bytes"]:
            raise SystemExit(f"build: the bundles ({used >> 20} MiB) leave less than 128 MiB free "
                             f"on the {data['bytes'] >> 20} MiB data partition ({WKS.name})")
        mkfs_ext4_dir(out / "data.ext4", dd, data["bytes"], data["label"])
        shutil.rmtree(dd)
        # partition table: where the layer's wks puts each partition (the
        # boot partition in the first half of the boot region, the second
        # half reserved, as wic lays it out)
        offs = [p["offset_bytes"] for p in parts]
        total = offs[-1] + parts[-1]["bytes"] + 1024 * 1024
        disk.unlink(missing_ok=True)
        with open(disk, "wb") as f:
            f.truncate(total)
        table = [f"label: dos", f"label-id: {DISK_ID}", "unit: sectors", ""]
        for p, off in zip(parts, offs):
            ptype = "c" if p["fstype"] == "vfat" else "83"
            boot_flag = ", bootable" if p["active"] else ""
            table.append(f"start={off // 512}, size={p['bytes'] // 512}, type={ptype}{boot_flag}")
        run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(disk)],
            input="\n".join(table) + "\n", text=True)
        for p, off, img in zip(parts, offs, [boot_imgs["v1"], imgs["v1"], imgs["v1"], out / "data.ext4"]):
            if img.stat().st_size > p["bytes"]:
                raise SystemExit(f"build: {img} is larger than partition {p['num']}")
            run(["dd", f"if={img}", f"of={disk}", "bs=4M", f"seek={off}", "oflag=seek_bytes",
                 "conv=notrunc,sparse", "status=none"])
        # the initial boot state, as the wks rawcopy lines write it into the
        # .wic: the layer's harmony-boot-env.txt made into one copy the way
        # its recipe does (mkenvimage -r), at both offsets
        env_blob = bootenv.make_blob(LAYER, out / bootenv.BLOB)
        if max(env_offsets) + env_blob.stat().st_size > offs[0]:
            raise SystemExit(f"build: the boot state copies {env_offsets} reach into partition 1 at {offs[0]}")
        bootenv.place(disk, env_blob, env_offsets)
        shutil.copy2(UBOOT_BIN, out / "u-boot.bin")
        manifest = {
            "machine": MACHINE,
            "disk": str(disk),
            "u_boot": str(out / "u-boot.bin"),
            "partitions": [{"num": p["num"], "device": p["device"], "label": p.get("label"),
                            "mount": p["mount"], "fstype": p["fstype"], "offset": o, "bytes": p["bytes"]}
                           for p, o in zip(parts, offs)],
            "boot_env": {"offsets": env_offsets, "size": env_blob.stat().st_size},
            "boot_region": dict(zip(("slot_class", "start", "size"), boot_region())),
            "boot_images": {n: str(i) for n, i in boot_imgs.items()},
            # what each bundle's boot.scr prints first ("harmony-boot-files: <marker>")
            "boot_files": {**{n: v["version"] for n, v in variants.items()},
                           **{n: VARIANTS[d[0]]["version"] for n, d in DERIVED_BUNDLES.items()}},
            "versions": {n: v["version"] for n, v in variants.items()},
            "bundles_in_guest": {n: f"{data['mount']}/bundles/{bundles[n].name}" for n in DATA_BUNDLES},
            "bundles_on_host": {n: str(b) for n, b in bundles.items()},
            "bundle_versions": {**{n: v["version"] for n, v in variants.items()},
                                **{n: d[1] for n, d in DERIVED_BUNDLES.items()},
                                **{n: variants[img]["version"] for n, img in FULL_BUNDLES.items()}},
            "fleet_key": str(keys / "fleet.key"),
            "rootfs_images": {n: str(i) for n, i in imgs.items()},
            "agent": str(agent) if agent else None,
            "podman": podman,
            "kernel": (kdir / "version").read_text(),
            "rauc_streaming": rauc is not None,
            # every bundle's [image.rootfs]: adaptive=, and how its squashfs is made
            "bundle_rootfs_adaptive": ROOTFS_ADAPTIVE,
            "bundle_mksquashfs_args": MKSQUASHFS_ARGS,
            # --with-adaptive-variant: v2.1 = v2 + these packages, else null
            "adaptive_variant": ({n: {"base": "v2", "version": v["version"],
                                      "extra_debs": [{"file": d.name, "bytes": d.stat().st_size,
                                                      "sha256": sha256_file(d)} for d in debs[n]]}
                                  for n, v in ADAPTIVE_VARIANT.items()} if debs else None),
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        st.done()
    log(f"done in {time.time() - t0:.0f} s: {disk}")


if __name__ == "__main__":
    main()
