SUMMARY = "Harmony Fleet network configuration (Ethernet and Wi-Fi)"
DESCRIPTION = "systemd-networkd DHCP on Ethernet and Wi-Fi; Wi-Fi credentials \
               taken once from harmony-wifi.conf on the boot partition and \
               kept on the data partition."
HOMEPAGE = "https://example.invalid/harmony-fleet"
SECTION = "base"
LICENSE = "MIT"
# Files of this layer (MIT, like the layer), no upstream source to point at.
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

SRC_URI = "\
    file://20-wired.network \
    file://25-wireless.network \
    file://harmony-wifi-import.service \
    file://harmony-wifi-import \
    file://wpa_supplicant-wlan0.conf \
"

inherit systemd

SYSTEMD_SERVICE:${PN} = "harmony-wifi-import.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

do_install() {
    install -d ${D}${systemd_unitdir}/network
    install -m 0644 ${HARMONY_UNPACKDIR}/20-wired.network ${D}${systemd_unitdir}/network/
    install -m 0644 ${HARMONY_UNPACKDIR}/25-wireless.network ${D}${systemd_unitdir}/network/
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${HARMONY_UNPACKDIR}/harmony-wifi-import.service ${D}${systemd_system_unitdir}/
    install -d ${D}${systemd_system_unitdir}/wpa_supplicant@wlan0.service.d
    install -m 0644 ${HARMONY_UNPACKDIR}/wpa_supplicant-wlan0.conf \
        ${D}${systemd_system_unitdir}/wpa_supplicant@wlan0.service.d/10-harmony.conf
    install -d ${D}${sbindir}
    install -m 0755 ${HARMONY_UNPACKDIR}/harmony-wifi-import ${D}${sbindir}/
    # wpa_supplicant@.service belongs to wpa-supplicant: enable its wlan0
    # instance here (systemd.bbclass only enables units of this package).
    # Wanted by the wlan0 device, not by multi-user.target: the unit
    # Requires= its device, so on a Pi without wlan0 (a CM4 Lite, Wi-Fi
    # disabled in config.txt) multi-user.target would wait 90 s for it and
    # network.target would fail; this way it starts when wlan0 appears.
    install -d ${D}${sysconfdir}/systemd/system/sys-subsystem-net-devices-wlan0.device.wants
    ln -sf ${systemd_system_unitdir}/wpa_supplicant@.service \
        ${D}${sysconfdir}/systemd/system/sys-subsystem-net-devices-wlan0.device.wants/wpa_supplicant@wlan0.service
}

FILES:${PN} += "${systemd_unitdir}/network ${systemd_system_unitdir} ${sysconfdir}/systemd/system"

RDEPENDS:${PN} = "harmony-partitions wpa-supplicant"
