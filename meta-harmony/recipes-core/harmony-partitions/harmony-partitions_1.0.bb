SUMMARY = "Harmony Fleet partition mounts"
DESCRIPTION = "Mounts the boot partition (U-Boot environment) at \
               /boot/firmware and the data partition at /data with systemd \
               mount units of the root file system, so that every slot a \
               bundle writes mounts them; grows the data partition to the \
               card on first boot."
HOMEPAGE = "https://example.invalid/harmony-fleet"
SECTION = "base"
LICENSE = "MIT"
# Files of this layer (MIT, like the layer), no upstream source to point at.
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

# files/<machine or rpi>/*.mount name the machine's partitions (the wks).
SRC_URI = "\
    file://boot-firmware.mount \
    file://data.mount \
    file://harmony-grow-data.service \
    file://harmony-grow-data \
"

inherit systemd

PACKAGE_ARCH = "${MACHINE_ARCH}"

SYSTEMD_SERVICE:${PN} = "boot-firmware.mount data.mount harmony-grow-data.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

# One install line per file: image/qemu/build installs the same files at the
# same places, and meta-harmony/checks (builder-uses-layer) compares the two.
do_install() {
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${HARMONY_UNPACKDIR}/boot-firmware.mount ${D}${systemd_system_unitdir}/
    install -m 0644 ${HARMONY_UNPACKDIR}/data.mount ${D}${systemd_system_unitdir}/
    install -m 0644 ${HARMONY_UNPACKDIR}/harmony-grow-data.service ${D}${systemd_system_unitdir}/
    install -d ${D}${sbindir}
    install -m 0755 ${HARMONY_UNPACKDIR}/harmony-grow-data ${D}${sbindir}/
    install -d ${D}/boot/firmware ${D}/data
}

FILES:${PN} += "/boot/firmware /data"

RDEPENDS:${PN} = "e2fsprogs-resize2fs util-linux-findmnt util-linux-partx util-linux-sfdisk"
