"""Checks that the QEMU test image and the Yocto image are made of the same
layer files, and that the rootfs a bundle carries is a complete system:

  partition-mounts    the rootfs mounts the boot and data partitions by
                      itself (harmony-partitions' units agree with the wks;
                      wic does not rewrite fstab in the .wic only)
  builder-uses-layer  image/qemu/build.py authors no file that shapes boot,
                      mounts, RAUC or the agent; what it installs from the
                      layer goes where the recipes install it
"""

import ast
import configparser
import re
from pathlib import Path

IMAGE = "recipes-core/images/harmony-image.bb"
PARTITIONS = "recipes-core/harmony-partitions/harmony-partitions_1.0.bb"
BUILDER = "image/qemu/build.py"


class CheckError(Exception):
    pass


def read_unit(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    cp.optionxform = str
    cp.read_string(path.read_text(), source=str(path))
    return cp


def partition_device(part: dict) -> str:
    """The Linux device of a wks partition (the layer's wks reader names it
    from --ondisk and the partition number)."""
    return part["device"]


def unit_name(mount: str) -> str:
    """systemd's unit name for a mount point (systemd-escape --path, for the
    plain names used here)."""
    return mount.strip("/").replace("-", "\\x2d").replace("/", "-") + ".mount"


def check_partition_mounts(ctx, search_local, wks_for):
    problems = []
    for machine in ctx.machines:
        image = ctx.recipe(IMAGE, machine)
        installs = (image.getVar("IMAGE_INSTALL") or "").split()
        if "harmony-partitions" not in installs:
            problems.append(f"[{machine}] {IMAGE}: IMAGE_INSTALL lacks harmony-partitions: "
                            "a slot written by a bundle would not mount /boot/firmware and /data")
        if "--no-fstab-update" not in (image.getVar("WIC_CREATE_EXTRA_ARGS") or "").split():
            problems.append(f"[{machine}] {IMAGE}: WIC_CREATE_EXTRA_ARGS lacks --no-fstab-update: wic would "
                            "give the flashed slot an fstab that no bundle's slot has")
        if not (ctx.layer / PARTITIONS).is_file():
            problems.append(f"{PARTITIONS} does not exist")
            continue
        d = ctx.recipe(PARTITIONS, machine)
        enabled = (d.getVar("SYSTEMD_SERVICE:harmony-partitions") or "").split()
        uris = [u[len("file://"):].split(";", 1)[0] for u in (d.getVar("SRC_URI") or "").split()
                if u.startswith("file://")]
        _, (_, parts) = wks_for(ctx, machine)
        for part in parts:
            mount = part.get("mount")
            if mount in (None, "/"):
                continue
            name = unit_name(mount)
            where = f"[{machine}] {name}"
            if name not in uris:
                problems.append(f"{where}: the wks mounts {mount} (partition {part['num']}) but "
                                f"{PARTITIONS} installs no {name}")
                continue
            if name not in enabled:
                problems.append(f"{where}: not in SYSTEMD_SERVICE (installed but never started)")
            path = search_local(ctx, d, name)
            if path is None:
                problems.append(f"{where}: file://{name} not found")
                continue
            unit = read_unit(path)
            want = {"What": partition_device(part), "Where": mount, "Type": part.get("fstype")}
            for key, value in want.items():
                have = unit.get("Mount", key, fallback=None)
                if have != value:
                    problems.append(f"{where} ({path.relative_to(ctx.layer)}): {key}={have}, "
                                    f"the wks says {value}")
            if "local-fs.target" not in unit.get("Install", "WantedBy", fallback="").split():
                problems.append(f"{where}: not WantedBy=local-fs.target")
    return problems


# Rootfs paths that shape boot, mounts, RAUC or the agent: only the layer
# may provide them.
FORBIDDEN = [
    (r"(^|/)etc/fstab$", "fstab"),
    (r"\.(mount|automount|swap)$", "a mount unit"),
    (r"(^|/)system\.conf$|(^|/)etc/rauc\b", "RAUC's configuration"),
    (r"fw_env\.config$", "the U-Boot environment location"),
    (r"(^|/)boot\.(cmd|scr)", "the boot script"),
    (r"tmpfiles\.d|sysctl\.d|system\.conf\.d|modules-load\.d|udev/rules\.d", "system configuration"),
    (r"(^|/)etc/harmony\b|harmony-agent", "the agent's files"),
    (r"systemd/network\b", "network configuration"),
    (r"\.(service|socket|timer|target|path)$", "a systemd unit"),
]
# Deliberate, named exceptions, by the builder function they are in:
#   test_*        the test harness's serial console (QEMU image only)
#   fault_*       test faults a scenario needs (a broken or misdirected image)
#   preset_*      what oe-core enables by preset (systemd-networkd)
#   substitute_*  what the recipes build or take from variables (the agent
#                 binary, the keyring and fleet keys of this build)
EXEMPT_PREFIXES = ("test_", "fault_", "preset_", "substitute_")


def _path_constants(node):
    """String constants of a path expression `root / "a" / f"b{x}"`."""
    out = []
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        out += _path_constants(node.left) + _path_constants(node.right)
    elif isinstance(node, ast.Constant) and isinstance(node.value, str):
        out.append(node.value)
    elif isinstance(node, ast.JoinedStr):
        out.append("".join(v.value if isinstance(v, ast.Constant) else "*" for v in node.values))
    return out


def _rooted(node) -> bool:
    while isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        node = node.left
    return isinstance(node, ast.Name) and node.id == "root"


def authored_rootfs_paths(source: str):
    """(line, path constant) of every rootfs path the builder names outside
    the EXEMPT_PREFIXES functions: `root / "..."` and enable(root, "...", ...)."""
    tree = ast.parse(source)
    found = []

    def visit(node, exempt):
        if isinstance(node, ast.FunctionDef):
            exempt = exempt or node.name.startswith(EXEMPT_PREFIXES)
        if not exempt:
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and _rooted(node):
                consts = _path_constants(node)
                if consts:
                    found.append((node.lineno, "/".join(c.strip("/") for c in consts)))
                return
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "enable"
                    and len(node.args) >= 2):
                for c in _path_constants(node.args[1]):
                    found.append((node.lineno, c.strip("/")))
        for child in ast.iter_child_nodes(node):
            visit(child, exempt)

    visit(tree, False)
    return found


def _layer_files_table(source: str):
    """LAYER_FILES as data; module-level string constants it names (the
    recipe paths) are resolved, nothing is executed."""
    tree = ast.parse(source)
    consts = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            consts[node.targets[0].id] = node.value.value

    class Resolve(ast.NodeTransformer):
        def visit_Name(self, node):
            if node.id not in consts:
                raise CheckError(f"{BUILDER}: LAYER_FILES names {node.id}, which is no string constant")
            return ast.copy_location(ast.Constant(consts[node.id]), node)

    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "LAYER_FILES"
                                                for t in node.targets):
            return ast.literal_eval(Resolve().visit(node.value))
    raise CheckError(f"{BUILDER}: no LAYER_FILES table")


def _machine_files_overrides(source: str):
    m = re.search(r'^MACHINE = "([^"]+)"', source, re.M)
    if not m:
        raise CheckError(f"{BUILDER}: no MACHINE")
    return m.group(1)


# Installed by a recipe of another layer from our file (meta-rauc's
# rauc-conf.bb installs system.conf as ${sysconfdir}/rauc/system.conf).
# meta-virtualization's container-host-config installs storage.conf as
# ${sysconfdir}/containers/storage.conf, 0644.
UPSTREAM_INSTALLS = {
    ("recipes-core/rauc/rauc-conf.bbappend", "system.conf"): ("/etc/rauc/system.conf", 0o644),
    ("dynamic-layers/virtualization-layer/recipes-containers/container-host-config/container-host-config_%.bbappend",
     "storage.conf"): ("/etc/containers/storage.conf", 0o644),
}
# Recipes whose every installed file the QEMU image must carry.
MIRRORED_RECIPES = ["recipes-core/harmony-partitions/harmony-partitions_1.0.bb",
                    "recipes-harmony/harmony-agent/harmony-agent_0.1.0.bb",
                    "recipes-bsp/u-boot/harmony-boot-confirm_1.0.bb",
                    "recipes-core/harmony-network/harmony-network_1.0.bb"]


def recipe_installs(d):
    """{source file name: (destination path, mode)} from a recipe's do_install
    (and its :append), one `install -m MODE SRC DEST` per file."""
    body = " ".join(filter(None, [d.getVar("do_install"), d.getVar("do_install:append")]))
    body = body.replace("\\\n", " ")
    dest_root = d.getVar("D")
    unpack = d.getVar("HARMONY_UNPACKDIR")
    out = {}
    for m in re.finditer(r"install\s+-m\s+(0?[0-7]{3,4})\s+(\S+)\s+(\S+)", body):
        mode, src, dst = int(m.group(1), 8), m.group(2), m.group(3)
        if not src.startswith(unpack + "/") or "$" in src or not dst.startswith(dest_root):
            continue
        name = src[len(unpack) + 1:]
        dst = dst[len(dest_root):]
        if dst.endswith("/"):
            dst += name
        out[name] = (dst, mode)
    return out


def check_builder_uses_layer(ctx, recipe_in):
    path = ctx.repo / BUILDER
    if not path.is_file():
        return [f"{BUILDER} does not exist"]
    source = path.read_text()
    problems = []
    for line, p in authored_rootfs_paths(source):
        for pattern, what in FORBIDDEN:
            if re.search(pattern, p):
                problems.append(f"{BUILDER}:{line}: writes {what} ({p}) itself; install the layer's file "
                                "through LAYER_FILES")
                break
    try:
        machine = _machine_files_overrides(source)
        table = _layer_files_table(source)
    except CheckError as e:
        return problems + [str(e)]
    listed = set()
    for recipe, name, dest, mode, _only in table:
        listed.add((recipe, name))
        where = f"{BUILDER} LAYER_FILES {name}"
        if (recipe, name) in UPSTREAM_INSTALLS:
            want = UPSTREAM_INSTALLS[(recipe, name)]
        else:
            d = recipe_in(ctx, recipe, machine)
            if d is None:
                problems.append(f"{where}: no recipe {recipe}")
                continue
            want = recipe_installs(d).get(name)
            if want is None:
                problems.append(f"{where}: {recipe} does not install it")
                continue
        if "/" + dest.lstrip("/") != want[0] or mode != want[1]:
            problems.append(f"{where}: builder installs {oct(mode)} /{dest.lstrip('/')}, "
                            f"the recipe {oct(want[1])} {want[0]}")
    for recipe in MIRRORED_RECIPES:
        d = recipe_in(ctx, recipe, machine)
        if d is None:
            problems.append(f"no recipe {recipe}")
            continue
        for name in sorted(recipe_installs(d)):
            if (recipe, name) not in listed:
                problems.append(f"{recipe} installs {name}; the QEMU image ({BUILDER} LAYER_FILES) does not")
    return problems
