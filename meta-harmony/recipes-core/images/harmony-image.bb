# nooelint: oelint.var.suggestedvar.SECTION
# Images are not packages: no SECTION.
SUMMARY = "Harmony Fleet device image"
DESCRIPTION = "systemd, RAUC and the Harmony agent on an A/B disk layout \
               (boot, rootfs A, rootfs B, data). Its ext4 root filesystem \
               is also the payload of harmony-bundle."
HOMEPAGE = "https://example.invalid/harmony-fleet"
LICENSE = "MIT"

inherit core-image

# packagegroup-base is what pulls in the machine's MACHINE_EXTRA_RRECOMMENDS
# (on the Pi: kernel modules, Wi-Fi/Bluetooth firmware, udev-rules-rpi);
# replacing IMAGE_INSTALL without it drops all of them.
# harmony-partitions mounts /boot/firmware and /data from the rootfs itself
# (a bundle carries IMAGE_ROOTFS, never wic's rewritten fstab).
IMAGE_INSTALL = "\
    packagegroup-core-boot \
    packagegroup-base \
    ${CORE_IMAGE_EXTRA_INSTALL} \
    rauc \
    harmony-agent \
    harmony-partitions \
    harmony-network \
    harmony-boot-confirm \
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

# Adaptive updates (harmony-bundle: RAUC_SLOT_rootfs[adaptive]): every build
# of the ext4 image gets the same file system UUID and directory hash seed.
# mke2fs picks random ones, and with metadata_csum the UUID seeds the
# checksum in every directory block (and the seed the htree hashes): then no
# directory block of a new build equals the installed one, and a device
# downloads all of them, scattered through the image. Same value in both
# slots is normal (they hold the same image after an update); root= is the
# slot's PARTUUID and the partitions mount by device, never by file system
# UUID. The QEMU test image builder takes both values from here.
# docs/streaming-facts.md section 7; meta-harmony/checks: bundle-adaptive.
HARMONY_ROOTFS_FS_UUID ?= "9f60c70f-c0cd-5b19-897f-f1ee8d6f983c"
HARMONY_ROOTFS_HASH_SEED ?= "03792666-1923-596a-876a-595a02f8f4d9"
# (ext4 is an image-type override, and image_types.bbclass sets
# EXTRA_IMAGECMD:ext4 ?= "-i 4096", which this appends to: oelint knows neither)
# nooelint: oelint.vars.overrideappend, oelint.vars.specific
EXTRA_IMAGECMD:ext4:append = " -U ${HARMONY_ROOTFS_FS_UUID} -E hash_seed=${HARMONY_ROOTFS_HASH_SEED}"

# The A/B layouts live in meta-harmony/files/wic/, shared with the QEMU test
# image builder. That is where wrynose looks (its sanity check rejects a
# <layer>/wic directory); scarthgap looked in <layer>/wic, hence the prepend.
WKS_SEARCH_PATH:prepend = "${HARMONY_LAYERDIR}/files/wic:"
# One A/B layout per machine: boot (vfat), rootfs A, rootfs B, data.
WKS_FILE = "harmony-${MACHINE}.wks"
# wic would add the wks mount points to /etc/fstab in the .wic's copy of the
# rootfs only: the flashed slot A would then differ from every slot a bundle
# writes. The mounts come from harmony-partitions' units in both.
WIC_CREATE_EXTRA_ARGS += "--no-fstab-update"

# The ext4 image that harmony-bundle ships must fit the rootfs slot it is
# written to (the --fixed-size of the rootfs partitions in the wks, in KiB
# here): fail the build rather than an installation in the field.
IMAGE_ROOTFS_MAXSIZE:qemuarm64 = "327680"
IMAGE_ROOTFS_MAXSIZE:rpi = "1048576"

# The boot partition carries U-Boot's boot.scr (from our u-boot bbappend).
# meta-raspberrypi already lists it and depends on u-boot:do_deploy for the Pi.
IMAGE_BOOT_FILES:qemuarm64 = "boot.scr"
do_image_wic[depends] += "u-boot:do_deploy"
# Factory lines: with HARMONY_ENROLL_FILE set (harmony_sanity.bbclass), its
# harmony-enroll.toml goes onto the boot partition, and every card flashed
# from this image enrolls on first boot without `enroll prepare`. Empty (the
# default): nothing is added and harmony-enroll is not built.
# harmony-bundle takes the file out of its copy of the boot partition.
IMAGE_BOOT_FILES:append = " ${@'harmony-enroll.toml' if d.getVar('HARMONY_ENROLL_FILE') else ''}"
do_image_wic[depends] += "${@'harmony-enroll:do_deploy' if d.getVar('HARMONY_ENROLL_FILE') else ''}"
# The initial boot state that the wks writes raw before the first partition
# (harmony-boot-env.bin, ADR 0004 decision 3).
do_image_wic[depends] += "harmony-boot-env:do_deploy"
# Each rootfs slot carries its own kernel in /boot (kernel-image above), so
# a bundle updates kernel and userland together (boot.cmd.in loads it from
# the slot); the copy meta-raspberrypi puts on the shared boot partition
# would be dead weight that no update touches.
RPI_EXTRA_IMAGE_BOOT_FILES:remove = "${KERNEL_IMAGETYPE}"

# qemuarm64 under runqemu as the A/B system it is on a device: QEMU starts
# U-Boot (u-boot.bin from the u-boot recipe) as its firmware, U-Boot runs
# boot.scr from the plain .wic's boot partition and boots the slot it picks;
# runqemu passes no kernel of its own. `runqemu qemuarm64 nographic` then
# boots like image/qemu/build's test image (see image/README.md).
IMAGE_FSTYPES:append:qemuarm64 = " wic"
EXTRA_IMAGEDEPENDS:append:qemuarm64 = " u-boot"
QB_DEFAULT_FSTYPE:qemuarm64 = "wic"
QB_DEFAULT_BIOS:qemuarm64 = "u-boot.bin"
QB_DEFAULT_KERNEL:qemuarm64 = "none"
QB_KERNEL_ROOT:qemuarm64 = ""
# For a wic image runqemu ignores QB_ROOTFS_OPT and attaches the disk by
# QB_DRIVE_TYPE, whose default (/dev/sd) is virtio-scsi: U-Boot then finds no
# disk and Linux would call it sda, while fw_env.config, system.conf and the
# mount units name /dev/vda. "/dev/vd" makes it virtio-blk, as in qemu-tests.
QB_DRIVE_TYPE:qemuarm64 = "/dev/vd"

