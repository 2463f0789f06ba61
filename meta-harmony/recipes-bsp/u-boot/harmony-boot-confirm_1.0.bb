SUMMARY = "Harmony Fleet: confirm a boot of a committed slot to U-Boot"
DESCRIPTION = "Resets BOOT_<slot>_UNCONFIRMED once multi-user.target is \
               reached, so the boot script leaves a committed slot only \
               when it stops booting. Never marks a slot good."
HOMEPAGE = "https://example.invalid/harmony-fleet"
SECTION = "base"
LICENSE = "MIT"
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

SRC_URI = "\
    file://harmony-boot-confirm \
    file://harmony-boot-confirm.service \
"

inherit systemd allarch

SYSTEMD_SERVICE:${PN} = "harmony-boot-confirm.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

RDEPENDS:${PN} = "libubootenv-bin"

do_install() {
    install -d ${D}${sbindir} ${D}${systemd_system_unitdir}
    install -m 0755 ${HARMONY_UNPACKDIR}/harmony-boot-confirm ${D}${sbindir}/
    install -m 0644 ${HARMONY_UNPACKDIR}/harmony-boot-confirm.service ${D}${systemd_system_unitdir}/
}
