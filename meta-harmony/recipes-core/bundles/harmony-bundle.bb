# nooelint: oelint.file.underscores, oelint.var.mandatoryvar.SRC_URI, oelint.var.suggestedvar.SECTION
# Like an image, a bundle has no upstream version to put in its file name,
# no sources of its own (bundle.bbclass collects harmony-image's output from
# DEPLOY_DIR_IMAGE) and no package section.
SUMMARY = "Harmony Fleet OTA update bundle"
DESCRIPTION = "Signed RAUC bundle (verity format) carrying the boot files \
               (the boot partition of harmony-image's .wic) for the \
               boot-mbr-switch slot and harmony-image's ext4 root \
               filesystem for the inactive rootfs slot."
HOMEPAGE = "https://example.invalid/harmony-fleet"
LICENSE = "MIT"

inherit bundle

# verity: the device checks every block it reads against the signed hash tree,
# and HTTP streaming installs need it.
RAUC_BUNDLE_FORMAT = "verity"

# Must equal "compatible" in rauc-conf's files/<MACHINE>/system.conf: RAUC
# refuses a bundle whose compatible differs. meta-harmony/checks compares the
# two for every machine.
RAUC_BUNDLE_COMPATIBLE = "harmony-${MACHINE}"

# The version the agent reports after booting this bundle: os-release's
# VERSION_ID, which oe-core derives from DISTRO_VERSION (the sanity class
# warns when the two could differ).
RAUC_BUNDLE_VERSION = "${DISTRO_VERSION}"
RAUC_BUNDLE_DESCRIPTION = "${DISTRO_NAME} ${DISTRO_VERSION} for ${MACHINE}"

# The boot files first (ADR 0004): RAUC writes the images in manifest order,
# and the rootfs slot after the boot files means a power cut can leave new
# boot files with the old, committed rootfs (the target rootfs slot is marked
# not bootable before anything is written), never a new rootfs with boot
# files that were not written.
RAUC_BUNDLE_SLOTS = "bootloader rootfs"
RAUC_SLOT_rootfs = "harmony-image"
RAUC_SLOT_rootfs[fstype] = "ext4"
# Adaptive updates (issue 16): `rauc bundle` stores a SHA-256 of every 4 KiB
# block of the rootfs image next to it (block-hash-index). A device that
# installs the bundle (rauc-conf's system.conf sets data-directory on /data,
# where RAUC keeps each slot's index) copies every block it already has in the
# target or the active rootfs slot and, when it streams the bundle, downloads
# only the others. A device without a data-directory, or a RAUC without the
# method, installs the whole image as before. meta-harmony/checks:
# bundle-adaptive.
RAUC_SLOT_rootfs[adaptive] = "block-hash-index"
# 64 KiB squashfs blocks instead of 128 KiB, as RAUC's docs advise for
# adaptive bundles: reading one missing 4 KiB block over HTTP fetches the
# whole compressed squashfs block around it.
BUNDLE_ARGS += "--mksquashfs-args='-b 64k'"

# system.conf's [slot.bootloader.0] (type=boot-mbr-switch). Its image is the
# boot partition of the very .wic this build makes for flashing: the same
# IMAGE_BOOT_FILES (Pi firmware, config.txt, DTBs and overlays, u-boot.bin,
# boot.scr) in the same vfat, byte for byte, so a device updated over the air
# boots the boot files a freshly flashed card has. RAUC 1.8 writes *.vfat and
# *.img files to such a slot. meta-harmony/checks: bundle-boot-slot.
HARMONY_BOOT_IMAGE = "harmony-boot.vfat"
HARMONY_BOOT_IMAGE_WIC_TYPE = "wic.bz2"
HARMONY_BOOT_IMAGE_WIC = "${RAUC_SLOT_rootfs}${IMAGE_MACHINE_SUFFIX}${IMAGE_NAME_SUFFIX}.${HARMONY_BOOT_IMAGE_WIC_TYPE}"
RAUC_SLOT_bootloader = "harmony-image"
RAUC_SLOT_bootloader[type] = "boot"
RAUC_SLOT_bootloader[file] = "${HARMONY_BOOT_IMAGE}"
RAUC_SLOT_bootloader[depends] = "harmony-image:do_image_complete"

# Cut partition 1 (MBR entry 0, the boot partition) out of the deployed .wic
# into ${HARMONY_BOOT_IMAGE}, where bundle.bbclass's manifest writer finds it
# (UNPACKDIR). Only the first partition's sectors are decompressed.
python do_harmony_boot_image() {
    import bz2
    import gzip
    import lzma
    import struct

    kind = d.getVar('HARMONY_BOOT_IMAGE_WIC_TYPE')
    openers = {'wic': open, 'wic.bz2': bz2.open, 'wic.gz': gzip.open, 'wic.xz': lzma.open}
    if kind not in openers:
        bb.fatal("HARMONY_BOOT_IMAGE_WIC_TYPE %s: want one of %s" % (kind, ", ".join(openers)))
    src = os.path.join(d.getVar('DEPLOY_DIR_IMAGE'), d.getVar('HARMONY_BOOT_IMAGE_WIC'))
    dst = os.path.join(d.getVar('HARMONY_UNPACKDIR'), d.getVar('HARMONY_BOOT_IMAGE'))

    def copy(f, out, count):
        while count:
            chunk = f.read(min(count, 1 << 20))
            if not chunk:
                bb.fatal("%s ends inside its boot partition" % src)
            if out is not None:
                out.write(chunk)
            count -= len(chunk)

    with openers[kind](src, 'rb') as f:
        mbr = f.read(512)
        if len(mbr) != 512 or mbr[510:512] != b'\x55\xaa':
            bb.fatal("%s has no MBR" % src)
        start, sectors = struct.unpack_from('<II', mbr, 446 + 8)
        if start == 0 or sectors == 0:
            bb.fatal("%s: MBR entry 0 (the boot partition) is empty" % src)
        copy(f, None, start * 512 - 512)
        with open(dst, 'wb') as out:
            copy(f, out, sectors * 512)
    bb.note("%s: partition 1 of %s (%d sectors at sector %d)" % (dst, src, sectors, start))

    if d.getVar('HARMONY_ENROLL_FILE'):
        name = d.getVar('HARMONY_ENROLL_FILE_NAME')
        try:
            zeroed = harmony_scrub_boot_file(dst, name, d.getVar('STAGING_BINDIR_NATIVE'))
        except RuntimeError as e:
            bb.fatal("%s: could not take the baked-in enrollment token out of the bundle's boot image: %s"
                     % (dst, e))
        bb.note("%s: %s deleted, %d sectors that held it zeroed" % (dst, name, zeroed))
}
# After do_prepare_recipe_sysroot as well: the scrub below runs mtools-native.
addtask harmony_boot_image after do_unpack do_prepare_recipe_sysroot before do_configure
do_harmony_boot_image[doc] = "Cuts the boot partition out of the .wic as the bundle's boot image"
do_harmony_boot_image[depends] += "harmony-image:do_image_complete"

# A factory build (HARMONY_ENROLL_FILE, classes-global/harmony_sanity.bbclass)
# puts an enrollment token on the .wic's boot partition. The bundle must not
# carry it: every device that installs the bundle would find the token on
# its boot partition again, and whoever can download bundles would have it.
# So the file is deleted from the cut-out boot image (mtools' mdel) and the
# sectors that held it are zeroed (mdel only frees them). Without
# HARMONY_ENROLL_FILE none of this runs and the boot image stays the .wic's
# partition byte for byte. meta-harmony/checks: enroll-file.
HARMONY_ENROLL_FILE_NAME = "harmony-enroll.toml"
DEPENDS += "${@'mtools-native' if d.getVar('HARMONY_ENROLL_FILE') else ''}"

def harmony_scrub_boot_file(image, name, mtools_bindir):
    """Delete NAME from the root of the FAT file system in the file IMAGE and
    zero every sector-aligned copy of its content; return how many sectors
    were zeroed. Raises RuntimeError when that cannot be made sure of."""
    import os
    import re
    import subprocess

    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")

    def mtools(tool, *args):
        return subprocess.run([os.path.join(mtools_bindir, tool), "-i", image] + list(args),
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def present():
        return mtools("mdir", "-b", "::/" + name).returncode == 0

    if not present():
        return 0
    got = mtools("mtype", "::/" + name)
    if got.returncode != 0 or not got.stdout:
        raise RuntimeError("mtype ::/%s failed: %s" % (name, got.stderr.decode(errors="replace").strip()))
    content = got.stdout
    gone = mtools("mdel", "::/" + name)
    if gone.returncode != 0 or present():
        raise RuntimeError("mdel ::/%s failed: %s" % (name, gone.stderr.decode(errors="replace").strip()))

    # FAT clusters are whole sectors, so each 512-byte piece of the file
    # starts on a sector boundary of the image, wherever its cluster is.
    sector = 512
    with open(image, "r+b") as f:
        data = bytearray(f.read())
        zeroed = 0
        for k in range(0, len(content), sector):
            piece = content[k:k + sector]
            if not piece.strip(b"\0 \t\r\n"):
                continue
            found = False
            pos = data.find(piece)
            while pos != -1:
                if pos % sector == 0:
                    data[pos:pos + len(piece)] = bytes(len(piece))
                    zeroed += 1
                    found = True
                pos = data.find(piece, pos + 1)
            if not found:
                raise RuntimeError("bytes %d-%d of %s are not on a sector boundary of the image"
                                   % (k, k + len(piece), name))
        for token in re.findall(rb"hfe1_[A-Za-z0-9_-]+", content):
            if data.find(token) != -1:
                raise RuntimeError("the token of %s is still in the image after zeroing" % name)
        f.seek(0)
        f.write(data)
    return zeroed

# Signing material; the defaults (public development keys) come from
# classes-global/harmony_sanity.bbclass, which warns in release builds.
RAUC_KEY_FILE = "${HARMONY_RAUC_SIGNING_KEY}"
RAUC_CERT_FILE = "${HARMONY_RAUC_SIGNING_CERT}"
RAUC_KEYRING_FILE = "${HARMONY_RAUC_KEYRING}"
