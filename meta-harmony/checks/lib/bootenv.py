"""Where the A/B boot state lives on the disk and what a fresh image holds
there (ADR 0004 decision 3), as the layer defines it:

  the wks rawcopy lines     the two raw copies: offsets (and the file wic
                            writes there, harmony-boot-env.bin)
  harmony-boot-env_1.0.bb   the size of a copy (HARMONY_BOOT_ENV_SIZE) and
                            how the file is made (mkenvimage -r -s SIZE)
  harmony-boot-env.txt      the initial variables

The layer's checks, the QEMU image builder (image/qemu/build) and
qemu-tests/boot_script.py read them through this module, so the test disk
carries the same initial state at the same offsets as the .wic.
"""

import re
import subprocess
from pathlib import Path

RECIPE = "recipes-bsp/u-boot/harmony-boot-env_1.0.bb"
TEXT = "recipes-bsp/u-boot/files/harmony-boot-env.txt"
BLOB = "harmony-boot-env.bin"


class BootEnvError(Exception):
    pass


def offset_bytes(value: str) -> int:
    """A wic --offset value in bytes (wic: a number in KiB, or with a unit
    s = 512-byte sectors, K, M, G)."""
    m = re.fullmatch(r"(\d+)([sSkKmMgG]?)", str(value).strip())
    if not m:
        raise BootEnvError(f"cannot read the wks offset {value!r}")
    unit = {"": 1024, "s": 512, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}[m.group(2).lower()]
    return int(m.group(1)) * unit


def copy_parts(parts):
    """The wks parts that write the boot state: rawcopy of harmony-boot-env.bin."""
    return [p for p in parts if p.get("source") == "rawcopy"
            and f"file={BLOB}" in str(p.get("sourceparams", "")).split(",")]


def copy_offsets(parts):
    """Byte offsets of the raw copies, in wks order (copy 1, copy 2)."""
    out = []
    for p in copy_parts(parts):
        if "offset" not in p:
            raise BootEnvError(f"wks line {p['line']}: the boot state copy has no --offset")
        out.append(offset_bytes(p["offset"]))
    return out


def recipe_size(layer: Path) -> int:
    """HARMONY_BOOT_ENV_SIZE of the recipe (one plain assignment)."""
    text = (layer / RECIPE).read_text()
    m = re.search(r'^HARMONY_BOOT_ENV_SIZE = "(0x[0-9a-fA-F]+|\d+)"$', text, re.M)
    if not m:
        raise BootEnvError(f"{RECIPE}: no HARMONY_BOOT_ENV_SIZE = \"<size>\"")
    return int(m.group(1), 0)


def make_blob(layer: Path, out: Path) -> Path:
    """One copy of the initial state, made as the recipe makes it."""
    size = recipe_size(layer)
    r = subprocess.run(["mkenvimage", "-r", "-s", hex(size), "-o", str(out), str(layer / TEXT)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise BootEnvError(f"mkenvimage failed: {r.stderr.strip()}")
    return out


def place(disk: Path, blob: Path, offsets):
    """Write the blob at every offset of an existing disk image."""
    data = blob.read_bytes()
    with open(disk, "r+b") as f:
        for off in offsets:
            f.seek(off)
            f.write(data)
