# nooelint: oelint.var.suggestedvar.SECTION
# Images are not packages: no SECTION.
SUMMARY = "Harmony Fleet device image"
DESCRIPTION = "systemd, RAUC and the Harmony agent on an A/B disk layout \
               (boot, rootfs A, rootfs B, data). Its ext4 root filesystem \
               is also the payload of harmony-bundle."
HOMEPAGE = "https://example.invalid/harmony-fleet"
LICENSE = "MIT"

inherit core-image

IMAGE_INSTALL = "\
    packagegroup-core-boot \
    ${CORE_IMAGE_EXTRA_INSTALL} \
    rauc \
    harmony-agent \
    libubootenv-bin \
    kernel-image \
"

# meta-rauc's rauc recommends rauc-mark-good, which commits a slot as soon as
# the system reaches multi-user. Harmony commits only after the operator has
# seen the new version's heartbeat: that package must never be installed.
BAD_RECOMMENDATIONS += "rauc-mark-good"

# SSH is for development images: EXTRA_IMAGE_FEATURES += "ssh-server-openssh"
# (the kas files' development snippet does that).

# ext4: the rootfs slot image that harmony-bundle ships.
# wic + bmap: the SD card / disk image, flashed with bmaptool.
IMAGE_FSTYPES = "ext4 wic.bz2 wic.bmap"

# The A/B layouts live in meta-harmony/files/wic/, shared with the QEMU test
# image builder. That is where wrynose looks (its sanity check rejects a
# <layer>/wic directory); scarthgap looked in <layer>/wic, hence the prepend.
WKS_SEARCH_PATH:prepend = "${HARMONY_LAYERDIR}/files/wic:"
# One A/B layout per machine: boot (vfat), rootfs A, rootfs B, data.
WKS_FILE = "harmony-${MACHINE}.wks"

# The ext4 image that harmony-bundle ships must fit the rootfs slot it is
# written to (the --fixed-size of the rootfs partitions in the wks, in KiB
# here): fail the build rather than an installation in the field.
IMAGE_ROOTFS_MAXSIZE:qemuarm64 = "327680"
IMAGE_ROOTFS_MAXSIZE:rpi = "1048576"

# The boot partition carries U-Boot's boot.scr (from our u-boot bbappend).
# meta-raspberrypi already lists it and depends on u-boot:do_deploy for the Pi.
IMAGE_BOOT_FILES:qemuarm64 = "boot.scr"
do_image_wic[depends] += "u-boot:do_deploy"
# Each rootfs slot carries its own kernel in /boot (kernel-image above), so
# a bundle updates kernel and userland together (boot.cmd.in loads it from
# the slot); the copy meta-raspberrypi puts on the shared boot partition
# would be dead weight that no update touches.
RPI_EXTRA_IMAGE_BOOT_FILES:remove = "${KERNEL_IMAGETYPE}"
