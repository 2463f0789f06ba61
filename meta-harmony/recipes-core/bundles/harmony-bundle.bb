# nooelint: oelint.file.underscores, oelint.var.mandatoryvar.SRC_URI, oelint.var.suggestedvar.SECTION
# Like an image, a bundle has no upstream version to put in its file name,
# no sources of its own (bundle.bbclass collects harmony-image's output from
# DEPLOY_DIR_IMAGE) and no package section.
SUMMARY = "Harmony Fleet OTA update bundle"
DESCRIPTION = "Signed RAUC bundle (verity format) carrying harmony-image's \
               ext4 root filesystem for the inactive rootfs slot."
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

RAUC_BUNDLE_SLOTS = "rootfs"
RAUC_SLOT_rootfs = "harmony-image"
RAUC_SLOT_rootfs[fstype] = "ext4"

# Signing material; the defaults (public development keys) come from
# classes-global/harmony_sanity.bbclass, which warns in release builds.
RAUC_KEY_FILE = "${HARMONY_RAUC_SIGNING_KEY}"
RAUC_CERT_FILE = "${HARMONY_RAUC_SIGNING_CERT}"
RAUC_KEYRING_FILE = "${HARMONY_RAUC_KEYRING}"
