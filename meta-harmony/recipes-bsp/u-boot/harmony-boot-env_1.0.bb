SUMMARY = "Harmony Fleet: the initial A/B boot state of a flashed image"
DESCRIPTION = "One copy of the boot state in U-Boot's redundant format, made \
               with mkenvimage from harmony-boot-env.txt (both slots \
               committed, A first). The wks files write it with rawcopy at \
               both raw offsets between the MBR and the first partition, \
               where boot.cmd.in, libubootenv and the Pi's U-Boot keep the \
               boot state (ADR 0004 decision 3). Deployed for wic only; \
               nothing goes into the rootfs."
HOMEPAGE = "https://example.invalid/harmony-fleet"
SECTION = "bsp"
LICENSE = "MIT"
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

DEPENDS = "u-boot-tools-native"

SRC_URI = "file://harmony-boot-env.txt"

inherit deploy nopackages

# The size of one copy: fw_env.config's size column, U-Boot's ENV_SIZE and
# the boot script's block count (meta-harmony/checks: boot-env-location).
HARMONY_BOOT_ENV_SIZE = "0x4000"

# Deployed next to the machine's other boot artifacts.
PACKAGE_ARCH = "${MACHINE_ARCH}"

do_configure[noexec] = "1"

do_compile() {
    mkenvimage -r -s ${HARMONY_BOOT_ENV_SIZE} -o ${B}/harmony-boot-env.bin \
        ${HARMONY_UNPACKDIR}/harmony-boot-env.txt
}

do_install[noexec] = "1"

do_deploy() {
    install -m 0644 ${B}/harmony-boot-env.bin ${DEPLOYDIR}/harmony-boot-env.bin
}
addtask deploy after do_compile before do_build
