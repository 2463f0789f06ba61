"""Parse meta-harmony's files with BitBake's own parser, without oe-core.

PyPI's `bitbake-setup` ships BitBake's `bb` package. With a stub
`conf/bitbake.conf`, empty stand-ins for the oe-core/meta-rauc classes our
recipes inherit, and an empty `hashserv` package (imported by `bb` but not
shipped), it parses our recipes, bbappends, includes, classes and confs the
way BitBake does: syntax errors, old override syntax, broken inline Python and
bad `require`s fail. Function bodies are then checked too: shell with
BitBake's shell parser, Python with `compile()`.

The stubs carry only what our own files read; values that come from oe-core,
meta-rauc or meta-raspberrypi (KERNEL_IMAGETYPE, ...) are stated per machine
in MACHINES below. `checks/bitbake-graph` is the full check against the real
layers.
"""

import ast
import logging
import os
import sys
import tempfile
from pathlib import Path

LAYER = Path(__file__).resolve().parents[2]

# What the real machine configurations say, for the few variables our files
# read. raspberrypi*: meta-raspberrypi conf/machine; qemuarm64: oe-core.
MACHINES = {
    "raspberrypi4-64": {
        "MACHINEOVERRIDES": "aarch64:armv8a:rpi:raspberrypi4:raspberrypi4-64",
        "KERNEL_IMAGETYPE": "Image",
        "KERNEL_BOOTCMD": "booti",
        "UBOOT_ARCH": "arm64",
    },
    "raspberrypi5": {
        "MACHINEOVERRIDES": "aarch64:armv8-2a:rpi:raspberrypi5",
        "KERNEL_IMAGETYPE": "Image",
        "KERNEL_BOOTCMD": "booti",
        "UBOOT_ARCH": "arm64",
    },
    "qemuarm64": {
        "MACHINEOVERRIDES": "aarch64:armv8a:qemuall:qemuarm64",
        "KERNEL_IMAGETYPE": "Image",
        "UBOOT_ARCH": "arm64",
    },
}

# Classes from oe-core / meta-rauc that our recipes inherit: empty here.
STUB_CLASSES = [
    "cargo", "cargo-update-recipe-crates", "systemd", "core-image", "image",
    "bundle", "deploy", "kernel-arch", "nopackages", "allarch",
]

STUB_BITBAKE_CONF = r'''
# Stub of oe-core's bitbake.conf: names and layout only.
TMPDIR = "/nonexistent/tmp"
PN = "${@bb.parse.vars_from_file(d.getVar('FILE', False), d)[0] or 'defaultpkgname'}"
PV = "${@bb.parse.vars_from_file(d.getVar('FILE', False), d)[1] or '1.0'}"
PR = "r0"
BPN = "${PN}"
BP = "${BPN}-${PV}"
FILE_DIRNAME = "${@os.path.dirname(d.getVar('FILE', False))}"
THISDIR = "${@os.path.dirname(d.getVar('FILE', True))}"
WORKDIR = "${TMPDIR}/work/${PN}/${PV}"
UNPACKDIR = "${WORKDIR}/sources"
S = "${UNPACKDIR}/${BP}"
B = "${S}"
D = "${WORKDIR}/image"
DEPLOYDIR = "${WORKDIR}/deploy"
DEPLOY_DIR_IMAGE = "${TMPDIR}/deploy/images/${MACHINE}"
COREBASE = "/nonexistent/oe-core"
COMMON_LICENSE_DIR = "${COREBASE}/meta/files/common-licenses"
prefix = "/usr"
exec_prefix = "/usr"
bindir = "/usr/bin"
sbindir = "/usr/sbin"
libexecdir = "/usr/libexec"
libdir = "/usr/lib"
nonarch_libdir = "/usr/lib"
datadir = "/usr/share"
sysconfdir = "/etc"
localstatedir = "/var"
systemd_unitdir = "/usr/lib/systemd"
systemd_system_unitdir = "/usr/lib/systemd/system"
MACHINE_ARCH = "${@d.getVar('MACHINE').replace('-', '_')}"
PACKAGE_ARCH = "aarch64"
CLASSOVERRIDE = "class-target"
DISTROOVERRIDES = "${DISTRO}"
OVERRIDES = "linux:aarch64:pn-${PN}:${MACHINEOVERRIDES}:${DISTROOVERRIDES}:${CLASSOVERRIDE}:forcevariable"
FILESOVERRIDES = "${TRANSLATED_TARGET_ARCH}:${MACHINEOVERRIDES}:${DISTROOVERRIDES}"
FILESEXTRAPATHS ?= "__default:"
PACKAGES = "${PN}-dbg ${PN}-dev ${PN}-doc ${PN}-locale ${PN}"
DISTRO_FEATURES = ""
IMAGE_FEATURES = ""
BAD_RECOMMENDATIONS = ""
DISTRO = "nodistro"
DISTRO_VERSION = "nodistro.0"
DISTRO_NAME = "OpenEmbedded"
INHERIT = ""
'''

_bb_ready = False


def _prepare_bb(workdir: Path):
    """Put the hashserv shim and the stub tree in place; import bb."""
    global _bb_ready
    shim = workdir / "shim" / "hashserv"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "__init__.py").write_text("")
    (shim / "client.py").write_text("")
    stub = workdir / "stub"
    (stub / "conf").mkdir(parents=True, exist_ok=True)
    (stub / "classes").mkdir(parents=True, exist_ok=True)
    (stub / "conf" / "bitbake.conf").write_text(STUB_BITBAKE_CONF)
    (stub / "classes" / "base.bbclass").write_text("")
    for name in STUB_CLASSES:
        (stub / "classes" / f"{name}.bbclass").write_text("")
    (stub / "recipes").mkdir(exist_ok=True)
    if not _bb_ready:
        sys.path.insert(0, str(workdir / "shim"))
        import bb  # noqa: F401
        import bb.parse.parse_py.BBHandler  # noqa: F401  (registers the .bb handler)
        import bb.parse.parse_py.ConfHandler  # noqa: F401
        # bb logs parse warnings (tabs in Python, ...) through this logger.
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
        _bb_ready = True
    return stub


class Harness:
    def __init__(self, layer: Path = LAYER):
        self.layer = Path(layer).resolve()
        self._tmp = tempfile.TemporaryDirectory(prefix="bbharness-")
        self.stub = _prepare_bb(Path(self._tmp.name))

    def close(self):
        self._tmp.cleanup()

    # -- configuration ---------------------------------------------------
    def config(self, machine: str, distro: str = "harmony", local=None):
        """The global datastore: stub bitbake.conf, our layer.conf, machine
        facts, our distro conf, `local` (variables as local.conf would set
        them), then the INHERIT classes (as BitBake does)."""
        import bb.data
        import bb.parse
        from bb.parse.parse_py import BBHandler

        d = bb.data.init()
        d.setVar("BBPATH", f"{self.stub}")
        d.setVar("MACHINE", machine)
        d.setVar("TOPDIR", "/nonexistent/build")
        bb.parse.handle(str(self.stub / "conf" / "bitbake.conf"), d, True)
        d.setVar("LAYERDIR", str(self.layer))
        bb.parse.handle(str(self.layer / "conf" / "layer.conf"), d, True)
        # BitBake expands ${LAYERDIR} in each layer.conf right after parsing it.
        bb.data.expandKeys(d)
        for key in list(d.keys()):
            val = d.getVar(key, False)
            if isinstance(val, str) and "${LAYERDIR}" in val:
                d.setVar(key, val.replace("${LAYERDIR}", str(self.layer)))
        d.delVar("LAYERDIR")
        for key, val in MACHINES[machine].items():
            d.setVar(key, val)
        d.setVar("DISTRO", distro)
        if distro != "nodistro":
            bb.parse.handle(str(self.layer / "conf" / "distro" / f"{distro}.conf"), d, True)
        for key, val in (local or {}).items():
            d.setVar(key, val)
        d.setVar("__bbclasstype", "global")
        for cls in (d.getVar("INHERIT") or "").split():
            BBHandler.inherit(cls, "configuration INHERIT", 0, d)
        d.setVar("__bbclasstype", "recipe")
        import bb.siggen
        bb.parse.siggen = bb.siggen.init(d)  # the no-op generator
        return d

    # -- recipes ---------------------------------------------------------
    def recipe(self, path: Path, machine: str, distro: str = "harmony", local=None):
        """Parse a .bb, or a .bbappend against an empty stand-in recipe. A
        recipe that skips itself (bb.parse.SkipRecipe) comes back with the
        reason in __SKIPPED."""
        import bb.data
        import bb.parse

        path = Path(path).resolve()
        d = bb.data.createCopy(self.config(machine, distro, local))
        d.setVar("BBPATH", f"{self.stub}:{self.layer}")
        if path.suffix == ".bbappend":
            base_name = path.name[: -len(".bbappend")].replace("%", "1.0")
            if "_" not in base_name:
                base_name += "_1.0"
            base = self.stub / "recipes" / f"{base_name}.bb"
            base.write_text("# stand-in for the recipe this bbappend extends\n")
            d.setVar("__BBAPPEND", str(path))
            target = base
        else:
            target = path
        stores = bb.parse.handle(str(target), d, False)
        return stores[""]


def check_functions(d, where: str):
    """Syntax-check every shell and Python function in a parsed datastore."""
    import bb.codeparser

    problems = []
    log = logging.getLogger("BitBake")
    # A bare "do_install:append() {...}" carries the func flag on the
    # override key only; check the merged function under its base name.
    funcs = {}
    for key in d.keys():
        base = key.split(":", 1)[0]
        if d.getVarFlag(key, "func", False):
            funcs[base] = funcs.get(base, False) or bool(d.getVarFlag(key, "python", False))
    for name in sorted(funcs):
        body = d.getVar(name, False) or ""
        if not body.strip():
            continue
        if funcs[name] or d.getVarFlag(name, "python", False):
            if body.lstrip().startswith("def "):  # a "def name(d):" helper
                src = body
            else:  # a "python name() { ... }" task body
                src = "def %s(d):\n%s\n    pass\n" % (name.replace("-", "_"), body)
            try:
                ast.parse(src, filename=f"{where}:{name}")
            except SyntaxError as e:
                problems.append(f"{where}: python function {name}: {e.msg} (line {e.lineno})")
        else:
            try:
                bb.codeparser.ShellParser(name, log).parse_shell(d.expand(body))
            except Exception as e:  # pysh raises several types
                problems.append(f"{where}: shell function {name}: {e}")
    return problems


def check_expansions(d, where: str):
    """Expand every variable: inline Python errors surface here."""
    import bb.data_smart

    problems = []
    for name in sorted(d.keys()):
        if name.startswith("__") or d.getVarFlag(name, "func", False):
            continue
        try:
            d.getVar(name)
        except bb.data_smart.ExpansionError as e:
            problems.append(f"{where}: {name}: {e}")
    return problems


def layer_files(layer: Path = LAYER):
    """Our BitBake files, sorted, excluding stand-ins and checks."""
    out = []
    for pattern in ("conf/**/*.conf", "classes*/*.bbclass", "recipes-*/**/*.bb",
                    "recipes-*/**/*.bbappend", "recipes-*/**/*.inc",
                    "dynamic-layers/*/recipes-*/**/*.bbappend", "dynamic-layers/*/recipes-*/**/*.inc"):
        out.extend(p for p in Path(layer).glob(pattern) if "checks" not in p.parts)
    return sorted(set(out))
