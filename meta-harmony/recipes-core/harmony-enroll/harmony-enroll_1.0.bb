SUMMARY = "Harmony Fleet: an enrollment file baked into the boot partition (factory lines)"
DESCRIPTION = "Deploys HARMONY_ENROLL_FILE, a harmony-enroll.toml on the build \
               host (token, NATS URLs, CA: the format harmony-operator enroll \
               prepare writes), as harmony-enroll.toml, which harmony-image \
               puts on the boot partition of its .wic. Every card flashed \
               from that image enrolls with the same token on first boot. \
               Skipped while HARMONY_ENROLL_FILE is empty, the default."
HOMEPAGE = "https://example.invalid/harmony-fleet"
SECTION = "bsp"
LICENSE = "MIT"
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

# An absolute path (harmony_sanity.bbclass refuses anything else), fetched
# as a local file so that a new token rebuilds the image.
SRC_URI = "${@'file://' + d.getVar('HARMONY_ENROLL_FILE') if d.getVar('HARMONY_ENROLL_FILE') else ''}"

inherit deploy nopackages

# Deployed next to the machine's other boot artifacts.
PACKAGE_ARCH = "${MACHINE_ARCH}"

do_configure[noexec] = "1"
do_compile[noexec] = "1"
do_install[noexec] = "1"

# The token is a secret: readable by the build user only, and never put into
# the shared state cache (an sstate mirror is shared with other builds).
do_deploy() {
    install -m 0600 ${HARMONY_UNPACKDIR}/${HARMONY_ENROLL_FILE} ${DEPLOYDIR}/harmony-enroll.toml
}
addtask deploy after do_unpack before do_build
SSTATE_SKIP_CREATION:task-deploy = "1"

# Anonymous Python only to skip the recipe: nothing to deploy without a file.
# nooelint: oelint.task.noanonpython
python () {
    if not d.getVar('HARMONY_ENROLL_FILE'):
        raise bb.parse.SkipRecipe("HARMONY_ENROLL_FILE is empty: no enrollment file to bake in")
}
