SUMMARY = "Harmony Fleet device agent"
DESCRIPTION = "Sends heartbeats, runs fleet commands and installs RAUC A/B \
               bundles through RAUC's D-Bus API. It never commits a slot \
               on its own: the operator does, after it sees the new \
               version's heartbeat."
HOMEPAGE = "https://example.invalid/harmony-fleet"
SECTION = "admin"
# The agent (Apache-2.0, the workspace's licence) and every crate linked into
# it: harmony-agent-licenses.inc is generated from their Cargo.toml files by
# meta-harmony/scripts/update-agent-licenses.
require ${BPN}-licenses.inc
LICENSE = "Apache-2.0 & ${HARMONY_CRATE_LICENSES}"
# The workspace ships no licence text; its Cargo.toml declares the licence
# (line 8, `license = "Apache-2.0"`): a change there fails do_populate_lic.
# meta-harmony/checks (agent-licences) recomputes this checksum.
LIC_FILES_CHKSUM = "file://Cargo.toml;beginline=8;endline=8;md5=2507bd5f0713f05419cd2f22fa06fe62"

# The recipe builds the repository it lives in (the layer is its
# meta-harmony/ directory), so there is no revision to pin and no second copy
# of the sources. Point HARMONY_SOURCE_DIR elsewhere to build another checkout.
HARMONY_SOURCE_DIR ?= "${HARMONY_LAYERDIR}/.."
# nooelint: oelint.vars.fileextrapaths, oelint.vars.outofcontext
FILESEXTRAPATHS:prepend := "${HARMONY_SOURCE_DIR}:"

# Only what cargo needs: the workspace manifest and lock and every workspace
# member (cargo refuses a workspace with a member missing). Listing them keeps
# target/ and the developers' .cargo/config.toml (host cross-linker settings)
# out of the build. The layer's checks compare this list with Cargo.toml.
HARMONY_WORKSPACE_MEMBERS = "protocol agent operator testkit"
# The crates.io dependencies first: crate:// entries generated from
# Cargo.lock by meta-harmony/scripts/update-agent-crates.
require ${BPN}-crates.inc
SRC_URI += "\
    file://Cargo.toml;subdir=harmony-fleet \
    file://Cargo.lock;subdir=harmony-fleet \
    ${@' '.join('file://%s;subdir=harmony-fleet' % m for m in d.getVar('HARMONY_WORKSPACE_MEMBERS').split())} \
    file://harmony-agent.service \
    file://agent.toml \
    file://harmony-watchdog.conf \
    file://harmony-podman \
    ${@' '.join('file://%s' % k for k in d.getVar('HARMONY_FLEET_PUBLIC_KEYS').split())} \
"

inherit cargo systemd

S = "${HARMONY_UNPACKDIR}/harmony-fleet"

# Build the agent package alone from the workspace; the lock file is the
# workspace's.
CARGO_MANIFEST_PATH = "${S}/agent/Cargo.toml"
CARGO_LOCK_PATH = "${S}/Cargo.lock"
# The workspace release profile strips binaries (small OTA bundles outside
# Yocto); here the packaging step splits debug symbols and would flag an
# already-stripped binary.
export CARGO_PROFILE_RELEASE_STRIP = "false"

SYSTEMD_SERVICE:${PN} = "harmony-agent.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

do_install:append() {
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${HARMONY_UNPACKDIR}/harmony-agent.service ${D}${systemd_system_unitdir}/

    # A hung trial slot must reboot so U-Boot can fall back.
    install -d ${D}${systemd_unitdir}/system.conf.d
    install -m 0644 ${HARMONY_UNPACKDIR}/harmony-watchdog.conf ${D}${systemd_unitdir}/system.conf.d/10-harmony-watchdog.conf

    install -d ${D}${sysconfdir}/harmony
    install -m 0644 ${HARMONY_UNPACKDIR}/agent.toml ${D}${sysconfdir}/harmony/agent.toml

    # Container workloads: podman run outside the agent's sandbox (agent.toml).
    install -d ${D}${libexecdir}/harmony-agent
    install -m 0755 ${HARMONY_UNPACKDIR}/harmony-podman ${D}${libexecdir}/harmony-agent/podman

    # Absolute file:// paths unpack below UNPACKDIR under their full path.
    install -d ${D}${sysconfdir}/harmony/fleet-keys
    for key in ${HARMONY_FLEET_PUBLIC_KEYS}; do
        install -m 0644 "${HARMONY_UNPACKDIR}/$key" ${D}${sysconfdir}/harmony/fleet-keys/
    done
}

FILES:${PN} += "${sysconfdir}/harmony ${systemd_unitdir}/system.conf.d"
CONFFILES:${PN} = "${sysconfdir}/harmony/agent.toml"

# The agent drives upgrades through rauc's D-Bus service.
RDEPENDS:${PN} = "rauc"
