# Build-wide defaults and sanity checks for meta-harmony.
#
# Inherited from layer.conf (INHERIT), so it is parsed after local.conf and
# the distro configuration: every "?=" below is a default that a kas file,
# local.conf or distro config overrides by plain assignment.

# Where the committed, publicly known development keys live.
HARMONY_DEVELOPMENT_KEYS_DIR ?= "${HARMONY_LAYERDIR}/files/development-keys"

# RAUC keyring installed on the device (the CA that bundle signers chain to).
HARMONY_RAUC_KEYRING ?= "${HARMONY_DEVELOPMENT_KEYS_DIR}/ca.cert.pem"
# Bundle signing certificate and key used by harmony-bundle.
HARMONY_RAUC_SIGNING_CERT ?= "${HARMONY_DEVELOPMENT_KEYS_DIR}/development-1.cert.pem"
HARMONY_RAUC_SIGNING_KEY ?= "${HARMONY_DEVELOPMENT_KEYS_DIR}/development-1.key.pem"
# Fleet command-signing public keys (Ed25519, one line of hex each). Several
# files may be listed: the agent trusts all of them, which is how keys rotate.
HARMONY_FLEET_PUBLIC_KEYS ?= "${HARMONY_DEVELOPMENT_KEYS_DIR}/fleet-development.pub"

# Factory lines: the absolute path of a harmony-enroll.toml on the build host
# (the format `harmony-operator enroll prepare` writes: token, NATS URLs,
# CA). When set, harmony-image puts it on the boot partition of every image
# it builds (recipes-core/harmony-enroll), so each card flashed from it
# enrolls on first boot; harmony-bundle keeps it out of OTA bundles. Empty,
# the default: nothing happens. THE FILE IS A SECRET: its token lets any
# device ask to join the fleet (within the token's limits), and it ends up in
# DEPLOY_DIR_IMAGE (harmony-enroll.toml and the boot partition of the .wic
# and .wic.bz2) and in the image's work directory. Use a token with
# --max-uses and --expires, or --require-approval (meta-harmony/README.md).
HARMONY_ENROLL_FILE ?= ""

# Where SRC_URI files are unpacked: UNPACKDIR since styhead, WORKDIR in
# scarthgap (which has no UNPACKDIR). Our recipes use this to serve both.
HARMONY_UNPACKDIR = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"

# "1" marks a build meant for devices in the field.
HARMONY_RELEASE ?= "0"

HARMONY_KEY_VARIABLES = "HARMONY_RAUC_KEYRING HARMONY_RAUC_SIGNING_CERT HARMONY_RAUC_SIGNING_KEY HARMONY_FLEET_PUBLIC_KEYS"

def harmony_development_keys_in_use(d):
    """Names of the key variables that still point into the development keys directory."""
    import os
    devdir = os.path.realpath(d.getVar('HARMONY_DEVELOPMENT_KEYS_DIR'))
    in_use = []
    for var in d.getVar('HARMONY_KEY_VARIABLES').split():
        for path in (d.getVar(var) or '').split():
            if os.path.realpath(path).startswith(devdir + os.sep):
                in_use.append(var)
                break
    return in_use

def harmony_enroll_file_problems(d):
    """Why HARMONY_ENROLL_FILE cannot be baked in; empty when it is unset or fine."""
    import os
    import re
    path = d.getVar('HARMONY_ENROLL_FILE') or ''
    if not path:
        return []
    if not os.path.isabs(path):
        return ["HARMONY_ENROLL_FILE %s is not an absolute path" % path]
    if not os.path.isfile(path):
        return ["HARMONY_ENROLL_FILE %s does not exist" % path]
    with open(path, encoding='utf-8', errors='replace') as f:
        text = f.read()
    problems = []
    if not re.search(r"""^\s*token\s*=\s*["']hfe1_[^"'\s]+["']""", text, re.M):
        problems.append('HARMONY_ENROLL_FILE %s has no token = "hfe1_..." line: not an enrollment file '
                        '(write it with `harmony-operator enroll prepare --image` or by its format, '
                        'protocol/src/enroll.rs EnrollFile)' % path)
    if not re.search(r'^\s*nats_urls\s*=', text, re.M):
        problems.append("HARMONY_ENROLL_FILE %s names no nats_urls: the device would not know where to enroll"
                        % path)
    return problems

def harmony_release_key_problems(d):
    """Why a release build must not go on: key variables unset, pointing at
    missing files, or at the public development keys."""
    import os
    problems = []
    for var in d.getVar('HARMONY_KEY_VARIABLES').split():
        paths = (d.getVar(var) or '').split()
        if not paths:
            problems.append("%s is not set" % var)
        for path in paths:
            if not os.path.isfile(path):
                problems.append("%s: %s does not exist" % (var, path))
    for var in harmony_development_keys_in_use(d):
        problems.append("%s uses the public development keys" % var)
    return problems

# An event handler, not a task: it has no [doc] to set.
addhandler harmony_sanity_check
harmony_sanity_check[eventmask] = "bb.event.SanityCheck"
# nooelint: oelint.task.docstrings
python harmony_sanity_check() {
    features = e.data.getVar('DISTRO_FEATURES').split()
    if 'harmony' not in features:
        bb.warn("meta-harmony is in BBLAYERS but 'harmony' is not in DISTRO_FEATURES: "
                "its bbappends stay inactive. Use DISTRO = \"harmony\" or add "
                "'harmony rauc' to DISTRO_FEATURES (see meta-harmony/README.md).")
        return
    if 'rauc' not in features:
        bb.warn("DISTRO_FEATURES has 'harmony' but not 'rauc'; meta-rauc integration stays off.")
    # The agent reports os-release's VERSION_ID, which oe-core derives from
    # DISTRO_VERSION by lower-casing it and replacing characters outside
    # [a-z0-9._-]; harmony-bundle's version is DISTRO_VERSION verbatim.
    import re
    version = e.data.getVar('DISTRO_VERSION') or ''
    if not re.fullmatch(r'[a-z0-9._-]+', version):
        bb.warn("DISTRO_VERSION '%s' is not of [a-z0-9._-]: devices would report a different "
                "version (os-release VERSION_ID) than harmony-bundle carries." % version)
    enroll_problems = harmony_enroll_file_problems(e.data)
    if enroll_problems:
        bb.fatal("HARMONY_ENROLL_FILE cannot be baked into the image:\n  %s" % "\n  ".join(enroll_problems))
    if e.data.getVar('HARMONY_ENROLL_FILE'):
        bb.warn("HARMONY_ENROLL_FILE is set: every image of this build carries its enrollment token on the "
                "boot partition. It is a secret and ends up in DEPLOY_DIR_IMAGE (harmony-enroll.toml, the "
                ".wic and .wic.bz2): keep those out of public artifact stores (meta-harmony/README.md).")
    if bb.utils.to_boolean(e.data.getVar('HARMONY_RELEASE')):
        problems = harmony_release_key_problems(e.data)
        if problems:
            bb.fatal("RELEASE BUILD (HARMONY_RELEASE = \"1\") REFUSED:\n  %s\n"
                     "Devices built from the public development keys accept bundles and fleet\n"
                     "commands signed by anybody who has this repository. Set the variables to\n"
                     "your own keys (image/kas/release.yml takes them from the environment)."
                     % "\n  ".join(problems))
}
